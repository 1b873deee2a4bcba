//! Component self-registration.
//!
//! Each component file registers its config type with one macro call
//! ([`register_source!`](crate::register_source), [`register_transform!`](crate::register_transform),
//! [`register_sink!`](crate::register_sink)). There is no central list: the registry is
//! whatever `inventory` collected at link time.

use std::fmt::Debug;

use arrow_schema::SchemaRef;

use crate::BoxFuture;
use crate::component::{
    BuildContext, ComponentContext, Sink, SinkConfig, Source, SourceConfig, Transform,
    TransformConfig, TransformContext,
};
use crate::dead_letter::DeadLetter;
use crate::error::{BuildError, ConfigError};
use crate::telemetry::ComponentTelemetry;

pub use crate::kind::ComponentKind;

/// A config deserialization failure: where in the component and what.
#[derive(Debug)]
pub struct ParseError {
    /// Dotted path inside the component (`window`, `batch.rows`); empty for the component.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Byte range in the pipeline file, when known.
    pub span: Option<std::ops::Range<usize>>,
}

/// A parsed, type-erased component config.
pub enum AnyConfig {
    /// A source config.
    Source(Box<dyn ErasedSourceConfig>),
    /// A transform config.
    Transform(Box<dyn ErasedTransformConfig>),
    /// A sink config.
    Sink(Box<dyn ErasedSinkConfig>),
}

impl AnyConfig {
    /// The settings' numbers outside the ranges of the config's schema: what can be
    /// checked of a component whose input could not be typed (an upstream mistake), so
    /// that `check` still reports every such error at once.
    pub fn range_errors(&self) -> Vec<ConfigError> {
        let r = match self {
            AnyConfig::Source(c) => c.range_errors(),
            AnyConfig::Transform(c) => c.range_errors(),
            AnyConfig::Sink(c) => c.range_errors(),
        };
        r.err().unwrap_or_default()
    }
}

impl Debug for AnyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyConfig::Source(c) => c.fmt(f),
            AnyConfig::Transform(c) => c.fmt(f),
            AnyConfig::Sink(c) => c.fmt(f),
        }
    }
}

/// Object-safe face of [`SourceConfig`]; implemented for every `SourceConfig`.
pub trait ErasedSourceConfig: Debug + Send + Sync {
    /// See [`SourceConfig::validate`].
    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>>;
    /// See [`SourceConfig::build`].
    fn build(
        &self,
        schema: SchemaRef,
        cx: BuildContext,
    ) -> BoxFuture<'_, Result<Box<dyn Source>, BuildError>>;
    /// See [`SourceConfig::input_identity`].
    fn input_identity(&self) -> serde_json::Value;
    /// See [`SourceConfig::check_inputs`].
    fn check_inputs(&self) -> Vec<crate::component::InputProblem>;
    /// See [`AnyConfig::range_errors`].
    fn range_errors(&self) -> Result<(), Vec<ConfigError>>;
}

/// A component config with the settings it was read from: validation first checks each
/// number in the settings against the range the config's JSON Schema sets on it
/// ([`ranges::check`](crate::ranges::check)), and runs the component's own `validate`
/// only once they all lie in range, so that no component checks a range by hand and
/// `describe` shows exactly what is enforced.
pub struct Parsed<T> {
    config: T,
    settings: serde_json::Value,
}

impl<T: Debug> Debug for Parsed<T> {
    // The settings may hold secrets: only the typed config (which masks them) is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

impl<T: schemars::JsonSchema> Parsed<T> {
    fn new(config: T, settings: serde_json::Value) -> Self {
        Parsed { config, settings }
    }

