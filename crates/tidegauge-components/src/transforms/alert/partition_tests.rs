//! Partition-aligned incidents: a partition moved to another instance (snapshot at a
//! cut, restored there, consumed from the snapshot's offset) gives exactly the notices
//! one instance reading everything gives; an incident open at the move resolves at the
//! next owner under its id, without a second `firing`; each partition is judged by its
//! own time.

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::{BooleanArray, Float64Array};

use super::*;
use crate::partitions::Snapshot;
use crate::transforms::partition_harness::{Draws, Fed, Row, batch, read};

const PARTITIONS: i64 = 3;

/// Sensors `k0..k23`, sensor `k` in partition `k % 3`; each partition has its own clock
/// (a second a message; partition 2 runs 300 s behind the others). Sensor `k` is
/// anomalous (value = its score) 20 s out of every 100 s of its partition's time.
fn rows(n: usize) -> Vec<Row> {
    let mut draws = Draws::new(3, PARTITIONS);
    (0..n)
        .map(|_| {
            let (key, p, o, seed) = draws.draw(24);
            draws.keep(p);
            let ts = 1_000_000 + o * 1_000 - if p == 2 { 300_000 } else { 0 };
            let on = (ts / 20_000 + key as i64) % 5 == 0;
            let value = if on {
                1.0 + (seed >> 40) as f64 % 50.0
            } else {
                0.0
            };
            (format!("k{key}"), p, o, ts, value)
        })
        .collect()
}

/// The harness's rows as a detector's output: flagged when the value is positive, the
/// value as score.
fn flagged(rows: &[Row]) -> RecordBatch {
    let b = batch(rows);
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| (**f).clone()).collect();
    fields.push(Field::new("is_anomaly", DataType::Boolean, false));
    fields.push(Field::new("anomaly_score", DataType::Float64, false));
    let mut columns = b.columns().to_vec();
    columns.push(Arc::new(BooleanArray::from_iter(
        rows.iter().map(|r| Some(r.4 > 0.0)),
    )));
    columns.push(Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|r| r.4),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// A notice: (status, incident id, ts, ends_at, anomalies, peak score, repeat).
type Said = (String, String, i64, Option<i64>, i64, u64, i64);

fn config() -> AlertConfig {
    AlertConfig {
        for_events: 2,
        resolve_after_ms: 30_000,
        idle_after_ms: 0,
        ..AlertConfig::default()
    }
}

fn build(config: &AlertConfig, hub: &Arc<Hub>) -> Alert {
    let input = flagged(&[]).schema();
    let output = config.validate(&input).unwrap();
    config
        .alert(&input, output)
        .unwrap()
        .partitioned(&input, hub, "al")
}

struct Instance {
    fed: Fed,
    out: Vec<Said>,
}

