//! The fast path of the JSON Lines decoder: one pass over a flat object (string keys
//! without escapes; string, number, boolean or null values), straight into a [`Row`].
//!
//! It accepts only what it can decode exactly as `serde_json` would, and gives up on
//! anything else (escapes, nested values, control characters, invalid UTF-8, malformed
//! numbers, trailing bytes): the caller then decodes the line with `serde_json`, which
//! also produces the error message. So the fast path changes speed, never results — a
//! property test and the fuzz target compare the two on arbitrary input.

use super::{Row, Slot, ascii_str, eight_digits, exact_decimal};

/// The layout of the last line decoded: the bytes around its values (braces,
/// whitespace, commas, keys and colons) and the field each value went to. Lines of a
/// stream usually share one layout and differ only in their values; a line with the same
/// bytes between its values has the same keys in the same order, so it is decoded by
/// comparing those bytes and reading the values, without looking up a key.
#[derive(Debug, Default)]
pub struct Shape {
    /// The bytes before each value, then the bytes after the last one, end to end.
    bytes: Vec<u8>,
    /// Where each value's leading bytes end in `bytes`, and its field.
    values: Vec<(usize, Option<usize>)>,
}

impl Shape {
    fn clear(&mut self) {
        self.bytes.clear();
        self.values.clear();
    }
}

/// Decodes `line` into `row` (already reset) if it is a flat object the fast path handles;
/// `false` means "use the general decoder" (the row may then hold partial values).
/// `shape` is the layout of the previous line decoded with it: a line of that layout
/// takes a shorter way, any other is decoded in full and its layout kept for the next.
pub fn decode(line: &[u8], names: &[Box<[u8]>], shape: &mut Shape, row: &mut Row) -> bool {
    if !shape.values.is_empty() {
        if decode_shaped(line, shape, row) {
            return true;
        }
        row.reset();
    }
    decode_learning(line, names, shape, row)
}

/// Decodes a line laid out as `shape`: `false` if it is not, or if a value is not one the
/// fast path reads.
fn decode_shaped(line: &[u8], shape: &Shape, row: &mut Row) -> bool {
    let mut p = Cursor { s: line, i: 0 };
    let mut from = 0;
    for &(to, field) in &shape.values {
        let lead = &shape.bytes[from..to];
        from = to;
        if !starts_with_at(p.s, p.i, lead) {
            return false;
        }
        p.i += lead.len();
        if !p.value(field, None, row) {
            return false;
        }
    }
    let tail = &shape.bytes[from..];
    p.s.len() - p.i == tail.len() && starts_with_at(p.s, p.i, tail)
}

/// Decodes any flat object the fast path reads, and keeps its layout in `shape`.
fn decode_learning(line: &[u8], names: &[Box<[u8]>], shape: &mut Shape, row: &mut Row) -> bool {
    shape.clear();
    if !decode_object(line, names, shape, row) {
        shape.clear();
        return false;
    }
    true
}

fn decode_object(line: &[u8], names: &[Box<[u8]>], shape: &mut Shape, row: &mut Row) -> bool {
    // One UTF-8 check for the whole line instead of one per string: serde_json rejects
    // invalid UTF-8 inside strings, and outside them any byte above 0x7f is a syntax
    // error, so a line that fails here is one the fast path would give up on anyway.
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    let mut p = Cursor { s: line, i: 0 };
    p.ws();
    if !p.eat(b'{') {
        return false;
    }
    p.ws();
    if p.eat(b'}') {
        // No value: nothing worth a layout.
        shape.clear();
        return p.rest_is_ws();
    }
    // Objects usually list their fields in the same order line after line: the field
    // after the last one found is tried first.
    let mut guess = 0;
    // Where the bytes before the next value start.
    let mut lead = 0;
    loop {
        p.ws();
        let Some((start, end, _)) = p.plain_string() else {
            return false;
        };
        let key = &line[start..end];
        p.ws();
        if !p.eat(b':') {
            return false;
        }
        p.ws();
        let field = match names.get(guess) {
            Some(n) if same(n, key) => Some(guess),
            _ => names.iter().position(|n| same(n, key)),
        };
        if let Some(i) = field {
            guess = i + 1;
        }
        shape.bytes.extend_from_slice(&line[lead..p.i]);
        shape.values.push((shape.bytes.len(), field));
        if !p.value(field, Some(text), row) {
            return false;
        }
        lead = p.i;
        p.ws();
        match p.next() {
            Some(b',') => continue,
            Some(b'}') => {
                if !p.rest_is_ws() {
                    return false;
                }
                shape.bytes.extend_from_slice(&line[lead..]);
                return true;
            }
            _ => return false,
        }
    }
}

