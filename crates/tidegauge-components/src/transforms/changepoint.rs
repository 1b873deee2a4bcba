//! `changepoint` transform: level and spread shifts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::ConfigError;
use tidegauge_detect::{ChangePoint, ChangePointMethod, ChangePointParams};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};

/// The change-point test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Two-sided CUSUM against a baseline learnt at the start and after each change.
    #[default]
    Cusum,
    /// Page–Hinkley test against the running mean of the current segment.
    PageHinkley,
}

detector_config! {
    /// Change points: flags the value at which a sensor's level (or, with CUSUM, its
    /// spread) has shifted, by accumulating deviations from a baseline until they cross
    /// `h` standard deviations.
    ///
    /// After a change the baseline is learnt again (`min_events` values). Adds `cusum`
    /// (the signed cumulative sum in standard deviations), `anomaly_score`, `is_anomaly`,
    /// `detector` ("changepoint") and `reason`. O(1) per event.
    pub struct ChangePointConfig as "changepoint" {
        /// The test to run.
        pub method: Method = Method::Cusum,
        /// Slack in standard deviations: shifts smaller than about 2k are ignored.
        #[schemars(range(min = 0.0))]
        pub k: f64 = 0.5,
        /// Decision threshold in standard deviations.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub h: f64 = 5.0,
        /// Values that learn the baseline, at the start and after each change.
        #[schemars(range(min = 2))]
        pub min_events: u32 = 30,
        /// CUSUM only: also watch the spread (variance).
        pub spread: bool = true,
    }
}

impl ChangePointConfig {
    fn params(&self) -> ChangePointParams {
        ChangePointParams {
            method: match self.method {
                Method::Cusum => ChangePointMethod::Cusum,
                Method::PageHinkley => ChangePointMethod::PageHinkley,
            },
            k: self.k,
            h: self.h,
            min_events: self.min_events,
            spread: self.spread,
        }
    }
}

impl DetectorSpec for ChangePointConfig {
    type State = ChangePoint;
    const NAME: &'static str = "changepoint";
    const STATISTIC: &'static str = "cusum";

    fn restore_state(&self, state: ciborium::Value) -> Result<ChangePoint, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> ChangePoint {
        ChangePoint::new(self.params())
    }
}