    /// The settings' numbers outside their schema ranges.
    fn check_ranges(&self) -> Result<(), Vec<ConfigError>> {
        let schema = schema_of::<T>().to_value();
        let errors = crate::ranges::check(&schema, &self.settings);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl<T: SourceConfig> ErasedSourceConfig for Parsed<T> {
    fn input_identity(&self) -> serde_json::Value {
        SourceConfig::input_identity(&self.config)
    }
    fn check_inputs(&self) -> Vec<crate::component::InputProblem> {
        SourceConfig::check_inputs(&self.config)
    }
    fn range_errors(&self) -> Result<(), Vec<ConfigError>> {
        self.check_ranges()
    }
    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        self.check_ranges()?;
        SourceConfig::validate(&self.config)
    }
    fn build(
        &self,
        schema: SchemaRef,
        cx: BuildContext,
    ) -> BoxFuture<'_, Result<Box<dyn Source>, BuildError>> {
        cx.component.telemetry().declare(T::METRICS);
        Box::pin(SourceConfig::build(&self.config, schema, cx))
    }
}

/// Object-safe face of [`TransformConfig`].
pub trait ErasedTransformConfig: Debug + Send + Sync {
    /// See [`TransformConfig::validate`].
    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>>;
    /// See [`AnyConfig::range_errors`].
    fn range_errors(&self) -> Result<(), Vec<ConfigError>>;
    /// See [`TransformConfig::build`].
    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError>;

    /// Builds the transform outside a pipeline (`tidegauge score`, the Python package):
    /// telemetry of its own (component `id`, reported as of type `type_name`), dead
    /// letters to standard error. Returns it with the context to run it in.
    fn build_alone(
        &self,
        id: &str,
        type_name: &'static str,
        input: SchemaRef,
        output: SchemaRef,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Box<dyn Transform>, TransformContext), BuildError> {
        let telemetry = std::sync::Arc::new(ComponentTelemetry::new(
            id,
            ComponentKind::Transform,
            type_name,
        ));
        let component = ComponentContext::new(telemetry, DeadLetter::stderr());
        let transform = self.build(
            input,
            output,
            BuildContext {
                component: component.clone(),
                runtime,
            },
        )?;
        Ok((transform, TransformContext::new(component)))
    }
}

impl<T: TransformConfig> ErasedTransformConfig for Parsed<T> {
    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        self.check_ranges()?;
        TransformConfig::validate(&self.config, input)
    }
    fn range_errors(&self) -> Result<(), Vec<ConfigError>> {
        self.check_ranges()
    }
    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        cx.component.telemetry().declare(T::METRICS);
        TransformConfig::build(&self.config, input, output, cx)
    }
}

/// Object-safe face of [`SinkConfig`].
pub trait ErasedSinkConfig: Debug + Send + Sync {
    /// See [`SinkConfig::validate`].
    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>>;
    /// See [`AnyConfig::range_errors`].
    fn range_errors(&self) -> Result<(), Vec<ConfigError>>;
    /// See [`SinkConfig::build`].
    fn build(
        &self,
        input: SchemaRef,
        cx: BuildContext,
    ) -> BoxFuture<'_, Result<Box<dyn Sink>, BuildError>>;
}

impl<T: SinkConfig> ErasedSinkConfig for Parsed<T> {
    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        self.check_ranges()?;
        SinkConfig::validate(&self.config, input)
    }
    fn range_errors(&self) -> Result<(), Vec<ConfigError>> {
        self.check_ranges()
    }
    fn build(
        &self,
        input: SchemaRef,
        cx: BuildContext,
    ) -> BoxFuture<'_, Result<Box<dyn Sink>, BuildError>> {
        cx.component.telemetry().declare(T::METRICS);
        Box::pin(SinkConfig::build(&self.config, input, cx))
    }
}

