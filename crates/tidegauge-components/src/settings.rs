//! Settings several components share, declared once.
//!
//! serde's `flatten` cannot be combined with `deny_unknown_fields` (an unknown setting
//! would no longer be an error), so shared settings are appended to a config struct by
//! [`config!`] instead: `config! { [decoded_records] /// doc ... pub struct X { ... } }`
//! declares `X` with its own fields followed by those of each named part, in order. A
//! part is a macro of this crate with an `@append` rule (see [`decoded_records!`]); it
//! may also implement methods on the struct, so the code that checks or uses the shared
//! settings is written once too.

use arrow_schema::SchemaRef;
use tidegauge_core::ConfigError;

use crate::codec::{FieldMap, schema_for};
use crate::sources::validate_fields;

/// Declares a config struct (deriving `Clone`, `Debug`, `Deserialize`, `JsonSchema`,
/// denying unknown fields) with its own fields followed by those of the listed parts.
macro_rules! config {
    (@emit [$($meta:tt)*] $name:ident { $($fields:tt)* } []) => {
        $($meta)*
        #[derive(Clone, Debug, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name { $($fields)* }
    };
    (@emit $meta:tt $name:ident { $($fields:tt)* } [$part:path $(, $rest:path)*]) => {
        $part! { @append $meta $name { $($fields)* } [$($rest),*] }
    };
    ([$($part:path),* $(,)?] $(#[$m:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $crate::settings::config!(@emit [$(#[$m])*] $name { $($fields)* } [$($part),*]);
    };
}

pub(crate) use config;

/// Part of [`config!`]: records decoded into declared, typed fields (`fields`,
/// `optional_fields`) and grouped into batches (`batch`). Adds
/// `decoded_schema(errors)`, which checks them and returns the output schema.
macro_rules! decoded_records {
    (@append $meta:tt $name:ident { $($fields:tt)* } $rest:tt) => {
        $crate::settings::config!(@emit $meta $name { $($fields)*
            /// Fields to extract from each record and their types, in output order.
            #[serde(default = "crate::codec::default_fields")]
            pub fields: crate::codec::FieldMap,
            /// Fields that may be missing or null; all others are required in every record.
            #[serde(default)]
            pub optional_fields: Vec<String>,
            /// Batching of events.
            #[serde(default)]
            pub batch: crate::sources::BatchConfig,
        } $rest);

        impl $name {
            /// Checks the declared fields after the component's own checks (`errors`;
            /// batching's ranges come from the schema); the output schema when nothing
            /// is wrong.
            pub(crate) fn decoded_schema(
                &self,
                errors: Vec<tidegauge_core::ConfigError>,
            ) -> Result<arrow_schema::SchemaRef, Vec<tidegauge_core::ConfigError>> {
                $crate::settings::decoded_schema(
                    &self.fields,
                    &self.optional_fields,
                    errors,
                )
            }
        }
    };
}

pub(crate) use decoded_records;

/// What [`decoded_records!`]'s `decoded_schema` does.
pub(crate) fn decoded_schema(
    fields: &FieldMap,
    optional: &[String],
    mut errors: Vec<ConfigError>,
) -> Result<SchemaRef, Vec<ConfigError>> {
    validate_fields(fields, optional, &mut errors);
    collect(errors, || schema_for(fields, optional))
}

/// `Ok(value())` when there are no errors, else all of them.
pub(crate) fn collect<T>(
    errors: Vec<ConfigError>,
    value: impl FnOnce() -> T,
) -> Result<T, Vec<ConfigError>> {
    if errors.is_empty() {
        Ok(value())
    } else {
        Err(errors)
    }
}
