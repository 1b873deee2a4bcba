//! `tidegauge init`: a commented pipeline for a chosen source, detector and sink,
//! generated from the components' own JSON Schemas (their doc comments, defaults and
//! examples), so that it covers every registered component without a list of them.
//!
//! Required settings get the example their config struct declares
//! (`#[schemars(example = ...)]`), and so do settings that are unset by default but
//! carry an example (a threshold's bound: the example says a pipeline should set it);
//! every other setting is written commented out at its default, with its documentation
//! above it.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::{Map, Value};
use tidegauge_core::registry::{self, AnyConfig, ComponentDescriptor, ComponentKind};

/// Ids of the components in the written pipeline.
const SOURCE_ID: &str = "input";
const DETECTOR_ID: &str = "detector";
const FILTER_ID: &str = "anomalies";
const SINK_ID: &str = "output";

/// Marks a commented-out setting that is unset by default and shows only a value of
/// the right type.
const UNSET: &str = "   # (unset by default)";
/// Marks a commented-out setting that is unset by default and shows an example.
const UNSET_EXAMPLE: &str = "   # (unset by default; an example)";

/// Width that comments are wrapped to.
const WIDTH: usize = 88;

/// What `tidegauge init` was asked for.
pub struct Choice<'a> {
    pub source: &'a str,
    pub detector: &'a str,
    pub sink: &'a str,
    /// Deliver every event with its verdict, not only anomalies.
    pub all_events: bool,
}

/// Every registered source type.
pub fn source_names() -> Vec<&'static str> {
    names(ComponentKind::Source)
}

/// Every registered sink type.
pub fn sink_names() -> Vec<&'static str> {
    names(ComponentKind::Sink)
}

fn names(kind: ComponentKind) -> Vec<&'static str> {
    registry::all()
        .into_iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.type_name)
        .collect()
}

/// The events every source emits with its default `fields`, as detectors expect them.
fn reading_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// Transforms that judge readings with their defaults: their output has
/// `anomaly_score` and `is_anomaly` (as `tidegauge score` requires of a detector).
pub fn detector_names() -> Vec<&'static str> {
    let input = reading_schema();
    registry::all()
        .into_iter()
        .filter(|d| d.kind == ComponentKind::Transform)
        .filter(|d| {
            // The settings `init` writes for it.
            let schema = d.json_schema().to_value();
            let settings: Map<String, Value> = props(&schema)
                .filter_map(|(name, prop)| {
                    written(&schema, &schema, name, prop).map(|v| (name.clone(), v))
                })
                .collect();
            let Ok(AnyConfig::Transform(config)) = d.parse_json(Value::Object(settings)) else {
                return false;
            };
            config.validate(&input).is_ok_and(|out| {
                out.index_of("anomaly_score").is_ok() && out.index_of("is_anomaly").is_ok()
            })
        })
        .map(|d| d.type_name)
        .collect()
}

