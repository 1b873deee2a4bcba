//! Partition-aligned state of a keyed detector fed by a `kafka` source with
//! `partition_state` (see [`crate::partitions`]): which partition each key came from, and
//! how the keys of a partition are dropped, restored and snapshotted. The rest is shared
//! with every keyed transform ([`crate::transforms::partitioned`]).

use std::collections::{BTreeSet, HashMap};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use tidegauge_core::{ComponentError, Transform, TransformContext};

use super::super::partitioned::{Moves, PartitionedState, Partitioning};
use super::super::spec::DetectorSpec;
use super::{KeyedDetector, key_at};

/// A key with its detector state.
pub(super) type Pair<S> = (Box<str>, <S as DetectorSpec>::State);

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
}

impl<S: DetectorSpec> PartitionedState for KeyedDetector<S> {
    fn partitioning(&mut self) -> Option<&mut Partitioning> {
        self.partitioning.as_mut()
    }

    fn holding(&self) -> BTreeSet<i32> {
        self.key_partition.values().copied().collect()
    }

    /// Drops the keys of partitions given up, restores those of partitions assigned.
    fn apply_moves(
        &mut self,
        moves: Moves,
        cx: &mut TransformContext,
    ) -> Result<(usize, usize), ComponentError> {
        let mut pairs = self.pairs(cx)?;
        let held = pairs.len();
        let spec = self.spec.get().1;
        let dropped = moves.dropped;
        let key_partition = &mut self.key_partition;
        pairs.retain(|(k, _)| key_partition.get(k).is_none_or(|q| !dropped.contains(q)));
        key_partition.retain(|_, q| !dropped.contains(q));
        let gone = held - pairs.len();
        let mut restored = 0;
        for (partition, bytes) in moves.restored {
            for shard in crate::transforms::state::decode_shards(&bytes)? {
                let (keys, states) = spec.load_states(&shard)?;
                for (k, st) in crate::transforms::state::into_pairs(keys, states) {
                    key_partition.insert(k.clone(), partition);
                    pairs.push((k, st));
                    restored += 1;
                }
            }
        }
        let bytes = self.encode(pairs)?;
        self.restore(&bytes)?;
        Ok((gone, restored))
    }

    /// Notes the partition of keys not seen before, then judges the rows.
    fn apply_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if let Some(p) = &self.partitioning {
            let parts = p.partitions(&batch);
            let keys = batch.column(self.columns.key).as_string::<i32>();
            for (row, &q) in parts.iter().enumerate() {
                let key = key_at(keys, row);
                if !self.key_partition.contains_key(key) {
                    self.key_partition.insert(key.into(), q as i32);
                }
            }
        }
        self.process_rows(batch, cx)
    }

    /// Hands the hub a snapshot of each partition in `cuts` (partition, offset).
    fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if cuts.is_empty() {
            return Ok(());
        }
        let pairs = self.pairs(cx)?;
        let mut by_partition: HashMap<i32, Vec<Pair<S>>> =
            cuts.iter().map(|c| (c.0, Vec::new())).collect();
        for (k, st) in pairs {
            if let Some(v) = self
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
                p.hand_in(partition, offset, bytes);
            }
        }
        Ok(())
    }

    fn settle(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        self.drain(cx)
    }
}
