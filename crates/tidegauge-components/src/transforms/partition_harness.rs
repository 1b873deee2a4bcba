//! What the partition tests of `window` and `heartbeat` share: rows as a changelog-backed
//! `kafka` source reads them (key, partition, offset, time, value), and a transform fed
//! the way that source feeds it (a token per batch, cuts, the commit frontier).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use tidegauge_core::ack::{AckReceiver, AckSender, Finalizers, ack_channel};
use tidegauge_core::dead_letter::DeadLetter;
use tidegauge_core::registry::ComponentKind;
use tidegauge_core::telemetry::ComponentTelemetry;
use tidegauge_core::{ComponentContext, Transform, TransformContext};

use crate::partitions::{Hub, OFFSET_FIELD, PARTITION_FIELD, Snapshot};

/// One row: (key, partition, offset, ts, value), in the order a consumer reads them.
pub(crate) type Row = (String, i64, i64, i64, f64);

/// Draws the rows of the partition tests: key `k` of `keys` lives in partition
/// `k % partitions`, offsets count per partition (a row is only counted once
/// [`Draws::keep`] says so), and each draw brings random bits for the caller's values.
pub(crate) struct Draws {
    seed: u64,
    next: Vec<i64>,
}

impl Draws {
    pub(crate) fn new(seed: u64, partitions: i64) -> Self {
        Draws {
            seed,
            next: vec![0; partitions as usize],
        }
    }

    /// The next candidate row: (key, partition, offset it would take, random bits).
    pub(crate) fn draw(&mut self, keys: u64) -> (u64, i64, i64, u64) {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = (self.seed >> 33) % keys;
        let p = key as i64 % self.next.len() as i64;
        (key, p, self.next[p as usize], self.seed)
    }

    /// The candidate of partition `p` is read: the partition's next offset moves on.
    pub(crate) fn keep(&mut self, p: i64) {
        self.next[p as usize] += 1;
    }
}

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new(PARTITION_FIELD, DataType::Int64, false),
        Field::new(OFFSET_FIELD, DataType::Int64, false),
    ]))
}

pub(crate) fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

/// A transform and what the source and sinks around it do: a token per batch (batch
/// `i`'s has id `i`), outputs made durable (dropped) as soon as they are taken.
pub(crate) struct Fed {
    pub(crate) t: Box<dyn Transform>,
    pub(crate) cx: TransformContext,
    tokens: AckSender,
    acks: AckReceiver,
    fed: Vec<Vec<Row>>,
    /// Batches acknowledged (all delivered: a failure fails the test).
    pub(crate) acked: BTreeSet<u64>,
    /// Makes the batch of some rows (the transform's input).
    shape: fn(&[Row]) -> RecordBatch,
}

impl Fed {
    pub(crate) fn new(t: Box<dyn Transform>, kind: &'static str) -> Self {
        let component = ComponentContext::new(
            Arc::new(ComponentTelemetry::new("t", ComponentKind::Transform, kind)),
            DeadLetter::stderr(),
        );
        let (tokens, acks) = ack_channel();
        Fed {
            t,
            cx: TransformContext::new(component),
            tokens,
            acks,
            fed: Vec::new(),
            acked: BTreeSet::new(),
            shape: batch,
        }
    }

    /// Feeds batches made by `shape` instead of [`batch`] (more columns).
    pub(crate) fn shaped(mut self, shape: fn(&[Row]) -> RecordBatch) -> Self {
        self.shape = shape;
        self
    }

    /// The batches emitted so far; their tokens are dropped (the sinks hold them).
    pub(crate) fn take(&mut self) -> Vec<RecordBatch> {
        let out = self.cx.take_emitted().map(|(b, _)| b).collect();
        while let Ok(ack) = self.acks.try_recv() {
            assert!(ack.delivered, "batch {} failed", ack.id);
            self.acked.insert(ack.id);
        }
        out
    }

    pub(crate) fn feed(&mut self, rows: &[Row]) -> Vec<RecordBatch> {
        let token = self.tokens.token(self.fed.len() as u64);
        self.cx.set_finalizers(Finalizers::one(token));
        self.fed.push(rows.to_vec());
        self.t.process((self.shape)(rows), &mut self.cx).unwrap();
        self.cx.set_finalizers(Finalizers::none());
        self.take()
    }

    pub(crate) fn tick_at(&mut self, now: std::time::SystemTime) -> Vec<RecordBatch> {
        self.t.tick(now, &mut self.cx).unwrap();
        self.take()
    }

    pub(crate) fn finish(&mut self) -> Vec<RecordBatch> {
        self.t.flush(&mut self.cx).unwrap();
        self.take()
    }

    /// Per partition, the offset below which every batch is acknowledged: the source's
    /// commit frontier (a contiguous prefix of acknowledged batches).
    fn durable(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (i, rows) in self.fed.iter().enumerate() {
            if !self.acked.contains(&(i as u64)) {
                break;
            }
            for r in rows {
                out.insert(r.1 as i32, r.2 + 1);
            }
        }
        out
    }
}

/// Feeds `rows` in batches of `size` as a source with a changelog would: a cut of every
/// partition read after each third batch, at the offset after the last row decoded
/// (which includes the first rows of the batch not yet sent, so batches straddle cuts),
/// a tick after every other batch, the commit frontier and the snapshots written after
/// each batch (into `written`). `take` gets every batch emitted.
pub(crate) fn read(
    fed: &mut Fed,
    hub: &Arc<Hub>,
    rows: &[Row],
    size: usize,
    written: &mut BTreeMap<i32, Snapshot>,
    take: &mut dyn FnMut(Vec<RecordBatch>),
) {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (i, chunk) in rows.chunks(size).enumerate() {
        if i % 3 == 2 {
            for r in &chunk[..chunk.len() / 2] {
                last.insert(r.1, r.2 + 1);
            }
            for (&p, &o) in &last {
                hub.cut(p as i32, o);
            }
        }
        take(fed.feed(chunk));
        for r in chunk {
            last.insert(r.1, r.2 + 1);
        }
        if i % 2 == 1 {
            take(fed.tick_at(std::time::SystemTime::now()));
        }
        for (p, o) in fed.durable() {
            hub.set_durable(p, o);
        }
        written.extend(hub.take_ready());
    }
}
