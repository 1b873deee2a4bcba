//! Self-description: component lists, parameter tables and JSON Schemas, all generated
//! from the config structs (their serde attributes and doc comments).

use serde_json::{Map, Value, json};
use tidegauge_core::registry::{self, ComponentDescriptor, ComponentKind};

/// One parameter of a component, flattened out of its JSON Schema.
#[derive(Debug, PartialEq)]
pub struct Param {
    /// Dotted name (`batch.rows`).
    pub name: String,
    /// Type in words (`integer`, `string`, `one of: text, json`).
    pub kind: String,
    /// Default value as JSON, or `required`.
    pub default: Option<String>,
    /// Whether it must be given.
    pub required: bool,
    /// Allowed range, when the schema states one.
    pub range: Option<String>,
    /// The doc comment.
    pub doc: String,
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str)
        && let Some(name) = r.strip_prefix("#/$defs/")
        && let Some(def) = root.get("$defs").and_then(|d| d.get(name))
    {
        return resolve(root, def);
    }
    schema
}

/// Type in words, and the object schema to descend into for nested tables.
fn kind_of<'a>(root: &'a Value, schema: &'a Value) -> (String, Option<&'a Value>) {
    let s = resolve(root, schema);
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect();
        return (format!("one of: {}", names.join(", ")), None);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = s.get(key).and_then(Value::as_array) {
            let consts: Vec<String> = options
                .iter()
                .filter_map(|o| {
                    let o = resolve(root, o);
                    o.get("const")
                        .or_else(|| o.get("enum").and_then(|e| e.get(0)))
                        .map(|c| {
                            c.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| c.to_string())
                        })
                })
                .collect();
            if consts.len() == options.len() {
                return (format!("one of: {}", consts.join(", ")), None);
            }
            // Option<T>: T or null.
            let non_null: Vec<&Value> = options
                .iter()
                .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if let [only] = non_null.as_slice() {
                return kind_of(root, only);
            }
        }
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    };
    if ty == "array" {
        let items = s
            .get("items")
            .map(|i| kind_of(root, i).0)
            .unwrap_or_else(|| "any".into());
        return (format!("list of {items}"), None);
    }
    if ty == "object" {
        if s.get("properties").is_some() {
            return ("table".into(), Some(s));
        }
        let values = s
            .get("additionalProperties")
            .map(|v| kind_of(root, v).0)
            .unwrap_or_else(|| "any".into());
        return (format!("table of {values}"), None);
    }
    (ty, None)
}

fn range_of(root: &Value, schema: &Value) -> Option<String> {
    let s = resolve(root, schema);
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let show = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        }
    };
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => Some(format!("{}..={}", show(lo), show(hi))),
        (Some(lo), None) => Some(format!(">= {}", show(lo))),
        (None, Some(hi)) => Some(format!("<= {}", show(hi))),
        (None, None) => None,
    }
}

fn collect(root: &Value, object: &Value, prefix: &str, out: &mut Vec<Param>) {
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, schema) in props {
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let (kind, nested) = kind_of(root, schema);
        let doc = schema
            .get("description")
            .or_else(|| resolve(root, schema).get("description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        out.push(Param {
            name: full.clone(),
            kind,
            default: schema.get("default").map(|d| d.to_string()),
            required: required.contains(&name.as_str()),
            range: range_of(root, schema),
            doc,
        });
        if let Some(obj) = nested {
            collect(root, obj, &full, out);
        }
    }
}

/// Every parameter of a component, nested tables flattened (`batch.rows`).
pub fn params(d: &ComponentDescriptor) -> Vec<Param> {
    let schema = d.json_schema().to_value();
    let mut out = Vec::new();
    collect(&schema, &schema, "", &mut out);
    out
}

