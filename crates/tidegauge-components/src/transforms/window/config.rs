//! The `window` transform's settings: their shapes, checks and output schema.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::schema::require_field;
use tidegauge_core::telemetry::MetricDesc;
use tidegauge_core::{BuildContext, BuildError, ConfigError, Transform, TransformConfig};
use tidegauge_detect::Aggregate;

use super::Window;
use crate::transforms::spec::param_errors;

/// The shape of the windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Back-to-back windows of `size_ms`: each event in exactly one.
    #[default]
    Tumbling,
    /// Windows of `size_ms` starting every `slide_ms`: each event in `size_ms / slide_ms`.
    Sliding,
    /// A window per burst of activity: it closes after `gap_ms` without events.
    Session,
}

/// Which time places an event in its window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeKind {
    /// The event's own time (`ts_field`), with a watermark: windows close once the latest
    /// time seen minus `allowed_lateness_ms` passes their end.
    #[default]
    Event,
    /// The wall clock when the event arrives; windows close on the wall clock.
    Processing,
}

/// What happens to an event for a window that has already closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Drop it and count it (the component's error count).
    #[default]
    Drop,
    /// Emit it alone as a window row with `late = true` (route it on with a `filter`).
    Emit,
}

/// Windows per sensor with aggregates of a value: count, sum, mean, min, max, std,
/// first, last and quantiles (`p50`, `p99`, `p99.9`, from a mergeable DDSketch).
///
/// Emits one event per closed window: the key, `window_start`, `window_end` (epoch ms,
/// end exclusive), one column per aggregate (named as in `aggregates`), and `late`.
/// Windows close in event time with a watermark (the latest time seen minus
/// `allowed_lateness_ms`), or in processing time; when the input ends, every open window
/// is emitted. State: the open windows, each one accumulator per aggregate.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Field naming the sensor; windows are per distinct value.
    pub key_field: String,
    /// Field aggregated (Float64 or Int64).
    pub value_field: String,
    /// Field holding the event time in epoch milliseconds (Int64).
    pub ts_field: String,
    /// Window shape.
    pub kind: WindowKind,
    /// Window length in milliseconds (tumbling and sliding).
    #[schemars(range(min = 1))]
    pub size_ms: i64,
    /// Step between sliding windows in milliseconds; `size_ms` must be a multiple of it.
    pub slide_ms: Option<i64>,
    /// Silence that ends a session, in milliseconds.
    #[schemars(range(min = 1))]
    pub gap_ms: i64,
    /// Aggregates to compute: `count`, `sum`, `mean`, `min`, `max`, `std`, `first`,
    /// `last`, or a quantile `pNN` (`p50`, `p95`, `p99.9`).
    pub aggregates: Vec<String>,
    /// Relative accuracy of quantiles (0.01 = within 1 %).
    pub quantile_accuracy: f64,
    /// Event time or processing time.
    pub time: TimeKind,
    /// How far behind the latest event time an event may arrive and still count, in ms.
    #[schemars(range(min = 0))]
    pub allowed_lateness_ms: i64,
    /// What to do with events for windows that have closed.
    pub late: LatePolicy,
    /// Most sensors with open windows at once. Events of a further sensor are not
    /// windowed until one of them has no open window left (counted in `/metrics` as
    /// events without state, with a warning): a sender inventing keys cannot grow memory.
    #[schemars(range(min = 1))]
    pub max_keys: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            key_field: "sensor_id".into(),
            value_field: "value".into(),
            ts_field: "ts".into(),
            kind: WindowKind::Tumbling,
            size_ms: 60_000,
            slide_ms: None,
            gap_ms: 30_000,
            aggregates: vec!["count".into(), "mean".into(), "min".into(), "max".into()],
            quantile_accuracy: 0.01,
            time: TimeKind::Event,
            allowed_lateness_ms: 0,
            late: LatePolicy::Drop,
            max_keys: crate::transforms::spec::DEFAULT_MAX_KEYS,
        }
    }
}

