//! Partition-aligned windows: a partition moved to another instance (snapshot at a cut,
//! restored there, consumed from the snapshot's offset) gives exactly the windows one
//! instance reading everything gives; each partition's windows close by its own time.

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::types::Float64Type;
use tidegauge_core::TransformConfig;

use super::*;
use crate::partitions::Snapshot;
use crate::transforms::partition_harness::{Draws, Fed, Row, read, schema};

const PARTITIONS: i64 = 3;

/// Keys `k0..k11`, key `k` in partition `k % 3`. Each partition has its own clock:
/// partition 2 runs 3 s behind the others, so with one watermark for the whole stream
/// its events would all be late. One event in 23 comes 250 ms behind its partition's
/// time (late there, as windows are 100 ms).
fn rows(n: usize) -> Vec<Row> {
    let mut draws = Draws::new(11, PARTITIONS);
    (0..n)
        .map(|_| {
            let (key, p, o, seed) = draws.draw(12);
            draws.keep(p);
            let behind = if p == 2 { 3_000 } else { 0 };
            let jitter = if (seed >> 20).is_multiple_of(23) {
                250
            } else {
                0
            };
            let ts = 10_000 + o * 7 - behind - jitter;
            let value = (key * 10 + (seed >> 40) % 7) as f64;
            (format!("k{key}"), p, o, ts, value)
        })
        .collect()
}

/// A window: (key, start, end).
type Span = (String, i64, i64);

struct Instance {
    fed: Fed,
    /// Every window emitted: (count, sum) per copy.
    out: BTreeMap<Span, Vec<(i64, u64)>>,
}

impl Instance {
    fn new(hub: &Arc<Hub>, shape: &str) -> Self {
        let config: WindowConfig =
            toml::from_str(&format!("{shape}\naggregates = [\"count\", \"sum\"]")).unwrap();
        let input = schema();
        let output = config.validate(&input).unwrap();
        let w = Window::new(&config, &input, output)
            .unwrap()
            .partitioned(&input, hub, "w");
        assert!(w.partitioning.is_some());
        Instance {
            fed: Fed::new(Box::new(w), "window"),
            out: BTreeMap::new(),
        }
    }

    fn collect(&mut self, batches: Vec<RecordBatch>) {
        collect(&mut self.out, batches);
    }

    fn feed(&mut self, rows: &[Row]) {
        let b = self.fed.feed(rows);
        self.collect(b);
    }

    fn tick(&mut self) {
        let b = self.fed.tick_at(SystemTime::now());
        self.collect(b);
    }