impl Instance {
    fn new(hub: &Arc<Hub>) -> Self {
        let alert = build(&config(), hub);
        assert!(alert.partitioning.is_some());
        Instance {
            fed: Fed::new(Box::new(alert), "alert").shaped(flagged),
            out: Vec::new(),
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

    fn held(&mut self) -> Vec<i32> {
        let bytes = self.fed.t.checkpoint().unwrap().unwrap();
        decode(&bytes)
            .unwrap()
            .partitions
            .into_iter()
            .filter(|(_, s)| !s.groups.is_empty())
            .map(|(q, _)| q)
            .collect()
    }
}

fn collect(out: &mut Vec<Said>, batches: Vec<RecordBatch>) {
    for b in batches {
        let text = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let int = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (status, id) = (text("status"), text("incident_id"));
        let (ts, ends, count, repeat) =
            (int("ts"), int("ends_at"), int("anomalies"), int("repeat"));
        let peak = b
            .column_by_name("peak_score")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push((
                status.value(i).to_string(),
                id.value(i).to_string(),
                ts.value(i),
                ends.is_valid(i).then(|| ends.value(i)),
                count.value(i),
                peak.value(i).to_bits(),
                repeat.value(i),
            ));
        }
    }
}

#[test]
fn a_moved_partition_gives_exactly_the_notices_of_one_instance() {
    let all = rows(4_000);
    let ref_hub = Arc::new(Hub::default());
    let mut reference = Instance::new(&ref_hub);
    for p in 0..PARTITIONS as i32 {
        ref_hub.assign(p, None);
    }
    for chunk in all.chunks(97) {
        reference.feed(chunk);
    }
    let want: BTreeSet<&Said> = reference.out.iter().collect();
    assert_eq!(want.len(), reference.out.len(), "each notice once");
    let firing = |out: &[Said]| out.iter().filter(|s| s.0 == "firing").count();
    assert!(firing(&reference.out) > 50, "{}", firing(&reference.out));

    for stop in [500, 1_400, 2_600, 3_500] {
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
        assert!(
            b.out.iter().all(|s| s.1.starts_with('k')
                && s.1[1..s.1.find('@').unwrap()].parse::<u64>().unwrap() % 3 == 2),
            "b owns partition 2 only"
        );
        let mut got: BTreeSet<&Said> = a.out.iter().collect();
        got.extend(&b.out);
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        let lost: Vec<_> = want.difference(&got).take(5).collect();
        assert!(
            extra.is_empty() && lost.is_empty(),
            "moved after {stop} events: notices not given by one instance: {extra:?}; \
             not given after the move: {lost:?}"
        );
        // Incidents open at the cut: fired before it, resolved by b, under one id.
        let resumed_at = resume[0].3;
        let fired_before: BTreeSet<&String> = reference
            .out
            .iter()
            .filter(|s| s.0 == "firing" && s.2 < resumed_at)
            .map(|s| &s.1)
            .collect();
        let carried = b
            .out
            .iter()
            .filter(|s| s.0 == "resolved" && fired_before.contains(&s.1))
            .count();
        assert!(
            carried > 0,
            "moved after {stop}: no incident open at the move"
        );
    }
}

#[test]
fn a_partition_is_judged_by_its_own_time() {
    let hub = Arc::new(Hub::default());
    let mut al = Instance::new(&hub);
    hub.assign(0, None);
    hub.assign(1, None);
    let row = |key: &str, p: i64, o: i64, ts: i64, v: f64| (key.to_string(), p, o, ts, v);
    al.feed(&[row("b", 1, 0, 0, 5.0), row("b", 1, 1, 10, 5.0)]);
    assert_eq!(al.out.len(), 1);
    assert_eq!(
        (al.out[0].0.as_str(), al.out[0].1.as_str()),
        ("firing", "b@0")
    );
    // Partition 0 moves on by a day: b's incident, in partition 1, is not quiet by its
    // partition's time.
    al.feed(&[row("a", 0, 0, 0, 0.0), row("a", 0, 1, 86_400_000, 0.0)]);
    assert_eq!(al.out.len(), 1, "{:?}", al.out);
    // Partition 1's own time resolves it.
    al.feed(&[row("c", 1, 2, 40_000, 0.0)]);
    assert_eq!(al.out.len(), 2);
    assert_eq!(
        (al.out[1].0.as_str(), al.out[1].1.as_str(), al.out[1].3),
        ("resolved", "b@0", Some(30_010))
    );
}

#[test]
fn rows_of_partitions_not_owned_are_dropped() {
    let hub = Arc::new(Hub::default());
    let mut al = Instance::new(&hub);
    hub.assign(0, None);
    let all = rows(900);
    for chunk in all.chunks(64) {
        al.feed(chunk);
    }
    assert!(al.out.len() > 5, "{}", al.out.len());
    for s in &al.out {
        let key: u64 = s.1[1..s.1.find('@').unwrap()].parse().unwrap();
        assert_eq!(key % 3, 0, "{s:?} is not of partition 0");
    }
    assert_eq!(al.held(), [0]);
}

#[test]
fn a_revoked_partitions_incidents_are_forgotten() {
    let hub = Arc::new(Hub::default());
    let mut al = Instance::new(&hub);
    for p in 0..PARTITIONS as i32 {
        hub.assign(p, None);
    }
    al.feed(&rows(600));
    assert_eq!(al.held(), [0, 1, 2]);
    // The admin API lists the incidents open in the partitions held.
    let listed = |al: &Instance| -> BTreeSet<u64> {
        al.fed
            .cx
            .component()
            .telemetry()
            .open_incidents()
            .iter()
            .map(|i| i.key[1..].parse::<u64>().unwrap() % 3)
            .collect()
    };
    assert_eq!(
        listed(&al),
        BTreeSet::from([1, 2]),
        "open at the end: in 1 and 2"
    );
    hub.revoke(1);
    al.fed.tick_at(SystemTime::now());
    assert_eq!(al.held(), [0, 2]);
    assert_eq!(listed(&al), BTreeSet::from([2]));
}

/// The checkpoint written before incidents were kept per partition (no `partitions`).
#[derive(Serialize)]
struct OldSaved {
    version: u32,
    groups: BTreeMap<String, Group>,
    now: i64,
    tokens: f64,
    refilled_at: i64,
}

#[test]
fn the_checkpoint_without_partitions_still_restores() {
    let mut book = Incidents::new(Rules::from(&config()));
    let mut out = Vec::new();
    let f = || {
        Some(Flagged {
            score: 4.0,
            ..Flagged::default()
        })
    };
    book.event("s", 0, f(), &mut out);
    book.event("s", 10, f(), &mut out);
    assert_eq!(out.len(), 1);
    let mut old = Vec::new();
    ciborium::into_writer(
        &OldSaved {
            version: 1,
            groups: book.groups.clone(),
            now: book.now,
            tokens: book.tokens,
            refilled_at: book.refilled_at,
        },
        &mut old,
    )
    .unwrap();
    // Written again unchanged by an alert without partitions.
    let plain = Schema::new(
        flagged(&[])
            .schema()
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("kafka_"))
            .map(|f| (**f).clone())
            .collect::<Vec<_>>(),
    );
    let plain = Arc::new(plain);
    let output = config().validate(&plain).unwrap();
    let mut unpartitioned = config().alert(&plain, output).unwrap();
    unpartitioned.restore(&old).unwrap();
    assert_eq!(unpartitioned.checkpoint().unwrap().unwrap(), old);
    let resolves = |out: &[Said]| {
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            (out[0].0.as_str(), out[0].1.as_str(), out[0].3),
            ("resolved", "s@0", Some(30_010))
        );
    };
    let mut cx = TransformContext::new(tidegauge_core::ComponentContext::new(
        Arc::new(tidegauge_core::telemetry::ComponentTelemetry::new(
            "al",
            tidegauge_core::ComponentKind::Transform,
            "alert",
        )),
        tidegauge_core::dead_letter::DeadLetter::stderr(),
    ));
    let one = flagged(&[("s".to_string(), 0, 0, 50_000, 0.0)]);
    let columns: Vec<ArrayRef> = plain
        .fields()
        .iter()
        .map(|f| one.column_by_name(f.name()).unwrap().clone())
        .collect();
    let one = RecordBatch::try_new(plain.clone(), columns).unwrap();
    unpartitioned.process(one, &mut cx).unwrap();
    let mut out = Vec::new();
    collect(&mut out, cx.take_emitted().map(|(b, _)| b).collect());
    resolves(&out);
    // With partitions, the incidents land in partition 0's and resolve there.
    let hub = Arc::new(Hub::default());
    let mut al = Instance::new(&hub);
    hub.assign(0, None);
    al.feed(&[]);
    al.fed.t.restore(&old).unwrap();
    al.feed(&[("s".to_string(), 0, 0, 50_000, 0.0)]);
    resolves(&al.out);
}
