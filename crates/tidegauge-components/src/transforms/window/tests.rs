//! Unit tests of the `window` transform.
use super::*;
use arrow_schema::{DataType, Field, Schema};

use super::config::aggregate;
use crate::telemetry::{EVENTS_WITHOUT_STATE, KEYS, STALE_READINGS, WATERMARK_LAG};

fn config(text: &str) -> WindowConfig {
    toml::from_str(text).unwrap()
}

#[test]
fn sliding_windows_cover_each_event_size_over_slide_times() {
    let c = config("kind = \"sliding\"\nsize_ms = 100\nslide_ms = 25");
    let w = Window::new(&c, &input_schema(), Arc::new(Schema::empty())).unwrap();
    assert_eq!(w.starts(130).collect::<Vec<_>>(), vec![125, 100, 75, 50]);
    assert_eq!(w.starts(-10).collect::<Vec<_>>(), vec![-25, -50, -75, -100]);
}

#[test]
fn aggregate_names() {
    assert_eq!(
        aggregate("p99", 0.01).unwrap(),
        Aggregate::Quantile {
            q: 0.99,
            relative_accuracy: 0.01
        }
    );
    assert!(aggregate("p101", 0.01).is_err());
    assert!(
        aggregate("median", 0.01)
            .unwrap_err()
            .contains("unknown aggregate")
    );
}

use arrow_array::{Float64Array, Int64Array, StringArray};
use tidegauge_core::telemetry::ComponentTelemetry;

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// A window transform built from `text`, its context and its telemetry.
fn built(
    text: &str,
) -> (
    Window,
    TransformContext,
    Arc<ComponentTelemetry>,
    tokio::runtime::Runtime,
) {
    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::ComponentKind;
    use tidegauge_core::{ComponentContext, TransformConfig};

    let c = config(text);
    let output = c.validate(&input_schema()).unwrap();
    let telemetry = Arc::new(ComponentTelemetry::new(
        "w",
        ComponentKind::Transform,
        "window",
    ));
    let component = ComponentContext::new(telemetry.clone(), DeadLetter::stderr());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let w = Window::new(&c, &input_schema(), output).unwrap();
    (w, TransformContext::new(component), telemetry, runtime)
}

fn batch(rows: &[(&str, i64, f64)]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// (key, window_start, count) of every window emitted so far.
fn emitted(cx: &mut TransformContext) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for (b, _) in cx.take_emitted() {
        let keys = b.column(0).as_string::<i32>();
        let starts = b.column(1).as_primitive::<Int64Type>();
        let counts = b
            .column_by_name("count")
            .unwrap()
            .as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            out.push((keys.value(r).to_string(), starts.value(r), counts.value(r)));
        }
    }
    out
}

#[test]
fn late_events_count_as_stale_and_the_watermark_lag_is_reported() {
    let (mut w, mut cx, telemetry, _rt) = built("size_ms = 100\naggregates = [\"mean\"]");
    // 1000 closes the window [0, 100); 50 then arrives behind the watermark.
    let b = batch(&[("s", 10, 1.0), ("s", 1000, 2.0), ("s", 50, 3.0)]);
    w.process(b, &mut cx).unwrap();
    let s = telemetry.snapshot();
    assert_eq!(s.metric(STALE_READINGS.name), Some(1));
    // Event time 1970 trails the wall clock by decades.
    let lag_ms = s.metric(WATERMARK_LAG.name).unwrap();
    assert!(lag_ms > 1_000_000_000, "{lag_ms}");
}

