//! `window` transform: tumbling, sliding and session windows per sensor, with aggregates.
//!
//! # Checkpoints
//!
//! The state is the open windows, per key: each key's name with its tumbling or sliding
//! windows (start and one accumulator per aggregate) and its session, plus the latest
//! event time seen (the watermark). It is a plain list per key, so it can be split by
//! key. It is encoded as CBOR (floats bit for bit) with the window's shape; a checkpoint
//! of another shape or other aggregates is refused rather than read into wrong windows.
//!
//! An open window holds the acknowledgement tokens of its events until it closes, so
//! that the source does not count them delivered while they exist only in memory. At a
//! barrier the snapshot covers exactly the events before it, so the window hands those
//! tokens to the checkpoint ([`Transform::checkpoint_tokens`]), which releases them once
//! written. That is safe because a pipeline with a window resumes its sources from the
//! checkpoint's positions, never from their acknowledged positions: a restart restores
//! the windows of barrier `n` and replays from barrier `n`'s positions, so every event
//! is counted once (see "What a restart resumes from" in `tidegauge_core::checkpoint`).
//! Without `[checkpoint]` there are no barriers and the tokens travel with the windows'
//! rows as before.
//!
//! # Partition-aligned state
//!
//! Fed by a `kafka` source with `partition_state` (its input has `kafka_partition` and
//! `kafka_offset`, see [`crate::partitions`]), the window keeps its open windows per
//! partition, each partition with its own event time: a partition's windows close when
//! *its* latest event time passes their end, never by another partition's, so a
//! partition that moves to another instance, or lags behind the others, closes the same
//! windows at the same events as with one instance reading everything. Rows of
//! partitions this instance does not own are dropped (their owner windows them). At a
//! cut of a partition, its open windows and event time are handed to the hub (the CBOR
//! state below, one partition's); on assignment they are restored; on revocation they
//! are dropped.
//!
//! Tokens, in event time: at a cut the tokens of the partition's open windows are
//! released. A partition is only ever resumed from a snapshot written to the changelog,
//! state and offset together, never from the group's committed offsets; the snapshot
//! holds those events, and a windowed partition that stops receiving events (its
//! windows then never close) must not hold back the acknowledgements of every other
//! partition, hence every later snapshot. A window closed after such a release carries
//! the tokens of the batch whose events closed it, which comes before the next cut, so
//! that cut is written only once the sinks hold the window's row. In processing time
//! windows close on the wall clock and keep their tokens. The tokens of a revoked
//! partition's windows are released (not failed) when the windows are dropped: the
//! source ignores what it read of a partition under an earlier ownership, and a failure
//! would make it read again the other partitions' rows of the same batches.
//!
//! When the instance stops, its open windows are not emitted (a Kafka input does not
//! end): they are in their partitions' snapshots, and each partition's next owner emits
//! them whole when they close.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};
use tidegauge_core::ack::Finalizers;
use tidegauge_core::telemetry::{ComponentErrorOccurred, MetricAdded, MetricSet};
use tidegauge_core::{BuildError, ComponentError, Transform, TransformContext};
use tidegauge_detect::{Accumulator, Aggregate};

use super::float_values;
use super::partitioned::{Moves, PartitionedState, Partitioning};
use super::{KeyInterner, key_hash};
use crate::partitions::Hub;
use crate::telemetry::{KeysTracked, STALE_READINGS, WATERMARK_LAG};

pub use config::{LatePolicy, TimeKind, WindowConfig, WindowKind};

