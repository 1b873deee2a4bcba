//! Turning input lines into Arrow columns, and Arrow rows back into text.
//!
//! A source declares the fields it extracts and their types ([`FieldMap`]); a line decoder
//! ([`json`], [`csv`]) fills one [`Row`] of raw [`Slot`]s per line; [`Columns::push`]
//! converts the row to the declared types and appends it, or rejects the whole row with a
//! reason (nothing is half-appended). Framing with limits is in [`lines`]; row encoding
//! for sinks in [`encode`].

pub mod csv;
pub mod encode;
pub mod flat_json;
pub mod json;
pub mod lines;

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::ComponentContext;
use tidegauge_core::telemetry::{ComponentErrorOccurred, EventsReceived};

/// The type of a field a source extracts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 text (Arrow `Utf8`).
    String,
    /// 64-bit signed integer (Arrow `Int64`).
    Int64,
    /// 64-bit float (Arrow `Float64`); integers are accepted.
    Float64,
    /// `true`/`false` (Arrow `Boolean`); CSV also accepts `1`/`0`.
    Bool,
    /// Event time as epoch milliseconds (Arrow `Int64`): an integer, or RFC 3339 text
    /// (`2020-03-09T10:14:33Z`; `2020-03-09 10:14:33` without a zone is read as UTC).
    Timestamp,
}

impl FieldType {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 | FieldType::Timestamp => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
        }
    }
}

/// Fields extracted from each record, in output order: `{ sensor_id = "string", ... }`.
pub type FieldMap = IndexMap<String, FieldType>;

/// The fields sources extract unless told otherwise: `sensor_id`, `ts`, `value`.
pub fn default_fields() -> FieldMap {
    IndexMap::from([
        ("sensor_id".to_string(), FieldType::String),
        ("ts".to_string(), FieldType::Timestamp),
        ("value".to_string(), FieldType::Float64),
    ])
}

/// The Arrow schema of `fields`; those named in `optional` may be null, the rest are
/// required in every record.
pub fn schema_for(fields: &FieldMap, optional: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(name, ty)| Field::new(name, ty.data_type(), optional.contains(name)))
            .collect::<Vec<_>>(),
    ))
}

/// One raw value of a record, before conversion to its field's type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slot {
    /// The record did not have the field.
    Missing,
    /// JSON `null`, or an empty CSV field.
    Null,
    /// A JSON string: bytes `start..end` of the row's scratch buffer.
    Str(u32, u32),
    /// Untyped text (a CSV field): bytes of the scratch buffer, parsed per field type.
    Text(u32, u32),
    /// A JSON integer that fits `i64`.
    I64(i64),
    /// A JSON integer above `i64::MAX`.
    U64(u64),
    /// A JSON number with a fraction or exponent.
    F64(f64),
    /// A JSON boolean.
    Bool(bool),
    /// A JSON object or array where a scalar was expected.
    Nested(&'static str),
}