#[test]
fn keys_past_max_keys_are_not_windowed_until_a_key_closes_its_windows() {
    for kind in ["kind = \"tumbling\"", "kind = \"session\"\ngap_ms = 100"] {
        let (mut w, mut cx, telemetry, _rt) = built(&format!(
            "{kind}\nsize_ms = 100\naggregates = [\"count\"]\nmax_keys = 2"
        ));
        let b = batch(&[("a", 0, 1.0), ("b", 1, 1.0), ("c", 2, 1.0), ("a", 3, 1.0)]);
        w.process(b, &mut cx).unwrap();
        let s = telemetry.snapshot();
        assert_eq!(s.metric(KEYS.name), Some(2), "{kind}");
        assert_eq!(
            s.metric(EVENTS_WITHOUT_STATE.name),
            Some(1),
            "{kind}: c had no room"
        );
        // Time moves on: a's and b's windows close, c now has room.
        w.process(batch(&[("c", 500, 1.0), ("c", 501, 1.0)]), &mut cx)
            .unwrap();
        w.flush(&mut cx).unwrap();
        let mut got = emitted(&mut cx);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, 2),
                ("b".into(), if kind.contains("session") { 1 } else { 0 }, 1),
                ("c".into(), 500, 2)
            ],
            "{kind}"
        );
        let s = telemetry.snapshot();
        assert_eq!(s.metric(EVENTS_WITHOUT_STATE.name), Some(1), "{kind}");
    }
}

#[test]
fn names_of_keys_without_open_windows_are_reclaimed() {
    // One key at a time, each in its own window: 10,000 keys pass, at most 2 x 1024
    // names are held, and every key's window comes out whole.
    let (mut w, mut cx, telemetry, _rt) =
        built("size_ms = 10\naggregates = [\"count\"]\nmax_keys = 3");
    let mut want = Vec::new();
    for i in 0..10_000i64 {
        let key = format!("k{i}");
        let b = batch(&[(&key, i * 10, 1.0), (&key, i * 10 + 1, 2.0)]);
        w.process(b, &mut cx).unwrap();
        want.push((key, i * 10, 2));
    }
    w.flush(&mut cx).unwrap();
    let mut got = emitted(&mut cx);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let refused = telemetry.snapshot().metric(EVENTS_WITHOUT_STATE.name);
    assert_eq!(refused.unwrap_or(0), 0);
    let held = w.names.len();
    assert!(held <= 2048, "{held} names held");
}

/// Every row emitted so far: key, start, end, count, mean (bits) and `late`.
fn rows_out(cx: &mut TransformContext) -> Vec<(String, i64, i64, i64, u64, bool)> {
    let mut out = Vec::new();
    for (b, _) in cx.take_emitted() {
        let keys = b.column(0).as_string::<i32>();
        let starts = b.column(1).as_primitive::<Int64Type>();
        let ends = b.column(2).as_primitive::<Int64Type>();
        let counts = b
            .column_by_name("count")
            .unwrap()
            .as_primitive::<Int64Type>();
        let means = b
            .column_by_name("mean")
            .unwrap()
            .as_primitive::<arrow_array::types::Float64Type>();
        let late = b.column_by_name("late").unwrap().as_boolean();
        for r in 0..b.num_rows() {
            out.push((
                keys.value(r).to_string(),
                starts.value(r),
                ends.value(r),
                counts.value(r),
                means.value(r).to_bits(),
                late.value(r),
            ));
        }
    }
    out
}

/// Batches of three sensors over 2 s of event time, with bursts and silences (so
/// sessions open and close) and one late event.
fn stream() -> Vec<RecordBatch> {
    let mut rows: Vec<(String, i64, f64)> = Vec::new();
    for i in 0..400i64 {
        let t = i * 5;
        for (k, key) in ["a", "b", "c"].iter().enumerate() {
            // Sensor b is silent from 600 to 900 and c every other 250 ms.
            if (*key == "b" && (600..900).contains(&t)) || (*key == "c" && (t / 250) % 2 == 1) {
                continue;
            }
            rows.push((
                key.to_string(),
                t + k as i64,
                (i % 17) as f64 * 0.37 + k as f64,
            ));
        }
        if i == 200 {
            rows.push(("a".into(), 10, 99.0)); // far behind the watermark
        }
    }
    rows.chunks(37)
        .map(|c| {
            let r: Vec<(&str, i64, f64)> = c.iter().map(|(k, t, v)| (k.as_str(), *t, *v)).collect();
            batch(&r)
        })
        .collect()
}

