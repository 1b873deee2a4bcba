//! `zscore` transform: per-sensor rolling z-score.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::Tunable;
use tidegauge_core::schema::{extend, require_field};
use tidegauge_core::telemetry::AnomaliesDetected;
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Transform, TransformConfig,
    TransformContext,
};
use tidegauge_detect::{RollingStats, score_from_ratio};

use super::{DetectorColumns, KeyInterner, detector_fields};

/// Per-sensor rolling z-score: flags a value more than `threshold` standard deviations
/// from the mean of the same sensor's previous `window` values.
///
/// Adds `z` (null while the sensor has fewer than `window` earlier values, or when they
/// are all equal), `anomaly_score` (|z|/(|z|+threshold): 0.5 at the threshold),
/// `is_anomaly`, `detector` ("zscore") and `reason`. State per sensor: the last `window`
/// values (8 bytes each) and a running mean and spread, O(1) per event.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZScoreConfig {
    /// Field naming the sensor; state is kept per distinct value.
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// Field holding the reading (Float64 or Int64).
    #[serde(default = "default_value_field")]
    pub value_field: String,
    /// Number of previous values of the same sensor the current one is compared with.
    #[serde(default = "default_window")]
    #[schemars(range(min = 2, max = 10_000_000))]
    pub window: usize,
    /// |z| above which a value is an anomaly.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.0))]
    pub threshold: f64,
}

fn default_key_field() -> String {
    "sensor_id".into()
}
fn default_value_field() -> String {
    "value".into()
}
fn default_window() -> usize {
    100
}
fn default_threshold() -> f64 {
    3.0
}

const WINDOW_RANGE: std::ops::RangeInclusive<usize> = 2..=10_000_000;

fn check_window(window: usize) -> Result<(), ConfigError> {
    if WINDOW_RANGE.contains(&window) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "window",
            "expected an integer from 2 to 10000000",
        ))
    }
}

fn check_threshold(threshold: f64) -> Result<(), ConfigError> {
    if threshold.is_finite() && threshold > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new("threshold", "expected a positive number"))
    }
}

impl TransformConfig for ZScoreConfig {
    const TYPE: &'static str = "zscore";

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        errors.extend(check_window(self.window).err());
        errors.extend(check_threshold(self.threshold).err());
        if let Err(e) = require_field(input, "key_field", &self.key_field, &[DataType::Utf8]) {
            errors.push(e);
        }
        if let Err(e) = require_field(
            input,
            "value_field",
            &self.value_field,
            &[DataType::Float64, DataType::Int64],
        ) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(extend(input, &detector_fields("z")))
        } else {
            Err(errors)
        }
    }

    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        let find = |name: &str| {
            input
                .index_of(name)
                .map_err(|_| BuildError::new(format!("input lacks field `{name}`")))
        };
        Ok(Box::new(ZScore {
            key: find(&self.key_field)?,
            value: find(&self.value_field)?,
            window: self.window,
            threshold: self.threshold,
            keys: KeyInterner::default(),
            states: Vec::new(),
            output,
        }))
    }
}

struct ZScore {
    key: usize,
    value: usize,
    window: usize,
    threshold: f64,
    keys: KeyInterner,
    states: Vec<RollingStats>,
    output: SchemaRef,
}

/// The values of a numeric column as f64 (Int64 converted).
pub(crate) fn float_values(column: &dyn Array) -> Result<Cow<'_, [f64]>, ComponentError> {
    match column.data_type() {
        DataType::Float64 => Ok(Cow::Borrowed(column.as_primitive::<Float64Type>().values())),
        DataType::Int64 => Ok(Cow::Owned(
            column
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&v| v as f64)
                .collect(),
        )),
        other => Err(ComponentError::new(format!(
            "expected a Float64 or Int64 column, got {other}"
        ))),
    }
}

