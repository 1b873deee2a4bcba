//! `zscore` transform: per-sensor rolling z-score.

use tidegauge_core::{ComponentError, ConfigError};
use tidegauge_detect::{ZScore, ZScoreParams};

use super::KeyInterner;
use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};
use super::state::{decode_keyed, encode_keyed};

detector_config! {
    /// Per-sensor rolling z-score: flags a value more than `threshold` standard deviations
    /// from the mean of the same sensor's previous `window` values.
    ///
    /// Adds `z` (null while the sensor has fewer than `window` earlier values, or when they
    /// are all equal), `anomaly_score` (|z|/(|z|+threshold): 0.5 at the threshold),
    /// `is_anomaly`, `detector` ("zscore") and `reason`. State per sensor: the last `window`
    /// values (8 bytes each) and a running mean and spread, O(1) per event.
    pub struct ZScoreConfig as "zscore" {
        /// Number of previous values of the same sensor the current one is compared with.
        #[schemars(range(min = 2, max = 10000000))]
        pub window: usize = 100,
        /// |z| above which a value is an anomaly.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        pub threshold: f64 = 3.0,
    }
}

impl ZScoreConfig {
    fn params(&self) -> ZScoreParams {
        ZScoreParams {
            window: self.window,
            threshold: self.threshold,
        }
    }
}

impl DetectorSpec for ZScoreConfig {
    type State = ZScore;

    /// The window (8 bytes a value, full) and the running sums.
    fn bytes_per_key(&self) -> u64 {
        8 * self.window as u64 + std::mem::size_of::<ZScore>() as u64
    }
    const NAME: &'static str = "zscore";
    const STATISTIC: &'static str = "z";

    fn restore_state(&self, state: ciborium::Value) -> Result<ZScore, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> ZScore {
        ZScore::new(self.params())
    }

    const TUNABLE: &'static [&'static str] = &["threshold", "window"];

    /// A new threshold applies from the next event; a new window keeps each sensor's most
    /// recent values (up to its length).
    fn retune_state(&self, state: &mut ZScore) {
        state.set_params(self.params());
    }

    fn save_states(
        &self,
        keys: &KeyInterner,
        states: &[ZScore],
    ) -> Option<Result<Vec<u8>, ComponentError>> {
        Some(encode_keyed(keys, states))
    }

    /// Both parameters can change while running, so a checkpoint taken with other values
    /// (changed through the admin API, or in the file since) is brought in line with the
    /// parameters now in force, as a change while running would be.
    fn load_states(&self, bytes: &[u8]) -> Result<(KeyInterner, Vec<ZScore>), ComponentError> {
        let (keys, mut states): (KeyInterner, Vec<ZScore>) = decode_keyed(bytes)?;
        if let Some(s) = states.iter().find(|s| s.params() != self.params()) {
            tracing::warn!(
                "zscore state was checkpointed with window = {}, threshold = {}; continuing \
                 with window = {}, threshold = {}",
                s.params().window,
                s.params().threshold,
                self.window,
                self.threshold
            );
            for s in &mut states {
                self.retune_state(s);
            }
        }
        Ok((keys, states))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::{Float64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema, SchemaRef};
    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::ComponentKind;
    use tidegauge_core::telemetry::ComponentTelemetry;
    use tidegauge_core::{
        BuildContext, ComponentContext, Transform, TransformConfig, TransformContext,
    };

    use super::*;

    fn context() -> ComponentContext {
        let t = Arc::new(ComponentTelemetry::new(
            "z",
            ComponentKind::Transform,
            "zscore",
        ));
        ComponentContext::new(t, DeadLetter::stderr())
    }

    fn zscore(settings: &str) -> (Box<dyn Transform>, SchemaRef) {
        let input: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ]));
        let config: ZScoreConfig = toml::from_str(settings).unwrap();
        let output = config.validate(&input).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cx = BuildContext {
            component: context(),
            runtime: runtime.handle().clone(),
        };
        (config.build(input.clone(), output, cx).unwrap(), input)
    }

    fn anomalies(t: &mut Box<dyn Transform>, input: &SchemaRef, values: &[f64]) -> Vec<bool> {
        let batch = RecordBatch::try_new(
            input.clone(),
            vec![
                Arc::new(StringArray::from(vec!["s"; values.len()])),
                Arc::new(Float64Array::from(values.to_vec())),
            ],
        )
        .unwrap();
        let mut cx = TransformContext::new(context());
        t.process(batch, &mut cx).unwrap();
        t.flush(&mut cx).unwrap();
        let out: Vec<RecordBatch> = cx.take_emitted().map(|(b, _)| b).collect();
        let flags = out[0].column_by_name("is_anomaly").unwrap().as_boolean();
        (0..flags.len()).map(|i| flags.value(i)).collect()
    }

    #[test]
    fn threshold_and_window_change_while_keeping_state() {
        for workers in [1, 2] {
            let (mut t, input) =
                zscore(&format!("window = 4\nthreshold = 3.0\nworkers = {workers}"));
            // 1, 2, 1, 2 then 3: z = (3 - 1.5) / 0.5 = 3, not above 3.
            assert_eq!(
                anomalies(&mut t, &input, &[1.0, 2.0, 1.0, 2.0, 3.0]),
                [false; 5]
            );
            t.set_tunable("threshold", &serde_json::json!(1.0)).unwrap();
            // The window now holds 2, 1, 2, 3: mean 2, sd 0.707; 4 gives z 2.83 > 1.
            assert_eq!(anomalies(&mut t, &input, &[4.0]), [true]);
            // Shrinking keeps the most recent values: [3, 4], 3.5 ± 0.5; 4.2 gives z 1.4.
            t.set_tunable("window", &serde_json::json!(2)).unwrap();
            assert_eq!(anomalies(&mut t, &input, &[4.2]), [true]);
            // Checked like the pipeline file; other settings are not tunable.
            assert!(t.set_tunable("threshold", &serde_json::json!(-1)).is_err());
            assert!(t.set_tunable("window", &serde_json::json!(1)).is_err());
            assert!(t.set_tunable("window", &serde_json::json!("x")).is_err());
            assert!(t.set_tunable("key_field", &serde_json::json!("x")).is_err());
            let values: Vec<_> = t
                .tunables()
                .into_iter()
                .map(|t| (t.name, t.value))
                .collect();
            assert_eq!(
                values,
                [
                    ("threshold".to_string(), serde_json::json!(1.0)),
                    ("window".to_string(), serde_json::json!(2))
                ]
            );
        }
    }
}