/// `bytes` as text, once a scan has found every byte below 0x80.
#[inline]
pub(crate) fn ascii_str(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: callers pass only bytes a scan has found all below 0x80 (the JSON string
    // scan's `ASCII_STOP`, the CSV split's high-bit test): ASCII, which is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// The raw values of one record, reused from line to line (no allocation per line).
#[derive(Debug, Default)]
pub struct Row {
    /// One slot per declared field.
    pub slots: Vec<Slot>,
    /// Text of `Str`/`Text` slots.
    pub scratch: String,
}

impl Row {
    /// An empty row for `n` fields.
    pub fn new(n: usize) -> Self {
        Row {
            slots: vec![Slot::Missing; n],
            scratch: String::with_capacity(256),
        }
    }

    /// Clears every slot for the next record.
    pub fn reset(&mut self) {
        self.slots.fill(Slot::Missing);
        self.scratch.clear();
    }

    /// Stores text for field `i` as a JSON string (`typed`) or untyped CSV text.
    pub fn set_text(&mut self, i: usize, text: &str, typed: bool) {
        let start = self.scratch.len() as u32;
        self.scratch.push_str(text);
        let end = self.scratch.len() as u32;
        self.slots[i] = if typed {
            Slot::Str(start, end)
        } else {
            Slot::Text(start, end)
        };
    }

    fn text(&self, start: u32, end: u32) -> &str {
        &self.scratch[start as usize..end as usize]
    }
}

enum Builder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
}

/// Column builders for one output batch.
pub struct Columns {
    schema: SchemaRef,
    types: Vec<FieldType>,
    names: Vec<String>,
    nullable: Vec<bool>,
    builders: Vec<Builder>,
    rows: usize,
    capacity: usize,
    /// Bytes of the values appended since the last finish (see [`Columns::bytes`]).
    bytes: usize,
    /// What every row adds whatever its values: 8 per number, 1 per flag, 4 per string.
    fixed_row_bytes: usize,
}

impl Columns {
    /// Builders for `fields` (the schema from [`schema_for`]), sized for `capacity` rows.
    pub fn new(schema: SchemaRef, fields: &FieldMap, capacity: usize) -> Self {
        let types: Vec<FieldType> = fields.values().copied().collect();
        let mut c = Columns {
            names: fields.keys().cloned().collect(),
            nullable: schema.fields().iter().map(|f| f.is_nullable()).collect(),
            builders: Vec::new(),
            schema,
            types,
            rows: 0,
            capacity,
            bytes: 0,
            fixed_row_bytes: 0,
        };
        c.fixed_row_bytes = c
            .types
            .iter()
            .map(|t| match t {
                FieldType::String => 4,
                FieldType::Bool => 1,
                _ => 8,
            })
            .sum();

        c.builders = c.fresh_builders();
        c
    }

    fn fresh_builders(&self) -> Vec<Builder> {
        let n = self.capacity;
        self.types
            .iter()
            .map(|t| match t {
                FieldType::String => Builder::Str(StringBuilder::with_capacity(n, n * 8)),
                FieldType::Int64 | FieldType::Timestamp => {
                    Builder::I64(Int64Builder::with_capacity(n))
                }
                FieldType::Float64 => Builder::F64(Float64Builder::with_capacity(n)),
                FieldType::Bool => Builder::Bool(BooleanBuilder::with_capacity(n)),
            })
            .collect()
    }

    /// Rows appended since the last [`Columns::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is waiting.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The schema of the batches produced.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Converts `row` to the declared types and appends it; on any problem appends nothing
    /// and says what is wrong.
    pub fn push(&mut self, row: &mut Row) -> Result<(), String> {
        for (i, &ty) in self.types.iter().enumerate() {
            let slot = row.slots[i];
            // Most values arrive already of their field's type (a JSON string for a
            // string, an integer for a timestamp): nothing to convert, nothing to check.
            if is_typed(ty, slot) {
                continue;
            }
            let converted = match convert(ty, slot, row) {
                Ok(c) => c,
                Err(e) => return Err(format!("field `{}`: {e}", self.names[i])),
            };
            if converted == Slot::Null && !self.nullable[i] {
                return Err(if slot == Slot::Missing {
                    format!("missing field `{}`", self.names[i])
                } else {
                    format!("field `{}` is null", self.names[i])
                });
            }
            row.slots[i] = converted;
        }
        for (b, slot) in self.builders.iter_mut().zip(&row.slots) {
            match (b, *slot) {
                // CSV text for a string column: what `convert` would make a `Str` of.
                (Builder::Str(b), Slot::Str(s, e) | Slot::Text(s, e)) => {
                    b.append_value(row.text(s, e))
                }
                (Builder::I64(b), Slot::I64(v)) => b.append_value(v),
                (Builder::F64(b), Slot::F64(v)) => b.append_value(v),
                (Builder::Bool(b), Slot::Bool(v)) => b.append_value(v),
                (Builder::Str(b), _) => b.append_null(),
                (Builder::I64(b), _) => b.append_null(),
                (Builder::F64(b), _) => b.append_null(),
                (Builder::Bool(b), _) => b.append_null(),
            }
        }
        self.rows += 1;
        // Numbers, flags and string offsets are the same for every row; the text is at
        // most the record's text (its strings, and for CSV its numbers as written): two
        // additions per row, whatever the columns.
        self.bytes += self.fixed_row_bytes + row.scratch.len();
        Ok(())
    }

    /// What the rows appended so far hold, at most: 8 bytes per number, 1 per flag, 4
    /// per string (Arrow's offsets) and the text of each record.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The rows appended so far as a batch; the builders start over.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let fresh = self.fresh_builders();
        let builders = std::mem::replace(&mut self.builders, fresh);
        let columns: Vec<ArrayRef> = builders
            .into_iter()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Str(mut b) => Arc::new(b.finish()),
                    Builder::I64(mut b) => Arc::new(b.finish()),
                    Builder::F64(mut b) => Arc::new(b.finish()),
                    Builder::Bool(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
    }

    /// A source's hand-over: the rows appended so far as a batch (none if there are none),
    /// counted as received by `cx`.
    pub fn take(&mut self, cx: &ComponentContext) -> Option<RecordBatch> {
        if self.is_empty() {
            return None;
        }
        match self.finish() {
            Ok(b) => {
                cx.emit(EventsReceived {
                    count: b.num_rows() as u64,
                });
                Some(b)
            }
            Err(e) => {
                // Builders always produce columns of equal length and declared types.
                cx.emit(ComponentErrorOccurred {
                    error: &format!("cannot assemble batch: {e}"),
                });
                None
            }
        }
    }
}

fn describe_slot(slot: Slot, row: &Row) -> String {
    match slot {
        Slot::Missing => "nothing".into(),
        Slot::Null => "null".into(),
        Slot::Str(s, e) | Slot::Text(s, e) => {
            let t = row.text(s, e);
            let cut: String = t.chars().take(40).collect();
            if cut.len() < t.len() {
                format!("\"{cut}…\"")
            } else {
                format!("\"{cut}\"")
            }
        }
        Slot::I64(v) => v.to_string(),
        Slot::U64(v) => v.to_string(),
        Slot::F64(v) => v.to_string(),
        Slot::Bool(v) => v.to_string(),
        Slot::Nested(what) => what.into(),
    }
}

/// Converts a raw slot to the normalised slot for `ty` (`Str`, `I64`, `F64`, `Bool` or `Null`).
/// `text` without surrounding white space (as `str::trim`), at the cost of two byte
/// checks when there is none.
/// Exact powers of ten: every one up to 1e22 is a double.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The correctly rounded value of `mantissa × 10^exp10` when one IEEE operation gives it
/// (Clinger's fast path: both operands exact, so the single rounding is the right one).
#[inline]
pub(crate) fn exact_decimal(mantissa: u64, exp10: i32) -> Option<f64> {
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

/// A plain decimal (`-?digits[.digits]`, at most 19 digits) read exactly as
/// `str::parse::<f64>` reads it, where one IEEE operation gives the correctly rounded
/// value; `None` means "ask `str::parse`".
fn fast_decimal(b: &[u8]) -> Option<f64> {
    let (negative, b) = match b.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, b),
    };
    let (mut mantissa, mut digits, mut exp10, mut point) = (0u64, 0u32, 0i32, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' if digits < 19 => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
                if point {
                    exp10 -= 1;
                }
            }
            // Digits on both sides of the point.
            b'.' if !point && i > 0 && i + 1 < b.len() => point = true,
            _ => return None,
        }
    }
    let v = exact_decimal(mantissa, exp10).filter(|_| digits > 0)?;
    Some(if negative { -v } else { v })
}

