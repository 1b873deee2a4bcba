//! `mad` transform: per-sensor rolling median and median absolute deviation.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Mad, MadParams};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};

detector_config! {
    /// Per-sensor robust z-score: distance from the rolling median in units of the median
    /// absolute deviation (MAD), which the outliers it hunts do not inflate.
    ///
    /// Statistic `0.6745·(x − median)/MAD` over the sensor's previous `window` values
    /// (Iglewicz–Hoaglin); no verdict while MAD is 0. Adds `robust_z`, `anomaly_score`,
    /// `is_anomaly`, `detector` ("mad") and `reason`. State per sensor: the window kept
    /// sorted; O(log n) to find median and MAD per event.
    pub struct MadConfig as "mad" {
        /// Number of previous values of the same sensor.
        #[schemars(range(min = 3, max = 16777216))]
        pub window: usize = 100,
        /// |robust z| above which a value is an anomaly.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub threshold: f64 = 3.5,
    }
}

impl MadConfig {
    fn params(&self) -> MadParams {
        MadParams {
            window: self.window,
            threshold: self.threshold,
        }
    }
}

impl DetectorSpec for MadConfig {
    type State = Mad;

    /// The window full: 16 bytes a value kept as a sorted array, 32 in the tree used
    /// above 16,384 values.
    fn bytes_per_key(&self) -> u64 {
        let per_value = if self.window <= 16_384 { 16 } else { 32 };
        per_value * self.window as u64 + std::mem::size_of::<Mad>() as u64
    }
    const NAME: &'static str = "mad";
    const STATISTIC: &'static str = "robust_z";

    fn restore_state(&self, state: ciborium::Value) -> Result<Mad, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> Mad {
        Mad::new(self.params())
    }
}