impl Window {
    fn new(
        config: &WindowConfig,
        input: &SchemaRef,
        output: SchemaRef,
    ) -> Result<Self, BuildError> {
        let find = |name: &str| tidegauge_core::schema::field_index(input, name);
        let aggregates = config
            .aggregates()
            .map_err(|e| BuildError::new(format!("{e:?}")))?;
        Ok(Window {
            key: find(&config.key_field)?,
            value: find(&config.value_field)?,
            ts: if config.time == TimeKind::Event {
                Some(find(&config.ts_field)?)
            } else {
                None
            },
            config: config.clone(),
            aggregates,
            output,
            keys: KeyInterner::default(),
            names: Vec::new(),
            held: Vec::new(),
            live: 0,
            refused: 0,
            lanes: vec![Lane::new(0)],
            partitioning: None,
            batch_seq: 0,
        })
    }

    /// With partition columns in `input` (a `kafka` source with `partition_state`): the
    /// windows are kept per partition, registered with `hub` as `id`.
    fn partitioned(mut self, input: &SchemaRef, hub: &Arc<Hub>, id: &str) -> Self {
        self.partitioning = Partitioning::new(input, hub, id);
        if self.partitioning.is_some() {
            self.lanes.clear();
        }
        self
    }
}

/// One open window.
struct Open {
    accumulators: Vec<Accumulator>,
    finalizers: Finalizers,
    /// The last input batch whose tokens were added (each batch's once).
    last_batch: u64,
}

/// A session: its span so far and its window.
struct Session {
    start: i64,
    last: i64,
    open: Open,
}

/// The open windows of one partition of the input (of the whole input when it is not
/// partitioned), closed by that partition's own event time.
struct Lane {
    partition: i32,
    /// Latest event time seen (`i64::MIN` before the first).
    max_ts: i64,
    /// Tumbling/sliding windows by (key, start).
    windows: HashMap<(u32, i64), Open>,
    /// (end, key, start) of every open window, to close them in order.
    closing: BTreeSet<(i64, u32, i64)>,
    sessions: HashMap<u32, Session>,
    /// (last + gap, key) of every open session, to close them in order.
    session_ends: BTreeSet<(i64, u32)>,
}

impl Lane {
    fn new(partition: i32) -> Self {
        Lane {
            partition,
            max_ts: i64::MIN,
            windows: HashMap::new(),
            closing: BTreeSet::new(),
            sessions: HashMap::new(),
            session_ends: BTreeSet::new(),
        }
    }

    /// Takes the tokens its open windows hold.
    fn take_tokens(&mut self) -> Finalizers {
        let mut taken = Finalizers::none();
        for open in self.windows.values_mut() {
            taken.merge(std::mem::take(&mut open.finalizers));
        }
        for s in self.sessions.values_mut() {
            taken.merge(std::mem::take(&mut s.open.finalizers));
        }
        taken
    }
}

struct Window {
    key: usize,
    value: usize,
    ts: Option<usize>,
    config: WindowConfig,
    aggregates: Vec<Aggregate>,
    output: SchemaRef,
    keys: KeyInterner,
    names: Vec<Box<str>>,
    /// Open windows (or sessions) of each key, by id, over every lane.
    held: Vec<u32>,
    /// Keys with at least one open window: at most `max_keys`.
    live: usize,
    /// Events not windowed since the last report because `max_keys` keys were live.
    refused: u64,
    /// The windows per partition, by partition (one lane, 0, when the input is not
    /// partitioned).
    lanes: Vec<Lane>,
    /// With partition-aligned state (see the module documentation).
    partitioning: Option<Partitioning>,
    batch_seq: u64,
}

impl Window {
    fn new_open(&self) -> Open {
        Open {
            accumulators: self.aggregates.iter().map(Aggregate::accumulator).collect(),
            finalizers: Finalizers::none(),
            last_batch: u64::MAX,
        }
    }

    /// The index of `partition`'s lane, made if missing (lanes stay in partition order).
    fn lane(&mut self, partition: i32) -> usize {
        match self.lanes.binary_search_by_key(&partition, |l| l.partition) {
            Ok(i) => i,
            Err(i) => {
                self.lanes.insert(i, Lane::new(partition));
                i
            }
        }
    }

