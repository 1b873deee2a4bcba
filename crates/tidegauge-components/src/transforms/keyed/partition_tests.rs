//! Partition-aligned state: a partition's snapshot, restored by another instance that
//! consumes from the snapshot's offset, gives exactly the verdicts one instance reading
//! everything gives.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use tidegauge_core::dead_letter::DeadLetter;
use tidegauge_core::telemetry::ComponentTelemetry;
use tidegauge_core::{ComponentContext, Transform, TransformContext};

use crate::partitions::{Hub, OFFSET_FIELD, PARTITION_FIELD, Snapshot};
use crate::transforms::detector::KeyedSettings;
use crate::transforms::partition_harness::{Draws, Row, batch, schema};
use crate::transforms::zscore::ZScoreConfig;

const PARTITIONS: i64 = 3;

fn rows(n: usize) -> Vec<Row> {
    let mut draws = Draws::new(7, PARTITIONS);
    (0..n)
        .map(|_| {
            let (key, p, o, seed) = draws.draw(24);
            draws.keep(p);
            let noise = ((seed >> 11) % 1000) as f64 / 100.0;
            let spike = if (seed >> 20).is_multiple_of(37) {
                60.0
            } else {
                0.0
            };
            // Event time: the offset (the detector does not look at it).
            (
                format!("k{key}"),
                p,
                o,
                o,
                key as f64 * 10.0 + noise + spike,
            )
        })
        .collect()
}

struct Instance {
    t: Box<dyn Transform>,
    cx: TransformContext,
    /// z per (partition, offset); NaN when no verdict.
    z: BTreeMap<(i64, i64), f64>,
}

impl Instance {
    fn new(hub: &Arc<Hub>, workers: usize) -> Self {
        let spec = ZScoreConfig {
            window: 10,
            threshold: 2.0,
            workers: Some(workers),
            ..ZScoreConfig::default()
        };
        let input = schema();
        let output = super::validate(&spec, &spec.common(), &input).unwrap();
        let t = super::build_in(
            spec.clone(),
            &spec.common(),
            &input,
            output,
            "z",
            hub.clone(),
        )
        .unwrap();
        let component = ComponentContext::new(
            Arc::new(ComponentTelemetry::new(
                "z",
                tidegauge_core::ComponentKind::Transform,
                "zscore",
            )),
            DeadLetter::stderr(),
        );
        Instance {
            t,
            cx: TransformContext::new(component),
            z: BTreeMap::new(),
        }
    }

    fn collect(&mut self) {
        for (b, _) in self.cx.take_emitted() {
            let p = b
                .column_by_name(PARTITION_FIELD)
                .unwrap()
                .as_primitive::<arrow_array::types::Int64Type>();
            let o = b
                .column_by_name(OFFSET_FIELD)
                .unwrap()
                .as_primitive::<arrow_array::types::Int64Type>();
            let z = b.column_by_name("z").unwrap().as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                let v = if z.is_null(i) { f64::NAN } else { z.value(i) };
                let old = self.z.insert((p.value(i), o.value(i)), v);
                assert!(
                    old.is_none(),
                    "row {:?} judged twice",
                    (p.value(i), o.value(i))
                );
            }
        }
    }

    fn feed(&mut self, rows: &[Row]) {
        self.t.process(batch(rows), &mut self.cx).unwrap();
        self.collect();
    }

    fn tick(&mut self) {
        self.t
            .tick(std::time::SystemTime::now(), &mut self.cx)
            .unwrap();
        self.collect();
    }

    fn finish(&mut self) {
        self.t.flush(&mut self.cx).unwrap();
        self.collect();
    }
}

/// Reads `rows` in batches of `size` as a source with a changelog would: a cut of every
/// partition after each `cut_every` batches, at the offset after the last row decoded
/// (which includes the first rows of the batch not yet sent, so batches straddle cuts),
/// outputs made durable after each batch. Returns each partition's last snapshot once
/// `stop_at` rows are read (the instance is then dropped, as if killed).
fn run_until(
    hub: &Arc<Hub>,
    workers: usize,
    rows: &[Row],
    size: usize,
    stop_at: usize,
) -> BTreeMap<i64, Snapshot> {
    let mut a = Instance::new(hub, workers);
    for p in 0..PARTITIONS as i32 {
        hub.assign(p, None);
    }
    let mut written = BTreeMap::new();
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (i, chunk) in rows[..stop_at].chunks(size).enumerate() {
        if i % 3 == 2 {
            // Decoded half of this batch before the cut.
            for r in &chunk[..chunk.len() / 2] {
                last.insert(r.1, r.2 + 1);
            }
            for (&p, &o) in &last {
                hub.cut(p as i32, o);
            }
        }
        a.feed(chunk);
        for r in chunk {
            last.insert(r.1, r.2 + 1);
        }
        if i % 2 == 1 {
            a.tick();
        }
        // Workers hold a batch: what they emitted is durable, the rest is not.
        let mut durable: BTreeMap<i64, i64> = BTreeMap::new();
        for &(p, o) in a.z.keys() {
            let d = durable.entry(p).or_insert(0);
            *d = (*d).max(o + 1);
        }
        for (p, d) in durable {
            hub.set_durable(p as i32, d);
        }
        for (p, snap) in hub.take_ready() {
            written.insert(p as i64, snap);
        }
    }
    written
}

