//! Feeds arbitrary bytes through line framing and both line decoders: they must never
//! panic, and a rejected line must leave no row behind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidegauge_components::codec::csv::{CsvDecoder, CsvLine};
use tidegauge_components::codec::json::JsonDecoder;
use tidegauge_components::codec::lines::{Line, LineReader, Poll};
use tidegauge_components::codec::{Columns, FieldType, Row, flat_json, schema_for};

fuzz_target!(|data: &[u8]| {
    let mut fields = tidegauge_components::codec::default_fields();
    fields.insert("ok".into(), FieldType::Bool);
    fields.insert("n".into(), FieldType::Int64);
    let optional = vec!["ok".to_string(), "n".to_string()];
    let schema = schema_for(&fields, &optional);
    let names: Vec<String> = fields.keys().cloned().collect();
    let mut json = JsonDecoder::new(names.clone());
    let mut csv = CsvDecoder::new(names, b',', data.first().is_some_and(|b| b % 2 == 0));
    let mut columns = Columns::new(schema, &fields, 64);
    let mut row = Row::new(fields.len());
    let mut reader = LineReader::new(data, 4096);
    // Kept from line to line, so lines are also read by the layout of the one before.
    let mut shape = flat_json::Shape::default();
    loop {
        let polled = reader.poll::<()>(true, |_, line| {
            if let Line::Complete(text) = line {
                // The fast path must decode exactly as serde_json does, or step aside.
                let name_bytes: Vec<Box<[u8]>> = fields.keys().map(|n| n.as_bytes().into()).collect();
                let mut fast = Row::new(fields.len());
                if flat_json::decode(text, &name_bytes, &mut shape, &mut fast) {
                    let mut general = Row::new(fields.len());
                    json.decode_general(text, &mut general)
                        .expect("the fast path accepted what serde_json rejects");
                    assert_eq!(fast.slots, general.slots);
                    assert_eq!(fast.scratch, general.scratch);
                }
                for csv_turn in [false, true] {
                    let before = columns.len();
                    let decoded = if csv_turn {
                        match csv.decode(text, &mut row) {
                            Ok(CsvLine::Record) => Ok(true),
                            Ok(CsvLine::Header) => Ok(false),
                            Err(e) => Err(format!("{e:?}")),
                        }
                    } else {
                        json.decode(text, &mut row).map(|()| true)
                    };
                    if decoded == Ok(true) {
                        if columns.push(&mut row).is_err() {
                            assert_eq!(columns.len(), before, "a rejected line left a row");
                        }
                    } else {
                        assert_eq!(columns.len(), before, "a rejected line left a row");
                    }
                }
                if columns.len() >= 64 {
                    columns.finish().expect("builders agree with the schema");
                }
            }
            Ok(())
        });
        match polled {
            Ok(Ok(Poll::Read(_))) => continue,
            _ => break,
        }
    }
    columns.finish().expect("builders agree with the schema");
});
