//! The fast path of the JSON Lines decoder: one pass over a flat object (string keys
//! without escapes; string, number, boolean or null values), straight into a [`Row`].
//!
//! It accepts only what it can decode exactly as `serde_json` would, and gives up on
//! anything else (escapes, nested values, control characters, invalid UTF-8, malformed
//! numbers, trailing bytes): the caller then decodes the line with `serde_json`, which
//! also produces the error message. So the fast path changes speed, never results — a
//! property test and the fuzz target compare the two on arbitrary input.

use super::{Row, Slot};

/// Decodes `line` into `row` (already reset) if it is a flat object the fast path handles;
/// `false` means "use the general decoder" (the row may then hold partial values).
pub fn decode(line: &[u8], names: &[Box<[u8]>], row: &mut Row) -> bool {
    let mut p = Cursor { s: line, i: 0 };
    p.ws();
    if !p.eat(b'{') {
        return false;
    }
    p.ws();
    if p.eat(b'}') {
        return p.rest_is_ws();
    }
    loop {
        p.ws();
        let Some(key) = p.plain_string() else {
            return false;
        };
        p.ws();
        if !p.eat(b':') {
            return false;
        }
        p.ws();
        let field = names.iter().position(|n| **n == *key);
        match p.peek() {
            Some(b'"') => {
                let Some(text) = p.plain_string() else {
                    return false;
                };
                if let Some(i) = field {
                    // `plain_string` checked the bytes are UTF-8.
                    match std::str::from_utf8(text) {
                        Ok(t) => row.set_text(i, t, true),
                        Err(_) => return false,
                    }
                }
            }
            Some(b't') => {
                if !p.eat_word(b"true") {
                    return false;
                }
                if let Some(i) = field {
                    row.slots[i] = Slot::Bool(true);
                }
            }
            Some(b'f') => {
                if !p.eat_word(b"false") {
                    return false;
                }
                if let Some(i) = field {
                    row.slots[i] = Slot::Bool(false);
                }
            }
            Some(b'n') => {
                if !p.eat_word(b"null") {
                    return false;
                }
                if let Some(i) = field {
                    row.slots[i] = Slot::Null;
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let Some(slot) = p.number() else {
                    return false;
                };
                if let Some(i) = field {
                    row.slots[i] = slot;
                }
            }
            _ => return false,
        }
        p.ws();
        match p.next() {
            Some(b',') => continue,
            Some(b'}') => return p.rest_is_ws(),
            _ => return false,
        }
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn rest_is_ws(&mut self) -> bool {
        self.ws();
        self.i == self.s.len()
    }

    /// A string without escapes or control characters, valid UTF-8: its bytes.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        let rest = &self.s[start..];
        let end = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        let bytes = &rest[..end];
        if !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() {
            return None;
        }
        self.i = start + end + 1;
        Some(bytes)
    }

    /// A JSON number, as serde_json reads it: integers to `I64` (or `U64` above
    /// `i64::MAX`), anything with a fraction or exponent to `F64`. `None` for malformed
    /// numbers and integers beyond 64 bits (serde_json's own path handles those).
    fn number(&mut self) -> Option<Slot> {
        let start = self.i;
        let neg = self.eat(b'-');
        let int_start = self.i;
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let int_end = self.i;
        let mut float = false;
        if self.eat(b'.') {
            float = true;
            let frac = self.i;
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
            if self.i == frac {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            float = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            let exp = self.i;
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
            if self.i == exp {
                return None;
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        if float {
            let v: f64 = text.parse().ok()?;
            return v.is_finite().then_some(Slot::F64(v));
        }
        let digits = &self.s[int_start..int_end];
        if digits.len() > 19 {
            return None;
        }
        let mut magnitude: u64 = 0;
        for &d in digits {
            magnitude = magnitude.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        }
        if neg {
            if magnitude == 0 {
                // serde_json reads `-0` as the float -0.0.
                return Some(Slot::F64(-0.0));
            }
            if magnitude <= i64::MAX as u64 + 1 {
                Some(Slot::I64((magnitude as i128).wrapping_neg() as i64))
            } else {
                None
            }
        } else if magnitude <= i64::MAX as u64 {
            Some(Slot::I64(magnitude as i64))
        } else {
            Some(Slot::U64(magnitude))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json::JsonDecoder;
    use proptest::prelude::*;

    fn names() -> Vec<Box<[u8]>> {
        ["sensor_id", "ts", "value", "ok"]
            .iter()
            .map(|n| n.as_bytes().into())
            .collect()
    }

    fn fast(line: &[u8]) -> Option<(Vec<Slot>, String)> {
        let mut row = Row::new(4);
        decode(line, &names(), &mut row).then(|| (row.slots.clone(), row.scratch.clone()))
    }

    #[test]
    fn decodes_the_common_shape() {
        let (slots, scratch) =
            fast(br#"{"sensor_id":"s-0042","ts":1700000000123,"value":12.3456}"#).unwrap();
        assert_eq!(slots[1], Slot::I64(1_700_000_000_123));
        assert_eq!(slots[2], Slot::F64(12.3456));
        assert_eq!(scratch, "s-0042");
        let (slots, _) =
            fast(br#" { "value" : -0 , "ok":true, "x":null, "ts":-9223372036854775808 } "#)
                .unwrap();
        assert_eq!(slots[2], Slot::F64(-0.0));
        assert_eq!(slots[3], Slot::Bool(true));
        assert_eq!(slots[1], Slot::I64(i64::MIN));
        let (slots, _) = fast(br#"{"ts":18446744073709551615,"value":1e400}"#)
            .map_or((vec![], String::new()), |x| x);
        assert!(slots.is_empty(), "1e400 overflows: left to serde_json");
    }

    #[test]
    fn gives_up_on_what_it_does_not_handle() {
        for line in [
            &br#"{"sensor_id":"a\"b"}"#[..],
            br#"{"nested":{"a":1}}"#,
            br#"{"v":[1]}"#,
            br#"{"v":01}"#,
            br#"{"v":1.}"#,
            br#"{"v":.5}"#,
            br#"{"v":+1}"#,
            br#"{"v":1}x"#,
            br#"{"v":1,}"#,
            br#"{"v" 1}"#,
            b"{\"v\":\"\xff\"}",
            b"{\"v\":\"\x01\"}",
            br#"[1]"#,
            br#"{"v":tru}"#,
            br#""#,
        ] {
            assert!(fast(line).is_none(), "{}", String::from_utf8_lossy(line));
        }
    }

    /// Strategy: JSON-ish lines mixing valid shapes and near misses.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec![
            "\"sensor_id\"",
            "\"ts\"",
            "\"value\"",
            "\"ok\"",
            "\"other\"",
            "\"va\\u006cue\"",
            "ts",
        ]);
        let value = prop::sample::select(vec![
            "\"s-1\"",
            "\"é\"",
            "\"a\\nb\"",
            "1",
            "-0",
            "0.5",
            "-1.25e-3",
            "1E5",
            "01",
            "1.",
            "true",
            "false",
            "null",
            "nul",
            "{}",
            "[1,2]",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775809",
            "1e309",
            "\"\u{1}\"",
            "2.5e+2",
        ]);
        let ws = prop::sample::select(vec!["", " ", "\t", "\r"]);
        prop::collection::vec((ws.clone(), key, ws.clone(), value, ws), 0..6).prop_map(|parts| {
            let mut s = String::from("{");
            for (i, (a, k, b, v, c)) in parts.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{a}{k}{b}:{v}{c}"));
            }
            s.push('}');
            s.into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn agrees_with_serde_json_whenever_it_decodes(bytes in line()) {
            if let Some((slots, scratch)) = fast(&bytes) {
                let general = JsonDecoder::new(vec![
                    "sensor_id".into(), "ts".into(), "value".into(), "ok".into(),
                ]);
                let mut row = Row::new(4);
                prop_assert!(general.decode_general(&bytes, &mut row).is_ok(),
                    "fast path accepted what serde_json rejects: {}", String::from_utf8_lossy(&bytes));
                prop_assert_eq!(&row.slots, &slots);
                prop_assert_eq!(&row.scratch, &scratch);
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = fast(&bytes);
        }
    }
}
