//! Numeric ranges, read from a config's JSON Schema: what `describe` shows (`range
//! 1..=1000`) and what validation enforces ("must be in 1..=1000, got 0"), from the one
//! source, so that the two cannot disagree and no component checks a range by hand.
//!
//! A range is set on a config field with `#[schemars(range(min = 1, max = 1000))]`
//! (inclusive) or `#[schemars(extend("exclusiveMinimum" = 0.0))]` (exclusive).

use serde_json::{Number, Value};

use crate::error::ConfigError;

/// One end of a range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// The value.
    pub value: f64,
    /// Whether the value itself is outside (`exclusiveMinimum`, `exclusiveMaximum`).
    pub exclusive: bool,
}

impl Bound {
    /// As a lower end in words: `above 0`, `at least 1`.
    pub fn as_low(self) -> String {
        let word = if self.exclusive { "above" } else { "at least" };
        format!("{word} {}", show(self.value))
    }

    /// As an upper end in words: `below 1`, `at most 100`.
    pub fn as_high(self) -> String {
        let word = if self.exclusive { "below" } else { "at most" };
        format!("{word} {}", show(self.value))
    }
}

/// The range a JSON schema sets on a number (`minimum`, `maximum` and their exclusive
/// forms); either end may be open.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bounds {
    /// Lower end.
    pub low: Option<Bound>,
    /// Upper end.
    pub high: Option<Bound>,
}

/// A bound as a user reads it: a whole number without a fraction (`10`, not `10.0`).
pub fn show(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Bounds {
    /// The bounds `schema` states (itself, not its `$ref`s or alternatives). Of an
    /// inclusive and an exclusive bound at the same end, the tighter counts.
    pub fn of(schema: &Value) -> Bounds {
        let num = |k: &str| schema.get(k).and_then(Value::as_f64);
        let pick = |inclusive: Option<f64>, exclusive: Option<f64>, lower: bool| match (
            inclusive, exclusive,
        ) {
            (None, None) => None,
            (Some(v), None) => Some(Bound {
                value: v,
                exclusive: false,
            }),
            (None, Some(v)) => Some(Bound {
                value: v,
                exclusive: true,
            }),
            (Some(i), Some(e)) => {
                let exclusive_tighter = if lower { e >= i } else { e <= i };
                Some(if exclusive_tighter {
                    Bound {
                        value: e,
                        exclusive: true,
                    }
                } else {
                    Bound {
                        value: i,
                        exclusive: false,
                    }
                })
            }
        };
        Bounds {
            low: pick(num("minimum"), num("exclusiveMinimum"), true),
            high: pick(num("maximum"), num("exclusiveMaximum"), false),
        }
    }

    /// Whether no end is set.
    pub fn is_open(&self) -> bool {
        self.low.is_none() && self.high.is_none()
    }

    /// The range as `describe` shows it: `1..=1000`, `>= 1`, `> 0`, `<= 5`, `>= 0, < 1`;
    /// `None` when no end is set.
    pub fn describe(&self) -> Option<String> {
        let low = |b: Bound| format!("{} {}", if b.exclusive { ">" } else { ">=" }, show(b.value));
        let high = |b: Bound| format!("{} {}", if b.exclusive { "<" } else { "<=" }, show(b.value));
        Some(match (self.low, self.high) {
            (None, None) => return None,
            (Some(l), None) => low(l),
            (None, Some(h)) => high(h),
            (Some(l), Some(h)) if !l.exclusive && !h.exclusive => {
                format!("{}..={}", show(l.value), show(h.value))
            }
            (Some(l), Some(h)) => format!("{}, {}", low(l), high(h)),
        })
    }

    /// What is wrong with `value` ("must be in 1..=1000, got 0"), or `None` when it
    /// lies in the range.
    pub fn violation(&self, value: &Number) -> Option<String> {
        let below = self.low.is_some_and(|b| {
            let c = compare(value, b.value);
            c == Some(std::cmp::Ordering::Less)
                || (b.exclusive && c == Some(std::cmp::Ordering::Equal))
        });
        let above = self.high.is_some_and(|b| {
            let c = compare(value, b.value);
            c == Some(std::cmp::Ordering::Greater)
                || (b.exclusive && c == Some(std::cmp::Ordering::Equal))
        });
        if !(below || above) {
            return None;
        }
        let got = match value.as_f64() {
            Some(f) if value.is_f64() => show(f),
            _ => value.to_string(),
        };
        let what = match (self.low, self.high) {
            (Some(l), Some(h)) if !l.exclusive && !h.exclusive => {
                format!("in {}", self.describe()?)
            }
            (Some(l), Some(h)) => format!("{} and {}", l.as_low(), h.as_high()),
            (Some(l), None) => l.as_low(),
            (None, Some(h)) => h.as_high(),
            (None, None) => return None,
        };
        Some(format!("must be {what}, got {got}"))
    }
}

/// `value` against `bound`, exactly for integers (no rounding through `f64` near 2^53).
fn compare(value: &Number, bound: f64) -> Option<std::cmp::Ordering> {
    if bound.fract() == 0.0 && bound.abs() < 9e15 {
        let b = bound as i128;
        if let Some(v) = value.as_i64() {
            return Some((v as i128).cmp(&b));
        }
        if let Some(v) = value.as_u64() {
            return Some((v as i128).cmp(&b));
        }
    }
    value.as_f64()?.partial_cmp(&bound)
}

/// The schema `schema` stands for, following `$ref`s into `root`'s `$defs`.
pub(crate) fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    // A chain of references is short; the bound guards against a cycle.
    for _ in 0..16 {
        match s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| root.get("$defs")?.get(name))
        {
            Some(def) => s = def,
            None => break,
        }
    }
    s
}

