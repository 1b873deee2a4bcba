//! Partition-aligned state of a keyed transform fed by a `kafka` source with
//! `partition_state` (see [`crate::partitions`]), as every such transform (the keyed
//! detectors, `window`, `heartbeat`) keeps it: what the source owns, which rows to apply,
//! where a batch crosses a cut, and when a cut is due while no row crosses it.
//!
//! A transform says how its own state is dropped, restored and snapshotted per partition
//! ([`PartitionedState`]); [`process`] and [`upkeep`] do the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::{DataType, Schema};
use tidegauge_core::{ComponentError, TransformContext};

use crate::partitions::{Changes, Hub, OFFSET_FIELD, PARTITION_FIELD, Registration, Seen};

/// Where the input carries each event's Kafka partition and offset (a `kafka` source
/// with `partition_state`), if it does.
pub(crate) fn partition_columns(input: &Schema) -> Option<(usize, usize)> {
    let find = |name: &str| {
        input
            .index_of(name)
            .ok()
            .filter(|&i| input.field(i).data_type() == &DataType::Int64)
    };
    find(PARTITION_FIELD).zip(find(OFFSET_FIELD))
}

/// A transform's membership in partition-aligned state: where the partition and offset
/// are in its input, what the source owns, and how far each partition was applied.
pub(crate) struct Partitioning {
    /// The partition column.
    pub(crate) partition: usize,
    offset: usize,
    registration: Registration,
    seen: Seen,
    owned: BTreeSet<i32>,
    /// Per partition, the offset after the last row applied.
    applied: HashMap<i32, i64>,
}

/// What an ownership change asks of a transform's state.
pub(crate) struct Moves {
    /// Partitions whose state goes: revoked, or about to be replaced by a restore.
    pub(crate) dropped: BTreeSet<i32>,
    /// Partitions assigned with a snapshot: this transform's state of each.
    pub(crate) restored: Vec<(i32, Vec<u8>)>,
}

impl Partitioning {
    /// Registers transform `id` with `hub` when its input has the partition columns.
    pub(crate) fn new(input: &Schema, hub: &Arc<Hub>, id: &str) -> Option<Self> {
        let (partition, offset) = partition_columns(input)?;
        Some(Partitioning {
            partition,
            offset,
            registration: hub.register(id),
            seen: Seen::default(),
            owned: BTreeSet::new(),
            applied: HashMap::new(),
        })
    }

    /// A batch's partitions, row by row (the source fills the column: no nulls).
    pub(crate) fn partitions<'a>(&self, batch: &'a RecordBatch) -> &'a [i64] {
        batch
            .column(self.partition)
            .as_primitive::<Int64Type>()
            .values()
    }

    /// Takes in `changes`: `holding` are the partitions the transform holds state of.
    fn moves(&mut self, changes: Changes, holding: BTreeSet<i32>) -> Moves {
        self.owned = changes.owned;
        let mut dropped: BTreeSet<i32> = holding
            .into_iter()
            .filter(|q| !self.owned.contains(q))
            .collect();
        dropped.extend(changes.restores.iter().map(|r| r.0));
        self.applied.retain(|q, _| !dropped.contains(q));
        let mut restored = Vec::new();
        for (partition, offset, state) in changes.restores {
            if offset >= 0 {
                self.applied.insert(partition, offset);
            }
            if let Some(bytes) = state {
                restored.push((partition, bytes));
            }
        }
        Moves { dropped, restored }
    }

    /// Hands in the transform's snapshot of `partition` at the cut at `offset`.
    pub(crate) fn hand_in(&self, partition: i32, offset: i64, state: Vec<u8>) {
        self.registration.snapshot(partition, offset, state);
    }

    /// The rows of `batch` owned, split at the pending cuts they cross.
    fn split(&mut self, batch: RecordBatch) -> Result<Split, ComponentError> {
        let parts = batch.column(self.partition).as_primitive::<Int64Type>();
        let offsets = batch.column(self.offset).as_primitive::<Int64Type>();
        let (parts, offsets) = (parts.values(), offsets.values());
        let keep: Vec<bool> = parts
            .iter()
            .map(|&q| self.owned.contains(&(q as i32)))
            .collect();
        let all_kept = keep.iter().all(|k| *k);
        let cuts: HashMap<i32, i64> = self
            .registration
            .pending_cuts(&mut self.seen)
            .unwrap_or_default()
            .into_iter()
            .map(|(q, x, _)| (q, x))
            .collect();
        // Rows at or past a pending cut of their partition come after its snapshot.
        let mut crossed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut after = vec![false; parts.len()];
        for row in 0..parts.len() {
            let q = parts[row] as i32;
            if keep[row] {
                let a = self.applied.entry(q).or_insert(0);
                *a = (*a).max(offsets[row] + 1);
                if let Some(&x) = cuts.get(&q)
                    && offsets[row] >= x
                {
                    after[row] = true;
                    crossed.insert(q, x);
                }
            }
        }
        let select = |mask: Vec<bool>| -> Result<RecordBatch, ComponentError> {
            arrow_select::filter::filter_record_batch(&batch, &BooleanArray::from(mask))
                .map_err(|e| ComponentError::new(format!("cannot select rows: {e}")))
        };
        if crossed.is_empty() {
            return Ok(Split::Whole(if all_kept {
                batch.clone()
            } else {
                select(keep)?
            }));
        }
        let before: Vec<bool> = keep.iter().zip(&after).map(|(k, a)| *k && !a).collect();
        Ok(Split::AtCuts {
            before: select(before)?,
            cuts: crossed.into_iter().collect(),
            after: select(after)?,
        })
    }
}