/// How the registry parses one component's settings (a TOML table with its place in the
/// file).
type ParseFn = fn(toml::Spanned<toml::de::DeValue<'_>>) -> Result<AnyConfig, ParseError>;
/// How the registry parses one component's settings given as JSON.
type ParseJsonFn = fn(serde_json::Value) -> Result<AnyConfig, ParseError>;

/// One registered component type.
pub struct ComponentDescriptor {
    /// Source, transform or sink.
    pub kind: ComponentKind,
    /// The `type = "..."` name.
    pub type_name: &'static str,
    json_schema: fn() -> schemars::Schema,
    parse: ParseFn,
    parse_json: ParseJsonFn,
}

inventory::collect!(ComponentDescriptor);

fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

fn parse_typed<T: serde::de::DeserializeOwned + schemars::JsonSchema>(
    value: toml::Spanned<toml::de::DeValue<'_>>,
) -> Result<Parsed<T>, ParseError> {
    // The settings as JSON, for the range check; TOML reads them again into `T` so that
    // its errors keep their place in the file.
    let settings: serde_json::Value =
        serde::Deserialize::deserialize(toml::de::ValueDeserializer::from(value.clone()))
            .unwrap_or(serde_json::Value::Null);
    serde_path_to_error::deserialize::<_, T>(toml::de::ValueDeserializer::from(value))
        .map(|c| Parsed::new(c, settings))
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ParseError {
                path: if path == "." { String::new() } else { path },
                message: friendly_serde_message(inner.message()),
                span: inner.span(),
            }
        })
}

/// Rewrites serde's Rust-flavoured type names into words a user of a TOML file knows.
pub(crate) fn friendly_serde_message(msg: &str) -> String {
    const WORDS: [(&str, &str); 14] = [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u16", "expected a non-negative integer"),
        ("expected u8", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a nonzero usize", "expected a positive integer"),
        ("expected a nonzero u64", "expected a positive integer"),
        ("expected a nonzero u32", "expected a positive integer"),
        ("expected a string", "expected a string (in quotes)"),
    ];
    let mut out = msg.trim_end_matches('\n').to_string();
    // `unknown field `x`, expected one of `a`, `b``: name the likely one.
    if let Some(rest) = out.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let hint = crate::suggest::hint(field, names);
        out.push_str(&hint);
    }
    for (from, to) in WORDS {
        if let Some(pos) = out.find(from) {
            let end = pos + from.len();
            // Only whole words: `expected u64` but not `expected u64s`.
            if out[end..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric())
            {
                out.replace_range(pos..end, to);
            }
        }
    }
    out
}

fn parse_json<T: serde::de::DeserializeOwned + schemars::JsonSchema>(
    value: serde_json::Value,
) -> Result<Parsed<T>, ParseError> {
    serde_path_to_error::deserialize::<_, T>(value.clone())
        .map(|c| Parsed::new(c, value))
        .map_err(|e| {
            let path = e.path().to_string();
            ParseError {
                path: if path == "." { String::new() } else { path },
                message: friendly_serde_message(&e.into_inner().to_string()),
                span: None,
            }
        })
}

fn parse_source_json<T: SourceConfig>(v: serde_json::Value) -> Result<AnyConfig, ParseError> {
    parse_json::<T>(v).map(|c| AnyConfig::Source(Box::new(c)))
}

fn parse_transform_json<T: TransformConfig>(v: serde_json::Value) -> Result<AnyConfig, ParseError> {
    parse_json::<T>(v).map(|c| AnyConfig::Transform(Box::new(c)))
}

fn parse_sink_json<T: SinkConfig>(v: serde_json::Value) -> Result<AnyConfig, ParseError> {
    parse_json::<T>(v).map(|c| AnyConfig::Sink(Box::new(c)))
}

fn parse_source<T: SourceConfig>(
    v: toml::Spanned<toml::de::DeValue<'_>>,
) -> Result<AnyConfig, ParseError> {
    parse_typed::<T>(v).map(|c| AnyConfig::Source(Box::new(c)))
}

fn parse_transform<T: TransformConfig>(
    v: toml::Spanned<toml::de::DeValue<'_>>,
) -> Result<AnyConfig, ParseError> {
    parse_typed::<T>(v).map(|c| AnyConfig::Transform(Box::new(c)))
}

fn parse_sink<T: SinkConfig>(
    v: toml::Spanned<toml::de::DeValue<'_>>,
) -> Result<AnyConfig, ParseError> {
    parse_typed::<T>(v).map(|c| AnyConfig::Sink(Box::new(c)))
}