/// `str::parse::<f64>` with a fast path for plain decimals.
fn parse_f64(text: &str) -> Result<f64, std::num::ParseFloatError> {
    fast_decimal(text.as_bytes()).map_or_else(|| text.parse(), Ok)
}

fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// Whether `slot` is already what [`convert`] makes of it for `ty` (and not null); CSV
/// text for a string column is appended as it is.
#[inline]
fn is_typed(ty: FieldType, slot: Slot) -> bool {
    match (ty, slot) {
        // Empty CSV text is null: `convert` says whether that is allowed.
        (FieldType::String, Slot::Text(s, e)) => s != e,
        (FieldType::String, Slot::Str(..))
        | (FieldType::Int64 | FieldType::Timestamp, Slot::I64(_))
        | (FieldType::Float64, Slot::F64(_))
        | (FieldType::Bool, Slot::Bool(_)) => true,
        _ => false,
    }
}

fn convert(ty: FieldType, slot: Slot, row: &Row) -> Result<Slot, String> {
    let bad = |want: &str| Err(format!("expected {want}, got {}", describe_slot(slot, row)));
    match (ty, slot) {
        (_, Slot::Missing | Slot::Null) => Ok(Slot::Null),
        (_, Slot::Text(s, e)) if s == e => Ok(Slot::Null),
        (FieldType::String, Slot::Str(s, e) | Slot::Text(s, e)) => Ok(Slot::Str(s, e)),
        (FieldType::String, _) => bad("a string"),
        (FieldType::Int64, Slot::I64(v)) => Ok(Slot::I64(v)),
        (FieldType::Int64, Slot::Text(s, e)) => match trim(row.text(s, e)).parse::<i64>() {
            Ok(v) => Ok(Slot::I64(v)),
            Err(_) => bad("an integer"),
        },
        (FieldType::Int64, Slot::U64(_)) => bad("an integer that fits 64 bits"),
        (FieldType::Int64, _) => bad("an integer"),
        (FieldType::Float64, Slot::F64(v)) => Ok(Slot::F64(v)),
        (FieldType::Float64, Slot::I64(v)) => Ok(Slot::F64(v as f64)),
        (FieldType::Float64, Slot::U64(v)) => Ok(Slot::F64(v as f64)),
        (FieldType::Float64, Slot::Text(s, e)) => match parse_f64(trim(row.text(s, e))) {
            Ok(v) => Ok(Slot::F64(v)),
            Err(_) => bad("a number"),
        },
        (FieldType::Float64, _) => bad("a number"),
        (FieldType::Bool, Slot::Bool(v)) => Ok(Slot::Bool(v)),
        (FieldType::Bool, Slot::Text(s, e)) => {
            match row.text(s, e).trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Slot::Bool(true)),
                "false" | "0" => Ok(Slot::Bool(false)),
                _ => bad("true or false"),
            }
        }
        (FieldType::Bool, _) => bad("true or false"),
        (FieldType::Timestamp, Slot::I64(v)) => Ok(Slot::I64(v)),
        (FieldType::Timestamp, Slot::F64(v)) if v.fract() == 0.0 && v.abs() < 9.2e18 => {
            Ok(Slot::I64(v as i64))
        }
        (FieldType::Timestamp, Slot::Str(s, e) | Slot::Text(s, e)) => {
            match parse_timestamp_ms(row.text(s, e)) {
                Some(ms) => Ok(Slot::I64(ms)),
                None => bad("a timestamp (epoch milliseconds or RFC 3339 text)"),
            }
        }
        (FieldType::Timestamp, _) => bad("a timestamp (epoch milliseconds or RFC 3339 text)"),
    }
}

