//! Revocations of a changelog-backed `kafka` source, carried out once the partition's
//! last snapshot is written.
//!
//! When a cooperative rebalance takes a partition away from a running member (another
//! instance joins), the rebalance callback does not give it up at once: it pauses the
//! partition and defers the revocation here. The source then cuts the partition at the
//! offset after the last message it decoded, waits (as for any cut) until the transforms
//! have handed in their state and the sinks hold every output below the cut, writes that
//! last snapshot, commits the partition's offsets, and only then revokes it from the hub
//! and gives it up to the consumer (`incremental_unassign`, allowed after the callback
//! returned): the next owner goes on from exactly the last message read here instead of
//! re-reading, and re-emitting, everything after the last periodic snapshot.
//!
//! The callback runs inside the consumer's poll, on the source's own task: it must not
//! wait there, or the acknowledgements that complete the cut would never be read. The
//! consumer group waits meanwhile (librdkafka starts no further rebalance before the
//! unassign call; heartbeats go on), so the wait is bounded by a deadline well under
//! `max.poll.interval.ms`: past it, the partitions are given up without their last
//! snapshot, as before (the next owner restores the last periodic one).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The longest a revocation waits for its last snapshot (or `drain_timeout_ms`, if
/// shorter): the group's rebalance waits for it.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(5);

/// The partitions one rebalance revoked, given up together (librdkafka takes one
/// incremental unassign per revocation).
#[derive(Debug)]
struct Revocation {
    /// When the callback deferred it.
    since: Instant,
    /// The partitions still to give up, each with the offset its last snapshot is cut at
    /// once the source took the revocation in (`None` inside: nothing to snapshot).
    partitions: BTreeMap<i32, Option<Option<i64>>>,
}

/// Revocations deferred by the rebalance callback and carried out by the source; shared
/// by both (the callback runs on the source's task, inside the consumer's poll).
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    /// The source is stopping: revocations are carried out at once (the stop writes its
    /// own last snapshots, and the consumer's close serves the revocation in a loop that
    /// ends only once it is done).
    closing: bool,
    /// Rebalances that deferred a revocation so far; each revocation is tagged with its.
    rebalances: u64,
    pending: BTreeMap<u64, Revocation>,
    /// Per partition, the offset of the last snapshot written.
    written: BTreeMap<i32, i64>,
    /// Partitions paused by a deferral: the pause outlives the assignment in librdkafka,
    /// so a partition assigned here again must be resumed first, or it stalls.
    paused: BTreeSet<i32>,
}

/// A revocation the source may carry out now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Due {
    /// When the callback deferred it.
    pub since: Instant,
    /// The partitions to give up.
    pub partitions: Vec<i32>,
    /// Those whose last snapshot is written, with its offset (the offset the next owner
    /// goes on from).
    pub written: Vec<(i32, i64)>,
    /// Those given up without it (the deadline passed first).
    pub missing: Vec<i32>,
}

impl Revocations {
    /// The rebalance callback was told to give up `partitions` at `now`: defers it (true;
    /// the callback pauses them), or false when the source is stopping and they must be
    /// given up at once.
    pub(crate) fn defer(&mut self, partitions: &[i32], now: Instant) -> bool {
        if self.closing || partitions.is_empty() {
            return false;
        }
        self.rebalances += 1;
        self.paused.extend(partitions);
        // A partition revoked twice (cannot happen: no rebalance starts before the
        // unassign call) belongs to the latest revocation only.
        for r in self.pending.values_mut() {
            r.partitions.retain(|p, _| !partitions.contains(p));
        }
        self.pending.retain(|_, r| !r.partitions.is_empty());
        self.pending.insert(
            self.rebalances,
            Revocation {
                since: now,
                partitions: partitions.iter().map(|p| (*p, None)).collect(),
            },
        );
        true
    }

    /// `partitions` are being assigned (again): a revocation of them still deferred
    /// belongs to an earlier rebalance and must not give them up. Returns those paused by
    /// a deferral, to resume before the assignment.
    pub(crate) fn assigned(&mut self, partitions: &[i32]) -> Vec<i32> {
        self.forget(partitions);
        partitions
            .iter()
            .copied()
            .filter(|p| self.paused.remove(p))
            .collect()
    }

