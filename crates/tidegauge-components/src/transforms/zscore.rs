//! `zscore` transform: per-sensor rolling z-score.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use schemars::JsonSchema;
use serde::Deserialize;
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

impl TransformConfig for ZScoreConfig {
    const TYPE: &'static str = "zscore";

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if !(2..=10_000_000).contains(&self.window) {
            errors.push(ConfigError::new(
                "window",
                "expected an integer from 2 to 10000000",
            ));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            errors.push(ConfigError::new("threshold", "expected a positive number"));
        }
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

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, ComponentError> {
        super::state::encode_keyed(&self.keys, &self.states).map(Some)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), ComponentError> {
        let (keys, states): (KeyInterner, Vec<RollingStats>) = super::state::decode_keyed(state)?;
        if let Some(s) = states.iter().find(|s| s.window() != self.window) {
            return Err(ComponentError::new(format!(
                "the checkpoint was taken with window = {}, the pipeline now says {}; \
                 set it back or remove the checkpoint directory",
                s.window(),
                self.window
            )));
        }
        self.keys = keys;
        self.states = states;
        Ok(())
    }
}

tidegauge_core::register_transform!(ZScoreConfig);