/// Epoch milliseconds from an integer in text or RFC 3339 text: `Z`, an offset
/// (`+02:00`, `-0530`), or none (zone-less text is UTC). This is the one timestamp
/// parser: every decoder and `score` read timestamps through it.
///
/// The shapes nearly every input has (epoch milliseconds of up to 18 digits; a date-time
/// with `T` or a space, optional fraction, `Z` or an offset or nothing) are read by
/// [`fast_timestamp_ms`], at a fraction of the general parser's cost (it was about 169
/// instructions per CSV event on W1); anything else (white space, leap seconds, odd
/// offsets, invalid text) goes to the general parser, so the answers are the same.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    fast_timestamp_ms(text.as_bytes()).or_else(|| general_timestamp_ms(text))
}

/// The common shapes of [`parse_timestamp_ms`]: `Some` only where the general parser
/// gives the same answer; `None` means "ask the general parser".
fn fast_timestamp_ms(b: &[u8]) -> Option<i64> {
    if b.len() >= 19 && b[4] == b'-' {
        fast_rfc3339_ms(b)
    } else {
        fast_integer(b)
    }
}

/// An optional sign and 1 to 18 ASCII digits (no overflow possible), as `str::parse`
/// reads them.
fn fast_integer(b: &[u8]) -> Option<i64> {
    let (negative, mut digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: u64 = 0;
    while let Some((chunk, rest)) = digits.split_first_chunk::<8>() {
        v = v * 100_000_000 + eight_digits(*chunk)?;
        digits = rest;
    }
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u64::from(d);
    }
    // At most 18 digits: below i64::MAX.
    let v = v as i64;
    Some(if negative { -v } else { v })
}

