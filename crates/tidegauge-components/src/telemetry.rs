//! The metrics components keep besides those every component has, declared here with
//! their exposition names and help text (core renders whatever a component declares),
//! and the internal events that move them (besides core's `MetricAdded` and `MetricSet`).

use tidegauge_core::telemetry::{ComponentTelemetry, InternalEvent, MetricDesc};

/// One `pub static` [`MetricDesc`] a line: doc, name, kind, exposition name, help.
macro_rules! metrics {
    ($($(#[$doc:meta])* $id:ident: $kind:ident $name:literal, $help:literal;)*) => {
        $($(#[$doc])* pub static $id: MetricDesc = MetricDesc::$kind($name, $help);)*
    };
}

metrics! {
    /// Keys holding state in a keyed stage.
    KEYS: gauge "tidegauge_component_keys", "Distinct keys (sensors) holding state in a keyed stage.";
    /// Keys evicted to make room under the key cap.
    KEYS_EVICTED: counter "tidegauge_component_keys_evicted_total", "Keys whose state was dropped after their idle time to make room under max_keys.";
    /// Events of new keys refused under the key cap.
    EVENTS_WITHOUT_STATE: counter "tidegauge_component_events_without_state_total", "Events of new keys that got no verdict: max_keys reached and no key idle long enough.";
    /// Late readings of a window.
    STALE_READINGS: counter "tidegauge_component_stale_readings_total", "Readings that arrived, or failed to arrive, later than allowed.";
    /// Last good readings a polled source re-emitted.
    STALE_EVENTS: counter "tidegauge_component_stale_events_total", "Last good readings re-emitted, flagged stale, for failing endpoints (polled sources).";
    /// Polls that gave no usable reading.
    MISSING_READINGS: counter "tidegauge_component_missing_readings_total", "Polls whose endpoint had neither a fresh nor a recent enough reading.";
}

/// How far a window's event-time watermark trails the wall clock (kept in ms).
pub static WATERMARK_LAG: MetricDesc = MetricDesc::gauge(
    "tidegauge_component_watermark_lag_seconds",
    "How far the component's event-time watermark trails the wall clock.",
)
.stored_in(1000);

/// What every keyed stage (keyed detectors, windows, heartbeat, hotelling) declares.
pub const KEY_METRICS: &[&MetricDesc] = &[&KEYS, &KEYS_EVICTED, &EVENTS_WITHOUT_STATE];
/// What a window declares.
pub const WINDOW_METRICS: &[&MetricDesc] = &[
    &KEYS,
    &KEYS_EVICTED,
    &EVENTS_WITHOUT_STATE,
    &STALE_READINGS,
    &WATERMARK_LAG,
];
/// What a polled source declares.
pub const POLL_METRICS: &[&MetricDesc] = &[&STALE_EVENTS, &MISSING_READINGS];

/// A keyed stage's key table after a batch: how many keys hold state, and what the key
/// cap did (warns, at most once a second, when it evicts or refuses).
pub struct KeysTracked {
    /// Keys holding state now.
    pub keys: u64,
    /// Keys evicted during the batch (idle longer than allowed, to make room).
    pub evicted: u64,
    /// Events of new keys that got no state during the batch.
    pub refused: u64,
    /// The cap.
    pub max_keys: u64,
}

impl InternalEvent for KeysTracked {
    fn emit(self, t: &ComponentTelemetry) {
        t.metric(&KEYS).set(self.keys);
        if self.evicted == 0 && self.refused == 0 {
            return;
        }
        t.metric(&KEYS_EVICTED).add(self.evicted);
        t.metric(&EVENTS_WITHOUT_STATE).add(self.refused);
        if let Some(suppressed) = t.log_allowed() {
            tracing::warn!(
                component_id = %t.id,
                keys = self.keys,
                max_keys = self.max_keys,
                evicted = self.evicted,
                events_without_state = self.refused,
                suppressed,
                "key limit reached: {} idle key(s) evicted, {} event(s) of new keys got no verdict (max_keys = {})",
                self.evicted,
                self.refused,
                self.max_keys
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegauge_core::ComponentKind;

    #[test]
    fn the_key_cap_moves_the_declared_counters() {
        let t = ComponentTelemetry::new("z", ComponentKind::Transform, "zscore");
        t.declare(KEY_METRICS);
        t.emit(KeysTracked {
            keys: 3,
            evicted: 1,
            refused: 2,
            max_keys: 3,
        });
        let s = t.snapshot();
        assert_eq!(s.metric(KEYS.name), Some(3));
        assert_eq!(s.metric(KEYS_EVICTED.name), Some(1));
        assert_eq!(s.metric(EVENTS_WITHOUT_STATE.name), Some(2));
        assert_eq!(s.metric(STALE_EVENTS.name), None);
    }
}
