//! `threshold` transform: static bounds with hysteresis.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Threshold, ThresholdParams};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};

detector_config! {
    /// Static bounds: a value below `low` or above `high` is an anomaly; the alarm ends only
    /// once the value is back inside by `hysteresis`, so a value hovering at a bound does
    /// not flap.
    ///
    /// Adds `excess` (signed distance past the active bound), `anomaly_score` (0.5 at the
    /// bound, logistic in `excess/scale`), `is_anomaly`, `detector` ("threshold") and
    /// `reason`. Set at least one of `low` and `high`.
    pub struct ThresholdConfig as "threshold" {
        /// Values below this are anomalous.
        pub low: Option<f64> = None,
        /// Values above this are anomalous.
        #[schemars(example = 90.0)]
        pub high: Option<f64> = None,
        /// How far back inside the bounds a value must come to end an alarm.
        #[schemars(range(min = 0.0))]
        pub hysteresis: f64 = 0.0,
        /// Distance past a bound at which the score reaches 0.73.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub scale: f64 = 1.0,
    }
}

impl ThresholdConfig {
    fn params(&self) -> ThresholdParams {
        ThresholdParams {
            low: self.low,
            high: self.high,
            hysteresis: self.hysteresis,
            scale: self.scale,
        }
    }
}

impl DetectorSpec for ThresholdConfig {
    type State = Threshold;
    const NAME: &'static str = "threshold";
    const STATISTIC: &'static str = "excess";

    fn restore_state(&self, state: ciborium::Value) -> Result<Threshold, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> Threshold {
        Threshold::new(self.params())
    }
}