/// The text `tidegauge describe` prints.
pub fn describe_text(d: &ComponentDescriptor) -> String {
    let schema = d.json_schema().to_value();
    let mut out = format!("{} ({})\n", d.type_name, d.kind);
    if let Some(desc) = schema.get("description").and_then(Value::as_str) {
        for line in desc.lines() {
            out.push_str(&format!("  {line}\n").replace("  \n", "\n"));
        }
    }
    out.push_str("\nParameters:\n");
    out.push_str(&format!(
        "  type = \"{}\"\n      Selects this component.\n",
        d.type_name
    ));
    if d.kind != ComponentKind::Source {
        out.push_str("  inputs  list of string  required\n      Ids of the sources or transforms whose events this component takes.\n");
    }
    if d.kind == ComponentKind::Sink {
        out.push_str("  buffer  table  optional\n      A disk buffer in front of the sink: `{ path = \"dir\", max_bytes = 268435456 }`.\n      Batches are fsynced there before upstream counts them delivered, survive a\n      restart, and a damaged record is reported and skipped.\n");
    }
    for p in params(d) {
        let mut head = format!("  {}  {}", p.name, p.kind);
        if p.required {
            head.push_str("  required");
        } else if let Some(def) = &p.default {
            head.push_str(&format!("  default {def}"));
        } else if p.kind != "table" {
            head.push_str("  optional");
        }
        if let Some(r) = &p.range {
            head.push_str(&format!("  range {r}"));
        }
        out.push_str(&head);
        out.push('\n');
        for line in p.doc.lines() {
            out.push_str(&format!("      {line}\n").replace("      \n", "\n"));
        }
    }
    out
}

/// `tidegauge describe --json`: the component's JSON Schema as it appears in a pipeline
/// file (with `type` and `inputs`).
pub fn component_schema(d: &ComponentDescriptor) -> Value {
    let mut schema = d.json_schema().to_value();
    if let Some(obj) = schema.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(props) = props.as_object_mut() {
            props.insert(
                "type".into(),
                json!({ "const": d.type_name, "description": "Selects this component." }),
            );
            if d.kind == ComponentKind::Sink {
                let mut buffer =
                    schemars::schema_for!(tidegauge_core::disk_buffer::DiskBufferConfig).to_value();
                if let Some(b) = buffer.as_object_mut() {
                    b.remove("$schema");
                    b.remove("title");
                }
                props.insert("buffer".into(), buffer);
            }
            if d.kind != ComponentKind::Source {
                props.insert(
                    "inputs".into(),
                    json!({
                        "type": "array", "items": { "type": "string" }, "minItems": 1,
                        "description": "Ids of the sources or transforms whose events this component takes."
                    }),
                );
            }
        }
        let required = obj
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(req) = required.as_array_mut() {
            req.insert(0, json!("type"));
            if d.kind != ComponentKind::Source {
                req.insert(1, json!("inputs"));
            }
        }
    }
    schema
}

/// Rewrites `#/$defs/X` references to `#/$defs/{prefix}X` everywhere in `v`.
fn prefix_refs(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/$defs/{prefix}{name}");
            }
            for child in map.values_mut() {
                prefix_refs(child, prefix);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| prefix_refs(i, prefix)),
        _ => {}
    }
}

/// JSON Schema of a whole pipeline file, for editor completion and validation.
pub fn pipeline_schema() -> Value {
    let mut defs = Map::new();
    let mut tables = Map::new();
    for kind in [
        ComponentKind::Source,
        ComponentKind::Transform,
        ComponentKind::Sink,
    ] {
        let mut options = Vec::new();
        for d in registry::all().into_iter().filter(|d| d.kind == kind) {
            let mut s = component_schema(d);
            let prefix = format!("{}_{}_", kind.name(), d.type_name);
            prefix_refs(&mut s, &prefix);
            if let Some(obj) = s.as_object_mut() {
                if let Some(Value::Object(own)) = obj.remove("$defs") {
                    for (k, v) in own {
                        defs.insert(format!("{prefix}{k}"), v);
                    }
                }
                obj.remove("$schema");
            }
            let name = format!("{}_{}", kind.name(), d.type_name);
            defs.insert(name.clone(), s);
            options.push(json!({ "$ref": format!("#/$defs/{name}") }));
        }
        tables.insert(
            kind.table().into(),
            json!({
                "type": "object",
                "description": format!("The pipeline's {}, by id.", kind.table()),
                "additionalProperties": { "oneOf": options }
            }),
        );
    }
    let mut dead_letter =
        schemars::schema_for!(tidegauge_core::dead_letter::DeadLetterConfig).to_value();
    if let Some(obj) = dead_letter.as_object_mut() {
        obj.remove("$schema");
    }
    tables.insert("dead_letter".into(), dead_letter);
    let mut checkpoint =
        schemars::schema_for!(tidegauge_core::checkpoint::CheckpointConfig).to_value();
    if let Some(obj) = checkpoint.as_object_mut() {
        obj.remove("$schema");
    }
    tables.insert("checkpoint".into(), checkpoint);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tidegauge pipeline",
        "description": "A tidegauge pipeline: sources -> transforms -> sinks.",
        "type": "object",
        "additionalProperties": false,
        "properties": tables,
        "$defs": defs
    })
}
