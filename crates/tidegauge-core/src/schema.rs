//! Schema contracts: what a component needs from its input and what it adds.

use std::sync::Arc;

use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};

use crate::error::{BuildError, ConfigError};

/// `name: Type, ...` for messages.
pub fn describe(schema: &Schema) -> String {
    if schema.fields().is_empty() {
        return "(no fields)".to_string();
    }
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `input` has a field called `name` of one of the `accepted` types.
/// `setting` is the config key that named the field (the error's path). Returns the
/// field's index.
pub fn require_field(
    input: &Schema,
    setting: &str,
    name: &str,
    accepted: &[DataType],
) -> Result<usize, ConfigError> {
    let wanted = accepted
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    match input.index_of(name) {
        Err(_) => Err(ConfigError::new(
            setting,
            format!(
                "needs field `{name}: {wanted}` that its input does not provide (input has: {})",
                describe(input)
            ),
        )),
        Ok(i) => {
            let got = input.field(i).data_type();
            if accepted.contains(got) {
                Ok(i)
            } else {
                Err(ConfigError::new(
                    setting,
                    format!("needs field `{name}: {wanted}` but its input has `{name}: {got}`"),
                ))
            }
        }
    }
}

/// The input schema with `added` fields appended; an input field with the same name as an
/// added one is replaced (the detector's output wins) and keeps its position.
pub fn extend(input: &Schema, added: &[Field]) -> SchemaRef {
    let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
    for f in added {
        match fields.iter().position(|g| g.name() == f.name()) {
            Some(i) => fields[i] = Arc::new(f.clone()),
            None => fields.push(Arc::new(f.clone())),
        }
    }
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

/// The index of field `name` of `input`, for `build` (which runs after `validate` found
/// it): an error naming it if it is not there.
pub fn field_index(input: &Schema, name: &str) -> Result<usize, BuildError> {
    input
        .index_of(name)
        .map_err(|_| BuildError::new(format!("input lacks field `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> Schema {
        Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ])
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = require_field(&input(), "value_field", "temp", &[DataType::Float64]).unwrap_err();
        assert_eq!(e.path, "value_field");
        assert!(e.message.contains("`temp: Float64`"), "{}", e.message);
        assert!(e.message.contains("sensor_id: Utf8"), "{}", e.message);
        let e = require_field(&input(), "key_field", "value", &[DataType::Utf8]).unwrap_err();
        assert!(e.message.contains("has `value: Float64`"), "{}", e.message);
        assert_eq!(
            require_field(&input(), "v", "value", &[DataType::Float64]).unwrap(),
            1
        );
    }

    #[test]
    fn extend_appends_and_replaces() {
        let s = extend(
            &input(),
            &[
                Field::new("z", DataType::Float64, true),
                Field::new("value", DataType::Int64, true),
            ],
        );
        assert_eq!(describe(&s), "sensor_id: Utf8, value: Int64, z: Float64");
    }
}
