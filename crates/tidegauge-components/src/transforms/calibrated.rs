//! `calibrated` transform: any registered detector, its scores turned into tail
//! probabilities under each sensor's own history, so one threshold serves a fleet.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Calibrated, CalibrationParams};

use super::detector::{BoxedDetector, DetectorFactory, detector_config};
use super::ensemble::Member;
use super::spec::{DetectorSpec, param_errors_renamed};
use super::state::deserialize_state;

detector_config! {
    /// Any detector with calibrated scores: each value's statistic (the wrapped detector's
    /// z, robust z, rate, ...) is judged by how rare its magnitude is in that sensor's own
    /// history, a decayed log-scale histogram with a half-life of `history_half_life`
    /// values. `anomaly_score = 1 − p^k` with `p` that tail probability and
    /// `k = ln 2 / ln(1/target_alarm_rate)`: 0.5 when `p` equals the target rate, 0.75 at
    /// its square; an anomaly when `p < target_alarm_rate`. The same score is the same
    /// rarity on every sensor, whatever its scale, noise or resolution, so one threshold
    /// (`anomaly_score > 0.75`, say) serves a fleet; the wrapped detector's own threshold
    /// no longer matters. Example: `detector = { type = "zscore", window = 50 }`.
    /// Adds `statistic` (the wrapped detector's), `anomaly_score`, `is_anomaly`, `detector`
    /// ("calibrated") and `reason`. Per sensor: the wrapped state plus 296 bytes, about
    /// 60 ns per event more.
    pub struct CalibratedConfig as "calibrated" {
        /// The detector whose statistic is calibrated: a table with `type` and its settings.
        pub detector: Option<Member> = None,
        /// Share of a stationary sensor's values flagged as anomalies (above 0, below 0.5).
        #[schemars(range(min = 0.0, max = 0.5))]
        pub target_alarm_rate: f64 = CalibrationParams::default().target_alarm_rate,
        /// Half-life of each sensor's history of magnitudes, in values (at least 10).
        #[schemars(range(min = 10.0))]
        pub history_half_life: f64 = CalibrationParams::default().half_life,
        /// Values a sensor's history needs before its verdicts count.
        #[schemars(range(min = 1))]
        pub min_events: u32 = CalibrationParams::default().min_events,
    }
}

impl CalibratedConfig {
    fn params(&self) -> CalibrationParams {
        CalibrationParams {
            target_alarm_rate: self.target_alarm_rate,
            half_life: self.history_half_life,
            min_events: self.min_events,
        }
    }
}

impl DetectorSpec for CalibratedConfig {
    type State = Calibrated<BoxedDetector>;

    /// The calibration's histogram and the wrapped detector's state.
    fn bytes_per_key(&self) -> u64 {
        std::mem::size_of::<Self::State>() as u64
            + self
                .detector
                .as_ref()
                .map_or(0, |d| d.factory().bytes_per_key())
    }
    const NAME: &'static str = "calibrated";
    const STATISTIC: &'static str = "statistic";

    /// The calibration as saved, around the wrapped detector's state restored by its own
    /// factory.
    fn restore_state(&self, state: ciborium::Value) -> Result<Self::State, String> {
        let Some(detector) = &self.detector else {
            return Err("no detector to restore".into());
        };
        let saved: Calibrated<ciborium::Value> = deserialize_state(state)?;
        saved.try_map_inner(|inner| detector.factory().restore_state(inner))
    }

    fn needs_time(&self) -> bool {
        self.detector
            .as_ref()
            .is_some_and(|d| d.factory().needs_time())
    }

    fn check(&self) -> Vec<ConfigError> {
        let mut errors =
            param_errors_renamed(self.params().validate(), "half_life", "history_half_life");
        match &self.detector {
            None => errors.push(ConfigError::new(
                "detector",
                "name the detector to calibrate, e.g. `detector = { type = \"zscore\" }`",
            )),
            Some(d) => {
                if d.factory().sets_common() {
                    errors.push(ConfigError::new(
                        "detector",
                        "key_field, value_field, ts_field, workers, max_keys and key_idle_ms belong to `calibrated`, not to its detector",
                    ));
                }
                errors.extend(
                    d.factory()
                        .check()
                        .into_iter()
                        .map(|e| e.prefixed("detector")),
                );
            }
        }
        errors
    }

