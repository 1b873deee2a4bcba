//! Partition-aligned state of a keyed detector fed by a `kafka` source with
//! `partition_state` (see [`crate::partitions`]): which partition each key came from,
//! ownership changes, and snapshots of each partition at the source's cuts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_schema::{DataType, Schema};
use tidegauge_core::{ComponentError, Transform, TransformContext};

use super::super::spec::DetectorSpec;
use super::{KeyedDetector, key_at};
use crate::partitions::{OFFSET_FIELD, PARTITION_FIELD, Registration, Seen};

/// A key with its detector state.
pub(super) type Pair<S> = (Box<str>, <S as DetectorSpec>::State);

/// Where the input carries each event's Kafka partition and offset (a `kafka` source
/// with `partition_state`), if it does.
pub(super) fn partition_columns(input: &Schema) -> Option<(usize, usize)> {
    let find = |name: &str| {
        input
            .index_of(name)
            .ok()
            .filter(|&i| input.field(i).data_type() == &DataType::Int64)
    };
    find(PARTITION_FIELD).zip(find(OFFSET_FIELD))
}

/// Partition-aligned state (see [`crate::partitions`]): which partition each key came
/// from, what the source owns, and the cuts to snapshot.
pub(super) struct Partitioning {
    pub(super) partition: usize,
    pub(super) offset: usize,
    pub(super) registration: Registration,
    pub(super) seen: Seen,
    pub(super) owned: BTreeSet<i32>,
    pub(super) key_partition: HashMap<Box<str>, i32>,
    /// Per partition, the offset after the last row applied.
    pub(super) applied: HashMap<i32, i64>,
}

/// A batch's partition and offset columns (without nulls: the source fills them).
fn positions(batch: &RecordBatch, p: &Partitioning) -> (Vec<i32>, Vec<i64>) {
    let parts = batch.column(p.partition).as_primitive::<Int64Type>();
    let offsets = batch.column(p.offset).as_primitive::<Int64Type>();
    (
        parts.values().iter().map(|&v| v as i32).collect(),
        offsets.values().to_vec(),
    )
}

impl<S: DetectorSpec> KeyedDetector<S> {
    /// Every key's state with its key, whichever worker holds it.
    pub(super) fn pairs(
        &mut self,
        cx: &mut TransformContext,
    ) -> Result<Vec<Pair<S>>, ComponentError> {
        self.drain(cx)?;
        let Some(bytes) = self.checkpoint()? else {
            return Ok(Vec::new());
        };
        let spec = self.spec.get().1;
        let mut pairs = Vec::new();
        for shard in crate::transforms::state::decode_shards(&bytes)? {
            let (keys, states) = spec.load_states(&shard)?;
            pairs.extend(crate::transforms::state::into_pairs(keys, states));
        }
        Ok(pairs)
    }

    /// `pairs` as a checkpoint blob.
    pub(super) fn encode(&self, pairs: Vec<Pair<S>>) -> Result<Vec<u8>, ComponentError> {
        let (keys, states) = crate::transforms::state::from_pairs(pairs);
        let bytes = match self.spec.get().1.save_states(&keys, &states) {
            Some(b) => b?,
            None => return Err(ComponentError::new("state cannot be saved")),
        };
        crate::transforms::state::encode_shards(&[bytes])
    }

    /// Applies assignments and revocations: drops the keys of partitions given up,
    /// restores those of partitions assigned.
    pub(super) fn apply_changes(
        &mut self,
        changes: crate::partitions::Changes,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let Some(p) = &mut self.partitioning else {
            return Ok(());
        };
        p.owned = changes.owned;
        let mut replaced: BTreeSet<i32> = p
            .key_partition
            .values()
            .filter(|q| !p.owned.contains(q))
            .copied()
            .collect();
        replaced.extend(changes.restores.iter().map(|r| r.0));
        if replaced.is_empty() {
            return Ok(());
        }
        let mut pairs = self.pairs(cx)?;
        let spec = self.spec.get().1;
        let Some(p) = &mut self.partitioning else {
            return Ok(());
        };
        pairs.retain(|(k, _)| p.key_partition.get(k).is_none_or(|q| !replaced.contains(q)));
        p.key_partition.retain(|_, q| !replaced.contains(q));
        p.applied.retain(|q, _| !replaced.contains(q));
        let mut restored = 0;
        for (partition, offset, state) in changes.restores {
            if offset >= 0 {
                p.applied.insert(partition, offset);
            }
            let Some(bytes) = state else { continue };
            for shard in crate::transforms::state::decode_shards(&bytes)? {
                let (keys, states) = spec.load_states(&shard)?;
                for (k, st) in crate::transforms::state::into_pairs(keys, states) {
                    p.key_partition.insert(k.clone(), partition);
                    pairs.push((k, st));
                    restored += 1;
                }
            }
        }
        tracing::info!(
            component_id = %cx.component().id(),
            partitions = ?replaced,
            restored_keys = restored,
            keys = pairs.len(),
            "keys of moved partitions dropped or restored"
        );
        let bytes = self.encode(pairs)?;
        self.restore(&bytes)
    }

