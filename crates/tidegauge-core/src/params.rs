//! A component's parameters, flattened out of the JSON Schema of its config struct
//! (types, defaults, ranges and doc comments), for `describe` and the admin API.

use serde_json::Value;

use crate::registry::ComponentDescriptor;

/// One parameter of a component, flattened out of its JSON Schema.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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
    /// A secret (password, token): its value is never shown.
    pub secret: bool,
}

/// Whether a setting holds a secret: marked `writeOnly` in its schema (through `Option`,
/// `anyOf`/`oneOf`/`allOf` and `$ref`s into `root`), or named like one
/// ([`redact::is_secret_name`](crate::redact::is_secret_name)).
pub fn is_secret(root: &Value, name: &str, schema: &Value) -> bool {
    crate::redact::schema_marks_secret(root, schema)
        || crate::redact::schema_marks_secret_values(root, schema)
        || crate::redact::is_secret_name(name)
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
    crate::ranges::Bounds::of(resolve(root, schema)).describe()
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
            secret: is_secret(root, &full, schema),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_by_mark_or_name() {
        let plain = serde_json::json!({"type": "string"});
        let root = serde_json::json!({
            "$defs": { "Secret": { "type": "string", "writeOnly": true } }
        });
        assert!(is_secret(&root, "password", &plain));
        assert!(is_secret(&root, "auth.token", &plain));
        assert!(!is_secret(&root, "key_field", &plain));
        assert!(!is_secret(&root, "token_env", &plain));
        assert!(is_secret(
            &root,
            "x",
            &serde_json::json!({"writeOnly": true})
        ));
        // The mark survives Option<Secret>: anyOf of a $ref and null.
        let optional = serde_json::json!({
            "anyOf": [ { "$ref": "#/$defs/Secret" }, { "type": "null" } ]
        });
        assert!(is_secret(&root, "auth_header_value", &optional));
    }
}
