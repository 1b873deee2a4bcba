//! Rows of a `RecordBatch` as JSON objects, one per line: the encoding of the `jsonl` and
//! `stdout` sinks and of dead-lettered rows. Floats print in their shortest exact form;
//! NaN and infinities become `null` (JSON has no such numbers).

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{ArrowError, DataType, Schema};

/// Encodes rows as JSON objects with one key per column, in column order.
#[derive(Clone, Debug)]
pub struct JsonEncoder {
    keys: Vec<Vec<u8>>,
}

enum Col<'a> {
    Str(&'a arrow_array::StringArray),
    LargeStr(&'a arrow_array::LargeStringArray),
    Bool(&'a arrow_array::BooleanArray),
    I64(Cow<'a, [i64]>, &'a dyn Array),
    U64(&'a arrow_array::UInt64Array),
    F64(Cow<'a, [f64]>, &'a dyn Array),
    Null,
    Other(ArrayFormatter<'a>, &'a dyn Array),
}

impl JsonEncoder {
    /// An encoder for batches with `schema`.
    pub fn new(schema: &Schema) -> Self {
        let keys = schema
            .fields()
            .iter()
            .map(|f| {
                let mut k = Vec::new();
                write_str(&mut k, f.name());
                k.push(b':');
                k
            })
            .collect();
        JsonEncoder { keys }
    }

    /// Appends every row of `batch`, each followed by `\n`.
    pub fn encode_batch(&self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        let cols = prepare(batch.columns())?;
        for row in 0..batch.num_rows() {
            self.write_row(&cols, row, out);
            out.push(b'\n');
        }
        Ok(())
    }

    /// Appends row `row` of `batch` (no newline).
    pub fn encode_row(
        &self,
        batch: &RecordBatch,
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ArrowError> {
        let cols = prepare(batch.columns())?;
        self.write_row(&cols, row, out);
        Ok(())
    }

    fn write_row(&self, cols: &[Col<'_>], row: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, col)) in self.keys.iter().zip(cols).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            write_value(col, row, out);
        }
        out.push(b'}');
    }
}

fn prepare(columns: &[ArrayRef]) -> Result<Vec<Col<'_>>, ArrowError> {
    let options = FormatOptions::default();
    columns
        .iter()
        .map(|a| {
            let a = a.as_ref();
            Ok(match a.data_type() {
                DataType::Utf8 => Col::Str(a.as_string::<i32>()),
                DataType::LargeUtf8 => Col::LargeStr(a.as_string::<i64>()),
                DataType::Boolean => Col::Bool(a.as_boolean()),
                DataType::Int64 => {
                    Col::I64(Cow::Borrowed(a.as_primitive::<Int64Type>().values()), a)
                }
                DataType::Int32 => Col::I64(Cow::Owned(widen::<Int32Type>(a)), a),
                DataType::Int16 => Col::I64(Cow::Owned(widen::<Int16Type>(a)), a),
                DataType::Int8 => Col::I64(Cow::Owned(widen::<Int8Type>(a)), a),
                DataType::UInt32 => Col::I64(Cow::Owned(widen::<UInt32Type>(a)), a),
                DataType::UInt16 => Col::I64(Cow::Owned(widen::<UInt16Type>(a)), a),
                DataType::UInt8 => Col::I64(Cow::Owned(widen::<UInt8Type>(a)), a),
                DataType::UInt64 => Col::U64(a.as_primitive::<UInt64Type>()),
                DataType::Float64 => {
                    Col::F64(Cow::Borrowed(a.as_primitive::<Float64Type>().values()), a)
                }
                DataType::Float32 => Col::F64(
                    Cow::Owned(
                        a.as_primitive::<Float32Type>()
                            .values()
                            .iter()
                            .map(|&v| v as f64)
                            .collect(),
                    ),
                    a,
                ),
                DataType::Null => Col::Null,
                _ => Col::Other(ArrayFormatter::try_new(a, &options)?, a),
            })
        })
        .collect()
}

fn widen<T>(a: &dyn Array) -> Vec<i64>
where
    T: arrow_array::ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    a.as_primitive::<T>()
        .values()
        .iter()
        .map(|&v| v.into())
        .collect()
}

fn write_value(col: &Col<'_>, row: usize, out: &mut Vec<u8>) {
    match col {
        Col::Str(a) if a.is_valid(row) => write_str(out, a.value(row)),
        Col::LargeStr(a) if a.is_valid(row) => write_str(out, a.value(row)),
        Col::Bool(a) if a.is_valid(row) => {
            out.extend_from_slice(if a.value(row) { b"true" } else { b"false" })
        }
        Col::I64(v, a) if a.is_valid(row) => {
            out.extend_from_slice(itoa::Buffer::new().format(v[row]).as_bytes())
        }
        Col::U64(a) if a.is_valid(row) => {
            out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes())
        }
        Col::F64(v, a) if a.is_valid(row) && v[row].is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(v[row]).as_bytes())
        }
        Col::Other(f, a) if a.is_valid(row) => write_str(out, &f.value(row).to_string()),
        _ => out.extend_from_slice(b"null"),
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow_schema::Field;
    use std::sync::Arc;

    #[test]
    fn rows_round_trip_through_a_json_parser() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, false),
            Field::new("z", DataType::Float64, true),
            Field::new("is_anomaly", DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("s\"\n\u{1}é"),
                    None,
                    Some("c"),
                ])),
                Arc::new(Int64Array::from(vec![1, -2, i64::MAX])),
                Arc::new(Float64Array::from(vec![
                    Some(0.1 + 0.2),
                    Some(f64::NAN),
                    None,
                ])),
                Arc::new(BooleanArray::from(vec![true, false, true])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        JsonEncoder::new(&schema)
            .encode_batch(&batch, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows[0]["sensor_id"], "s\"\n\u{1}é");
        assert_eq!(rows[0]["z"].as_f64().unwrap(), 0.1 + 0.2);
        assert!(rows[1]["sensor_id"].is_null() && rows[1]["z"].is_null());
        assert_eq!(rows[2]["ts"].as_i64().unwrap(), i64::MAX);
        assert_eq!(rows[2]["is_anomaly"], true);
    }
}
