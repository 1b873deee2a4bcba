//! `flatline` transform: stuck sensors.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Flatline, FlatlineParams};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};

detector_config! {
    /// Stuck sensor: flags values while a sensor has not moved by more than `epsilon` for
    /// at least `min_duration_ms` of event time (and `min_events` readings).
    ///
    /// Adds `stuck_ms` (how long the value has stayed put), `anomaly_score`, `is_anomaly`,
    /// `detector` ("flatline") and `reason`. Needs `ts_field`. State per sensor: the start
    /// of the current run.
    pub struct FlatlineConfig as "flatline" {
        /// Largest move that still counts as "no change", in the value's units.
        #[schemars(range(min = 0.0))]
        pub epsilon: f64 = 0.0,
        /// How long the value must stay put to be called stuck, in milliseconds.
        #[schemars(range(min = 0))]
        pub min_duration_ms: i64 = 600_000,
        /// Readings the run must also hold.
        #[schemars(range(min = 2))]
        pub min_events: u32 = 5,
    }
}

impl FlatlineConfig {
    fn params(&self) -> FlatlineParams {
        FlatlineParams {
            epsilon: self.epsilon,
            min_duration_ms: self.min_duration_ms,
            min_events: self.min_events,
        }
    }
}

impl DetectorSpec for FlatlineConfig {
    type State = Flatline;
    const NAME: &'static str = "flatline";
    const STATISTIC: &'static str = "stuck_ms";

    fn restore_state(&self, state: ciborium::Value) -> Result<Flatline, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        true
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> Flatline {
        Flatline::new(self.params())
    }
}
