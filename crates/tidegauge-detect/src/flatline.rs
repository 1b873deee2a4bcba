//! Stuck sensor: the value does not move for a long time.
//!
//! Observations are grouped into *runs*: a run starts with an observation (its *anchor*)
//! and continues while each new finite value is within `epsilon` of the anchor
//! (`|x − anchor| ≤ epsilon`); the first value outside starts a new run anchored on itself.
//! The run's duration is the latest event time in it minus the event time of its anchor.
//!
//! Anomaly: the run holding the current observation has lasted at least `min_duration_ms`
//! and holds at least `min_events` observations; the detector stays anomalous on every
//! observation while the sensor stays stuck. Statistic: the run's duration in milliseconds.
//! Score: [`score_from_ratio`](crate::score_from_ratio) of
//! `min(duration / min_duration_ms, events / min_events)`, so 0.5 when both minimums are
//! just met (nudged above 0.5 there, since reaching the minimum counts as stuck).
//!
//! Warm-up: none — the statistic is defined from the first observation (duration 0). Event
//! time never runs backwards inside a run: an out-of-order timestamp counts, but cannot
//! shorten the duration.
//!
//! Cost: O(1), no history beyond the current run's anchor, start, end and count.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict, score_from_ratio};

/// Parameters of the [`Flatline`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct FlatlineParams {
    /// Largest distance from the run's first value that still counts as "no change", in
    /// the value's units. Finite, ≥ 0. Default 0 (exactly repeated values).
    pub epsilon: f64,
    /// Event time the value must stay put to be called stuck. ≥ 0. Default 600 000 (10 min).
    pub min_duration_ms: i64,
    /// Observations the run must also hold. At least 2. Default 5.
    pub min_events: u32,
}

impl Default for FlatlineParams {
    fn default() -> Self {
        FlatlineParams {
            epsilon: 0.0,
            min_duration_ms: 600_000,
            min_events: 5,
        }
    }
}

impl FlatlineParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        judge::check_non_negative(&mut errors, "epsilon", self.epsilon);
        if self.min_duration_ms < 0 {
            errors.push(ParamError::new(
                "min_duration_ms",
                format!("must be ≥ 0, got {}", self.min_duration_ms),
            ));
        }
        if self.min_events < 2 {
            errors.push(ParamError::new(
                "min_events",
                format!("must be at least 2, got {}", self.min_events),
            ));
        }
        judge::into_result(errors)
    }
}

/// The current run of values within `epsilon` of its anchor.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Run {
    anchor: f64,
    start_ms: i64,
    last_ms: i64,
    events: u64,
}

impl Run {
    fn duration_ms(&self) -> i64 {
        judge::elapsed_ms(self.last_ms, self.start_ms)
    }
}

/// Stuck-sensor detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Flatline {
    params: FlatlineParams,
    run: Option<Run>,
}

impl Flatline {
    /// A detector with no history.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: FlatlineParams) -> Self {
        judge::assert_valid("flatline", params.validate());
        Flatline { params, run: None }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &FlatlineParams {
        &self.params
    }

    /// Duration (ms) and number of observations of the current run.
    pub fn current_run(&self) -> Option<(i64, u64)> {
        self.run.map(|r| (r.duration_ms(), r.events))
    }
}

