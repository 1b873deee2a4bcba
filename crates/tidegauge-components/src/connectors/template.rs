//! What message-broker sinks share: topic (subject) templates filled from each event's
//! fields, and events encoded as JSON objects packed into messages ([`pack`]).

use arrow_array::RecordBatch;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{ArrowError, Schema};
use tidegauge_core::ConfigError;

/// A topic or subject with `{field}` placeholders, e.g. `alerts/{sensor_id}`.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses `text`; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{` in `{text}`")),
                        }
                    }
                    if name.trim().is_empty() {
                        return Err(format!("empty `{{}}` in `{text}`"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(name.trim().to_string()));
                }
                '}' => return Err(format!("unmatched `}}` in `{text}`")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    /// Fields named by placeholders that `schema` lacks.
    pub fn missing_fields(&self, schema: &Schema) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Field(f) if schema.field_with_name(f).is_err() => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    /// Validation of the template in setting `setting`: it parses and names only fields
    /// of `schema`; each problem becomes a config error at that setting.
    pub fn check(setting: &str, text: &str, schema: &Schema, errors: &mut Vec<ConfigError>) {
        match Template::parse(text) {
            Ok(t) => errors.extend(t.missing_fields(schema).into_iter().map(|f| {
                ConfigError::new(
                    setting,
                    format!("`{{{f}}}` names a field the input does not have"),
                )
            })),
            Err(e) => errors.push(ConfigError::new(setting, e)),
        }
    }

    /// Whether the template has no placeholder (the same text for every event).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The text with each placeholder replaced by `value(field)`.
    pub fn render_with(&self, mut value: impl FnMut(&str, &mut String)) -> String {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Field(f) => value(f, &mut s),
            }
        }
        s
    }

    /// The text of every row of `batch` (null fields render as empty text).
    pub fn render_all(&self, batch: &RecordBatch) -> Result<Vec<String>, ArrowError> {
        let options = FormatOptions::default().with_null("");
        let schema = batch.schema();
        let formatters: Vec<Option<ArrayFormatter<'_>>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(_) => Ok(None),
                Part::Field(f) => {
                    let i = schema.index_of(f)?;
                    ArrayFormatter::try_new(batch.column(i).as_ref(), &options).map(Some)
                }
            })
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let mut s = String::new();
            for (p, f) in self.parts.iter().zip(&formatters) {
                match (p, f) {
                    (Part::Text(t), _) => s.push_str(t),
                    (Part::Field(_), Some(f)) => {
                        use std::fmt::Write;
                        let _ = write!(s, "{}", f.value(row));
                    }
                    (Part::Field(_), None) => {}
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// One message of [`pack`]: a topic and the events for it, as JSON Lines.
#[derive(Debug, PartialEq)]
pub struct Packed<'t> {
    /// Topic (subject) of the message.
    pub topic: &'t str,
    /// One encoded event per line, no trailing newline.
    pub payload: Vec<u8>,
    /// Events in it.
    pub events: u64,
}

/// Packs encoded events (`(topic, payload)`, in batch order) into messages: up to
/// `per_message` events of one topic each, joined by newlines, a message's payload not
/// growing past `max_payload(topic)` bytes (a single event larger than that still gets a
/// message of its own; the caller refuses those before). Each topic's events keep their order across and within
/// its messages; messages of different topics may interleave differently from the events.
pub fn pack<'t, 'p>(
    events: impl IntoIterator<Item = (&'t str, &'p [u8])>,
    per_message: usize,
    max_payload: impl Fn(&str) -> usize,
) -> Vec<Packed<'t>> {
    let mut out: Vec<Packed<'t>> = Vec::new();
    // The message of each topic that may still take events.
    let mut open: std::collections::HashMap<&'t str, usize> = std::collections::HashMap::new();
    for (topic, payload) in events {
        if per_message > 1
            && let Some(&i) = open.get(topic)
        {
            let m = &mut out[i];
            if (m.events as usize) < per_message
                && m.payload.len() + 1 + payload.len() <= max_payload(topic)
            {
                m.payload.push(b'\n');
                m.payload.extend_from_slice(payload);
                m.events += 1;
                continue;
            }
        }
        out.push(Packed {
            topic,
            payload: payload.to_vec(),
            events: 1,
        });
        if per_message > 1 {
            open.insert(topic, out.len() - 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, StringArray};
    use arrow_schema::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn check_reports_unknown_fields_and_bad_templates_at_the_setting() {
        let schema = Schema::new(vec![Field::new("sensor_id", DataType::Utf8, false)]);
        let mut errors = Vec::new();
        Template::check("topic", "plant/{sensor_id}/{site}", &schema, &mut errors);
        Template::check("subject", "plant/{sensor_id", &schema, &mut errors);
        Template::check("topic", "plant/{sensor_id}", &schema, &mut errors);
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{shown:?}");
        assert!(
            shown[0].contains("topic") && shown[0].contains("`{site}`"),
            "{shown:?}"
        );
        assert!(shown[1].contains("subject"), "{shown:?}");
    }

    #[test]
    fn pack_keeps_each_topics_order_within_the_limits() {
        let events: Vec<(&str, Vec<u8>)> = (0..10)
            .map(|i| (["a", "b"][i % 2], format!("{{\"n\":{i}}}").into_bytes()))
            .collect();
        let it = || events.iter().map(|(t, p)| (*t, p.as_slice()));
        // One event per message: the batch as it is.
        let one = pack(it(), 1, |_| 1 << 20);
        assert_eq!(one.len(), 10);
        assert!(one.iter().zip(&events).all(|(m, e)| m.payload == e.1));
        // Three per message: a: 0 2 4 | 6 8, b: 1 3 5 | 7 9.
        let three = pack(it(), 3, |_| 1 << 20);
        let shown: Vec<(&str, String, u64)> = three
            .iter()
            .map(|m| {
                (
                    m.topic,
                    String::from_utf8_lossy(&m.payload).into_owned(),
                    m.events,
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("a", "{\"n\":0}\n{\"n\":2}\n{\"n\":4}".into(), 3),
                ("b", "{\"n\":1}\n{\"n\":3}\n{\"n\":5}".into(), 3),
                ("a", "{\"n\":6}\n{\"n\":8}".into(), 2),
                ("b", "{\"n\":7}\n{\"n\":9}".into(), 2),
            ]
        );
        // A byte limit closes a message early: 7-byte events, at most 15 bytes.
        let small = pack(it(), 100, |_| 15);
        assert!(small.iter().all(|m| m.payload.len() <= 15 && m.events <= 2));
        assert_eq!(small.iter().map(|m| m.events).sum::<u64>(), 10);
    }

    #[test]
    fn renders_fields_per_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, true),
            Field::new("value", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Float64Array::from(vec![1.5, 2.0])),
            ],
        )
        .unwrap();
        let t = Template::parse("alerts/{sensor_id}/{{x}}").unwrap();
        assert!(t.missing_fields(&schema).is_empty());
        assert_eq!(
            t.render_all(&batch).unwrap(),
            vec!["alerts/a/{x}", "alerts//{x}"]
        );
        assert_eq!(
            Template::parse("a/{nope}").unwrap().missing_fields(&schema),
            vec!["nope"]
        );
        assert!(Template::parse("a/{x").is_err());
    }
}
