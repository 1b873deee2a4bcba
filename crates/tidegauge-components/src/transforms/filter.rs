//! `filter` transform: keeps the events for which a condition holds.

use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use arrow_select::filter::filter_record_batch;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::Tunable;
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Transform, TransformConfig,
    TransformContext,
};

use crate::codec::encode::JsonEncoder;
use crate::expr::Expression;

/// Keeps the events for which `condition` is true (false and null drop the event).
///
/// The condition is a SQL expression over the event's fields, e.g. `is_anomaly`,
/// `is_anomaly AND abs(z) > 4`, `sensor_id LIKE 'pump-%'`, `value NOT BETWEEN 0 AND 100`.
/// It is type-checked against the input when the pipeline is validated.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// SQL boolean expression over the input's fields.
    pub condition: String,
}

impl TransformConfig for FilterConfig {
    const TYPE: &'static str = "filter";

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        compile_condition(&self.condition, input).map_err(|e| vec![e])?;
        Ok(input.clone())
    }

    fn build(
        &self,
        input: SchemaRef,
        _output: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        let expr =
            compile_condition(&self.condition, &input).map_err(|e| BuildError::new(e.message))?;
        Ok(Box::new(Filter {
            encoder: JsonEncoder::new(&input),
            expr,
            condition: self.condition.clone(),
            input,
        }))
    }
}

/// Compiles `condition` against `input` and checks that it gives a boolean per event.
fn compile_condition(condition: &str, input: &SchemaRef) -> Result<Expression, ConfigError> {
    let expr =
        Expression::compile(condition, input).map_err(|e| ConfigError::new("condition", e))?;
    if !matches!(expr.data_type(), DataType::Boolean | DataType::Null) {
        return Err(ConfigError::new(
            "condition",
            format!(
                "must be true or false for each event, but `{}` gives {}",
                crate::expr::excerpt(condition),
                expr.data_type()
            ),
        ));
    }
    Ok(expr)
}

struct Filter {
    expr: Expression,
    encoder: JsonEncoder,
    condition: String,
    input: SchemaRef,
}

impl Transform for Filter {
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let keep = match self.expr.evaluate(&batch) {
            Ok(k) => k,
            Err(e) => {
                // A row the condition cannot be computed on (an integer overflow, say):
                // the batch goes to the dead-letter output, row by row, with the reason.
                let reason = format!("condition cannot be evaluated: {e}");
                for row in 0..batch.num_rows() {
                    let mut raw = Vec::new();
                    let _ = self.encoder.encode_row(&batch, row, &mut raw);
                    cx.component().dead_letter("filter", &reason, &raw);
                }
                return Ok(());
            }
        };
        let keep = match keep.as_any().downcast_ref::<BooleanArray>() {
            Some(k) => k.clone(),
            // A NULL literal condition: nothing passes.
            None => BooleanArray::from(vec![false; keep.len()]),
        };
        if keep.true_count() == batch.num_rows() {
            cx.emit(batch);
        } else if keep.true_count() > 0 {
            cx.emit(filter_record_batch(&batch, &keep)?);
        }
        Ok(())
    }

    fn tunables(&self) -> Vec<Tunable> {
        vec![Tunable {
            name: "condition".into(),
            value: self.condition.clone().into(),
        }]
    }

    /// A new condition is compiled and type-checked against the input like the one in
    /// the config; it applies from the next batch.
    fn set_tunable(&mut self, name: &str, value: &serde_json::Value) -> Result<(), String> {
        if name != "condition" {
            return Err(format!("`{name}` cannot be changed while running"));
        }
        let condition = value
            .as_str()
            .ok_or_else(|| "condition: expected a string".to_string())?;
        self.expr = compile_condition(condition, &self.input).map_err(|e| e.to_string())?;
        self.condition = condition.to_string();
        Ok(())
    }
}

tidegauge_core::register_transform!(FilterConfig);