/// The owned rows of a batch.
enum Split {
    /// No pending cut crossed.
    Whole(RecordBatch),
    /// The rows below the cuts, the cuts `(partition, offset)`, the rows past them.
    AtCuts {
        before: RecordBatch,
        cuts: Vec<(i32, i64)>,
        after: RecordBatch,
    },
}

/// A transform keeping partition-aligned state: how its state of a partition is
/// dropped, restored and snapshotted.
pub(crate) trait PartitionedState {
    /// Its membership, if its input is partitioned.
    fn partitioning(&mut self) -> Option<&mut Partitioning>;
    /// The partitions it holds state of.
    fn holding(&self) -> BTreeSet<i32>;
    /// Drops the state of `moves.dropped`, then restores `moves.restored`; returns how
    /// many entries (keys, windows, sensors) were dropped and how many restored.
    fn apply_moves(
        &mut self,
        moves: Moves,
        cx: &mut TransformContext,
    ) -> Result<(usize, usize), ComponentError>;
    /// Applies rows, all of partitions owned.
    fn apply_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError>;
    /// Hands the hub its state of each `(partition, offset)` in `cuts` (through
    /// [`Partitioning::hand_in`]): every row below the offset applied, none past it.
    fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError>;
    /// Finishes the rows in flight (worker threads), so every row given counts as
    /// applied and its outputs can become durable.
    fn settle(&mut self, _cx: &mut TransformContext) -> Result<(), ComponentError> {
        Ok(())
    }
}

/// Applies the ownership changes since the last look: drops the state of partitions
/// given up, restores that of partitions assigned.
fn follow_ownership<T: PartitionedState>(
    t: &mut T,
    cx: &mut TransformContext,
) -> Result<(), ComponentError> {
    let Some(p) = t.partitioning() else {
        return Ok(());
    };
    let Some(changes) = p.registration.changes(&mut p.seen) else {
        return Ok(());
    };
    let holding = t.holding();
    let Some(p) = t.partitioning() else {
        return Ok(());
    };
    let moves = p.moves(changes, holding);
    if moves.dropped.is_empty() {
        return Ok(());
    }
    let partitions = moves.dropped.clone();
    let (dropped, restored) = t.apply_moves(moves, cx)?;
    tracing::info!(
        component_id = %cx.component().id(),
        ?partitions,
        dropped,
        restored,
        "state of moved partitions dropped or restored (keys, windows or sensors)"
    );
    Ok(())
}

/// Partition-aware processing: rows of partitions not owned are dropped (their owner
/// reads them); a batch that crosses a cut is split there and the cut partitions
/// snapshotted between the halves.
pub(crate) fn process<T: PartitionedState>(
    t: &mut T,
    batch: RecordBatch,
    cx: &mut TransformContext,
) -> Result<(), ComponentError> {
    follow_ownership(t, cx)?;
    let Some(p) = t.partitioning() else {
        return t.apply_rows(batch, cx);
    };
    match p.split(batch)? {
        Split::Whole(batch) => t.apply_rows(batch, cx),
        Split::AtCuts {
            before,
            cuts,
            after,
        } => {
            // Both halves' outputs carry the input batch's tokens.
            let tokens = cx.take_finalizers();
            cx.set_finalizers(tokens.clone());
            t.apply_rows(before, cx)?;
            t.snapshot(&cuts, cx)?;
            cx.set_finalizers(tokens);
            t.apply_rows(after, cx)
        }
    }
}

/// Between batches: ownership changes, and the cuts due although no row crosses them
/// (the sinks hold everything below the cut, or every row below it has been applied).
pub(crate) fn upkeep<T: PartitionedState>(
    t: &mut T,
    cx: &mut TransformContext,
) -> Result<(), ComponentError> {
    hand_in_cuts(t, cx, false, |p, q, x, durable| {
        durable || p.applied.get(&q).is_some_and(|a| *a >= x)
    })
}

/// When the input has ended (the instance stops): hands the hub this transform's state
/// of every partition cut, so the stopping source can write a last snapshot of each at
/// the last message it read, and the next owner goes on from there instead of from the
/// previous snapshot. Every row the source read has reached this transform by now: a cut
/// that no applied row is at or past is exact.
pub(crate) fn finish<T: PartitionedState>(
    t: &mut T,
    cx: &mut TransformContext,
) -> Result<(), ComponentError> {
    hand_in_cuts(t, cx, true, |p, q, x, _| {
        p.applied.get(&q).is_none_or(|a| *a <= x)
    })
}

/// Follows ownership, then snapshots the pending cuts `(partition, offset, durable)` that
/// `due` accepts: those new since the last look, or all of them (`all`).
fn hand_in_cuts<T: PartitionedState>(
    t: &mut T,
    cx: &mut TransformContext,
    all: bool,
    due: fn(&Partitioning, i32, i64, bool) -> bool,
) -> Result<(), ComponentError> {
    follow_ownership(t, cx)?;
    let Some(p) = t.partitioning() else {
        return Ok(());
    };
    let cuts = if all {
        p.registration.pending_cuts(&mut Seen::default())
    } else {
        p.registration.pending_cuts(&mut p.seen)
    };
    let Some(cuts) = cuts.filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    t.settle(cx)?;
    let Some(p) = t.partitioning() else {
        return Ok(());
    };
    let due: Vec<(i32, i64)> = cuts
        .into_iter()
        .filter(|&(q, x, durable)| due(p, q, x, durable))
        .map(|(q, x, _)| (q, x))
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    t.snapshot(&due, cx)
}