/// Every number in `settings` (a component's settings as written, as JSON) outside the
/// range its place in `schema` (the component's JSON Schema) allows, each as an error at
/// its dotted path (`retry.max_attempts`, `members[1].window`). Settings the schema does
/// not describe are left alone: deserialization reports them.
pub fn check(schema: &Value, settings: &Value) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    walk(schema, schema, settings, "", &mut errors);
    errors
}

fn walk(root: &Value, schema: &Value, value: &Value, path: &str, out: &mut Vec<ConfigError>) {
    let s = resolve(root, schema);
    if let Value::Number(n) = value
        && let Some(message) = Bounds::of(s).violation(n)
    {
        out.push(ConfigError::new(path, message));
        return;
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for part in all {
            walk(root, part, value, path, out);
        }
    }
    // `Option<T>` (T or null): T's ranges apply. Other alternatives (tagged choices) are
    // not guessed at.
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = s.get(key).and_then(Value::as_array) {
            let real: Vec<&Value> = options
                .iter()
                .filter(|o| resolve(root, o).get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if let [only] = real.as_slice() {
                walk(root, only, value, path, out);
            }
        }
    }
    match value {
        Value::Object(map) => {
            let Some(props) = s.get("properties").and_then(Value::as_object) else {
                return;
            };
            // In the schema's order (the struct's), whatever the order of the map.
            for (name, p) in props {
                if let Some(v) = map.get(name) {
                    let sub = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    walk(root, p, v, &sub, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items").filter(|i| i.is_object()) {
                for (i, v) in items.iter().enumerate() {
                    walk(root, item, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "max_rows": { "type": "integer", "minimum": 1 },
                "workers": { "type": ["integer", "null"], "minimum": 0, "maximum": 1024 },
                "threshold": { "type": "number", "exclusiveMinimum": 0.0 },
                "rate": { "type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0 },
                "share": { "type": "number", "exclusiveMinimum": 0.0, "maximum": 0.5 },
                "ceiling": { "type": "number", "maximum": 2.5 },
                "retry": { "$ref": "#/$defs/Retry", "default": { "max_attempts": 4 } },
                "breaker": { "anyOf": [ { "$ref": "#/$defs/Breaker" }, { "type": "null" } ] },
                "weights": { "type": "array", "items": { "type": "number", "minimum": 0.0 } },
                "name": { "type": "string" }
            },
            "$defs": {
                "Retry": {
                    "type": "object",
                    "properties": {
                        "max_attempts": { "type": "integer", "minimum": 1, "maximum": 1000 },
                        "multiplier": { "type": "number", "minimum": 1.0 }
                    }
                },
                "Breaker": {
                    "type": "object",
                    "properties": { "failures": { "type": "integer", "minimum": 1 } }
                }
            }
        })
    }

    fn errors(settings: Value) -> Vec<(String, String)> {
        check(&schema(), &settings)
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    fn one(path: &str, message: &str) -> Vec<(String, String)> {
        vec![(path.to_string(), message.to_string())]
    }

    #[test]
    fn values_in_range_pass() {
        assert!(
            errors(json!({
                "max_rows": 1, "workers": 1024, "threshold": 0.001, "rate": 0.0,
                "share": 0.5, "ceiling": 2.5,
                "retry": { "max_attempts": 1000, "multiplier": 1.0 },
                "breaker": { "failures": 1 }, "weights": [0.0, 3.0], "name": "x"
            }))
            .is_empty()
        );
        assert!(errors(json!({ "workers": null, "breaker": null })).is_empty());
    }

    #[test]
    fn integer_bounds() {
        assert_eq!(
            errors(json!({ "max_rows": 0 })),
            one("max_rows", "must be at least 1, got 0")
        );
        assert_eq!(
            errors(json!({ "workers": 1025 })),
            one("workers", "must be in 0..=1024, got 1025")
        );
        // Exact for integers beyond what a float holds.
        assert_eq!(
            errors(json!({ "workers": u64::MAX })),
            one("workers", "must be in 0..=1024, got 18446744073709551615")
        );
    }

    #[test]
    fn float_bounds_inclusive_and_exclusive() {
        assert_eq!(
            errors(json!({ "threshold": 0.0 })),
            one("threshold", "must be above 0, got 0")
        );
        assert_eq!(
            errors(json!({ "threshold": -1.5 })),
            one("threshold", "must be above 0, got -1.5")
        );
        assert_eq!(
            errors(json!({ "rate": 1.0 })),
            one("rate", "must be at least 0 and below 1, got 1")
        );
        assert_eq!(
            errors(json!({ "share": 0.0 })),
            one("share", "must be above 0 and at most 0.5, got 0")
        );
        assert_eq!(
            errors(json!({ "ceiling": 2.75 })),
            one("ceiling", "must be at most 2.5, got 2.75")
        );
        // An integer written for a float field is checked all the same.
        assert_eq!(
            errors(json!({ "threshold": 0 })),
            one("threshold", "must be above 0, got 0")
        );
    }

    #[test]
    fn nested_tables_options_and_lists_name_their_path() {
        assert_eq!(
            errors(json!({ "retry": { "max_attempts": 0, "multiplier": 0.5 } })),
            vec![
                (
                    "retry.max_attempts".to_string(),
                    "must be in 1..=1000, got 0".to_string()
                ),
                (
                    "retry.multiplier".to_string(),
                    "must be at least 1, got 0.5".to_string()
                ),
            ]
        );
        assert_eq!(
            errors(json!({ "breaker": { "failures": 0 } })),
            one("breaker.failures", "must be at least 1, got 0")
        );
        assert_eq!(
            errors(json!({ "weights": [1.0, -2.0] })),
            one("weights[1]", "must be at least 0, got -2")
        );
    }

    #[test]
    fn every_problem_is_reported_and_unknown_settings_are_left_alone() {
        let got = errors(json!({
            "max_rows": 0, "threshold": 0.0, "retry": { "max_attempts": 2000 },
            "unknown": -5, "name": 3
        }));
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn describe_matches_the_message() {
        let b = |s: Value| Bounds::of(&s).describe();
        assert_eq!(
            b(json!({ "minimum": 1, "maximum": 1000 })).as_deref(),
            Some("1..=1000")
        );
        assert_eq!(b(json!({ "minimum": 1 })).as_deref(), Some(">= 1"));
        assert_eq!(
            b(json!({ "exclusiveMinimum": 0.0 })).as_deref(),
            Some("> 0")
        );
        assert_eq!(
            b(json!({ "minimum": 0.0, "exclusiveMaximum": 1.0 })).as_deref(),
            Some(">= 0, < 1")
        );
        assert_eq!(
            b(json!({ "exclusiveMinimum": 0.0, "maximum": 0.5 })).as_deref(),
            Some("> 0, <= 0.5")
        );
        assert_eq!(b(json!({ "maximum": 5 })).as_deref(), Some("<= 5"));
        assert_eq!(b(json!({ "type": "integer" })), None);
        // The tighter of two bounds at one end counts.
        assert_eq!(
            b(json!({ "minimum": 0.0, "exclusiveMinimum": 0.0 })).as_deref(),
            Some("> 0")
        );
    }
}