/// The value of eight ASCII digits (the first the most significant), read as one word:
/// `None` if any byte is not a digit.
pub(crate) fn eight_digits(chunk: [u8; 8]) -> Option<u64> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let v = u64::from_le_bytes(chunk);
    // Every byte is 0x30..=0x3F, and adding 6 keeps it there: 0x30..=0x39.
    if v & HIGH != ZEROS || v.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    // Pairs, then fours, then all eight (the first digit is the lowest byte).
    let v = (v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
    let v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    Some((v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32)
}

fn two_digits(a: u8, b: u8) -> Option<i64> {
    let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
    (a <= 9 && b <= 9).then_some(i64::from(a) * 10 + i64::from(b))
}

/// `YYYY-MM-DD[T ]hh:mm:ss[.f+][Z|±hh:mm|±hhmm]` with a year from 1970, a real date and
/// a second below 60 (what the general parser accepts alike).
fn fast_rfc3339_ms(b: &[u8]) -> Option<i64> {
    if b[7] != b'-' || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = two_digits(b[0], b[1])? * 100 + two_digits(b[2], b[3])?;
    let month = two_digits(b[5], b[6])?;
    let day = two_digits(b[8], b[9])?;
    let hour = two_digits(b[11], b[12])?;
    let minute = two_digits(b[14], b[15])?;
    let second = two_digits(b[17], b[18])?;
    if year < 1970
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', fraction @ ..] = rest {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Milliseconds: the first three digits, floored as the general parser does.
        let digit = |i: usize| {
            if i < n {
                i64::from(fraction[i] - b'0')
            } else {
                0
            }
        };
        millis = digit(0) * 100 + digit(1) * 10 + digit(2);
        rest = &fraction[n..];
    }
    let offset_s = match *rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let (h, m) = (two_digits(h1, h2)?, two_digits(m1, m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let s = h * 3600 + m * 60;
            if sign == b'-' { -s } else { s }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year >= 1970 here;
/// the algorithm of Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The general timestamp parser: any shape [`parse_timestamp_ms`] accepts. Kept out of
/// line: the decoders that call the fast path stay small.
#[inline(never)]
fn general_timestamp_ms(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Some(ms);
    }
    let (local, offset_s) = split_offset(t);
    let time = humantime::parse_rfc3339_weak(local).ok()?;
    let ms = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok(),
        Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|ms| -ms),
    }?;
    ms.checked_sub(offset_s * 1000)
}