/// The named settings of an object schema.
fn props(object: &Value) -> impl Iterator<Item = (&String, &Value)> {
    object
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

/// The value `init` writes (uncommented) for setting `name`, if any: a required
/// setting's example (or a value of its type), and the example of a setting that is
/// unset or empty by default (an ensemble's members, a threshold's bound): an example
/// on such a setting says that a pipeline is expected to set it.
fn written(root: &Value, object: &Value, name: &str, prop: &Value) -> Option<Value> {
    let example = example_of(root, prop).cloned();
    if required_of(object).contains(&name) {
        return Some(example.unwrap_or_else(|| {
            let text = placeholder(root, prop, name);
            toml::from_str::<toml::Table>(&format!("v = {text}"))
                .ok()
                .and_then(|t| t.get("v").cloned())
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(Value::String(text))
        }));
    }
    let unset_by_default = match prop.get("default") {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if unset_by_default { example } else { None }
}

fn example_of<'a>(root: &'a Value, prop: &'a Value) -> Option<&'a Value> {
    prop.get("examples")
        .or_else(|| resolve(root, prop).get("examples"))
        .and_then(Value::as_array)
        .and_then(|e| e.first())
}

/// The pipeline text for `choice`.
pub fn pipeline(choice: &Choice) -> anyhow::Result<String> {
    let find = |kind, name: &str| {
        registry::find(kind, name)
            .ok_or_else(|| anyhow::anyhow!("no {kind} called `{name}` in this build"))
    };
    let source = find(ComponentKind::Source, choice.source)?;
    let detector = find(ComponentKind::Transform, choice.detector)?;
    let sink = find(ComponentKind::Sink, choice.sink)?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# A tidegauge pipeline: {} -> {}{} -> {}.",
        choice.source,
        choice.detector,
        if choice.all_events {
            ""
        } else {
            " -> anomalies only"
        },
        choice.sink
    );
    let _ = writeln!(
        out,
        "# Written by `tidegauge init --source {} --detector {} --sink {}{}` (tidegauge {}).",
        choice.source,
        choice.detector,
        choice.sink,
        if choice.all_events {
            " --all-events"
        } else {
            ""
        },
        env!("TIDEGAUGE_VERSION_SHORT"),
    );
    comment(
        &mut out,
        "",
        "Each component lists every parameter with its documentation: required ones are set \
         to an example value (replace it with yours), the others are commented out at their \
         default. `tidegauge check FILE` validates the file, `tidegauge run FILE` runs it, \
         `tidegauge describe TYPE` documents a component. `${VAR}` and `${VAR:-default}` in \
         values are read from the environment (use them for passwords and tokens).",
    );
    out.push('\n');

    component(&mut out, source, SOURCE_ID, None);
    component(&mut out, detector, DETECTOR_ID, Some(SOURCE_ID));
    let sink_input = if choice.all_events {
        DETECTOR_ID
    } else {
        comment(
            &mut out,
            "",
            &format!(
                "Only what the detector flags goes on to the sink. Remove this table and set \
                 the sink's `inputs` to [\"{DETECTOR_ID}\"] to deliver every event with its \
                 verdict (`anomaly_score`, `is_anomaly`, `reason`)."
            ),
        );
        let _ = writeln!(out, "[transforms.{FILTER_ID}]");
        let _ = writeln!(out, "type = \"filter\"");
        let _ = writeln!(out, "inputs = [\"{DETECTOR_ID}\"]");
        let _ = writeln!(out, "condition = \"is_anomaly\"");
        out.push('\n');
        FILTER_ID
    };
    component(&mut out, sink, SINK_ID, Some(sink_input));
    global_tables(&mut out);
    Ok(out)
}

/// One component's table: its description, `type`, `inputs`, then every parameter.
fn component(out: &mut String, d: &ComponentDescriptor, id: &str, input: Option<&str>) {
    let schema = d.json_schema().to_value();
    if let Some(desc) = schema.get("description").and_then(Value::as_str) {
        comment(out, "", desc);
    }
    let _ = writeln!(out, "[{}.{id}]", d.kind.table());
    let _ = writeln!(out, "type = \"{}\"", d.type_name);
    if let Some(input) = input {
        let _ = writeln!(out, "inputs = [\"{input}\"]");
    }
    settings(out, &schema, &schema, "");
    if d.kind == ComponentKind::Sink {
        let buffer = schemars::schema_for!(tidegauge_core::disk_buffer::DiskBufferConfig);
        let buffer = buffer.to_value();
        out.push('\n');
        comment(
            out,
            "",
            "A disk buffer in front of the sink: batches are kept on disk (bounded, fsynced) \
             until the sink has delivered them, and survive a restart.",
        );
        let example = placeholder_table(&buffer, &buffer, &format!("buffer/{id}"));
        let _ = writeln!(out, "# buffer = {example}");
    }
    out.push('\n');
}

/// The parameters of the object schema `object`, one by one.
fn settings(out: &mut String, root: &Value, object: &Value, indent: &str) {
    for (name, prop) in props(object) {
        out.push('\n');
        let resolved = resolve(root, prop);
        let doc = prop
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut doc = doc.to_string();
        if let Some(range) = range_of(resolved) {
            let _ = write!(doc, " (Range: {range}.)");
        }
        comment(out, indent, &doc);
        // Nested tables: their parameters' documentation, one line each.
        if let Some(inner) = object_schema(root, resolved) {
            for (sub, sub_prop) in props(inner) {
                let sub_doc = sub_prop
                    .get("description")
                    .or_else(|| resolve(root, sub_prop).get("description"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                comment(out, &format!("{indent}  "), &format!("{sub}: {sub_doc}"));
            }
        }
        let example = example_of(root, prop);
        let default = prop.get("default").filter(|d| !d.is_null());
        if let Some(value) = written(root, object, name, prop)
            .as_ref()
            .and_then(toml_text)
        {
            let _ = writeln!(out, "{indent}{name} = {value}");
        } else {
            let value = default
                .and_then(toml_text)
                .or_else(|| example.and_then(toml_text))
                .unwrap_or_else(|| placeholder(root, prop, name));
            let unset = if default.is_none() && example.is_none() {
                UNSET
            } else if default.is_none() {
                UNSET_EXAMPLE
            } else {
                ""
            };
            let _ = writeln!(out, "{indent}# {name} = {value}{unset}");
        }
    }
}

/// `[dead_letter]`, `[admin]` and `[checkpoint]`, commented out.
fn global_tables(out: &mut String) {
    let tables = [
        (
            "dead_letter",
            "Where bad input goes (records that cannot be decoded or processed), with the \
             reason and its origin. Default: standard error.",
            schemars::schema_for!(tidegauge_core::dead_letter::DeadLetterConfig).to_value(),
        ),
        (
            "admin",
            "The admin API: `tidegauge top`, Prometheus `/metrics`, live parameter changes \
             (recorded with who made them). Present means on; loopback unless told otherwise.",
            schemars::schema_for!(tidegauge_core::admin::AdminConfig).to_value(),
        ),
        (
            "checkpoint",
            "Consistent snapshots of source positions and detector state: a restart \
             (even after kill -9) loses nothing acknowledged and re-learns nothing.",
            schemars::schema_for!(tidegauge_core::checkpoint::CheckpointConfig).to_value(),
        ),
    ];
    for (name, what, schema) in tables {
        comment(out, "", what);
        let _ = writeln!(out, "# [{name}]");
        let mut body = String::new();
        settings(&mut body, &schema, &schema, "");
        for line in body.lines().filter(|l| !l.is_empty()) {
            // Already commented (documentation, optional settings) or a required one.
            if line.starts_with("# ") {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "# {line}");
            }
        }
        out.push('\n');
    }
}

/// Writes `text` as `# ` comment lines wrapped at [`WIDTH`], keeping paragraphs.
fn comment(out: &mut String, indent: &str, text: &str) {
    let prefix = format!("{indent}# ");
    for (i, paragraph) in text.split("\n\n").enumerate() {
        if i > 0 {
            let _ = writeln!(out, "{}", prefix.trim_end());
        }
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && prefix.len() + line.len() + 1 + word.len() > WIDTH {
                let _ = writeln!(out, "{prefix}{line}");
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            let _ = writeln!(out, "{prefix}{line}");
        }
    }
}

fn required_of(object: &Value) -> Vec<&str> {
    object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        && let Some(def) = root.get("$defs").and_then(|d| d.get(name))
    {
        return resolve(root, def);
    }
    // Option<T>: T or null.
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = options
                .iter()
                .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if let [only] = non_null.as_slice() {
                return resolve(root, only);
            }
        }
    }
    schema
}

