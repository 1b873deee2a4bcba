//! Feeds arbitrary text through the filter expression language: compiling must refuse or
//! accept without panicking or overflowing any stack (the caller here runs on a small
//! stack, as a transform thread might), and an accepted expression must evaluate over a
//! batch with nulls, extremes and NaN without panicking (an error is a fine answer).
#![no_main]

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use libfuzzer_sys::fuzz_target;
use tidegauge_components::expr::{Expression, MAX_EXPRESSION_BYTES};

fn batch() -> &'static RecordBatch {
    static BATCH: OnceLock<RecordBatch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("value", DataType::Float64, true),
            Field::new("is_anomaly", DataType::Boolean, true),
            Field::new("z", DataType::Float64, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("pump-1"),
                None,
                Some(""),
                Some("%_\\"),
                Some("FAN-2"),
            ])),
            Arc::new(Int64Array::from(vec![
                Some(0),
                Some(i64::MIN),
                Some(i64::MAX),
                None,
                Some(-1),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(f64::NAN),
                Some(f64::INFINITY),
                Some(-0.0),
                None,
                Some(1e308),
            ])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
                Some(false),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(4.5),
                None,
                Some(f64::NEG_INFINITY),
                Some(0.0),
                Some(-3.0),
            ])),
        ];
        RecordBatch::try_new(schema, columns).expect("a valid batch")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let batch = batch();
    // 256 KiB of stack: compiling must never need the caller's stack to grow with the
    // input, however deep the text nests.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn_scoped(s, || {
                match Expression::compile(text, &batch.schema()) {
                    Ok(e) => {
                        assert!(text.len() <= MAX_EXPRESSION_BYTES);
                        if let Ok(out) = e.evaluate(batch) {
                            assert_eq!(out.len(), batch.num_rows());
                        }
                    }
                    Err(message) => {
                        // Refusals quote an excerpt, never the whole text.
                        assert!(message.len() < 4 * 1024, "{} bytes", message.len());
                    }
                }
            })
            .expect("a thread")
            .join()
            .expect("no panic");
    });
});
