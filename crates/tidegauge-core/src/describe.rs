//! Self-description: component lists, parameter tables and JSON Schemas, all generated
//! from the config structs (their serde attributes and doc comments).

use crate::params::params;
use crate::registry::{self, ComponentDescriptor, ComponentKind};
use serde_json::{Map, Value, json};

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
                    schemars::schema_for!(crate::disk_buffer::DiskBufferConfig).to_value();
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
    let mut dead_letter = schemars::schema_for!(crate::dead_letter::DeadLetterConfig).to_value();
    if let Some(obj) = dead_letter.as_object_mut() {
        obj.remove("$schema");
    }
    tables.insert("dead_letter".into(), dead_letter);
    let mut admin = schemars::schema_for!(crate::admin::AdminConfig).to_value();
    if let Some(obj) = admin.as_object_mut() {
        obj.remove("$schema");
    }
    tables.insert("admin".into(), admin);
    let mut checkpoint = schemars::schema_for!(crate::checkpoint::CheckpointConfig).to_value();
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
