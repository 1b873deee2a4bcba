//! Cost per event of each detector on a realistic sensor stream: a random walk with
//! measurement noise, one reading per second, and a spike every ~500 readings.
//!
//! Each benchmark feeds `EVENTS` events to one warmed-up detector state (as the engine does
//! for one key); criterion's throughput line gives events/s, and time / `EVENTS` is the
//! cost per event.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidegauge_detect::{
    Aggregate, Baseline, BaselineParams, Calibrated, CalibrationParams, ChangePoint,
    ChangePointMethod, ChangePointParams, Combine, DeadlineTracker, Detector, Ewma, EwmaParams,
    Flatline, FlatlineParams, HalfLife, HeartbeatParams, Hotelling, HotellingParams, Mad,
    MadParams, Rate, RateParams, RelativeEntropy, RelativeEntropyParams, Seasonal, SeasonalParams,
    Threshold, ThresholdParams, Verdict, ZScore, ZScoreParams,
};

const EVENTS: usize = 10_000;

/// (ts_ms, value): random walk + noise + occasional spikes, 1 s apart.
fn stream(n: usize) -> Vec<(i64, f64)> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut level = 20.0;
    (0..n)
        .map(|i| {
            level += (uniform() - 0.5) * 0.05;
            let mut v = level + (uniform() - 0.5) * 0.5;
            if uniform() < 0.002 {
                v += 10.0;
            }
            (1_700_000_000_000 + i as i64 * 1000, v)
        })
        .collect()
}

fn run<D: Detector>(c: &mut Criterion, name: &str, param: &str, mut d: D, data: &[(i64, f64)]) {
    // Warm up on a different stretch so the measured state is past its warm-up.
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(data.len() as u64));
    // Enough passes to fill the largest window (65 536) twice.
    let passes = 131_072usize.div_ceil(data.len()) as i64;
    let span = data.len() as i64 * 1000;
    for p in 0..passes {
        for &(t, v) in data {
            d.observe(t - (passes - p) * span, v);
        }
    }
    let mut t0 = 0i64;
    group.bench_function(BenchmarkId::new(name, param), |b| {
        b.iter(|| {
            // Keep event time moving forward across iterations.
            t0 += EVENTS as i64 * 1000;
            let mut anomalies = 0u32;
            for &(t, v) in data {
                anomalies += u32::from(d.observe(t + t0, black_box(v)).is_anomaly);
            }
            anomalies
        })
    });
    group.finish();
}

fn detectors(c: &mut Criterion) {
    let data = stream(EVENTS);
    run(
        c,
        "zscore",
        "w100",
        ZScore::new(ZScoreParams::default()),
        &data,
    );
    run(c, "ewma", "events", Ewma::new(EwmaParams::default()), &data);
    run(
        c,
        "ewma",
        "millis",
        Ewma::new(EwmaParams {
            half_life: HalfLife::Millis(60_000.0),
            ..EwmaParams::default()
        }),
        &data,
    );
    for window in [100, 1000] {
        let d = Mad::new(MadParams {
            window,
            ..MadParams::default()
        });
        run(c, "mad", &format!("w{window}"), d, &data);
    }
    // Above 16 384 values the default layout is the treap.
    for window in [4096, 16384, 65536] {
        let d = Mad::new(MadParams {
            window,
            ..MadParams::default()
        });
        run(c, "mad", &format!("w{window}"), d, &data);
    }
    // The treap forced at sizes where the array is the default, to compare the layouts.
    for window in [100, 1000, 16384] {
        let d = Mad::new_tree_backed(MadParams {
            window,
            ..MadParams::default()
        });
        run(c, "mad_treap", &format!("w{window}"), d, &data);
    }
    let th = ThresholdParams {
        low: Some(0.0),
        high: Some(25.0),
        hysteresis: 0.5,
        scale: 1.0,
    };
    run(c, "threshold", "both", Threshold::new(th), &data);
    run(
        c,
        "rate",
        "default",
        Rate::new(RateParams::default()),
        &data,
    );
    run(
        c,
        "flatline",
        "default",
        Flatline::new(FlatlineParams::default()),
        &data,
    );
    run(
        c,
        "seasonal",
        "96x15min",
        Seasonal::new(SeasonalParams::default()),
        &data,
    );
    for (name, method) in [
        ("cusum", ChangePointMethod::Cusum),
        ("page_hinkley", ChangePointMethod::PageHinkley),
    ] {
        let d = ChangePoint::new(ChangePointParams {
            method,
            ..ChangePointParams::default()
        });
        run(c, "changepoint", name, d, &data);
    }
    run(
        c,
        "baseline",
        "default",
        Baseline::new(BaselineParams::default()),
        &data,
    );
    run(
        c,
        "baseline",
        "held",
        Baseline::new(BaselineParams::held(400, 5.0, 12.8)),
        &data,
    );
    run(
        c,
        "relative_entropy",
        "default",
        RelativeEntropy::new(RelativeEntropyParams::default()),
        &data,
    );
    // The calibration layer on top of a detector (its own cost is the difference).
    run(
        c,
        "calibrated",
        "zscore_w100",
        Calibrated::new(
            ZScore::new(ZScoreParams::default()),
            CalibrationParams::default(),
        ),
        &data,
    );
    run(
        c,
        "calibrated",
        "ewma",
        Calibrated::new(
            Ewma::new(EwmaParams::default()),
            CalibrationParams::default(),
        ),
        &data,
    );
}

