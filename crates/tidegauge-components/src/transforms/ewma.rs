//! `ewma` transform: per-sensor exponentially weighted mean and variance.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Ewma, EwmaParams, HalfLife};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors_renamed};

detector_config! {
    /// Per-sensor exponentially weighted moving average: flags a value more than
    /// `threshold` weighted standard deviations from the sensor's weighted mean.
    ///
    /// Recent values weigh more; old ones fade with a half-life counted in events
    /// (`half_life_events`) or in event time (`half_life_ms`, which copes with irregular
    /// sampling). Adds `z`, `anomaly_score`, `is_anomaly`, `detector` ("ewma") and
    /// `reason`. State per sensor: a few numbers, O(1) per event.
    pub struct EwmaConfig as "ewma" {
        /// Half-life in events: after this many values a value weighs half as much.
        /// Used unless `half_life_ms` is set.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub half_life_events: f64 = 30.0,
        /// Half-life in milliseconds of event time; when set, replaces `half_life_events`.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub half_life_ms: Option<f64> = None,
        /// |z| above which a value is an anomaly.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub threshold: f64 = 3.0,
        /// Values to learn from before judging.
        #[schemars(range(min = 2))]
        pub min_events: u32 = 30,
    }
}

impl EwmaConfig {
    fn params(&self) -> EwmaParams {
        EwmaParams {
            half_life: match self.half_life_ms {
                Some(ms) => HalfLife::Millis(ms),
                None => HalfLife::Events(self.half_life_events),
            },
            threshold: self.threshold,
            min_events: self.min_events,
        }
    }
}

impl DetectorSpec for EwmaConfig {
    type State = Ewma;
    const NAME: &'static str = "ewma";
    const STATISTIC: &'static str = "z";

    fn restore_state(&self, state: ciborium::Value) -> Result<Ewma, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        let setting = if self.half_life_ms.is_some() {
            "half_life_ms"
        } else {
            "half_life_events"
        };
        param_errors_renamed(self.params().validate(), "half_life", setting)
    }

    fn new_state(&self) -> Ewma {
        Ewma::new(self.params())
    }
}
