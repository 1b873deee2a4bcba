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
        let field = names.iter().position(|n| same(n, key.as_bytes()));
        match p.peek() {
            Some(b'"') => {
                let Some(text) = p.plain_string() else {
                    return false;
                };
                if let Some(i) = field {
                    row.set_text(i, text, true);
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

/// Byte equality for short keys, without a call to `memcmp`.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Exact powers of ten: every one up to 1e22 is a double.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The correctly rounded value of `mantissa × 10^exp10` when one IEEE operation gives it
/// (Clinger's fast path: both operands exact, so the single rounding is the right one).
#[inline]
fn exact_decimal(mantissa: u64, exp10: i32) -> Option<f64> {
    if mantissa > 1 << 53 || !(-22..=22).contains(&exp10) {
        return None;
    }
    let m = mantissa as f64;
    Some(if exp10 >= 0 {
        m * POW10[exp10 as usize]
    } else {
        m / POW10[(-exp10) as usize]
    })
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

    /// A string without escapes or control characters, valid UTF-8.
    fn plain_string(&mut self) -> Option<&'a str> {
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
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        self.i = start + end + 1;
        Some(text)
    }

    /// A JSON number, as serde_json reads it: integers to `I64` (or `U64` above
    /// `i64::MAX`), anything with a fraction or exponent to `F64`. `None` for malformed
    /// numbers and integers beyond 64 bits (serde_json's own path handles those).
    fn number(&mut self) -> Option<Slot> {
        let start = self.i;
        let neg = self.eat(b'-');
        let mut mantissa: u64 = 0;
        let mut digits = 1u32;
        match self.next()? {
            b'0' => {}
            d @ b'1'..=b'9' => {
                mantissa = (d - b'0') as u64;
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    self.i += 1;
                    digits += 1;
                    if digits <= 19 {
                        mantissa = mantissa * 10 + (d - b'0') as u64;
                    }
                }
            }
            _ => return None,
        }
        let int_digits = digits;
        let mut exp10: i32 = 0;
        let mut float = false;
        if self.eat(b'.') {
            float = true;
            let frac = self.i;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                self.i += 1;
                digits += 1;
                if digits <= 19 {
                    mantissa = mantissa * 10 + (d - b'0') as u64;
                    exp10 -= 1;
                }
            }
            if self.i == frac {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            float = true;
            self.i += 1;
            let exp_neg = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let exp = self.i;
            let mut e: i32 = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                self.i += 1;
                e = e.saturating_mul(10).saturating_add((d - b'0') as i32);
            }
            if self.i == exp {
                return None;
            }
            exp10 = exp10.saturating_add(if exp_neg { -e } else { e });
        }
        if float {
            // More than 19 significant digits, or exponents beyond exact powers: std.
            let v = match exact_decimal(mantissa, exp10).filter(|_| digits <= 19) {
                Some(v) if neg => -v,
                Some(v) => v,
                // The text includes its sign.
                None => std::str::from_utf8(&self.s[start..self.i])
                    .ok()?
                    .parse()
                    .ok()?,
            };
            return v.is_finite().then_some(Slot::F64(v));
        }
        if int_digits > 19 {
            return None;
        }
        if neg {
            if mantissa == 0 {
                // serde_json reads `-0` as the float -0.0.
                return Some(Slot::F64(-0.0));
            }
            if mantissa <= i64::MAX as u64 + 1 {
                Some(Slot::I64((mantissa as i128).wrapping_neg() as i64))
            } else {
                None
            }
        } else if mantissa <= i64::MAX as u64 {
            Some(Slot::I64(mantissa as i64))
        } else {
            Some(Slot::U64(mantissa))
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
        fn numbers_agree_with_serde_json(
            text in r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?",
            bits in any::<u64>(),
        ) {
            let random = f64::from_bits(bits);
            for t in [text, format!("{random}"), format!("{random:e}"), format!("{:.17}", random)] {
                let line = format!("{{\"value\":{t}}}");
                if let Some((slots, _)) = fast(line.as_bytes()) {
                    let general = JsonDecoder::new(vec!["sensor_id".into(), "ts".into(), "value".into(), "ok".into()]);
                    let mut row = Row::new(4);
                    prop_assert!(general.decode_general(line.as_bytes(), &mut row).is_ok(), "{}", line);
                    match (row.slots[2], slots[2]) {
                        (Slot::F64(a), Slot::F64(b)) => prop_assert_eq!(a.to_bits(), b.to_bits(), "{}", line),
                        (a, b) => prop_assert_eq!(a, b, "{}", line),
                    }
                }
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = fast(&bytes);
        }
    }
}
