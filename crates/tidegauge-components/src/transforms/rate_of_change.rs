//! `rate_of_change` transform: values that move too fast.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Rate, RateParams};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};

detector_config! {
    /// Rate of change: flags a value whose change from the sensor's previous value,
    /// per second of event time, exceeds `max_rate_per_sec` in either direction.
    ///
    /// Adds `rate` (units per second), `anomaly_score`, `is_anomaly`, `detector`
    /// ("rate_of_change") and `reason`. Needs `ts_field`. State per sensor: the previous
    /// value and time.
    pub struct RateOfChangeConfig as "rate_of_change" {
        /// Largest normal change per second, in the value's units. Required.
        #[schemars(extend("exclusiveMinimum" = 0.0), example = 10.0)]
        pub max_rate_per_sec: Option<f64> = None,
    }
}

impl RateOfChangeConfig {
    fn params(&self) -> RateParams {
        RateParams {
            max_rate_per_sec: self.max_rate_per_sec.unwrap_or(f64::NAN),
        }
    }
}

impl DetectorSpec for RateOfChangeConfig {
    type State = Rate;
    const NAME: &'static str = "rate_of_change";
    const STATISTIC: &'static str = "rate";

    fn restore_state(&self, state: ciborium::Value) -> Result<Rate, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        true
    }

    fn check(&self) -> Vec<ConfigError> {
        if self.max_rate_per_sec.is_none() {
            return vec![ConfigError::new(
                "max_rate_per_sec",
                "required: the largest normal change per second, in the value's units",
            )];
        }
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> Rate {
        Rate::new(self.params())
    }
}
