//! Whether the hand-written fast path of the JSON Lines decoder (`codec::flat_json`)
//! earns its place: the same W1-shaped lines decoded through it and through the
//! `serde_json` path it falls back to (which gives the same rows, as a property test and
//! a fuzz target check).
//!
//! `cargo bench -p tidegauge-components --bench json_lines`
//!
//! The fast path keeps the layout of the last line it read (keys, whitespace): the lines
//! here share one, as a stream's lines usually do.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidegauge_components::codec::Row;
use tidegauge_components::codec::json::JsonDecoder;
use tidegauge_components::sources::simulate::SplitMix64;

const LINES: usize = 10_000;

/// Lines as W1 writes them, and the same with two fields the pipeline does not declare.
fn lines(extra: bool) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(7);
    (0..LINES)
        .map(|i| {
            let sensor = rng.next_u64() % 1000;
            let value = (rng.next_u64() % 2_000_000) as f64 / 10_000.0 - 100.0;
            let ts = 1_700_000_000_000u64 + 3 * i as u64;
            let mut line =
                format!("{{\"sensor_id\":\"s-{sensor:04}\",\"ts\":{ts},\"value\":{value:.4}");
            if extra {
                line.push_str(",\"site\":\"plant-3\",\"quality\":192");
            }
            line.push('}');
            line.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut decoder = JsonDecoder::new(vec!["sensor_id".into(), "ts".into(), "value".into()]);
    let mut row = Row::new(3);
    for (name, extra) in [("w1", false), ("w1+2 unknown fields", true)] {
        let input = lines(extra);
        let mut g = c.benchmark_group(format!("json_lines/{name}"));
        g.throughput(Throughput::Elements(LINES as u64));
        g.bench_function("fast path", |b| {
            b.iter(|| {
                for l in &input {
                    decoder.decode(l, &mut row).unwrap();
                }
            })
        });
        g.bench_function("serde_json", |b| {
            b.iter(|| {
                for l in &input {
                    decoder.decode_general(l, &mut row).unwrap();
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