#[test]
fn a_restart_from_a_checkpoint_mid_window_gives_the_windows_of_a_clean_run() {
    let shapes = [
        "kind = \"tumbling\"\nsize_ms = 100",
        "kind = \"sliding\"\nsize_ms = 100\nslide_ms = 25",
        "kind = \"session\"\ngap_ms = 40",
        "kind = \"tumbling\"\nsize_ms = 100\nallowed_lateness_ms = 30\nlate = \"emit\"",
    ];
    let batches = stream();
    for shape in shapes {
        let text = format!("{shape}\naggregates = [\"count\", \"mean\", \"p50\"]");
        let (mut w, mut cx, _, _rt) = built(&text);
        for b in &batches {
            w.process(b.clone(), &mut cx).unwrap();
        }
        w.flush(&mut cx).unwrap();
        let clean = rows_out(&mut cx);
        assert!(clean.len() > 5, "{shape}: {} windows", clean.len());
        // Killed after barrier `cut` (every later output lost), restarted from it.
        for cut in [1, 7, batches.len() / 2, batches.len() - 1] {
            let (mut w, mut cx, _, _rt) = built(&text);
            for b in &batches[..cut] {
                w.process(b.clone(), &mut cx).unwrap();
            }
            let state = w.checkpoint().unwrap().unwrap();
            let mut got = rows_out(&mut cx);
            w.process(batches[cut].clone(), &mut cx).unwrap(); // lost with the crash
            drop(w);
            let (mut w, mut cx, _, _rt) = built(&text);
            w.restore(&state).unwrap();
            for b in &batches[cut..] {
                w.process(b.clone(), &mut cx).unwrap();
            }
            w.flush(&mut cx).unwrap();
            got.extend(rows_out(&mut cx));
            assert_eq!(got, clean, "{shape}, restarted after batch {cut}");
        }
    }
}

#[test]
fn tokens_of_open_windows_go_to_the_checkpoint_at_a_barrier() {
    use tidegauge_core::ack::ack_channel;
    let (mut w, mut cx, _, _rt) = built("size_ms = 100\naggregates = [\"count\"]");
    let (tx, mut acks) = ack_channel();
    cx.set_finalizers(Finalizers::one(tx.token(1)));
    w.process(batch(&[("a", 10, 1.0), ("b", 20, 2.0)]), &mut cx)
        .unwrap();
    cx.set_finalizers(Finalizers::none());
    assert!(acks.try_recv().is_err(), "held by the open windows");
    w.checkpoint().unwrap().unwrap();
    let covered = w.checkpoint_tokens();
    assert!(!covered.is_empty());
    assert!(
        acks.try_recv().is_err(),
        "held until the checkpoint is written"
    );
    covered.release();
    assert_eq!(acks.try_recv().unwrap().id, 1);
    // The windows are still open and still count those events.
    w.flush(&mut cx).unwrap();
    let mut got = emitted(&mut cx);
    got.sort();
    assert_eq!(got, vec![("a".into(), 0, 1), ("b".into(), 0, 1)]);
}

#[test]
fn a_checkpoint_of_another_window_shape_is_refused() {
    let (mut w, mut cx, _, _rt) = built("size_ms = 100\naggregates = [\"count\"]");
    w.process(batch(&[("a", 10, 1.0)]), &mut cx).unwrap();
    let state = w.checkpoint().unwrap().unwrap();
    let (mut other, _, _, _rt) = built("size_ms = 200\naggregates = [\"count\"]");
    let e = other.restore(&state).unwrap_err();
    assert!(e.message.contains("size_ms 100"), "{}", e.message);
    let (mut other, _, _, _rt) = built("size_ms = 100\naggregates = [\"max\"]");
    let e = other.restore(&state).unwrap_err();
    assert!(e.message.contains("other aggregates"), "{}", e.message);
    let (mut same, _, _, _rt) = built("size_ms = 100\naggregates = [\"count\"]");
    same.restore(&state).unwrap();
}