    fn finish(&mut self) {
        let b = self.fed.finish();
        self.collect(b);
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

/// Notes the windows of `batches` in `out`.
fn collect(out: &mut BTreeMap<Span, Vec<(i64, u64)>>, batches: Vec<RecordBatch>) {
    for b in batches {
        let keys = b.column(0).as_string::<i32>();
        let start = b.column(1).as_primitive::<Int64Type>();
        let end = b.column(2).as_primitive::<Int64Type>();
        let count = b.column(3).as_primitive::<Int64Type>();
        let sum = b.column(4).as_primitive::<Float64Type>();
        let late = b.column(5).as_boolean();
        for i in 0..b.num_rows() {
            assert!(!late.value(i), "late events are dropped");
            out.entry((keys.value(i).to_string(), start.value(i), end.value(i)))
                .or_default()
                .push((count.value(i), sum.value(i).to_bits()));
        }
    }
}

/// Every window of `out` equals the reference's, and together they are the reference's.
fn same_windows(reference: &BTreeMap<Span, Vec<(i64, u64)>>, outs: &[&Instance], what: &str) {
    let mut seen = BTreeSet::new();
    for i in outs {
        for (span, copies) in &i.out {
            let want = reference.get(span);
            for c in copies {
                assert_eq!(
                    Some(c),
                    want.map(|w| &w[0]),
                    "{what}: window {span:?} is (count, sum bits) {c:?}, reading everything \
                     it is {want:?}"
                );
            }
            seen.insert(span.clone());
        }
    }
    let missing: Vec<&Span> = reference.keys().filter(|s| !seen.contains(*s)).collect();
    assert!(missing.is_empty(), "{what}: windows lost: {missing:?}");
}

const SHAPES: [&str; 3] = [
    "kind = \"tumbling\"\nsize_ms = 100",
    "kind = \"sliding\"\nsize_ms = 100\nslide_ms = 50",
    "kind = \"session\"\ngap_ms = 60",
];

#[test]
fn a_moved_partition_gives_exactly_the_windows_of_one_instance() {
    let all = rows(6_000);
    let stop = 3_900;
    for shape in SHAPES {
        // One instance owning every partition, reading everything.
        let ref_hub = Arc::new(Hub::default());
        let mut reference = Instance::new(&ref_hub, shape);
        for p in 0..PARTITIONS as i32 {
            ref_hub.assign(p, None);
        }
        for chunk in all.chunks(97) {
            reference.feed(chunk);
        }
        reference.finish();
        assert!(
            reference.out.len() > 200,
            "{shape}: {}",
            reference.out.len()
        );
        assert!(
            reference.out.values().all(|c| c.len() == 1),
            "{shape}: one instance emits each window once"
        );
        let lane_two = reference.out.keys().filter(|s| s.0 == "k2").count();
        assert!(
            lane_two > 20,
            "{shape}: partition 2 has windows: {lane_two}"
        );

        // `a` owns everything, then gives partition 2 up; `b` takes it from its
        // snapshot and reads it from the snapshot's offset.
        let hub_a = Arc::new(Hub::default());
        let mut a = Instance::new(&hub_a, shape);
        for p in 0..PARTITIONS as i32 {
            hub_a.assign(p, None);
        }
        let written = a.read(&hub_a, &all[..stop], 50);
        let snap = written
            .get(&2)
            .cloned()
            .unwrap_or_else(|| panic!("{shape}: partition 2 was never written"));
        assert!(snap.offset > 100, "{shape}: snapshot at {}", snap.offset);
        hub_a.revoke(2);
        let hub_b = Arc::new(Hub::default());
        let mut b = Instance::new(&hub_b, shape);
        hub_b.assign(2, Some(snap.clone()));
        // `a` reads on (partition 2's rows come in its batches and are dropped).
        a.read(&hub_a, &all[stop..], 50);
        let resume: Vec<Row> = all
            .iter()
            .filter(|r| r.1 == 2 && r.2 >= snap.offset)
            .cloned()
            .collect();
        b.read(&hub_b, &resume, 40);
        a.finish();
        b.finish();
        assert!(
            b.out
                .keys()
                .all(|s| s.0 == "k2" || s.0 == "k5" || s.0 == "k8" || s.0 == "k11"),
            "{shape}: b owns partition 2 only"
        );
        same_windows(&reference.out, &[&a, &b], shape);
    }
}

#[test]
fn a_partition_behind_the_others_is_not_closed_by_their_time() {
    let hub = Arc::new(Hub::default());
    let mut w = Instance::new(&hub, "size_ms = 100");
    hub.assign(0, None);
    hub.assign(1, None);
    let row = |key: &str, p: i64, o: i64, ts: i64| (key.to_string(), p, o, ts, 1.0);
    w.feed(&[row("a", 0, 0, 10), row("b", 1, 0, 10)]);
    // Partition 0 moves on by a minute: its window closes, partition 1's does not.
    w.feed(&[row("a", 0, 1, 60_000)]);
    assert_eq!(
        w.out.keys().cloned().collect::<Vec<_>>(),
        vec![("a".to_string(), 0, 100)]
    );
    // Partition 1's next event belongs in its still-open window: not late.
    w.feed(&[row("b", 1, 1, 50)]);
    w.feed(&[row("b", 1, 2, 250)]);
    assert_eq!(w.out[&("b".to_string(), 0, 100)], vec![(2, 2f64.to_bits())]);
    assert_eq!(
        w.fed
            .cx
            .component()
            .telemetry()
            .snapshot()
            .metric(STALE_READINGS.name),
        None,
        "nothing was late"
    );
}

#[test]
fn rows_of_partitions_not_owned_are_dropped() {
    let hub = Arc::new(Hub::default());
    let mut w = Instance::new(&hub, "size_ms = 100");
    hub.assign(0, None);
    let all = rows(600);
    for chunk in all.chunks(64) {
        w.feed(chunk);
    }
    let closed = w.out.clone();
    w.finish();
    assert_eq!(
        w.out, closed,
        "a stopping instance leaves its open windows to the partitions' next owners"
    );
    assert!(!w.out.is_empty());
    let keys: BTreeSet<&str> = w.out.keys().map(|s| s.0.as_str()).collect();
    assert_eq!(keys, ["k0", "k3", "k6", "k9"].into_iter().collect());
}

#[test]
fn a_cut_releases_the_partitions_tokens_and_a_revocation_does_not_fail_them() {
    let hub = Arc::new(Hub::default());
    let mut w = Instance::new(&hub, "size_ms = 100");
    hub.assign(0, None);
    hub.assign(1, None);
    let row = |key: &str, p: i64, o: i64| (key.to_string(), p, o, 10, 1.0);
    w.feed(&[row("a", 0, 0), row("b", 1, 0)]);
    w.feed(&[row("b", 1, 1)]);
    assert!(w.fed.acked.is_empty(), "held by the open windows");
    // A cut of partition 1 after both its rows: the snapshot holds them, and an idle
    // partition's open windows must not hold every acknowledgement back.
    hub.cut(1, 2);
    w.tick();
    assert_eq!(
        w.fed.acked,
        [1].into_iter().collect(),
        "batch 1 is partition 1's alone"
    );
    // Partition 0 is revoked: its windows go, their tokens released, not failed.
    hub.revoke(0);
    w.tick();
    assert_eq!(w.fed.acked, [0, 1].into_iter().collect());
    // Partition 1's window still counts both its events.
    w.feed(&[("b".to_string(), 1, 2, 500, 1.0)]);
    assert_eq!(
        w.out.into_iter().collect::<Vec<_>>(),
        vec![(("b".to_string(), 0, 100), vec![(2, 2f64.to_bits())])]
    );
}

#[test]
fn a_restored_partition_keeps_its_event_time() {
    let row = |o: i64, ts: i64| ("a".to_string(), 0, o, ts, 1.0);
    let hub_a = Arc::new(Hub::default());
    let mut a = Instance::new(&hub_a, "size_ms = 100");
    hub_a.assign(0, None);
    a.feed(&[row(0, 10), row(1, 1000)]);
    hub_a.cut(0, 2);
    a.tick();
    hub_a.set_durable(0, 2);
    let (_, snap) = hub_a.take_ready().pop().expect("the cut is written");
    let hub_b = Arc::new(Hub::default());
    let mut b = Instance::new(&hub_b, "size_ms = 100");
    hub_b.assign(0, Some(snap));
    // 500 is behind the partition's time (1000): late, as for one instance.
    b.feed(&[row(2, 500), row(3, 1050), row(4, 5000)]);
    assert_eq!(
        b.out.into_iter().collect::<Vec<_>>(),
        vec![(("a".to_string(), 1000, 1100), vec![(2, 2f64.to_bits())])]
    );
    let stale = b.fed.cx.component().telemetry().snapshot();
    assert_eq!(stale.metric(STALE_READINGS.name), Some(1));
}