/// `hotelling` on rows of 8 readings (SKAB's shape): the stream's values with 7 shifted
/// copies, so the readings are correlated but not identical.
fn multivariate(c: &mut Criterion) {
    let data = stream(EVENTS);
    let rows: Vec<[f64; 8]> = (0..data.len())
        .map(|i| std::array::from_fn(|k| data[(i + k * 37) % data.len()].1 * (1.0 + k as f64)))
        .collect();
    let mut d = Hotelling::new(HotellingParams::default());
    for (i, r) in rows.iter().enumerate() {
        d.observe(i as i64, r);
    }
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function(BenchmarkId::new("hotelling", "8_readings"), |b| {
        b.iter(|| {
            let mut anomalies = 0u32;
            for (i, r) in rows.iter().enumerate() {
                anomalies += u32::from(d.observe(i as i64, black_box(r)).is_anomaly);
            }
            anomalies
        })
    });
    group.finish();
}

fn others(c: &mut Criterion) {
    let data = stream(EVENTS);
    let mut group = c.benchmark_group("other");
    group.throughput(Throughput::Elements(EVENTS as u64));

    // Heartbeat: 1000 keys reporting round-robin, an expiry check every 100 events.
    let mut tracker: DeadlineTracker<u32> = DeadlineTracker::new(HeartbeatParams {
        expected_interval_ms: 1_000,
        tolerance: 3.0,
    });
    let mut now = 0i64;
    group.bench_function(BenchmarkId::new("heartbeat", "1000keys"), |b| {
        b.iter(|| {
            let mut reported = 0usize;
            for i in 0..EVENTS {
                now += 1;
                // Key 999 goes quiet now and then, to exercise reporting.
                let key = (i % 1000) as u32;
                if key != 999 || (now / 100_000) % 2 == 0 {
                    tracker.touch(&key, now);
                }
                if i % 100 == 0 {
                    reported += tracker.expired(now).len();
                }
            }
            reported
        })
    });

    for (name, agg) in [
        ("std", Aggregate::Std),
        (
            "p99",
            Aggregate::Quantile {
                q: 0.99,
                relative_accuracy: 0.01,
            },
        ),
    ] {
        group.bench_function(BenchmarkId::new("aggregate", name), |b| {
            b.iter(|| {
                let mut acc = agg.accumulator();
                for &(t, v) in &data {
                    acc.update(t, black_box(v));
                }
                acc.finish()
            })
        });
    }

    let verdicts: Vec<[Verdict; 3]> = data
        .iter()
        .map(|&(_, v)| {
            let s = (v / 40.0).clamp(0.0, 1.0);
            let mk = |score: f64| Verdict {
                statistic: Some(score),
                score,
                is_anomaly: score > 0.5,
            };
            [mk(s), mk(s * 0.9), Verdict::WARMING_UP]
        })
        .collect();
    group.bench_function(BenchmarkId::new("ensemble", "vote2of3"), |b| {
        let combine = Combine::Vote { min_votes: 2 };
        b.iter(|| {
            verdicts
                .iter()
                .filter(|m| combine.combine(black_box(&m[..])).is_anomaly)
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, detectors, multivariate, others);
criterion_main!(benches);