    /// `partitions` were given up otherwise (lost, or at once): no deferred revocation
    /// gives them up again.
    pub(crate) fn forget(&mut self, partitions: &[i32]) {
        for r in self.pending.values_mut() {
            r.partitions.retain(|p, _| !partitions.contains(p));
        }
        self.pending.retain(|_, r| !r.partitions.is_empty());
        for p in partitions {
            self.written.remove(p);
        }
    }

    /// Whether `partition` is being given up: none of its messages is decoded any more.
    pub(crate) fn revoking(&self, partition: i32) -> bool {
        self.pending
            .values()
            .any(|r| r.partitions.contains_key(&partition))
    }

    /// Whether any revocation waits.
    pub(crate) fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The partitions deferred since the last call, for the source to cut: it answers
    /// each with the offset of its last snapshot (`None`: nothing read, nothing to
    /// snapshot) through `cut`.
    pub(crate) fn take_in(&mut self, mut cut: impl FnMut(i32) -> Option<i64>) -> Vec<(i32, i64)> {
        let mut cuts = Vec::new();
        for r in self.pending.values_mut() {
            for (p, at) in r.partitions.iter_mut() {
                if at.is_none() {
                    let offset = cut(*p);
                    if let Some(o) = offset {
                        cuts.push((*p, o));
                    }
                    *at = Some(offset);
                }
            }
        }
        cuts
    }

    /// The snapshot of `partition` at `offset` was written (queued to the changelog).
    pub(crate) fn written(&mut self, partition: i32, offset: i64) {
        self.written.insert(partition, offset);
    }

