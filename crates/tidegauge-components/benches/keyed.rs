//! Throughput of keyed detector stages alone (no decoding): W1-shaped batches of 1000
//! sensors through a detector transform with 1, 2 and 4 worker threads; and skewed keys
//! (Zipf-like, exponent 1.1: a few hot sensors, a long tail of cold ones) over 1,000 and
//! 100,000 sensors through one `zscore` stage (and one `ewma` stage, which keeps no
//! window) that keeps its state from one pass to the next (steady state: the hot
//! sensors' windows full), for the cost of many sensors.
//!
//! `cargo bench -p tidegauge-components --bench keyed` (`-- skew` for the skewed cases;
//! `KEYED_WINDOW=N` gives their `zscore` a window of N instead of 100, to see what the
//! windows' size costs)

use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidegauge_components::sources::simulate::SplitMix64;
use tidegauge_core::component::{BuildContext, ComponentContext, TransformContext};
use tidegauge_core::dead_letter::DeadLetter;
use tidegauge_core::registry::{self, AnyConfig, ComponentKind};
use tidegauge_core::telemetry::ComponentTelemetry;

const ROWS: usize = 8192;
const BATCHES: usize = 32;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn batches() -> Vec<RecordBatch> {
    let ids: Vec<String> = (0..1000).map(|i| format!("s-{i:04}")).collect();
    let mut rng = SplitMix64::new(42);
    make_batches(&ids, BATCHES, move || (rng.next_u64() % 1000) as usize)
}

/// `batches` batches of `ROWS` readings of the sensors `ids`, each from `pick`.
fn make_batches(
    ids: &[String],
    batches: usize,
    mut pick: impl FnMut() -> usize,
) -> Vec<RecordBatch> {
    let mut rng = SplitMix64::new(7);
    let mut ts = 1_700_000_000_000i64;
    (0..batches)
        .map(|_| {
            let mut keys = Vec::with_capacity(ROWS);
            let mut times = Vec::with_capacity(ROWS);
            let mut values = Vec::with_capacity(ROWS);
            for _ in 0..ROWS {
                let s = pick();
                ts += 2;
                keys.push(ids[s].as_str());
                times.push(ts);
                values.push(50.0 + s as f64 + 3.0 * rng.normal());
            }
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from(keys)),
                    Arc::new(Int64Array::from(times)),
                    Arc::new(Float64Array::from(values)),
                ],
            )
            .expect("columns match the schema")
        })
        .collect()
}

fn transform(
    runtime: &tokio::runtime::Runtime,
    kind: &str,
    settings: &str,
) -> Box<dyn tidegauge_core::Transform> {
    let d = registry::find(ComponentKind::Transform, kind).expect("registered");
    let text = format!("{{ {settings} }}");
    let de = toml::de::DeValue::parse(&text).expect("valid TOML");
    let Ok(AnyConfig::Transform(config)) = d.parse(de) else {
        panic!("{kind} settings do not parse");
    };
    let output = config.validate(&schema()).expect("valid config");
    let telemetry = Arc::new(ComponentTelemetry::new(
        "bench",
        ComponentKind::Transform,
        "bench",
    ));
    config
        .build(
            schema(),
            output,
            BuildContext {
                component: ComponentContext::new(telemetry, DeadLetter::stderr()),
                runtime: runtime.handle().clone(),
            },
        )
        .expect("builds")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let input = batches();
    let mut group = c.benchmark_group("keyed_stage");
    group.throughput(Throughput::Elements((ROWS * BATCHES) as u64));
    group.sample_size(10);
    for (kind, settings) in [("zscore", "window = 100"), ("mad", "window = 100")] {
        for workers in [1, 2, 4] {
            group.bench_function(format!("{kind}/workers={workers}"), |b| {
                b.iter_batched(
                    || transform(&runtime, kind, &format!("{settings}, workers = {workers}")),
                    |mut t| run(&mut *t, &input),
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    // The machine's own ceiling for two threads: two independent one-worker stages, each
    // over the whole input, side by side (twice the work). Sharding cannot beat this
    // ratio to `workers=1`; on shared or SMT cores it is well under 2.
    group.throughput(Throughput::Elements((2 * ROWS * BATCHES) as u64));
    group.bench_function("zscore/two-independent-stages", |b| {
        b.iter_batched(
            || {
                (
                    transform(&runtime, "zscore", "window = 100"),
                    transform(&runtime, "zscore", "window = 100"),
                )
            },
            |(mut t1, mut t2)| {
                std::thread::scope(|s| {
                    let input = &input;
                    let a = s.spawn(move || run(&mut *t1, input));
                    let b = run(&mut *t2, input);
                    a.join().expect("stage thread") + b
                })
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Every batch of `input` through `t`; the number of batches emitted.
fn run(t: &mut dyn tidegauge_core::Transform, input: &[RecordBatch]) -> usize {
    let telemetry = Arc::new(ComponentTelemetry::new(
        "bench",
        ComponentKind::Transform,
        "bench",
    ));
    let mut cx = TransformContext::new(ComponentContext::new(telemetry, DeadLetter::stderr()));
    for batch in input {
        t.process(batch.clone(), &mut cx).expect("process");
        cx.take_emitted().for_each(drop);
    }
    t.flush(&mut cx).expect("flush");
    cx.take_emitted().count()
}

/// Readings of `sensors` sensors where sensor k (from 1) reports with probability
/// proportional to k^-1.1, as `scripts/keys_gen.py` writes them.
fn skewed_batches(sensors: usize) -> Vec<RecordBatch> {
    let ids: Vec<String> = (0..sensors).map(|i| format!("s-{i:06}")).collect();
    let mut cumulative = Vec::with_capacity(sensors);
    let mut total = 0.0;
    for k in 1..=sensors {
        total += (k as f64).powf(-1.1);
        cumulative.push(total);
    }
    let mut rng = SplitMix64::new(11);
    make_batches(&ids, SKEW_BATCHES, move || {
        let u = rng.next_f64() * total;
        cumulative.partition_point(|&c| c < u).min(sensors - 1)
    })
}

/// Batches of the skewed cases: 524,288 readings a pass.
const SKEW_BATCHES: usize = 64;

/// The `zscore` and `ewma` stages on skewed keys, state kept across passes: their cost
/// per event at 100,000 sensors against 1,000 is what many sensors cost.
fn skew(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("keyed_skew");
    group.throughput(Throughput::Elements((ROWS * SKEW_BATCHES) as u64));
    group.sample_size(20);
    let window: usize = match std::env::var("KEYED_WINDOW") {
        Ok(w) => w.parse().expect("KEYED_WINDOW is a window length"),
        Err(_) => 100,
    };
    let zscore = format!("window = {window}, ");
    for sensors in [1_000, 100_000] {
        let input = skewed_batches(sensors);
        // zscore holds a window of values a sensor (100 unless KEYED_WINDOW says); ewma a
        // few numbers: the two show the key table's share of the cost and the window's.
        for (detector, params) in [("zscore", zscore.as_str()), ("ewma", "")] {
            let mut t = transform(&runtime, detector, &format!("{params}max_keys = {sensors}"));
            // Two passes first: every sensor seen is held, the hot ones warm (zscore's
            // windows full).
            run(&mut *t, &input);
            run(&mut *t, &input);
            group.bench_function(format!("{detector}/sensors={sensors}"), |b| {
                b.iter(|| run(&mut *t, &input))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench, skew);
criterion_main!(benches);