impl Detector for Flatline {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        let run = match self.run {
            Some(mut r) if (value - r.anchor).abs() <= self.params.epsilon => {
                r.events += 1;
                r.last_ms = r.last_ms.max(ts_ms);
                r
            }
            _ => Run {
                anchor: value,
                start_ms: ts_ms,
                last_ms: ts_ms,
                events: 1,
            },
        };
        self.run = Some(run);
        let duration = run.duration_ms();
        let p = &self.params;
        let stuck = duration >= p.min_duration_ms && run.events >= u64::from(p.min_events);
        let by_time = if p.min_duration_ms == 0 {
            f64::INFINITY
        } else {
            duration as f64 / p.min_duration_ms as f64
        };
        let by_count = run.events as f64 / f64::from(p.min_events);
        judge::consistent(
            Some(duration as f64),
            score_from_ratio(by_time.min(by_count)),
            stuck,
        )
    }

    fn explain(&self, _verdict: &Verdict) -> String {
        match self.run {
            Some(r) => format!(
                "stuck at {} (±{}) for {} over {} values",
                judge::num(r.anchor),
                judge::num(self.params.epsilon),
                judge::human_ms(r.duration_ms()),
                r.events
            ),
            None => String::from("no run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fl(epsilon: f64, min_duration_ms: i64, min_events: u32) -> Flatline {
        Flatline::new(FlatlineParams {
            epsilon,
            min_duration_ms,
            min_events,
        })
    }

    #[test]
    fn constant_input_becomes_stuck_after_duration_and_count() {
        let mut d = fl(0.0, 60_000, 3);
        let v = d.observe(0, 5.0);
        assert_eq!(v.statistic, Some(0.0));
        assert!(!v.is_anomaly);
        assert!(!d.observe(30_000, 5.0).is_anomaly);
        let v = d.observe(60_000, 5.0);
        assert!(v.is_anomaly && v.score > 0.5, "{v:?}");
        assert_eq!(d.explain(&v), "stuck at 5 (±0) for 1 min 0 s over 3 values");
        assert!(d.observe(120_000, 5.0).is_anomaly);
        let v = d.observe(121_000, 5.1);
        assert!(!v.is_anomaly);
        assert_eq!(v.statistic, Some(0.0));
    }

    #[test]
    fn long_duration_with_few_events_is_not_stuck() {
        let mut d = fl(0.0, 1000, 4);
        d.observe(0, 1.0);
        assert!(!d.observe(1_000_000, 1.0).is_anomaly);
        assert!(!d.observe(2_000_000, 1.0).is_anomaly);
        assert!(d.observe(2_000_001, 1.0).is_anomaly);
    }

    #[test]
    fn epsilon_is_measured_from_the_anchor() {
        let mut d = fl(0.5, 0, 2);
        d.observe(0, 10.0);
        assert!(d.observe(1, 10.4).is_anomaly);
        assert!(d.observe(2, 9.6).is_anomaly);
        assert!(!d.observe(3, 10.6).is_anomaly); // new run anchored at 10.6
        assert_eq!(d.current_run(), Some((0, 1)));
    }

    #[test]
    fn out_of_order_and_nan_do_not_break_or_shorten_a_run() {
        let mut d = fl(0.0, 100, 3);
        d.observe(1000, 2.0);
        d.observe(1200, 2.0);
        assert_eq!(d.observe(1100, f64::NAN), NO_VERDICT);
        let v = d.observe(900, 2.0);
        assert_eq!(v.statistic, Some(200.0));
        assert!(v.is_anomaly);
        d.observe(i64::MIN, 3.0);
        let v = d.observe(i64::MAX, 3.0);
        assert_eq!(v.statistic, Some(i64::MAX as f64));
    }

    /// Naive reference: re-segment the whole history from the start for every event.
    fn naive(hist: &[(i64, f64)], epsilon: f64) -> (i64, u64) {
        let mut start = 0;
        for i in 1..hist.len() {
            if (hist[i].1 - hist[start].1).abs() > epsilon {
                start = i;
            }
        }
        let run = &hist[start..];
        let latest = run.iter().map(|e| e.0).max().unwrap_or(hist[start].0);
        (latest - hist[start].0, run.len() as u64)
    }

    proptest! {
        #[test]
        fn matches_naive_reference(
            epsilon in prop_oneof![Just(0.0), 0.0f64..2.0],
            min_duration_ms in 0i64..5000,
            min_events in 2u32..8,
            events in prop::collection::vec(
                (-200i64..1000, prop_oneof![4 => (0i32..3).prop_map(f64::from), 2 => 0.0f64..3.0, 1 => Just(f64::NAN)]),
                1..200),
        ) {
            let mut d = fl(epsilon, min_duration_ms, min_events);
            let mut hist = Vec::new();
            for (ts, v) in crate::judge::timed(&events) {
                let got = d.observe(ts, v);
                if !crate::judge::check_verdict(&got, !v.is_nan())? {
                    continue;
                }
                hist.push((ts, v));
                let (dur, n) = naive(&hist, epsilon);
                prop_assert_eq!(got.statistic, Some(dur as f64));
                prop_assert_eq!(got.is_anomaly, dur >= min_duration_ms && n >= u64::from(min_events));
            }
        }

        #[test]
        fn never_panics(events in prop::collection::vec((any::<i64>(), any::<f64>()), 0..100)) {
            let mut d = fl(1.0, 10, 2);
            for &(t, v) in &events {
                let got = d.observe(t, v);
                crate::judge::check_consistent(&got)?;
                if got.is_anomaly {
                    let _ = d.explain(&got);
                }
            }
        }
    }
}
