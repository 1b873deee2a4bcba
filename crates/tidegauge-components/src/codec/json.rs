//! JSON Lines: one object per line, declared fields picked out by name straight into a
//! reusable [`Row`] (no intermediate map, no allocation per line). Unknown keys are
//! skipped; nested values where a scalar is declared are reported.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::{Row, Slot};

/// Decodes JSON Lines records into rows of the declared fields.
pub struct JsonDecoder {
    names: Vec<String>,
    name_bytes: Vec<Box<[u8]>>,
    /// The layout of the last line the fast path decoded.
    shape: super::flat_json::Shape,
}

impl JsonDecoder {
    /// A decoder extracting the fields `names` (in this order).
    pub fn new(names: Vec<String>) -> Self {
        let name_bytes = names.iter().map(|n| n.as_bytes().into()).collect();
        JsonDecoder {
            names,
            name_bytes,
            shape: Default::default(),
        }
    }

    /// Fills `row` from one line (without its newline). On error the row is undefined.
    ///
    /// Flat objects take a fast single pass ([`super::flat_json`]); anything else goes
    /// through `serde_json`, with the same result.
    pub fn decode(&mut self, line: &[u8], row: &mut Row) -> Result<(), String> {
        row.reset();
        if super::flat_json::decode(line, &self.name_bytes, &mut self.shape, row) {
            return Ok(());
        }
        self.decode_general(line, row)
    }

    /// Decodes with `serde_json` only (the reference for the fast path).
    pub fn decode_general(&self, line: &[u8], row: &mut Row) -> Result<(), String> {
        row.reset();
        let mut de = serde_json::Deserializer::from_slice(line);
        de.deserialize_map(RecordVisitor {
            names: &self.names,
            row,
        })
        .map_err(|e| describe(&e, line))?;
        de.end().map_err(|e| describe(&e, line))
    }
}

fn describe(e: &serde_json::Error, line: &[u8]) -> String {
    // serde_json calls bad UTF-8 inside a string an "invalid unicode code point"; say
    // what it is, and where.
    if let Err(u) = std::str::from_utf8(line) {
        return format!("invalid UTF-8 at byte {}", u.valid_up_to() + 1);
    }
    use serde_json::error::Category;
    let column = e.column();
    let what = match e.classify() {
        Category::Eof => "truncated JSON".to_string(),
        Category::Syntax | Category::Data | Category::Io => {
            let msg = e.to_string();
            // serde_json appends " at line 1 column N"; keep the column, drop the line.
            match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            }
        }
    };
    format!("{what} (column {column})")
}

struct RecordVisitor<'r> {
    names: &'r [String],
    row: &'r mut Row,
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(field) = map.next_key_seed(KeySeed(self.names))? {
            match field {
                Some(i) => map.next_value_seed(ValueSeed {
                    row: &mut *self.row,
                    index: i,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Matches a key against the declared names: `Some(index)` or `None` to skip.
struct KeySeed<'r>(&'r [String]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| n == key))
    }
}

struct ValueSeed<'r> {
    row: &'r mut Row,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.row.slots[self.index] = Slot::Bool(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.row.slots[self.index] = Slot::I64(v);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.row.slots[self.index] = match i64::try_from(v) {
            Ok(v) => Slot::I64(v),
            Err(_) => Slot::U64(v),
        };
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.row.slots[self.index] = Slot::F64(v);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.row.set_text(self.index, v, true);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.row.slots[self.index] = Slot::Null;
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.row.slots[self.index] = Slot::Nested("an object");
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.row.slots[self.index] = Slot::Nested("an array");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec() -> (JsonDecoder, Row) {
        (
            JsonDecoder::new(vec!["sensor_id".into(), "ts".into(), "value".into()]),
            Row::new(3),
        )
    }

    #[test]
    fn picks_declared_fields_in_any_order() {
        let (mut d, mut row) = dec();
        d.decode(
            br#"{"value":-1.5e1,"extra":{"a":[1,2]},"ts":17,"sensor_id":"s\"1"}"#,
            &mut row,
        )
        .unwrap();
        assert_eq!(row.slots[1], Slot::I64(17));
        assert_eq!(row.slots[2], Slot::F64(-15.0));
        assert_eq!(row.scratch, "s\"1");
    }

    #[test]
    fn reports_malformed_input_with_its_column() {
        let (mut d, mut row) = dec();
        let e = d
            .decode(br#"{"sensor_id":"a","ts":1,"value":}"#, &mut row)
            .unwrap_err();
        assert!(e.contains("column"), "{e}");
        let e = d.decode(br#"[1,2,3]"#, &mut row).unwrap_err();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = d
            .decode(br#"{"sensor_id":"a"} trailing"#, &mut row)
            .unwrap_err();
        assert!(e.contains("trailing"), "{e}");
        let e = d.decode(br#"{"sensor_id":"a","#, &mut row).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = d.decode(b"{\"sensor_id\":\"\xff\"}", &mut row).unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn nested_values_are_flagged_not_fatal() {
        let (mut d, mut row) = dec();
        d.decode(br#"{"sensor_id":{"x":1},"ts":[1],"value":null}"#, &mut row)
            .unwrap();
        assert_eq!(row.slots[0], Slot::Nested("an object"));
        assert_eq!(row.slots[1], Slot::Nested("an array"));
        assert_eq!(row.slots[2], Slot::Null);
    }
}
