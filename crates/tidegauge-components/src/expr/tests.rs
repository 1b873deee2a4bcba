use std::sync::Arc;

use arrow_array::{BooleanArray, Float64Array, Int64Array, StringArray};

use super::eval::as_bool;
use super::*;
use arrow_schema::Field;

fn batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("is_anomaly", DataType::Boolean, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                "pump-1", "pump-2", "fan-1", "FAN-2",
            ])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(Float64Array::from(vec![
                Some(-5.0),
                Some(2.0),
                None,
                Some(12.0),
            ])),
            Arc::new(BooleanArray::from(vec![true, false, true, false])),
        ],
    )
    .unwrap()
}

fn rows(text: &str) -> Vec<Option<bool>> {
    let b = batch();
    let e = Expression::compile(text, &b.schema()).unwrap();
    assert_eq!(e.data_type(), &DataType::Boolean, "{text}");
    let out = e.evaluate(&b).unwrap();
    as_bool(&out).unwrap().iter().collect()
}

fn t(v: [Option<bool>; 4]) -> Vec<Option<bool>> {
    v.to_vec()
}

#[test]
fn evaluates_sql_conditions() {
    let (y, n, u) = (Some(true), Some(false), None);
    assert_eq!(rows("is_anomaly"), t([y, n, y, n]));
    assert_eq!(rows("NOT is_anomaly"), t([n, y, n, y]));
    assert_eq!(rows("abs(value) > 4"), t([y, n, u, y]));
    assert_eq!(rows("value > 1 AND ts >= 2"), t([n, y, u, y]));
    assert_eq!(rows("is_anomaly OR value > 100"), t([y, n, y, n]));
    assert_eq!(rows("value BETWEEN 0 AND 10"), t([n, y, u, n]));
    assert_eq!(rows("ts IN (1, 4)"), t([y, n, n, y]));
    assert_eq!(rows("ts NOT IN (1, 4)"), t([n, y, y, n]));
    assert_eq!(rows("sensor_id LIKE 'pump-%'"), t([y, y, n, n]));
    assert_eq!(rows("sensor_id ILIKE 'fan%'"), t([n, n, y, y]));
    assert_eq!(rows("value IS NULL"), t([n, n, y, n]));
    assert_eq!(
        rows("value IS NOT NULL AND value / 2 > 0.5"),
        t([n, y, n, y])
    );
    assert_eq!(rows("ts % 2 = 0"), t([n, y, n, y]));
    assert_eq!(rows("-value > 0"), t([y, n, u, n]));
    assert_eq!(rows("ts * 1.5 > 3"), t([n, n, y, y]));
    assert_eq!(rows("(value > 100) IS FALSE"), t([y, y, n, y]));
    assert_eq!(rows("sensor_id = 'fan-1'"), t([n, n, y, n]));
    assert_eq!(rows("TRUE"), t([y, y, y, y]));
}

#[test]
fn rejects_what_cannot_work_before_running() {
    let b = batch();
    let err = |text: &str| Expression::compile(text, &b.schema()).unwrap_err();
    assert!(err("valu > 3").contains("unknown field `valu`"));
    assert!(err("valu > 3").ends_with("; did you mean `value`?"));
    assert!(err("sensor_id > 3").contains("cannot compare `sensor_id` (Utf8) with `3` (Int64)"));
    assert!(err("value AND is_anomaly").contains("needs true/false"));
    assert!(err("sqrt(value) > 1").contains("unknown function"));
    assert!(err("value > ").contains("cannot parse"));
    assert!(err("value > 1 extra").contains("cannot parse"));
    assert!(err("(SELECT 1)").contains("not supported"));
}

/// Runs `f` on a thread with a small stack, as a tokio worker or a transform thread
/// might have: whatever the expression, compiling must not need more.
fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// `item` repeated with `sep` until the text reaches `bytes`.
fn repeated(item: impl Fn(usize) -> String, sep: &str, bytes: usize) -> String {
    let mut text = item(0);
    let mut i = 1;
    loop {
        let next = format!("{sep}{}", item(i));
        if text.len() + next.len() > bytes {
            return text;
        }
        text.push_str(&next);
        i += 1;
    }
}