/// One instance owning every partition, reading everything: z per (partition, offset).
fn reference(all: &[Row]) -> BTreeMap<(i64, i64), f64> {
    let ref_hub = Arc::new(Hub::default());
    let mut reference = Instance::new(&ref_hub, 1);
    for p in 0..PARTITIONS as i32 {
        ref_hub.assign(p, None);
    }
    for chunk in all.chunks(97) {
        reference.feed(chunk);
    }
    reference.finish();
    assert_eq!(reference.z.len(), all.len());
    reference.z
}

fn check(workers: usize, size: usize) {
    let all = rows(4_000);
    let hub_a = Arc::new(Hub::default());
    let snapshots = run_until(&hub_a, workers, &all, size, 2_900);
    assert_eq!(
        snapshots.len(),
        PARTITIONS as usize,
        "every partition was written"
    );
    resume_from(&snapshots, &all, workers, size);
}

/// A second instance restores `snapshots` and reads the rest of `all`: every row it
/// judges must get the verdict one instance reading everything gives. Returns how many
/// rows it read.
fn resume_from(
    snapshots: &BTreeMap<i64, Snapshot>,
    all: &[Row],
    workers: usize,
    size: usize,
) -> usize {
    let reference = reference(all);
    let hub_b = Arc::new(Hub::default());
    let mut b = Instance::new(&hub_b, workers);
    for (&p, snap) in snapshots {
        assert!(snap.offset > 0);
        hub_b.assign(p as i32, Some(snap.clone()));
    }
    let resume: Vec<Row> = all
        .iter()
        .filter(|r| r.2 >= snapshots[&r.1].offset)
        .cloned()
        .collect();
    for chunk in resume.chunks(size) {
        b.feed(chunk);
    }
    b.finish();
    assert_eq!(b.z.len(), resume.len());
    for (k, z) in &b.z {
        let want = reference[k];
        assert!(
            (z.is_nan() && want.is_nan()) || z == &want,
            "row {k:?}: z {z} after the move, {want} reading everything"
        );
    }
    resume.len()
}

/// An instance that stops (its input ends) hands in its state of every partition at
/// the last row read, cut there by the stopping source: the next owner reads on from
/// exactly there, nothing read twice, every verdict as one instance's.
fn check_stop(workers: usize) {
    let all = rows(4_000);
    let stop_at = 2_900;
    let hub = Arc::new(Hub::default());
    let mut a = Instance::new(&hub, workers);
    for p in 0..PARTITIONS as i32 {
        hub.assign(p, None);
    }
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for chunk in all[..stop_at].chunks(64) {
        a.feed(chunk);
        for r in chunk {
            last.insert(r.1, r.2 + 1);
        }
    }
    // The source's final cuts, then the input ends.
    for (&p, &o) in &last {
        assert!(hub.recut(p as i32, o));
    }
    a.finish();
    for (&p, &o) in &last {
        hub.set_durable(p as i32, o);
    }
    let snapshots: BTreeMap<i64, Snapshot> = hub
        .take_ready()
        .into_iter()
        .map(|(p, s)| (p as i64, s))
        .collect();
    assert_eq!(
        snapshots.len(),
        PARTITIONS as usize,
        "every partition handed in"
    );
    for (p, snap) in &snapshots {
        assert_eq!(
            snap.offset, last[p],
            "partition {p} cut at its last row read"
        );
    }
    let read = resume_from(&snapshots, &all, workers, 64);
    assert_eq!(
        read,
        all.len() - stop_at,
        "nothing read twice after the stop"
    );
}

#[test]
fn a_stopped_instance_hands_over_at_its_last_row_inline() {
    check_stop(1);
}

#[test]
fn a_stopped_instance_hands_over_at_its_last_row_with_workers() {
    check_stop(2);
}

#[test]
fn a_moved_partition_resumes_exactly_inline() {
    check(1, 50);
}

#[test]
fn a_moved_partition_resumes_exactly_with_workers() {
    check(3, 64);
}

#[test]
fn rows_of_partitions_not_owned_are_dropped() {
    let hub = Arc::new(Hub::default());
    let mut a = Instance::new(&hub, 1);
    hub.assign(0, None);
    let all = rows(300);
    a.feed(&all);
    a.finish();
    assert!(!a.z.is_empty());
    assert!(a.z.keys().all(|(p, _)| *p == 0));
}
