//! Partition-aligned machines: a partition moved to another instance (snapshot at a cut,
//! restored there, consumed from the snapshot's offset) gives exactly the distances one
//! instance reading everything gives, whether it moves during the warm-up or after it.

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::types::{Float64Type, Int64Type};

use super::*;
use crate::partitions::{OFFSET_FIELD, PARTITION_FIELD, Snapshot};
use crate::transforms::partition_harness::{Draws, Fed, Row, read, schema};

const PARTITIONS: i64 = 3;

/// Machines `k0..k23`, machine `k` in partition `k % 3`, each with its own level, noise
/// and now and then a spike.
fn rows(n: usize) -> Vec<Row> {
    let mut draws = Draws::new(11, PARTITIONS);
    (0..n)
        .map(|_| {
            let (key, p, o, seed) = draws.draw(24);
            draws.keep(p);
            let noise = ((seed >> 11) % 1000) as f64 / 100.0;
            let spike = if (seed >> 20).is_multiple_of(29) {
                80.0
            } else {
                0.0
            };
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

/// The distance per (partition, offset); NaN when no verdict.
type Verdicts = BTreeMap<(i64, i64), f64>;

struct Instance {
    fed: Fed,
    out: Verdicts,
}

fn config(key_field: Option<&str>) -> HotellingConfig {
    HotellingConfig {
        key_field: key_field.map(str::to_string),
        value_fields: vec!["value".to_string()],
        warmup: 30,
        half_life_events: 1.0,
        threshold: 3.0,
        ..HotellingConfig::default()
    }
}

impl Instance {
    fn new(hub: &Arc<Hub>) -> Self {
        let config = config(Some("sensor_id"));
        let input = schema();
        let output = config.validate(&input).unwrap();
        let t = config.build_in(input, output, "h", hub).unwrap();
        assert!(t.partitioning.is_some());
        Instance {
            fed: Fed::new(Box::new(t), "hotelling"),
            out: BTreeMap::new(),
        }
    }

    fn feed(&mut self, rows: &[Row]) {
        let b = self.fed.feed(rows);
        collect(&mut self.out, b);
    }

    fn read(&mut self, hub: &Arc<Hub>, rows: &[Row], size: usize) -> BTreeMap<i32, Snapshot> {
        let mut written = BTreeMap::new();
        let out = &mut self.out;
        read(&mut self.fed, hub, rows, size, &mut written, &mut |b| {
            collect(out, b)
        });
        written
    }
}

fn collect(out: &mut Verdicts, batches: Vec<RecordBatch>) {
    for b in batches {
        let p = b
            .column_by_name(PARTITION_FIELD)
            .unwrap()
            .as_primitive::<Int64Type>();
        let o = b
            .column_by_name(OFFSET_FIELD)
            .unwrap()
            .as_primitive::<Int64Type>();
        let d = b
            .column_by_name("distance")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let v = if d.is_null(i) { f64::NAN } else { d.value(i) };
            let old = out.insert((p.value(i), o.value(i)), v);
            assert!(
                old.is_none(),
                "row {:?} judged twice",
                (p.value(i), o.value(i))
            );
        }
    }
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

#[test]
fn a_moved_partition_gives_exactly_the_distances_of_one_instance() {
    let all = rows(4_000);
    let ref_hub = Arc::new(Hub::default());
    let mut reference = Instance::new(&ref_hub);
    for p in 0..PARTITIONS as i32 {
        ref_hub.assign(p, None);
    }
    for chunk in all.chunks(97) {
        reference.feed(chunk);
    }
    assert_eq!(reference.out.len(), all.len());
    let flagged = reference.out.values().filter(|d| **d > 3.0).count();
    assert!(flagged > 20, "{flagged}");

    // Moved during the warm-up (about 12 rows a machine at 300) and after it.
    for stop in [300, 1_400, 2_600, 3_500] {
        let hub_a = Arc::new(Hub::default());
        let mut a = Instance::new(&hub_a);
        for p in 0..PARTITIONS as i32 {
            hub_a.assign(p, None);
        }
        let written = a.read(&hub_a, &all[..stop], 50);
        let snap = written.get(&2).cloned().expect("partition 2 was written");
        assert!(snap.offset > 10, "snapshot at {}", snap.offset);
        hub_a.revoke(2);
        let hub_b = Arc::new(Hub::default());
        let mut b = Instance::new(&hub_b);
        hub_b.assign(2, Some(snap.clone()));
        a.read(&hub_a, &all[stop..], 50);
        let resume: Vec<Row> = all
            .iter()
            .filter(|r| r.1 == 2 && r.2 >= snap.offset)
            .cloned()
            .collect();
        b.read(&hub_b, &resume, 40);
        let judged_b: BTreeSet<(i64, i64)> = b.out.keys().copied().collect();
        let want_b: BTreeSet<(i64, i64)> = resume.iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(
            judged_b, want_b,
            "b judges partition 2 from the snapshot on"
        );
        let mut covered: BTreeSet<(i64, i64)> = a.out.keys().copied().collect();
        covered.extend(judged_b);
        assert_eq!(covered.len(), all.len(), "every row judged after the move");
        for (who, out) in [("a", &a.out), ("b", &b.out)] {
            let wrong: Vec<_> = out
                .iter()
                .filter(|(k, d)| !same(**d, reference.out[*k]))
                .map(|(k, d)| (*k, *d, reference.out[k]))
                .take(5)
                .collect();
            assert!(
                wrong.is_empty(),
                "moved after {stop} rows: {who} judged (row, distance, one instance's) {wrong:?}"
            );
        }
    }
}

#[test]
fn rows_of_partitions_not_owned_are_dropped() {
    let hub = Arc::new(Hub::default());
    let mut h = Instance::new(&hub);
    hub.assign(0, None);
    hub.assign(1, None);
    let all = rows(600);
    for chunk in all.chunks(64) {
        h.feed(chunk);
    }
    let owned: BTreeSet<(i64, i64)> = all
        .iter()
        .filter(|r| r.1 != 2)
        .map(|r| (r.1, r.2))
        .collect();
    let judged: BTreeSet<(i64, i64)> = h.out.keys().copied().collect();
    assert_eq!(judged, owned);
}

#[test]
fn a_revoked_partitions_machines_are_forgotten() {
    let hub = Arc::new(Hub::default());
    let mut h = Instance::new(&hub);
    for p in 0..PARTITIONS as i32 {
        hub.assign(p, None);
    }
    let all = rows(600);
    h.feed(&all);
    hub.revoke(1);
    h.feed(&[]);
    let held = |h: &mut Instance| {
        let t = h.fed.t.checkpoint().unwrap().unwrap();
        let (keys, _): (KeyInterner, Vec<Hotelling>) = decode_keyed(&t).unwrap();
        let mut k: Vec<u64> = keys
            .iter()
            .map(|(k, _)| k[1..].parse::<u64>().unwrap())
            .collect();
        k.sort();
        k
    };
    let keys = held(&mut h);
    assert_eq!(keys.len(), 16, "{keys:?}");
    assert!(keys.iter().all(|k| k % 3 != 1), "{keys:?}");
}

#[test]
fn without_a_key_field_the_state_stays_per_instance() {
    let config = config(None);
    let input = schema();
    let output = config.validate(&input).unwrap();
    let hub = Arc::new(Hub::default());
    let t = config.build_in(input, output, "h", &hub).unwrap();
    assert!(t.partitioning.is_none());
}

#[test]
fn the_checkpoint_without_partitions_still_restores() {
    // An instance without partition columns learns every machine, and is checkpointed.
    let all = rows(2_000);
    let (head, tail) = all.split_at(1_200);
    let config = config(Some("sensor_id"));
    let plain = Arc::new(arrow_schema::Schema::new(
        schema()
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("kafka_"))
            .map(|f| (**f).clone())
            .collect::<Vec<_>>(),
    ));
    let output = config.validate(&plain).unwrap();
    let hub = Arc::new(Hub::default());
    let mut before = config.build_in(plain.clone(), output, "h", &hub).unwrap();
    assert!(before.partitioning.is_none());
    let mut cx = TransformContext::new(tidegauge_core::ComponentContext::new(
        Arc::new(tidegauge_core::telemetry::ComponentTelemetry::new(
            "h",
            tidegauge_core::registry::ComponentKind::Transform,
            "hotelling",
        )),
        tidegauge_core::dead_letter::DeadLetter::stderr(),
    ));
    let project = |rows: &[Row]| {
        let b = crate::transforms::partition_harness::batch(rows);
        let columns = plain
            .fields()
            .iter()
            .map(|f| b.column_by_name(f.name()).unwrap().clone())
            .collect();
        RecordBatch::try_new(plain.clone(), columns).unwrap()
    };
    before.process(project(head), &mut cx).unwrap();
    let _ = cx.take_emitted().count();
    let saved = before.checkpoint().unwrap().unwrap();
    // One going on without partitions: the distances to expect.
    before.process(project(tail), &mut cx).unwrap();
    let mut want = Vec::new();
    for (b, _) in cx.take_emitted() {
        let d = b
            .column_by_name("distance")
            .unwrap()
            .as_primitive::<Float64Type>();
        want.extend((0..b.num_rows()).map(|i| if d.is_null(i) { f64::NAN } else { d.value(i) }));
    }
    // A partitioned instance restoring that checkpoint goes on the same way.
    let hub = Arc::new(Hub::default());
    let mut after = Instance::new(&hub);
    for p in 0..PARTITIONS as i32 {
        hub.assign(p, None);
    }
    after.feed(&[]);
    after.fed.t.restore(&saved).unwrap();
    after.feed(tail);
    let got: Vec<f64> = tail.iter().map(|r| after.out[&(r.1, r.2)]).collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got.iter().zip(&want).all(|(a, b)| same(*a, *b)),
        "restored from a checkpoint without partitions, the machines go on as before"
    );
    assert!(want.iter().filter(|d| !d.is_nan()).count() > 700);
}