    fn new_state(&self) -> Calibrated<BoxedDetector> {
        let inner = match &self.detector {
            Some(d) => d.factory().new_state(),
            // `check` refuses a config without one; a zscore with defaults keeps this total.
            None => DetectorFactory::new_state(&super::zscore::ZScoreConfig::default()),
        };
        Calibrated::new(inner, self.params())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegauge_detect::Detector;

    fn config(toml_text: &str) -> CalibratedConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn wraps_any_registered_detector() {
        let c = config(
            "detector = { type = \"zscore\", window = 20 }\nmin_events = 50\ntarget_alarm_rate = 0.01",
        );
        assert!(
            DetectorSpec::check(&c).is_empty(),
            "{:?}",
            DetectorSpec::check(&c)
        );
        let mut s = DetectorSpec::new_state(&c);
        let mut flagged = 0;
        for i in 0..5000i64 {
            // Triangle wave plus a deterministic wobble.
            let v = 1000.0 + ((i * 7919) % 23) as f64 + (i % 50) as f64;
            flagged += u32::from(s.observe(i, v).is_anomaly);
        }
        // A stationary sensor: about the target share flagged, not none, not many.
        assert!((10..200).contains(&flagged), "{flagged}");
        let v = s.observe(5000, 1e6);
        assert!(v.is_anomaly && v.score > 0.9, "{v:?}");
        assert!(s.explain(&v).contains("tail probability"));
    }

    #[test]
    fn errors_name_their_place() {
        let c = config("");
        assert_eq!(DetectorSpec::check(&c)[0].path, "detector");
        let c = config("detector = { type = \"zscore\", window = 1 }\ntarget_alarm_rate = 0.7");
        let paths: Vec<String> = DetectorSpec::check(&c)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(
            paths.contains(&"target_alarm_rate".to_string()),
            "{paths:?}"
        );
        assert!(paths.contains(&"detector.window".to_string()), "{paths:?}");
        let c = config("detector = { type = \"zscore\", key_field = \"k\" }");
        assert_eq!(DetectorSpec::check(&c)[0].path, "detector");
    }

    /// A restart continues where the checkpoint stood: the calibration's history and the
    /// wrapped detector's state come back; a checkpoint of other settings starts cold.
    #[test]
    fn state_survives_a_restart() {
        use crate::transforms::KeyInterner;
        let c = config("detector = { type = \"ewma\" }\nmin_events = 100");
        let mut keys = KeyInterner::default();
        let mut states = Vec::new();
        for (k, scale) in [("a", 1.0), ("b", 1e6)] {
            keys.id(k);
            let mut s = DetectorSpec::new_state(&c);
            for i in 0..2000i64 {
                s.observe(i, scale * ((i * 7919) % 31) as f64);
            }
            states.push(s);
        }
        let bytes = c.save_states(&keys, &states).unwrap().unwrap();
        let (keys2, mut restored) = c.load_states(&bytes).unwrap();
        assert_eq!(keys2.len(), 2);
        for ((a, b), scale) in states.iter_mut().zip(&mut restored).zip([1.0, 1e6]) {
            assert_eq!(a.model(), b.model());
            for i in 2000..2100i64 {
                let v = scale * ((i * 7919) % 37) as f64;
                assert_eq!(a.observe(i, v), b.observe(i, v));
            }
        }
        let other = config("detector = { type = \"ewma\", threshold = 4 }\nmin_events = 100");
        let (keys3, cold) = other.load_states(&bytes).unwrap();
        assert_eq!((keys3.len(), cold.len()), (0, 0));
        // Only where state lives changed: still restored.
        let moved = config("detector = { type = \"ewma\" }\nmin_events = 100\nworkers = 2");
        assert_eq!(moved.load_states(&bytes).unwrap().1.len(), 2);
        assert!(c.load_states(&bytes[..bytes.len() - 3]).is_err());
    }
}