#[test]
fn long_chains_and_lists_are_flat_and_evaluate_like_sql() {
    let b = batch();
    // 2,000 ORs (the text limit's worth), and an IN list as long.
    let or_chain = repeated(
        |i| format!("ts = {}", i % 3 + 2),
        " OR ",
        MAX_EXPRESSION_BYTES,
    );
    let in_list = format!(
        "ts IN ({})",
        repeated(|i| format!("{}", i % 3 + 2), ", ", 16_000)
    );
    let and_chain = repeated(
        |_| "value IS NOT NULL".to_string(),
        " AND ",
        MAX_EXPRESSION_BYTES,
    );
    for (text, expected) in [
        (or_chain.as_str(), [false, true, true, true]),
        (in_list.as_str(), [false, true, true, true]),
        (and_chain.as_str(), [true, true, false, true]),
    ] {
        let e = on_small_stack(|| Expression::compile(text, &b.schema())).unwrap();
        let got = on_small_stack(|| e.evaluate(&b)).unwrap();
        let got: Vec<bool> = as_bool(&got)
            .unwrap()
            .iter()
            .map(|v| v == Some(true))
            .collect();
        assert_eq!(got, expected, "{}", excerpt(text));
    }
    // Kleene logic is kept: NULL OR TRUE is true, NULL OR FALSE is NULL.
    assert_eq!(
        rows("value > 100 OR ts = 3 OR FALSE"),
        t([Some(false), Some(false), Some(true), Some(false)])
    );
    assert_eq!(
        rows("value IN (2, NULL)"),
        t([None, Some(true), None, None])
    );
    assert_eq!(
        rows("ts NOT IN (1, 4.0)"),
        t([Some(false), Some(true), Some(true), Some(false)])
    );
}

#[test]
fn no_expression_can_exhaust_the_stack() {
    let b = batch();
    let max = MAX_EXPRESSION_BYTES;
    // Every shape that nests with the length of the text, at the largest size
    // accepted: each is compiled (or refused) without recursing with its length.
    let shapes = [
        repeated(|_| "1".to_string(), " + ", max),
        repeated(|_| "ts".to_string(), "=", max),
        format!("ts{}", " IS NULL".repeat((max - 2) / 8)),
        format!("{}ts", "NOT ".repeat((max - 2) / 4)),
        format!("{}1", "-".repeat(max - 1)),
        format!("{}ts{}", "(".repeat(max / 2 - 1), ")".repeat(max / 2 - 1)),
        format!(
            "abs({}ts{}",
            "abs(".repeat(max / 5 - 2),
            ")".repeat(max / 5 - 1)
        ),
        repeated(|_| "value".to_string(), " BETWEEN 1 AND ", max),
        repeated(|_| "sensor_id".to_string(), " LIKE ", max),
    ];
    for text in &shapes {
        assert!(text.len() <= max);
        let result = on_small_stack(|| Expression::compile(text, &b.schema()).map(|_| ()));
        if let Err(e) = result {
            assert!(e.len() < 1000, "the error quotes too much: {e}");
        }
    }
    let deep = repeated(|_| "ts".to_string(), " + ", 1000);
    let err = Expression::compile(&format!("{deep} > 0"), &b.schema()).unwrap_err();
    assert!(err.contains("nested more than 64 levels"), "{err}");
}

#[test]
fn oversized_expressions_are_refused_and_not_quoted_whole() {
    let b = batch();
    let text = repeated(|i| format!("ts = {i}"), " OR ", 40_000);
    let err = Expression::compile(&text, &b.schema()).unwrap_err();
    assert!(err.contains("at most 16384"), "{err}");
    assert!(err.len() < 400, "{err}");
    let unknown = format!("{} > 1", "x".repeat(10_000));
    let err = Expression::compile(&unknown, &b.schema()).unwrap_err();
    assert!(err.contains("unknown field") && err.len() < 1000, "{err}");
}