/// Parses an aggregate name.
pub(super) fn aggregate(name: &str, accuracy: f64) -> Result<Aggregate, String> {
    Ok(match name {
        "count" => Aggregate::Count,
        "sum" => Aggregate::Sum,
        "mean" => Aggregate::Mean,
        "min" => Aggregate::Min,
        "max" => Aggregate::Max,
        "std" => Aggregate::Std,
        "first" => Aggregate::First,
        "last" => Aggregate::Last,
        p if p.starts_with('p') => {
            let pct: f64 = p[1..]
                .parse()
                .map_err(|_| format!("`{p}` is not a quantile (write e.g. `p99`)"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("`{p}`: quantiles go from p0 to p100"));
            }
            Aggregate::Quantile {
                q: pct / 100.0,
                relative_accuracy: accuracy,
            }
        }
        other => {
            return Err(format!(
                "unknown aggregate `{other}` (count, sum, mean, min, max, std, first, last, pNN)"
            ));
        }
    })
}

impl WindowConfig {
    pub(super) fn aggregates(&self) -> Result<Vec<Aggregate>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for (i, name) in self.aggregates.iter().enumerate() {
            match aggregate(name, self.quantile_accuracy) {
                Ok(a) => {
                    errors.extend(
                        param_errors(a.validate())
                            .into_iter()
                            .map(|e| ConfigError::new("quantile_accuracy", e.message)),
                    );
                    out.push(a);
                }
                Err(e) => errors.push(ConfigError::new(format!("aggregates[{i}]"), e)),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    pub(super) fn slide(&self) -> i64 {
        self.slide_ms.unwrap_or(self.size_ms)
    }
}

impl TransformConfig for WindowConfig {
    const TYPE: &'static str = "window";
    const METRICS: &'static [&'static MetricDesc] = crate::telemetry::WINDOW_METRICS;

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Err(mut e) = self.aggregates() {
            errors.append(&mut e);
        }
        if self.aggregates.is_empty() {
            errors.push(ConfigError::new(
                "aggregates",
                "list at least one aggregate",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, a) in self.aggregates.iter().enumerate() {
            if !seen.insert(a) {
                errors.push(ConfigError::new(
                    format!("aggregates[{i}]"),
                    format!("`{a}` is listed twice"),
                ));
            }
            if ["window_start", "window_end", "late"].contains(&a.as_str()) || *a == self.key_field
            {
                errors.push(ConfigError::new(
                    format!("aggregates[{i}]"),
                    format!("`{a}` clashes with an output field"),
                ));
            }
        }
        // `size_ms`, `gap_ms`, `max_keys` and `allowed_lateness_ms` have their ranges
        // checked from the schema before this runs.
        match (self.kind, self.slide_ms) {
            (WindowKind::Sliding, None) => {
                errors.push(ConfigError::new("slide_ms", "required for sliding windows"))
            }
            (WindowKind::Sliding, Some(s)) if s <= 0 || self.size_ms % s != 0 => errors.push(
                ConfigError::new("slide_ms", "must be positive and divide size_ms"),
            ),
            (WindowKind::Sliding, Some(s)) if self.size_ms / s > 1000 => {
                errors.push(ConfigError::new(
                    "slide_ms",
                    "at most 1000 windows may overlap (size_ms / slide_ms)",
                ))
            }
            (WindowKind::Tumbling | WindowKind::Session, Some(_)) => errors.push(ConfigError::new(
                "slide_ms",
                "only sliding windows have a slide",
            )),
            _ => {}
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
        if self.time == TimeKind::Event
            && let Err(e) = require_field(input, "ts_field", &self.ts_field, &[DataType::Int64])
        {
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut fields = vec![
            Field::new(&self.key_field, DataType::Utf8, false),
            Field::new("window_start", DataType::Int64, false),
            Field::new("window_end", DataType::Int64, false),
        ];
        for a in &self.aggregates {
            if a == "count" {
                fields.push(Field::new(a, DataType::Int64, false));
            } else {
                fields.push(Field::new(a, DataType::Float64, true));
            }
        }
        fields.push(Field::new("late", DataType::Boolean, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        let window = Window::new(self, &input, output)?;
        Ok(Box::new(window.partitioned(
            &input,
            &crate::partitions::process_hub(),
            cx.component.id(),
        )))
    }
}