    fn watermark(&self, lane: usize) -> i64 {
        self.lanes[lane]
            .max_ts
            .saturating_sub(self.config.allowed_lateness_ms)
    }

    fn add(open: &mut Open, ts: i64, v: f64, seq: u64, tokens: &Finalizers) {
        for a in &mut open.accumulators {
            a.update(ts, v);
        }
        if open.last_batch != seq {
            open.last_batch = seq;
            open.finalizers.merge(tokens.clone());
        }
    }

    /// Windows (start) an event at `ts` belongs to.
    fn starts(&self, ts: i64) -> impl Iterator<Item = i64> + use<> {
        let size = self.config.size_ms;
        let slide = self.config.slide();
        let last = ts.div_euclid(slide) * slide;
        let count = size / slide;
        (0..count)
            .map(move |i| last - i * slide)
            .filter(move |s| s + size > ts)
    }

    fn late(
        &mut self,
        lane: usize,
        rows: &mut Rows,
        key: u32,
        ts: i64,
        v: f64,
        cx: &TransformContext,
    ) {
        cx.component().emit(MetricAdded {
            metric: &STALE_READINGS,
            count: 1,
        });
        match self.config.late {
            LatePolicy::Drop => cx.component().emit(ComponentErrorOccurred {
                error: &format!(
                    "late event dropped: ts {ts} is behind the watermark {}",
                    self.watermark(lane)
                ),
            }),
            LatePolicy::Emit => {
                let mut open = self.new_open();
                Self::add(&mut open, ts, v, u64::MAX - 1, &Finalizers::none());
                let (start, end) = match self.config.kind {
                    WindowKind::Session => (ts, ts + self.config.gap_ms),
                    _ => {
                        let s = ts.div_euclid(self.config.slide()) * self.config.slide();
                        (s, s + self.config.size_ms)
                    }
                };
                rows.push(&self.names[key as usize], start, end, open, true);
            }
        }
    }

    /// Closes every window of lane `lane` that ends at or before `now`.
    fn close(&mut self, lane: usize, now: i64, rows: &mut Rows) {
        while let Some(&(end, key, start)) = self.lanes[lane].closing.first() {
            if end > now {
                break;
            }
            self.lanes[lane].closing.pop_first();
            if let Some(open) = self.lanes[lane].windows.remove(&(key, start)) {
                self.release(key);
                rows.push(&self.names[key as usize], start, end, open, false);
            }
        }
        let gap = self.config.gap_ms;
        while let Some(&(end, key)) = self.lanes[lane].session_ends.first() {
            if end > now {
                break;
            }
            self.lanes[lane].session_ends.pop_first();
            if let Some(s) = self.lanes[lane].sessions.remove(&key) {
                self.release(key);
                rows.push(
                    &self.names[key as usize],
                    s.start,
                    s.last + gap,
                    s.open,
                    false,
                );
            }
        }
    }

    /// Closes every window of every lane that ends at or before `now`.
    fn close_all(&mut self, now: i64, rows: &mut Rows) {
        for lane in 0..self.lanes.len() {
            self.close(lane, now, rows);
        }
    }

    /// The id of key `name`, or `None` when it has no open window and `max_keys` keys
    /// have. Ids of keys without open windows are reclaimed once they are as many as the
    /// cap allows ([`Window::compact`]), so the names held stay under twice the cap.
    fn key_id(&mut self, name: &str) -> Option<u32> {
        let hash = key_hash(name);
        let room = self.live < self.config.max_keys;
        if let Some(id) = self.keys.find_hashed(name, hash) {
            return (room || self.held[id] > 0).then_some(id as u32);
        }
        if !room || !self.keys.has_room_for(name) {
            return None;
        }
        if self.names.len() >= 2 * self.config.max_keys.max(1024) {
            self.compact();
        }
        let (id, _) = self.keys.id_hashed(name, hash);
        self.names.push(name.into());
        self.held.push(0);
        Some(id as u32)
    }