    /// Hands the hub a snapshot of each partition in `cuts` (partition, offset).
    pub(super) fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if cuts.is_empty() {
            return Ok(());
        }
        let pairs = self.pairs(cx)?;
        let Some(p) = &self.partitioning else {
            return Ok(());
        };
        let mut by_partition: HashMap<i32, Vec<Pair<S>>> =
            cuts.iter().map(|c| (c.0, Vec::new())).collect();
        for (k, st) in pairs {
            if let Some(v) = p
                .key_partition
                .get(&k)
                .and_then(|q| by_partition.get_mut(q))
            {
                v.push((k, st));
            }
        }
        for &(partition, offset) in cuts {
            let part = by_partition.remove(&partition).unwrap_or_default();
            let bytes = self.encode(part)?;
            if let Some(p) = &self.partitioning {
                p.registration.snapshot(partition, offset, bytes);
            }
        }
        Ok(())
    }

    /// Ownership changes and idle cuts (the sinks hold everything below the cut, or
    /// every row below it has been applied).
    pub(super) fn partition_upkeep(
        &mut self,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let Some(p) = &mut self.partitioning else {
            return Ok(());
        };
        if let Some(changes) = p.registration.changes(&mut p.seen) {
            self.apply_changes(changes, cx)?;
        }
        let Some(p) = &mut self.partitioning else {
            return Ok(());
        };
        let Some(cuts) = p.registration.pending_cuts(&mut p.seen) else {
            return Ok(());
        };
        if cuts.is_empty() {
            return Ok(());
        }
        // Finish the batch in flight first: its rows count as applied, its outputs can
        // become durable.
        self.drain(cx)?;
        let Some(p) = &self.partitioning else {
            return Ok(());
        };
        let due: Vec<(i32, i64)> = cuts
            .into_iter()
            .filter(|(q, x, durable)| *durable || p.applied.get(q).is_some_and(|a| a >= x))
            .map(|(q, x, _)| (q, x))
            .collect();
        self.snapshot(&due, cx)
    }

    /// Partition-aware processing: rows of partitions not owned are dropped (their owner
    /// reads them); a batch that crosses a cut is split there and the cut partitions
    /// snapshotted between the halves.
    pub(super) fn process_partitioned(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        {
            let Some(p) = &mut self.partitioning else {
                return self.process_rows(batch, cx);
            };
            if let Some(changes) = p.registration.changes(&mut p.seen) {
                self.apply_changes(changes, cx)?;
            }
        }
        let Some(p) = &mut self.partitioning else {
            return self.process_rows(batch, cx);
        };
        let (parts, offsets) = positions(&batch, p);
        let keys = batch.column(self.columns.key).as_string::<i32>();
        let mut keep = Vec::with_capacity(parts.len());
        let mut all_kept = true;
        for (row, &q) in parts.iter().enumerate() {
            let owned = p.owned.contains(&q);
            all_kept &= owned;
            keep.push(owned);
            if owned {
                let key = key_at(keys, row);
                if !p.key_partition.contains_key(key) {
                    p.key_partition.insert(key.into(), q);
                }
            }
        }
        let cuts: HashMap<i32, i64> = p
            .registration
            .pending_cuts(&mut p.seen)
            .unwrap_or_default()
            .into_iter()
            .map(|(q, x, _)| (q, x))
            .collect();
        // Rows at or past a pending cut of their partition come after its snapshot.
        let mut crossed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut after = vec![false; parts.len()];
        for row in 0..parts.len() {
            if let Some(&x) = cuts.get(&parts[row])
                && keep[row]
                && offsets[row] >= x
            {
                after[row] = true;
                crossed.insert(parts[row], x);
            }
        }
        for row in 0..parts.len() {
            if keep[row] {
                let a = p.applied.entry(parts[row]).or_insert(0);
                *a = (*a).max(offsets[row] + 1);
            }
        }
        let select = |mask: Vec<bool>| -> Result<RecordBatch, ComponentError> {
            arrow_select::filter::filter_record_batch(
                &batch,
                &arrow_array::BooleanArray::from(mask),
            )
            .map_err(|e| ComponentError::new(format!("cannot select rows: {e}")))
        };
        if crossed.is_empty() {
            let batch = if all_kept {
                batch.clone()
            } else {
                select(keep)?
            };
            return self.process_rows(batch, cx);
        }
        let before: Vec<bool> = keep.iter().zip(&after).map(|(k, a)| *k && !a).collect();
        let (first, second) = (select(before)?, select(after)?);
        // Both halves' outputs carry the input batch's tokens.
        let tokens = cx.take_finalizers();
        cx.set_finalizers(tokens.clone());
        self.process_rows(first, cx)?;
        let cuts: Vec<(i32, i64)> = crossed.into_iter().collect();
        self.snapshot(&cuts, cx)?;
        cx.set_finalizers(tokens);
        self.process_rows(second, cx)
    }
}
