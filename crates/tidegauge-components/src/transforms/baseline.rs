//! `baseline` transform: per-sensor deviation of a smoothed value from a reference learnt
//! during a warm-up, with a threshold each sensor calibrates for itself.

use tidegauge_core::{ComponentError, ConfigError};
use tidegauge_detect::{Baseline, BaselineParams};

use super::KeyInterner;
use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors_renamed};
use super::state::{decode_keyed_learnt, encode_keyed};

detector_config! {
    /// Per-sensor reference with a self-calibrated threshold: learns each sensor's normal
    /// level and spread over its first `warmup` values, then flags every value whose
    /// exponentially smoothed level lies further from it than the sensor's own threshold.
    ///
    /// For sustained shifts (a valve closing, a leak, a pump cavitating), which a rolling
    /// window learns within its length and stops flagging. The threshold is learnt per
    /// sensor from the second half of its warm-up: an exponential tail fitted to how far the
    /// smoothed level strayed from the reference learnt so far, cut where it predicts
    /// `target_alarm_rate` of normal values above it, and never below `threshold`. After the
    /// warm-up the reference adapts slowly (`adapt_half_life`), so a lasting change becomes
    /// the new normal instead of being flagged for ever. Defaults need no tuning per sensor
    /// (see `docs/detectors.md` for how they were chosen). Adds `z`, `anomaly_score`,
    /// `is_anomaly`, `detector` ("baseline") and `reason`. State per sensor: 152 bytes (plus
    /// 4 bytes per value of the warm-up's second half while it lasts), O(1) per event.
    pub struct BaselineConfig as "baseline" {
        /// Values that learn the reference (longer while they are all equal); the second
        /// half of them also learns the threshold.
        #[schemars(range(min = 2, max = 1000000))]
        pub warmup: u32 = BaselineParams::default().warmup,
        /// Half-life of the smoothing, in values.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub half_life_events: f64 = BaselineParams::default().half_life,
        /// Lowest |z| of the smoothed value that is an anomaly (the threshold itself when
        /// `target_alarm_rate` is 0).
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub threshold: f64 = BaselineParams::default().threshold,
        /// Share of normal values each sensor's learnt threshold aims to flag; 0 turns the
        /// self-calibration off (every sensor then uses `threshold`).
        #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
        pub target_alarm_rate: f64 = BaselineParams::default().target_alarm_rate,
        /// Half-life, in values, of the reference's slow adaptation after the warm-up;
        /// 0 holds it for ever.
        #[schemars(range(min = 0.0))]
        pub adapt_half_life: f64 = BaselineParams::default().adapt_half_life,
    }
}

impl BaselineConfig {
    fn params(&self) -> BaselineParams {
        BaselineParams {
            warmup: self.warmup,
            half_life: self.half_life_events,
            threshold: self.threshold,
            target_alarm_rate: self.target_alarm_rate,
            adapt_half_life: self.adapt_half_life,
        }
    }
}

impl DetectorSpec for BaselineConfig {
    type State = Baseline;

    /// The state, and during the warm-up 4 bytes per value of its second half (with a
    /// growing vector's slack).
    fn bytes_per_key(&self) -> u64 {
        4 * u64::from(self.warmup) + std::mem::size_of::<Baseline>() as u64
    }
    const NAME: &'static str = "baseline";
    const STATISTIC: &'static str = "z";

    fn restore_state(&self, state: ciborium::Value) -> Result<Baseline, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors_renamed(self.params().validate(), "half_life", "half_life_events")
    }

    fn new_state(&self) -> Baseline {
        Baseline::new(self.params())
    }

    fn save_states(
        &self,
        keys: &KeyInterner,
        states: &[Baseline],
    ) -> Option<Result<Vec<u8>, ComponentError>> {
        Some(encode_keyed(keys, states))
    }

    /// A checkpoint taken with other parameters (the file changed since) cannot continue:
    /// the reference and threshold were learnt under them. It is refused, and the
    /// detector starts cold.
    fn load_states(&self, bytes: &[u8]) -> Result<(KeyInterner, Vec<Baseline>), ComponentError> {
        decode_keyed_learnt(bytes, "baseline", &self.params(), Baseline::params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegauge_detect::Detector;

    #[test]
    fn states_survive_a_checkpoint() {
        let config = BaselineConfig {
            warmup: 20,
            ..BaselineConfig::default()
        };
        let (keys, mut states) =
            crate::transforms::state::two_trained_sensors(|| config.new_state(), 50);
        let bytes = config.save_states(&keys, &states).unwrap().unwrap();
        let (keys2, mut restored) = config.load_states(&bytes).unwrap();
        assert_eq!(keys2.len(), 2);
        for (a, b) in states.iter_mut().zip(&mut restored) {
            assert_eq!(a.threshold(), b.threshold());
            assert_eq!(a.observe(60, 3.0), b.observe(60, 3.0));
        }
        let other = BaselineConfig {
            warmup: 21,
            ..config
        };
        assert!(other.load_states(&bytes).is_err());
    }
}