    /// Forgets the keys without open windows and renumbers the others densely.
    fn compact(&mut self) {
        let mut renumber = vec![u32::MAX; self.names.len()];
        let mut keys = KeyInterner::default();
        let mut names = Vec::with_capacity(self.live);
        let mut held = Vec::with_capacity(self.live);
        for (old, name) in std::mem::take(&mut self.names).into_iter().enumerate() {
            if self.held[old] > 0 {
                let (new, _) = keys.id(&name);
                renumber[old] = new as u32;
                names.push(name);
                held.push(self.held[old]);
            }
        }
        let at = |k: u32| renumber[k as usize];
        for lane in &mut self.lanes {
            lane.windows = std::mem::take(&mut lane.windows)
                .into_iter()
                .map(|((k, start), o)| ((at(k), start), o))
                .collect();
            lane.closing = std::mem::take(&mut lane.closing)
                .into_iter()
                .map(|(end, k, start)| (end, at(k), start))
                .collect();
            lane.sessions = std::mem::take(&mut lane.sessions)
                .into_iter()
                .map(|(k, s)| (at(k), s))
                .collect();
            lane.session_ends = std::mem::take(&mut lane.session_ends)
                .into_iter()
                .map(|(end, k)| (end, at(k)))
                .collect();
        }
        self.keys = keys;
        self.names = names;
        self.held = held;
    }

    /// Key `key` opened a window (or session).
    fn hold(&mut self, key: u32) {
        let h = &mut self.held[key as usize];
        if *h == 0 {
            self.live += 1;
        }
        *h += 1;
    }

    /// One of key `key`'s windows (or its session) closed.
    fn release(&mut self, key: u32) {
        let h = &mut self.held[key as usize];
        *h -= 1;
        if *h == 0 {
            self.live -= 1;
        }
    }

    fn emit(&self, rows: Rows, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if let Some((batch, finalizers)) = rows.finish(&self.output)? {
            cx.emit_with(batch, finalizers);
        }
        Ok(())
    }

