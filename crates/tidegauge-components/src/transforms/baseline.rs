//! `baseline` transform: per-sensor deviation of a smoothed value from a reference learnt
//! during a warm-up and then held.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Baseline, BaselineParams};

use super::detector::detector_config;
use super::keyed::{DetectorSpec, param_errors};

detector_config! {
    /// Per-sensor held reference: learns each sensor's normal level and spread over its
    /// first `warmup` values, then flags every value whose exponentially smoothed level
    /// lies more than `threshold` reference standard deviations from it.
    ///
    /// For sustained shifts (a valve closing, a leak, a pump cavitating), which a rolling
    /// window learns within its length and stops flagging: the reference is never updated
    /// after the warm-up, so a shift is flagged for as long as it lasts. The spread is
    /// that of the smoothed warm-up values, so the threshold is in units of how much the
    /// sensor's smoothed level moved while it was normal. The default threshold comes from
    /// the SKAB training rows (see the SKAB section of the documentation); calibrate it on
    /// normal data of your own sensors. Adds `z`, `anomaly_score`, `is_anomaly`, `detector`
    /// ("baseline") and `reason`. State per sensor: 96 bytes, O(1) per event.
    pub struct BaselineConfig as "baseline" {
        /// Values that learn the reference (longer while they are all equal).
        #[schemars(range(min = 2))]
        pub warmup: u32 = BaselineParams::default().warmup,
        /// Half-life of the smoothing, in values.
        #[schemars(range(min = 0.0))]
        pub half_life_events: f64 = BaselineParams::default().half_life,
        /// |z| of the smoothed value above which a value is an anomaly.
        #[schemars(range(min = 0.0))]
        pub threshold: f64 = BaselineParams::default().threshold,
    }
}

impl BaselineConfig {
    fn params(&self) -> BaselineParams {
        BaselineParams {
            warmup: self.warmup,
            half_life: self.half_life_events,
            threshold: self.threshold,
        }
    }
}

impl DetectorSpec for BaselineConfig {
    type State = Baseline;
    const NAME: &'static str = "baseline";
    const STATISTIC: &'static str = "z";

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
            .into_iter()
            .map(|mut e| {
                if e.path == "half_life" {
                    e.path = "half_life_events".into();
                }
                e
            })
            .collect()
    }

    fn new_state(&self) -> Baseline {
        Baseline::new(self.params())
    }
}