    /// The revocations to carry out at `now`, removed: those each of whose partitions
    /// was taken in and has its last snapshot written, when the changelog producer has
    /// them all at the broker (`flushed`); and those older than `wait`.
    pub(crate) fn due(&mut self, now: Instant, wait: Duration, flushed: bool) -> Vec<Due> {
        let written = &self.written;
        let complete = |r: &Revocation| {
            flushed
                && r.partitions.iter().all(|(p, at)| match at {
                    None => false,
                    Some(None) => true,
                    Some(Some(o)) => written.get(p).is_some_and(|w| w >= o),
                })
        };
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, r)| complete(r) || now.duration_since(r.since) >= wait)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        for n in ready {
            let Some(r) = self.pending.remove(&n) else {
                continue;
            };
            let mut due = Due {
                since: r.since,
                partitions: r.partitions.keys().copied().collect(),
                written: Vec::new(),
                missing: Vec::new(),
            };
            for (p, at) in r.partitions {
                match at {
                    Some(None) => {}
                    Some(Some(o)) if self.written.get(&p).is_some_and(|w| *w >= o) => {
                        due.written.push((p, o));
                    }
                    _ => due.missing.push(p),
                }
                self.written.remove(&p);
            }
            out.push(due);
        }
        out
    }

    /// The source stops: from now on revocations are carried out at once; returns the
    /// partitions still deferred, to give up now.
    pub(crate) fn close(&mut self) -> Vec<i32> {
        self.closing = true;
        let partitions = self
            .pending
            .values()
            .flat_map(|r| r.partitions.keys().copied())
            .collect();
        self.pending.clear();
        partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::Hub;
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_revoked_partition_is_given_up_once_its_last_snapshot_at_the_last_message_is_written() {
        // Partition 2 was read up to offset 140 (next 141); its last periodic snapshot
        // was at 100. Revoked, it must be cut at 141, snapshotted there by the transform
        // once the sinks hold everything below, written, and only then given up, with
        // partition 5 (nothing read: nothing to wait for) of the same rebalance.
        let hub = Arc::new(Hub::default());
        let zscore = hub.register("zscore");
        hub.assign(2, None);
        hub.assign(5, None);
        assert!(hub.cut(2, 100));
        let reads: BTreeMap<i32, i64> = [(2, 141)].into_iter().collect();
        let t0 = Instant::now();
        let mut revocations = Revocations::default();
        assert!(revocations.defer(&[2, 5], t0));
        assert!(revocations.revoking(2) && revocations.revoking(5));
        assert!(!revocations.revoking(1));
        let cuts = revocations.take_in(|p| {
            let next = *reads.get(&p)?;
            hub.recut(p, next).then_some(next)
        });
        assert_eq!(cuts, vec![(2, 141)], "cut after the last message decoded");
        assert!(revocations.take_in(|_| panic!("taken in once")).is_empty());
        assert!(
            revocations.due(t0, WAIT, true).is_empty(),
            "not written yet"
        );
        zscore.snapshot(2, 141, vec![7]);
        hub.set_durable(2, 140);
        assert!(
            hub.take_ready().is_empty(),
            "an output below the cut is not durable"
        );
        hub.set_durable(2, 141);
        let ready = hub.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.offset, 141);
        revocations.written(2, 141);
        assert!(
            revocations.due(t0, WAIT, false).is_empty(),
            "the snapshot is not at the broker yet"
        );
        let due = revocations.due(t0, WAIT, true);
        assert_eq!(
            due,
            vec![Due {
                since: t0,
                partitions: vec![2, 5],
                written: vec![(2, 141)],
                missing: vec![],
            }]
        );
        assert!(!revocations.any() && !revocations.revoking(2));
    }

    #[test]
    fn past_the_deadline_the_partitions_go_without_their_last_snapshot() {
        let mut revocations = Revocations::default();
        let t0 = Instant::now();
        assert!(revocations.defer(&[1, 3], t0));
        revocations.take_in(|p| Some(p as i64 * 10));
        revocations.written(1, 10);
        assert!(revocations.due(t0 + WAIT / 2, WAIT, true).is_empty());
        let due = revocations.due(t0 + WAIT, WAIT, true);
        assert_eq!(
            due,
            vec![Due {
                since: t0,
                partitions: vec![1, 3],
                written: vec![(1, 10)],
                missing: vec![3],
            }]
        );
        // A revocation the source has not taken in (cut) yet is never complete.
        assert!(revocations.defer(&[4], t0));
        assert!(revocations.due(t0, WAIT, true).is_empty());
    }

    #[test]
    fn a_partition_assigned_again_is_not_given_up_by_an_earlier_revocation() {
        // The stall of a deferred revocation that unassigns what a later rebalance gave
        // back: the revocation is tagged with its rebalance and forgets what was
        // assigned since.
        let mut revocations = Revocations::default();
        let t0 = Instant::now();
        assert!(revocations.defer(&[0, 1], t0));
        revocations.take_in(|_| Some(50));
        revocations.written(0, 50);
        assert_eq!(
            revocations.assigned(&[1, 2]),
            vec![1],
            "resume what was paused"
        );
        assert!(!revocations.revoking(1));
        let due = revocations.due(t0, WAIT, true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].partitions, vec![0]);
        // A later revocation of a partition still deferred takes it over.
        assert!(revocations.defer(&[6, 7], t0));
        assert!(revocations.defer(&[7], t0));
        revocations.take_in(|_| None);
        let due = revocations.due(t0, WAIT, true);
        let given: Vec<Vec<i32>> = due.into_iter().map(|d| d.partitions).collect();
        assert_eq!(
            given,
            vec![vec![6], vec![7]],
            "each partition given up once"
        );
        // Given up, then assigned here again: paused by the deferral, resumed first.
        assert_eq!(revocations.assigned(&[0, 6, 7]), vec![0, 6, 7]);
        assert!(revocations.assigned(&[0]).is_empty());
    }

    #[test]
    fn a_stopping_source_gives_partitions_up_at_once() {
        let mut revocations = Revocations::default();
        let t0 = Instant::now();
        assert!(revocations.defer(&[2], t0));
        assert_eq!(revocations.close(), vec![2]);
        assert!(!revocations.any());
        assert!(!revocations.defer(&[3], t0), "stopping: not deferred");
        assert!(!revocations.revoking(3));
    }
}
