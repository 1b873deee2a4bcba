//! When a live source sends what it has decoded: the one batching rule that the stdin,
//! file, MQTT, Kafka, NATS and http_poll sources follow.
//!
//! A batch goes out as soon as
//! - it is full (`batch.rows`), or
//! - the source has caught up with its input (nothing more is readable right now), or
//! - its oldest event has waited `batch.linger_ms`, however fast more keep arriving.
//!
//! Under load the input is never caught up, so batches fill (or leave at the linger
//! deadline); a thin stream is never held back waiting for company.

use std::time::{Duration, Instant};

use super::BatchConfig;

/// Tracks how long the oldest event held by a source has waited. Times are passed in, so
/// the rule is tested with made-up instants.
#[derive(Debug, Clone)]
pub(crate) struct Linger {
    linger: Duration,
    /// When the first input since the last send was taken in.
    oldest: Option<Instant>,
}

impl Linger {
    /// The rule with the source's `batch` settings.
    pub(crate) fn new(batch: &BatchConfig) -> Self {
        Linger {
            linger: Duration::from_millis(batch.linger_ms),
            oldest: None,
        }
    }

    /// Input was taken in at `now` (a message, some lines): it starts the clock unless
    /// older input is already held.
    pub(crate) fn took_in(&mut self, now: Instant) {
        self.oldest.get_or_insert(now);
    }

    /// Whether input is held since the last send (asked by the broker sources' loop).
    #[cfg_attr(
        not(any(feature = "mqtt", feature = "kafka", feature = "nats")),
        allow(dead_code)
    )]
    pub(crate) fn holding(&self) -> bool {
        self.oldest.is_some()
    }

    /// Whether what is held must go now: the batch is `full`, or the source is
    /// `caught_up` with its input, or the oldest input has waited the linger time.
    pub(crate) fn due(&self, full: bool, caught_up: bool, now: Instant) -> bool {
        match self.oldest {
            None => false,
            Some(t) => full || caught_up || now.saturating_duration_since(t) >= self.linger,
        }
    }

    /// What was held has been sent (or there was nothing to send).
    pub(crate) fn sent(&mut self) {
        self.oldest = None;
    }

    /// How long a source may wait for more input before what it holds is due; `None`
    /// when it holds nothing (wait as long as you like).
    pub(crate) fn time_left(&self, now: Instant) -> Option<Duration> {
        self.oldest
            .map(|t| self.linger.saturating_sub(now.saturating_duration_since(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(linger_ms: u64) -> Linger {
        Linger::new(&BatchConfig {
            rows: 100,
            linger_ms,
            ..BatchConfig::default()
        })
    }

    #[test]
    fn nothing_held_is_never_due() {
        let l = rule(10);
        let t = Instant::now();
        assert!(!l.due(false, true, t + Duration::from_secs(60)));
        assert!(!l.holding());
        assert_eq!(l.time_left(t), None);
    }

    #[test]
    fn caught_up_sends_at_once() {
        let mut l = rule(100);
        let t = Instant::now();
        l.took_in(t);
        assert!(
            !l.due(false, false, t),
            "more input is readable: keep filling"
        );
        assert!(l.due(false, true, t), "nothing more to read: send now");
    }

    #[test]
    fn a_steady_stream_cannot_hold_the_oldest_event_past_the_linger_time() {
        let mut l = rule(100);
        let t0 = Instant::now();
        // An event every millisecond, the input never caught up: the clock stays on
        // the first one.
        let mut sent_at = None;
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            l.took_in(now);
            if l.due(false, false, now) {
                sent_at = Some(ms);
                break;
            }
        }
        assert_eq!(sent_at, Some(100));
        l.sent();
        assert!(!l.holding());
        let t1 = t0 + Duration::from_millis(150);
        l.took_in(t1);
        assert_eq!(
            l.time_left(t1 + Duration::from_millis(30)),
            Some(Duration::from_millis(70))
        );
        assert!(!l.due(false, false, t1 + Duration::from_millis(99)));
        assert!(l.due(false, false, t1 + Duration::from_millis(100)));
    }

    #[test]
    fn a_full_batch_goes_whatever_the_clock() {
        let mut l = rule(100);
        let t = Instant::now();
        l.took_in(t);
        assert!(l.due(true, false, t));
    }
}