/// The schema of a table with named settings, if `schema` is one.
fn object_schema<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    let s = resolve(root, schema);
    s.get("properties").and_then(Value::as_object)?;
    Some(s)
}

fn range_of(schema: &Value) -> Option<String> {
    use tidegauge_core::ranges::{Bounds, show};
    let bounds = Bounds::of(schema);
    match (bounds.low, bounds.high) {
        (Some(lo), Some(hi)) if !lo.exclusive && !hi.exclusive => {
            Some(format!("{} to {}", show(lo.value), show(hi.value)))
        }
        (Some(lo), Some(hi)) => Some(format!("{}, {}", lo.as_low(), hi.as_high())),
        (Some(lo), None) => Some(lo.as_low()),
        (None, Some(hi)) => Some(hi.as_high()),
        (None, None) => None,
    }
}

/// A JSON value as a TOML value (inline tables for objects; nulls left out).
fn toml_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(toml_text).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => inline_table(map),
    })
}

fn inline_table(map: &Map<String, Value>) -> String {
    let entries: Vec<String> = map
        .iter()
        .filter_map(|(k, v)| toml_text(v).map(|v| format!("{} = {v}", key(k))))
        .collect();
    if entries.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", entries.join(", "))
    }
}

/// A bare key when TOML allows one, else a quoted one.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// A value of the right type for a setting with neither default nor example.
fn placeholder(root: &Value, schema: &Value, name: &str) -> String {
    let s = resolve(root, schema);
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
        .and_then(toml_text)
    {
        return first;
    }
    if let Some(options) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
        && let Some(first) = options
            .iter()
            .filter_map(|o| resolve(root, o).get("const"))
            .find_map(toml_text)
    {
        return first;
    }
    if tidegauge_core::params::is_secret(root, name, schema) {
        return format!("\"${{{}}}\"", name.to_ascii_uppercase());
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "string",
    };
    match ty {
        "integer" => s
            .get("minimum")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        "number" => s
            .get("minimum")
            .and_then(Value::as_f64)
            .map(|m| format!("{m:?}"))
            .unwrap_or_else(|| "0.0".into()),
        "boolean" => "false".into(),
        "array" => "[]".into(),
        "object" => placeholder_table(root, s, name),
        _ => "\"...\"".into(),
    }
}