/// Bytes that end the plain part of a JSON string: the closing quote, an escape, or a
/// control character (which JSON does not allow unescaped).
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// [`STRING_STOP`] and every byte above 0x7f: the first pass over a string stops there
/// too, so that a string found without it is known to be ASCII (valid UTF-8) without a
/// separate check.
static ASCII_STOP: [bool; 256] = {
    let mut t = STRING_STOP;
    let mut c = 0x80;
    while c < 0x100 {
        t[c] = true;
        c += 1;
    }
    t
};

/// Whether `s[i..]` starts with `lead`. The layouts' leads are short (a key with its
/// quotes, colon and comma: W1's are 1 to 13 bytes), and comparing them as one or two
/// words is cheaper than a call to `memcmp`.
#[inline]
fn starts_with_at(s: &[u8], i: usize, lead: &[u8]) -> bool {
    let Some(have) = s.get(i..i + lead.len()) else {
        return false;
    };
    fn word8(b: &[u8]) -> (u64, u64) {
        match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
            (Some(a), Some(z)) => (u64::from_ne_bytes(*a), u64::from_ne_bytes(*z)),
            _ => (0, 0),
        }
    }
    fn word4(b: &[u8]) -> (u32, u32) {
        match (b.first_chunk::<4>(), b.last_chunk::<4>()) {
            (Some(a), Some(z)) => (u32::from_ne_bytes(*a), u32::from_ne_bytes(*z)),
            _ => (0, 0),
        }
    }
    // The first and the last word overlap when the length is not a multiple of one:
    // together they cover every byte.
    match lead.len() {
        8..=16 => word8(have) == word8(lead),
        4..=7 => word4(have) == word4(lead),
        0..=3 => have.iter().zip(lead).all(|(a, b)| a == b),
        _ => have == lead,
    }
}