impl ComponentDescriptor {
    /// The descriptor of source config `T` (used by [`register_source!`](crate::register_source)).
    pub const fn source<T: SourceConfig>() -> Self {
        ComponentDescriptor {
            kind: ComponentKind::Source,
            type_name: T::TYPE,
            json_schema: schema_of::<T>,
            parse: parse_source::<T>,
            parse_json: parse_source_json::<T>,
        }
    }

    /// The descriptor of transform config `T`.
    pub const fn transform<T: TransformConfig>() -> Self {
        ComponentDescriptor {
            kind: ComponentKind::Transform,
            type_name: T::TYPE,
            json_schema: schema_of::<T>,
            parse: parse_transform::<T>,
            parse_json: parse_transform_json::<T>,
        }
    }

    /// The descriptor of sink config `T`.
    pub const fn sink<T: SinkConfig>() -> Self {
        ComponentDescriptor {
            kind: ComponentKind::Sink,
            type_name: T::TYPE,
            json_schema: schema_of::<T>,
            parse: parse_sink::<T>,
            parse_json: parse_sink_json::<T>,
        }
    }

    /// JSON Schema of the component's settings (generated from its config struct).
    pub fn json_schema(&self) -> schemars::Schema {
        (self.json_schema)()
    }

    /// The one-line summary: the first paragraph of the config struct's doc comment.
    pub fn summary(&self) -> String {
        let schema = self.json_schema();
        let description = schema
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("");
        description
            .split("\n\n")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Parses the component's settings (a TOML table, e.g. from
    /// `toml::de::DeValue::parse("{ window = 50 }")`). Their ranges are checked by
    /// the config's `validate`.
    pub fn parse(
        &self,
        settings: toml::Spanned<toml::de::DeValue<'_>>,
    ) -> Result<AnyConfig, ParseError> {
        (self.parse)(settings)
    }

    /// Parses the component's settings given as JSON (a live parameter change).
    pub fn parse_json(&self, settings: serde_json::Value) -> Result<AnyConfig, ParseError> {
        (self.parse_json)(settings)
    }
}

/// Every registered component, sorted by kind then name.
pub fn all() -> Vec<&'static ComponentDescriptor> {
    let mut v: Vec<_> = inventory::iter::<ComponentDescriptor>.into_iter().collect();
    v.sort_by_key(|d| (d.kind, d.type_name));
    v
}

/// The component of `kind` called `type_name`.
pub fn find(kind: ComponentKind, type_name: &str) -> Option<&'static ComponentDescriptor> {
    inventory::iter::<ComponentDescriptor>
        .into_iter()
        .find(|d| d.kind == kind && d.type_name == type_name)
}

/// Components of any kind called `type_name` (a name may be both a source and a sink).
pub fn find_any(type_name: &str) -> Vec<&'static ComponentDescriptor> {
    all()
        .into_iter()
        .filter(|d| d.type_name == type_name)
        .collect()
}

/// Registers a source config type: `register_source!(FileSourceConfig);`
#[macro_export]
macro_rules! register_source {
    ($t:ty) => {
        $crate::__private::inventory::submit! {
            $crate::registry::ComponentDescriptor::source::<$t>()
        }
    };
}

/// Registers a transform config type: `register_transform!(ZScoreConfig);`
#[macro_export]
macro_rules! register_transform {
    ($t:ty) => {
        $crate::__private::inventory::submit! {
            $crate::registry::ComponentDescriptor::transform::<$t>()
        }
    };
}

/// Registers a sink config type: `register_sink!(JsonlSinkConfig);`
#[macro_export]
macro_rules! register_sink {
    ($t:ty) => {
        $crate::__private::inventory::submit! {
            $crate::registry::ComponentDescriptor::sink::<$t>()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_speak_toml() {
        assert_eq!(
            friendly_serde_message("invalid type: string \"x\", expected usize"),
            "invalid type: string \"x\", expected a non-negative integer"
        );
        assert_eq!(
            friendly_serde_message("invalid value: integer `0`, expected a nonzero usize"),
            "invalid value: integer `0`, expected a positive integer"
        );
    }
}