    /// Windows the rows of `batch` (with partition-aligned state, all of partitions
    /// owned, each in its partition's lane).
    fn window_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let tokens = cx.take_finalizers();
        self.batch_seq += 1;
        let seq = self.batch_seq;
        let keys = batch.column(self.key).as_string::<i32>();
        let value_column = batch.column(self.value);
        let values = float_values(value_column.as_ref())?;
        let ts = self.ts.map(|i| batch.column(i).as_primitive::<Int64Type>());
        let parts = self
            .partitioning
            .as_ref()
            .map(|p| batch.column(p.partition).as_primitive::<Int64Type>());
        let arrival = wall_ms(SystemTime::now());
        let mut rows = Rows::new(&self.aggregates);
        let (mut lane, mut lane_partition) = (0, None);
        for row in 0..batch.num_rows() {
            if keys.is_null(row) || value_column.is_null(row) {
                continue;
            }
            let t = match ts {
                Some(c) if c.is_null(row) => continue,
                Some(c) => c.value(row),
                None => arrival,
            };
            if let Some(parts) = parts {
                let q = parts.value(row) as i32;
                if lane_partition != Some(q) {
                    lane = self.lane(q);
                    lane_partition = Some(q);
                }
            }
            let v = values[row];
            let name = keys.value(row);
            let key = match self.key_id(name) {
                Some(key) => key,
                None => {
                    // Windows this event's time closes may make room (their keys are
                    // not this one, so closing them first changes nothing else).
                    if self.config.time == TimeKind::Event && t > self.lanes[lane].max_ts {
                        self.lanes[lane].max_ts = t;
                        let w = self.watermark(lane);
                        self.close(lane, w, &mut rows);
                    }
                    let Some(key) = self.key_id(name) else {
                        self.refused += 1;
                        continue;
                    };
                    key
                }
            };
            let watermark = self.watermark(lane);
            match self.config.kind {
                WindowKind::Session => {
                    let gap = self.config.gap_ms;
                    let l = &mut self.lanes[lane];
                    match l.sessions.get_mut(&key) {
                        Some(s) if t >= s.start - gap && t <= s.last + gap => {
                            l.session_ends.remove(&(s.last + gap, key));
                            s.start = s.start.min(t);
                            s.last = s.last.max(t);
                            Self::add(&mut s.open, t, v, seq, &tokens);
                            l.session_ends.insert((s.last + gap, key));
                        }
                        Some(s) if t < s.start - gap => self.late(lane, &mut rows, key, t, v, cx),
                        _ => {
                            if t.saturating_add(gap) <= watermark {
                                self.late(lane, &mut rows, key, t, v, cx);
                            } else {
                                if let Some(old) = self.lanes[lane].sessions.remove(&key) {
                                    self.release(key);
                                    self.lanes[lane].session_ends.remove(&(old.last + gap, key));
                                    rows.push(name, old.start, old.last + gap, old.open, false);
                                }
                                let mut open = self.new_open();
                                Self::add(&mut open, t, v, seq, &tokens);
                                let l = &mut self.lanes[lane];
                                l.sessions.insert(
                                    key,
                                    Session {
                                        start: t,
                                        last: t,
                                        open,
                                    },
                                );
                                l.session_ends.insert((t + gap, key));
                                self.hold(key);
                            }
                        }
                    }
                }
                WindowKind::Tumbling | WindowKind::Sliding => {
                    let size = self.config.size_ms;
                    let mut placed = false;
                    for start in self.starts(t).collect::<Vec<_>>() {
                        let end = start + size;
                        if end <= watermark {
                            continue;
                        }
                        placed = true;
                        if !self.lanes[lane].windows.contains_key(&(key, start)) {
                            let o = self.new_open();
                            self.hold(key);
                            let l = &mut self.lanes[lane];
                            l.closing.insert((end, key, start));
                            l.windows.insert((key, start), o);
                        }
                        if let Some(open) = self.lanes[lane].windows.get_mut(&(key, start)) {
                            Self::add(open, t, v, seq, &tokens);
                        }
                    }
                    if !placed {
                        self.late(lane, &mut rows, key, t, v, cx);
                    }
                }
            }
            if self.config.time == TimeKind::Event && t > self.lanes[lane].max_ts {
                // The watermark moved: close what ended before it, in event order.
                self.lanes[lane].max_ts = t;
                let w = self.watermark(lane);
                self.close(lane, w, &mut rows);
            }
        }
        if self.partitioning.is_some() && rows.n > 0 {
            // A window closed by this batch may hold no token any more (given up at a
            // cut, see the module documentation): its row is covered by the batch whose
            // events closed it, which comes before any later cut.
            rows.finalizers.merge(tokens.clone());
        }
        // Tokens of events that landed in no open window (dropped as late, or past the
        // key cap) are released now; the others travel with their windows.
        drop(tokens);
        cx.component().emit(KeysTracked {
            keys: self.live as u64,
            evicted: 0,
            refused: std::mem::take(&mut self.refused),
            max_keys: self.config.max_keys as u64,
        });
        // The lane furthest behind.
        let behind = (0..self.lanes.len())
            .filter(|&l| self.lanes[l].max_ts != i64::MIN)
            .map(|l| self.watermark(l))
            .min();
        if self.config.time == TimeKind::Event
            && let Some(watermark) = behind
        {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            cx.component().emit(MetricSet {
                metric: &WATERMARK_LAG,
                value: now_ms.saturating_sub(watermark).max(0) as u64,
            });
        }
        self.emit(rows, cx)
    }
}

