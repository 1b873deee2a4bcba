//! `relative_entropy` transform: per-sensor G-test of the recent window's histogram
//! against the states the sensor is known to have.

use tidegauge_core::{ComponentError, ConfigError};
use tidegauge_detect::{RelativeEntropy, RelativeEntropyParams};

use super::KeyInterner;
use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};
use super::state::{decode_keyed_learnt, encode_keyed};

detector_config! {
    /// Per-sensor relative entropy over histograms (Wang et al., IM 2011): is the shape of
    /// the last `window` values one of the states this sensor is known to have?
    ///
    /// The first `warmup` values fix `bins` bins of equal probability (no scale to tune).
    /// Every `window` values, the block's histogram joins the closest known state if the
    /// G-test (twice the window times the relative entropy) does not reject it, or becomes
    /// a new state; the critical value is learnt per sensor from its warm-up to flag about
    /// `target_alarm_rate` of its normal windows (never below the chi-square value). Each value is judged by the G-test of
    /// the window ending at it against the closest state seen in `min_support` blocks or
    /// more: an anomaly above the chi-square critical value. Finds level shifts, changes of
    /// spread or shape and stuck values; a state that keeps coming back becomes normal.
    /// Not for single spikes (one value moves one count). Adds `g`, `anomaly_score`,
    /// `is_anomaly`, `detector` ("relative_entropy") and `reason`. State per sensor: under
    /// 2 kB with the defaults (8 bytes per warm-up value while it lasts), O(bins ×
    /// hypotheses) per event.
    pub struct RelativeEntropyConfig as "relative_entropy" {
        /// Values per window, and per block a state learns from.
        #[schemars(range(min = 4, max = 100000))]
        pub window: u32 = RelativeEntropyParams::default().window,
        /// Bins of equal probability over the warm-up.
        #[schemars(range(min = 2, max = 64))]
        pub bins: u32 = RelativeEntropyParams::default().bins,
        /// Values that fix the bins (at least `window`; longer while they are all equal).
        #[schemars(range(min = 4, max = 1000000))]
        pub warmup: u32 = RelativeEntropyParams::default().warmup,
        /// Share of normal windows the learnt critical value aims to flag (and the
        /// significance of its chi-square floor).
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        #[schemars(extend("exclusiveMaximum" = 0.5))]
        pub target_alarm_rate: f64 = RelativeEntropyParams::default().target_alarm_rate,
        /// Most states kept per sensor (the least seen makes room for a new one).
        #[schemars(range(min = 1, max = 64))]
        pub hypotheses: u32 = RelativeEntropyParams::default().hypotheses,
        /// Blocks a state must have been seen in before windows like it are normal.
        #[schemars(range(min = 1))]
        pub min_support: u32 = RelativeEntropyParams::default().min_support,
    }
}

impl RelativeEntropyConfig {
    fn params(&self) -> RelativeEntropyParams {
        RelativeEntropyParams {
            window: self.window,
            bins: self.bins,
            warmup: self.warmup,
            target_alarm_rate: self.target_alarm_rate,
            hypotheses: self.hypotheses,
            min_support: self.min_support,
        }
    }
}

impl DetectorSpec for RelativeEntropyConfig {
    type State = RelativeEntropy;

    /// The warm-up's values (8 bytes each, with a growing vector's slack: twice, and their
    /// sorted copy and 4 bytes of statistic each while it ends), or once
    /// it is over the window's ring, the counts and the states' histograms.
    fn bytes_per_key(&self) -> u64 {
        let bins = u64::from(self.bins.clamp(2, 64));
        let warm = 20 * u64::from(self.warmup);
        let judged = u64::from(self.window)
            + 4 * bins
            + u64::from(self.hypotheses) * (16 * bins + 64)
            + 8 * bins;
        warm.max(judged) + std::mem::size_of::<RelativeEntropy>() as u64
    }
    const NAME: &'static str = "relative_entropy";
    const STATISTIC: &'static str = "g";

    fn restore_state(&self, state: ciborium::Value) -> Result<RelativeEntropy, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> RelativeEntropy {
        RelativeEntropy::new(self.params())
    }

    fn save_states(
        &self,
        keys: &KeyInterner,
        states: &[RelativeEntropy],
    ) -> Option<Result<Vec<u8>, ComponentError>> {
        Some(encode_keyed(keys, states))
    }

    /// A checkpoint taken with other parameters cannot continue: the bins and states were
    /// learnt under them. It is refused, and the detector starts cold.
    fn load_states(
        &self,
        bytes: &[u8],
    ) -> Result<(KeyInterner, Vec<RelativeEntropy>), ComponentError> {
        decode_keyed_learnt(
            bytes,
            "relative_entropy",
            &self.params(),
            RelativeEntropy::params,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegauge_detect::Detector;

    #[test]
    fn states_survive_a_checkpoint() {
        let config = RelativeEntropyConfig {
            window: 10,
            warmup: 40,
            ..RelativeEntropyConfig::default()
        };
        let (keys, mut states) =
            crate::transforms::state::two_trained_sensors(|| config.new_state(), 95);
        let bytes = config.save_states(&keys, &states).unwrap().unwrap();
        let (keys2, mut restored) = config.load_states(&bytes).unwrap();
        assert_eq!(keys2.len(), 2);
        for (a, b) in states.iter_mut().zip(&mut restored) {
            assert_eq!(a.supports(), b.supports());
            for i in 95..130 {
                let v = if i > 110 { 3.0 } else { (i % 7) as f64 };
                assert_eq!(a.observe(i, v), b.observe(i, v));
            }
        }
        let other = RelativeEntropyConfig { bins: 6, ..config };
        assert!(other.load_states(&bytes).is_err());
    }
}