/// Splits a trailing UTC offset (`+HH:MM`, `-HH:MM`, `+HHMM`) off a date-time; returns
/// the rest and the offset in seconds (0 when there is none).
fn split_offset(t: &str) -> (&str, i64) {
    let Some(time_start) = t.find(['T', 't', ' ']) else {
        return (t, 0);
    };
    let Some(sign_at) = t.rfind(['+', '-']).filter(|&i| i > time_start) else {
        return (t, 0);
    };
    let digits: String = t[sign_at + 1..].chars().filter(|c| *c != ':').collect();
    let well_formed = digits.len() == 4
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(t.len() - sign_at - 1, 4 | 5);
    if !well_formed {
        return (t, 0);
    }
    let (Ok(h), Ok(m)) = (digits[..2].parse::<i64>(), digits[2..].parse::<i64>()) else {
        return (t, 0);
    };
    if h > 23 || m > 59 {
        return (t, 0);
    }
    let sign = if t.as_bytes()[sign_at] == b'-' { -1 } else { 1 };
    (&t[..sign_at], sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    fn columns(optional: &[&str]) -> Columns {
        let fields = default_fields();
        let optional: Vec<String> = optional.iter().map(|s| s.to_string()).collect();
        Columns::new(schema_for(&fields, &optional), &fields, 16)
    }

    use proptest::strategy::Strategy;

    fn converted(ty: FieldType, text: &str) -> Result<Slot, String> {
        let mut row = Row::new(1);
        row.set_text(0, text, false);
        convert(ty, row.slots[0], &row)
    }

    proptest::proptest! {
        #[test]
        fn text_numbers_convert_as_parse_reads_them(
            text in proptest::prop_oneof![
                "[ ]?[+-]?[0-9]{0,21}([.][0-9]{0,20})?([eE][+-]?[0-9]{1,3})?[ ]?",
                "[-+.0-9eE ]{1,12}",
                proptest::prelude::any::<f64>().prop_map(|v| v.to_string()),
                proptest::prelude::any::<i64>().prop_map(|v| v.to_string()),
            ],
        ) {
            proptest::prop_assume!(!text.is_empty());
            let t = text.trim();
            let float = converted(FieldType::Float64, &text).ok();
            let want = t.parse::<f64>().ok().map(Slot::F64);
            match (float, want) {
                (Some(Slot::F64(a)), Some(Slot::F64(b))) => {
                    proptest::prop_assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{text}: {a} vs {b}")
                }
                (a, b) => proptest::prop_assert_eq!(a, b, "{}", text),
            }
            let int = converted(FieldType::Int64, &text).ok();
            let want = t.parse::<i64>().ok().map(Slot::I64);
            proptest::prop_assert_eq!(int, want, "{}", text);
            let ts = converted(FieldType::Timestamp, &text).ok();
            let want = parse_timestamp_ms(&text).map(Slot::I64);
            proptest::prop_assert_eq!(ts, want, "{}", text);
        }
    }

    #[test]
    fn converts_and_rejects_whole_rows() {
        let mut c = columns(&[]);
        let mut row = Row::new(3);
        row.set_text(0, "s-1", true);
        row.slots[1] = Slot::I64(1000);
        row.slots[2] = Slot::I64(3);
        c.push(&mut row).unwrap();

        row.reset();
        row.set_text(0, "s-2", true);
        row.slots[1] = Slot::I64(1001);
        row.set_text(2, "12.5", true);
        let e = c.push(&mut row).unwrap_err();
        assert_eq!(e, "field `value`: expected a number, got \"12.5\"");

        row.reset();
        row.set_text(0, "s-3", true);
        row.slots[2] = Slot::F64(1.0);
        assert_eq!(c.push(&mut row).unwrap_err(), "missing field `ts`");

        let b = c.finish().unwrap();
        assert_eq!(b.num_rows(), 1, "rejected rows leave nothing behind");
        assert_eq!(b.column(2).as_primitive::<Float64Type>().value(0), 3.0);
        assert!(c.is_empty());
    }

    #[test]
    fn csv_text_is_parsed_per_type_and_optional_fields_take_nulls() {
        let mut c = columns(&["value"]);
        let mut row = Row::new(3);
        row.set_text(0, "pump", false);
        row.set_text(1, "2020-03-09 10:14:33", false);
        row.set_text(2, "", false);
        c.push(&mut row).unwrap();
        let b = c.finish().unwrap();
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>().value(0),
            1_583_748_873_000
        );
        assert!(b.column(2).is_null(0));
    }

    /// Date-times near the shapes the fast path reads, valid or not: every position may
    /// hold a wrong character, the date may not exist, the zone may be malformed.
    fn timestamp_like() -> impl Strategy<Value = String> {
        let shaped = "[ ]?(19[6-9][0-9]|20[0-9]{2}|[0-9]{4})-[0-1][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9]([.][0-9]{0,12})?(Z|z|[+-][0-2][0-9]:?[0-6][0-9]|[+-][0-9]{1,5}|Z[+-]01:00|[.+:-]|ZZ|Z1)?[ ]?";
        proptest::prop_oneof![
            shaped,
            (shaped, 0usize..40, "[-+:.0-9TZa /]").prop_map(
                |(t, at, c): (String, usize, String)| {
                    let mut b = t.into_bytes();
                    if let Some(x) = b.get_mut(at) {
                        *x = c.as_bytes()[0];
                    }
                    String::from_utf8(b).unwrap_or_default()
                }
            ),
            "[ ]?[+-]{0,2}[0-9]{0,20}[ ]?",
            proptest::prelude::any::<i64>().prop_map(|v| v.to_string()),
            "[-+:.0-9TZ ]{0,30}",
            "\\PC{0,30}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        #[test]
        fn fast_timestamps_agree_with_the_general_parser(text in timestamp_like()) {
            proptest::prop_assert_eq!(parse_timestamp_ms(&text), general_timestamp_ms(&text), "{:?}", text);
        }

        #[test]
        fn fast_path_reads_the_common_shapes(
            ms in 200_000_000i64..253_402_000_000_000,
            offset_min in -(23 * 60 + 59)..=(23i64 * 60 + 59),
            precision in 0..4usize,
            space in proptest::prelude::any::<bool>(),
            colon in proptest::prelude::any::<bool>(),
            zone in 0..3usize,
        ) {
            let local = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis((ms + offset_min * 60_000) as u64);
            let mut text = match precision {
                0 => humantime::format_rfc3339_seconds(local).to_string(),
                1 => humantime::format_rfc3339_millis(local).to_string(),
                2 => humantime::format_rfc3339_micros(local).to_string(),
                _ => humantime::format_rfc3339_nanos(local).to_string(),
            };
            text.pop(); // the `Z`
            if space {
                text.replace_range(10..11, " ");
            }
            // The text shows local time; without an offset it is read as UTC.
            let utc = if precision == 0 { ms - ms.rem_euclid(1000) } else { ms };
            let as_utc = utc + offset_min * 60_000;
            let (text, want) = match zone {
                0 => (format!("{text}Z"), as_utc),
                1 => (text, as_utc),
                _ => {
                    let (sign, m) = if offset_min < 0 { ('-', -offset_min) } else { ('+', offset_min) };
                    let sep = if colon { ":" } else { "" };
                    (format!("{text}{sign}{:02}{sep}{:02}", m / 60, m % 60), utc)
                }
            };
            proptest::prop_assert_eq!(fast_timestamp_ms(text.as_bytes()), Some(want), "{}", text);
            proptest::prop_assert_eq!(general_timestamp_ms(&text), Some(want), "{}", text);
        }

        #[test]
        fn fast_path_reads_epoch_milliseconds(ms in -999_999_999_999_999_999i64..=999_999_999_999_999_999) {
            proptest::prop_assert_eq!(fast_timestamp_ms(ms.to_string().as_bytes()), Some(ms));
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_timestamp_ms("yesterday"), None);
        let utc = parse_timestamp_ms("2026-01-01T08:00:00Z").unwrap();
        assert_eq!(parse_timestamp_ms("2026-01-01T10:00:00+02:00"), Some(utc));
        assert_eq!(parse_timestamp_ms("2026-01-01T10:00:00+0200"), Some(utc));
        assert_eq!(
            parse_timestamp_ms("2026-01-01T02:30:00.250-05:30"),
            Some(utc + 250)
        );
        assert_eq!(parse_timestamp_ms("2026-01-01 10:00:00+02:00"), Some(utc));
        assert_eq!(parse_timestamp_ms("2026-01-01T10:00:00+25:00"), None);
        assert_eq!(parse_timestamp_ms("2026-01-01T10:00:00+02"), None);
    }
}