fn wall_ms(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Transform for Window {
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        // Without partitions, straight to the rows.
        super::partitioned::process(self, batch, cx)
    }

    fn flush(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            // The input does not end, this instance does: each open window is in its
            // partition's snapshot, and the partition's next owner emits it whole when
            // it closes. Emitting it now would write it a first time without the events
            // still to come. The stopping source's last cut gets this instance's
            // windows as they stand.
            return super::partitioned::finish(self, cx);
        }
        let mut rows = Rows::new(&self.aggregates);
        self.close_all(i64::MAX, &mut rows);
        self.emit(rows, cx)
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, ComponentError> {
        self.encode(&self.state()).map(Some)
    }

    fn checkpoint_tokens(&mut self) -> Finalizers {
        let mut covered = Finalizers::none();
        for lane in &mut self.lanes {
            covered.merge(lane.take_tokens());
        }
        covered
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), ComponentError> {
        let state = Self::decode(state)?;
        self.restore_state(state, 0)
    }

    fn tick_interval(&self) -> Option<Duration> {
        let closing = (self.config.time == TimeKind::Processing).then(|| {
            let step = match self.config.kind {
                WindowKind::Session => self.config.gap_ms,
                _ => self.config.slide(),
            };
            Duration::from_millis((step / 10).clamp(10, 1000) as u64)
        });
        // Cuts and ownership changes are looked at between batches too.
        let upkeep = self
            .partitioning
            .as_ref()
            .map(|_| Duration::from_millis(100));
        match (closing, upkeep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn tick(&mut self, now: SystemTime, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::upkeep(self, cx)?;
        }
        if self.config.time == TimeKind::Processing {
            let mut rows = Rows::new(&self.aggregates);
            self.close_all(wall_ms(now), &mut rows);
            self.emit(rows, cx)?;
        }
        Ok(())
    }
}

impl PartitionedState for Window {
    fn partitioning(&mut self) -> Option<&mut Partitioning> {
        self.partitioning.as_mut()
    }

    fn holding(&self) -> BTreeSet<i32> {
        self.lanes.iter().map(|l| l.partition).collect()
    }

    /// Drops the lanes of partitions given up, restores those of partitions assigned.
    fn apply_moves(
        &mut self,
        moves: Moves,
        _cx: &mut TransformContext,
    ) -> Result<(usize, usize), ComponentError> {
        let mut dropped = 0;
        for &q in &moves.dropped {
            let Ok(i) = self.lanes.binary_search_by_key(&q, |l| l.partition) else {
                continue;
            };
            let lane = self.lanes.remove(i);
            // Their tokens are released, not failed: the source neither commits nor
            // reads again what it read of a partition under an earlier ownership (the
            // new owner replays it from the partition's snapshot), and failing them
            // would make it read again the other partitions' rows of the same batches.
            for (key, _) in lane.windows.keys() {
                self.release(*key);
                dropped += 1;
            }
            for key in lane.sessions.keys() {
                self.release(*key);
                dropped += 1;
            }
        }
        let mut restored = 0;
        for (q, bytes) in moves.restored {
            let state = Self::decode(&bytes)?;
            restored += state.windows();
            self.restore_state(state, q)?;
        }
        Ok((dropped, restored))
    }

    fn apply_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        self.window_rows(batch, cx)
    }

    /// Hands the hub each cut partition's open windows and event time. In event time,
    /// their tokens are released then (see the module documentation).
    fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        _cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        for &(q, offset) in cuts {
            let bytes = self.encode(&self.partition_state(q))?;
            if let Some(p) = &self.partitioning {
                p.hand_in(q, offset, bytes);
            }
            if self.config.time == TimeKind::Event
                && let Ok(i) = self.lanes.binary_search_by_key(&q, |l| l.partition)
            {
                self.lanes[i].take_tokens().release();
            }
        }
        Ok(())
    }
}

tidegauge_core::register_transform!(WindowConfig);

mod config;
mod rows;
mod state;
use rows::Rows;
#[cfg(test)]
mod partition_tests;
#[cfg(test)]
mod tests;