/// Byte equality for short keys, without a call to `memcmp`.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
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

    /// Reads one value into `field` of `row` (if the key is a declared field); `false` if
    /// it is not a value the fast path reads. `text` is `s` when already checked to be
    /// UTF-8; without it, strings are checked one by one.
    fn value(&mut self, field: Option<usize>, text: Option<&str>, row: &mut Row) -> bool {
        let slot = match self.peek() {
            Some(b'"') => {
                let Some((start, end, ascii)) = self.plain_string() else {
                    return false;
                };
                // Both ends are next to a quote: character boundaries. A string is
                // checked even when no field wants it: serde_json refuses the line.
                let value = match text {
                    Some(text) => text.get(start..end),
                    None if ascii => Some(ascii_str(&self.s[start..end])),
                    None => std::str::from_utf8(&self.s[start..end]).ok(),
                };
                match (value, field) {
                    (None, _) => return false,
                    (Some(value), Some(i)) => row.set_text(i, value, true),
                    (Some(_), None) => {}
                }
                return true;
            }
            Some(b't') => {
                if !self.eat_word(b"true") {
                    return false;
                }
                Slot::Bool(true)
            }
            Some(b'f') => {
                if !self.eat_word(b"false") {
                    return false;
                }
                Slot::Bool(false)
            }
            Some(b'n') => {
                if !self.eat_word(b"null") {
                    return false;
                }
                Slot::Null
            }
            Some(b'-' | b'0'..=b'9') => match self.number() {
                Some(slot) => slot,
                None => return false,
            },
            _ => return false,
        };
        if let Some(i) = field {
            row.slots[i] = slot;
        }
        true
    }

    /// A string without escapes or control characters: the range of its text in `s`,
    /// and whether it is all ASCII.
    fn plain_string(&mut self) -> Option<(usize, usize, bool)> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        let mut end = start;
        while !ASCII_STOP[*self.s.get(end)? as usize] {
            end += 1;
        }
        let ascii = self.s[end] < 0x80;
        if !ascii {
            while !STRING_STOP[*self.s.get(end)? as usize] {
                end += 1;
            }
        }
        if self.s[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some((start, end, ascii))
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
                while digits <= 11 {
                    let Some(v) = self.s[self.i..]
                        .first_chunk()
                        .and_then(|c| eight_digits(*c))
                    else {
                        break;
                    };
                    mantissa = mantissa * 100_000_000 + v;
                    digits += 8;
                    self.i += 8;
                }
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
            while digits <= 11 {
                let Some(v) = self.s[self.i..]
                    .first_chunk()
                    .and_then(|c| eight_digits(*c))
                else {
                    break;
                };
                mantissa = mantissa * 100_000_000 + v;
                digits += 8;
                exp10 -= 8;
                self.i += 8;
            }
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
        decode(line, &names(), &mut Shape::default(), &mut row)
            .then(|| (row.slots.clone(), row.scratch.clone()))
    }

    #[test]
    fn the_word_compare_agrees_with_starts_with() {
        let text = b"{\"sensor_id\":\"s-0042\",\"ts\":1700000000123,\"value\":12.3456}";
        for i in 0..=text.len() {
            for len in 0..=24usize {
                for flip in [None, Some(0), Some(len / 2), Some(len.saturating_sub(1))] {
                    let Some(lead) = text.get(i..i + len) else {
                        let lead = vec![b'x'; len];
                        assert!(!starts_with_at(text, i, &lead));
                        continue;
                    };
                    let mut lead = lead.to_vec();
                    if let Some(f) = flip.filter(|_| len > 0) {
                        lead[f] ^= 0x20;
                    }
                    assert_eq!(
                        starts_with_at(text, i, &lead),
                        text[i..].starts_with(&lead),
                        "at {i}, {len} bytes, flipped {flip:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn non_ascii_strings_are_still_checked() {
        let ok = "{\"sensor_id\":\"capteur-é\",\"ts\":1,\"value\":2}".as_bytes();
        let (_, scratch) = fast(ok).unwrap();
        assert_eq!(scratch, "capteur-é");
        // The same layout twice: the second line takes the layout path.
        let mut shape = Shape::default();
        let mut row = Row::new(4);
        assert!(decode(ok, &names(), &mut shape, &mut row));
        let mut bad = ok.to_vec();
        let at = bad.iter().position(|&b| b == 0xc3).unwrap();
        bad[at + 1] = b'(';
        row.reset();
        assert!(!decode(&bad, &names(), &mut shape, &mut row));
        row.reset();
        assert!(decode(ok, &names(), &mut shape, &mut row));
        assert_eq!(row.scratch, "capteur-é");
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
    fn a_line_of_a_known_layout_is_still_checked_for_utf8() {
        let names = names();
        let mut shape = Shape::default();
        let mut row = Row::new(4);
        assert!(decode(
            br#"{"x":"a","value":1}"#,
            &names,
            &mut shape,
            &mut row
        ));
        row.reset();
        // Same layout; the string nobody asked for is not UTF-8: serde_json refuses it.
        assert!(!decode(
            b"{\"x\":\"\xff\",\"value\":1}",
            &names,
            &mut shape,
            &mut row
        ));
        row.reset();
        assert!(decode(
            br#"{"x":"b","value":2}"#,
            &names,
            &mut shape,
            &mut row
        ));
        assert_eq!(row.slots[2], Slot::I64(2));
        // That line was read by the layout alone.
        row.reset();
        assert!(decode_shaped(br#"{"x":"c","value":3}"#, &shape, &mut row));
        assert_eq!(row.slots[2], Slot::I64(3));
        row.reset();
        assert!(!decode_shaped(br#"{"x":"c", "value":3}"#, &shape, &mut row));
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

    /// Strategy: values, valid and near misses.
    fn value() -> impl Strategy<Value = &'static str> + Clone {
        prop::sample::select(vec![
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
        ])
    }

    /// Strategy: lines sharing one layout (keys, whitespace) with values of their own,
    /// and now and then a line of another layout.
    fn lines_of_one_layout() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let key = prop::sample::select(vec![
            "\"sensor_id\"",
            "\"ts\"",
            "\"value\"",
            "\"ok\"",
            "\"x\"",
        ]);
        let ws = prop::sample::select(vec!["", " ", "\t"]);
        let layout = prop::collection::vec((ws.clone(), key, ws.clone(), ws), 1..5);
        let values = prop::collection::vec(prop::collection::vec(value(), 5), 1..8);
        (layout, values, any::<u8>()).prop_map(|(layout, values, other)| {
            values
                .iter()
                .enumerate()
                .map(|(n, vs)| {
                    let mut s = String::from("{");
                    for (i, (a, k, b, c)) in layout.iter().enumerate() {
                        if i > 0 {
                            s.push(',');
                        }
                        s.push_str(&format!("{a}{k}{b}:{c}{}", vs[i]));
                    }
                    s.push('}');
                    if n as u8 == other % 8 {
                        s.insert(1, ' ');
                    }
                    s.into_bytes()
                })
                .collect()
        })
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
        let value = value();
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
        fn a_line_read_by_the_layout_of_the_last_reads_as_on_its_own(lines in lines_of_one_layout()) {
            let names = names();
            let mut shape = Shape::default();
            let general = JsonDecoder::new(vec![
                "sensor_id".into(), "ts".into(), "value".into(), "ok".into(),
            ]);
            for line in &lines {
                let mut row = Row::new(4);
                let shaped = decode(line, &names, &mut shape, &mut row)
                    .then(|| (row.slots.clone(), row.scratch.clone()));
                prop_assert_eq!(&shaped, &fast(line), "{}", String::from_utf8_lossy(line));
                if let Some((slots, scratch)) = shaped {
                    let mut row = Row::new(4);
                    prop_assert!(general.decode_general(line, &mut row).is_ok());
                    prop_assert_eq!(&row.slots, &slots);
                    prop_assert_eq!(&row.scratch, &scratch);
                }
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