/// An inline table for an object schema: required settings with a value, others left out.
fn placeholder_table(root: &Value, object: &Value, hint: &str) -> String {
    let required = required_of(object);
    let mut map = Map::new();
    for (name, prop) in props(object) {
        let default = prop.get("default").filter(|d| !d.is_null()).cloned();
        if required.contains(&name.as_str())
            && example_of(root, prop).is_none()
            && (name == "path" || name == "dir")
        {
            map.insert(name.clone(), Value::String(hint.to_string()));
        } else if let Some(value) = written(root, object, name, prop) {
            map.insert(name.clone(), value);
        } else if let Some(d) = default {
            map.insert(name.clone(), d);
        }
    }
    inline_table(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates `text` as `check` would; `env` gives the environment.
    fn loads_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        tidegauge_core::topology::load(text, env)
            .map(|_| ())
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("line {:?}: {e}", e.line))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    }

    /// No variable is set: a generated pipeline must not need one.
    fn loads(text: &str) -> Result<(), String> {
        loads_with(text, &|_| None)
    }

    fn touch_registry() {
        let _ = tidegauge_components::registered_types;
    }

    /// Every combination `init` offers gives a pipeline that validates as written, with
    /// and without the anomaly filter.
    #[test]
    fn every_offered_combination_validates() {
        touch_registry();
        let (sources, detectors, sinks) = (source_names(), detector_names(), sink_names());
        assert!(sources.contains(&"simulate") && sources.contains(&"file"));
        for d in [
            "zscore",
            "mad",
            "ensemble",
            "baseline",
            "threshold",
            "rate_of_change",
        ] {
            assert!(detectors.contains(&d), "{d} not in {detectors:?}");
        }
        assert!(!detectors.contains(&"filter") && !detectors.contains(&"window"));
        assert!(sinks.contains(&"stdout") && sinks.contains(&"jsonl"));
        let mut checked = 0;
        for source in &sources {
            for detector in &detectors {
                for sink in &sinks {
                    for all_events in [false, true] {
                        let choice = Choice {
                            source,
                            detector,
                            sink,
                            all_events,
                        };
                        let text = pipeline(&choice).unwrap();
                        if let Err(e) = loads(&text) {
                            panic!("{source} -> {detector} -> {sink}:\n{e}\n\n{text}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * sources.len() * detectors.len() * sinks.len());
    }

    /// The commented-out settings are valid too: uncommenting every setting of a
    /// component that shows its default or an example still validates.
    #[test]
    fn commented_settings_are_valid_when_uncommented() {
        touch_registry();
        let detectors = detector_names();
        for source in source_names() {
            for sink in sink_names() {
                // One detector per source/sink pair keeps the count down; every
                // detector is taken in turn.
                let detector = detectors[(source.len() + sink.len()) % detectors.len()];
                let text = pipeline(&Choice {
                    source,
                    detector,
                    sink,
                    all_events: false,
                })
                .unwrap();
                let mut in_global = false;
                let uncommented: String = text
                    .lines()
                    .map(|l| {
                        if l.starts_with("# [") {
                            in_global = true;
                        }
                        let setting = l
                            .strip_prefix("# ")
                            .filter(|rest| {
                                // Placeholders of unset settings only show the type.
                                !in_global
                                    && !rest.ends_with(UNSET)
                                    && rest.split_once(" = ").is_some_and(|(k, _)| {
                                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                                    })
                            })
                            .map(|rest| rest.trim_end_matches(UNSET_EXAMPLE));
                        format!("{}\n", setting.unwrap_or(l))
                    })
                    .collect();
                // Secrets are written as `${NAME}`: the user sets them.
                let env = |name: &str| Some(format!("{}-value", name.to_lowercase()));
                if let Err(e) = loads_with(&uncommented, &env) {
                    panic!("{source} -> {detector} -> {sink}:\n{e}\n\n{uncommented}");
                }
            }
        }
    }

    #[test]
    fn comments_wrap_and_keep_paragraphs() {
        let mut out = String::new();
        comment(&mut out, "", &format!("{}\n\nsecond", "word ".repeat(40)));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.iter().all(|l| l.len() <= WIDTH && l.starts_with('#')));
        assert!(lines.contains(&"#"));
        assert_eq!(lines.last(), Some(&"# second"));
    }

    #[test]
    fn json_values_become_toml() {
        let v = serde_json::json!({"rows": 8192, "name": "a \"b\"", "list": [1, 2], "n": null});
        assert_eq!(
            toml_text(&v).unwrap(),
            r#"{ rows = 8192, name = 'a "b"', list = [1, 2] }"#
        );
    }
}