impl Transform for ZScore {
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let keys = batch.column(self.key).as_string::<i32>();
        let value_column = batch.column(self.value);
        let values = float_values(value_column.as_ref())?;
        let n = batch.num_rows();
        let mut out = DetectorColumns::with_capacity(n);
        let threshold = self.threshold;
        for i in 0..n {
            let v = values[i];
            if value_column.is_null(i) || !v.is_finite() {
                out.push_none();
                continue;
            }
            let key = if keys.is_null(i) { "" } else { keys.value(i) };
            let (id, new) = self.keys.id(key);
            if new {
                self.states.push(RollingStats::new(self.window));
            }
            let state = &mut self.states[id];
            let z = state.zscore(v, threshold);
            state.push(v);
            match z {
                None => out.push_none(),
                Some(z) => {
                    let anomaly = z.abs() > threshold;
                    out.push(
                        Some(z),
                        score_from_ratio(z.abs() / threshold),
                        anomaly,
                        || format!("|z| {:.2} > {threshold}", z.abs()),
                    )
                }
            }
        }
        cx.component().emit(AnomaliesDetected {
            count: out.anomalies(),
        });
        cx.emit(out.finish(&batch, &self.output, "z", "zscore")?);
        Ok(())
    }

    fn tunables(&self) -> Vec<Tunable> {
        vec![
            Tunable {
                name: "threshold".into(),
                value: self.threshold.into(),
            },
            Tunable {
                name: "window".into(),
                value: self.window.into(),
            },
        ]
    }

    /// `threshold` applies from the next event. `window` keeps each sensor's most recent
    /// values (up to the new length), so a longer window fills up from what is held and a
    /// shorter one starts full.
    fn set_tunable(&mut self, name: &str, value: &serde_json::Value) -> Result<(), String> {
        match name {
            "threshold" => {
                let t = value
                    .as_f64()
                    .ok_or_else(|| "threshold: expected a number".to_string())?;
                check_threshold(t).map_err(|e| e.to_string())?;
                self.threshold = t;
                Ok(())
            }
            "window" => {
                let w = value
                    .as_u64()
                    .and_then(|w| usize::try_from(w).ok())
                    .ok_or_else(|| "window: expected a non-negative integer".to_string())?;
                check_window(w).map_err(|e| e.to_string())?;
                for state in &mut self.states {
                    let mut resized = RollingStats::new(w);
                    let skip = state.len().saturating_sub(w);
                    state.values().skip(skip).for_each(|v| resized.push(v));
                    *state = resized;
                }
                self.window = w;
                Ok(())
            }
            other => Err(format!("`{other}` cannot be changed while running")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use tidegauge_core::ComponentContext;
    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::ComponentKind;
    use tidegauge_core::telemetry::ComponentTelemetry;

    use super::*;

    fn zscore(window: usize, threshold: f64) -> (Box<dyn Transform>, SchemaRef) {
        let input: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ]));
        let config = ZScoreConfig {
            key_field: default_key_field(),
            value_field: default_value_field(),
            window,
            threshold,
        };
        let output = config.validate(&input).unwrap();
        let t = Arc::new(ComponentTelemetry::new(
            "z",
            ComponentKind::Transform,
            "zscore",
        ));
        let cx = BuildContext {
            component: ComponentContext::new(t, DeadLetter::stderr()),
            runtime: tokio::runtime::Runtime::new().unwrap().handle().clone(),
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
        let tel = Arc::new(ComponentTelemetry::new(
            "z",
            ComponentKind::Transform,
            "zscore",
        ));
        let mut cx = TransformContext::new(ComponentContext::new(tel, DeadLetter::stderr()));
        t.process(batch, &mut cx).unwrap();
        let out: Vec<RecordBatch> = cx.take_emitted().collect();
        let flags = out[0]
            .column_by_name("is_anomaly")
            .unwrap()
            .as_boolean()
            .clone();
        (0..flags.len()).map(|i| flags.value(i)).collect()
    }

    #[test]
    fn threshold_and_window_change_while_keeping_state() {
        let (mut t, input) = zscore(4, 3.0);
        // 1, 2, 1, 2 then 3: z = (3 - 1.5) / 0.5 = 3, not above 3.
        assert_eq!(
            anomalies(&mut t, &input, &[1.0, 2.0, 1.0, 2.0, 3.0]),
            [false; 5]
        );
        t.set_tunable("threshold", &serde_json::json!(1.0)).unwrap();
        // Window now 2, 1, 2, 3: mean 2, std 0.707; 4 gives z 2.83 > 1.
        assert_eq!(anomalies(&mut t, &input, &[4.0]), [true]);
        // Shrinking keeps the most recent values: [3, 4] -> 3.5 ± 0.5; 4.2 gives z 1.4.
        t.set_tunable("window", &serde_json::json!(2)).unwrap();
        assert_eq!(anomalies(&mut t, &input, &[4.2]), [true]);
        assert!(t.set_tunable("threshold", &serde_json::json!(-1)).is_err());
        assert!(t.set_tunable("window", &serde_json::json!(1)).is_err());
        assert!(t.set_tunable("key_field", &serde_json::json!("x")).is_err());
        let values: Vec<_> = t.tunables().into_iter().map(|t| t.value).collect();
        assert_eq!(values, [serde_json::json!(1.0), serde_json::json!(2)]);
    }
}

tidegauge_core::register_transform!(ZScoreConfig);
