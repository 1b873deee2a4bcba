//! The `kafka` source's side of partition-aligned state: cuts, snapshots written to the
//! changelog, what this member owns, and the revocations deferred until their last
//! snapshot (see [`crate::partitions`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegauge_core::ComponentContext;
use tidegauge_core::telemetry::{ComponentErrorOccurred, OwnedPartition, Ownership};

use super::super::changelog::{Changelog, lock};
use super::super::reads::Reads;
use super::super::revoke::Revocations;
use super::{Commits, REVOKING_UPKEEP};
use crate::partitions::Hub;

/// The source's side of partition-aligned state (see [`crate::partitions`]).
pub(super) struct Partitioned {
    pub(super) changelog: Arc<Changelog>,
    pub(super) hub: Arc<Hub>,
    /// Per partition, the offset after the last message decoded, and what was skipped.
    pub(super) reads: Reads,
    /// Per partition, the offset of its last cut.
    pub(super) cut: BTreeMap<i32, i64>,
    pub(super) last_cut: Instant,
    pub(super) interval: Duration,
    /// When the next upkeep (writing complete snapshots, cutting) is due while idle.
    pub(super) upkeep_at: tokio::time::Instant,
    /// The hub's version and the ownership epochs as last seen.
    pub(super) seen: u64,
    pub(super) epochs: BTreeMap<i32, u64>,
    /// High watermarks per partition, as last asked of the broker.
    pub(super) watermarks: Arc<std::sync::Mutex<BTreeMap<i32, i64>>>,
    pub(super) querying: Arc<std::sync::atomic::AtomicBool>,
    /// Revocations the rebalance callback deferred until the partitions' last snapshots
    /// are written (see [`revoke`]), and how long one may wait for them.
    pub(super) revocations: Arc<std::sync::Mutex<Revocations>>,
    pub(super) revoke_wait: Duration,
}

impl Partitioned {
    /// What this member owns, for the admin API and metrics.
    pub(super) fn report(&self, cx: &ComponentContext) {
        // High watermarks come from the broker, off the runtime, one query at a time;
        // the lag shown is as of the previous report.
        if !self
            .querying
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let (changelog, marks, querying) = (
                self.changelog.clone(),
                self.watermarks.clone(),
                self.querying.clone(),
            );
            let owned = self.hub.owned();
            tokio::task::spawn_blocking(move || {
                for p in owned {
                    if let Some(high) = changelog.input_high_watermark(p) {
                        marks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(p, high);
                    }
                }
                querying.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        let marks = self
            .watermarks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sizes = self.hub.state_sizes();
        let stats = crate::partitions::rebalance_stats();
        let partitions = self
            .hub
            .owned()
            .into_iter()
            .map(|p| {
                let position = self.reads.next.get(&p).copied().unwrap_or(-1);
                let high = marks.get(&p).copied().unwrap_or(-1);
                OwnedPartition {
                    topic: self.changelog.input.clone(),
                    partition: p,
                    position,
                    high_watermark: high,
                    lag: if high >= 0 && position >= 0 {
                        (high - position).max(0)
                    } else {
                        -1
                    },
                    state_bytes: sizes.get(&p).copied().unwrap_or(0),
                }
            })
            .collect();
        cx.telemetry().set_ownership(Ownership {
            partitions,
            assignments: stats.assignments,
            revocations: stats.revocations,
            last_assign_ms: stats.last_assign_ms,
            last_revoke_ms: stats.last_revoke_ms,
        });
    }

    /// The current epoch of `partition`, after forgetting what was read of a partition
    /// under an earlier ownership (the hub's version is one atomic load).
    pub(super) fn epoch(&mut self, partition: i32, commits: &mut Commits) -> Option<u64> {
        let v = self.hub.version();
        if v != self.seen {
            self.seen = v;
            let epochs = self.hub.epochs();
            for (&p, e) in &self.epochs {
                if epochs.get(&p).map(|(e, _)| e) != Some(e) {
                    self.reads.forget(p);
                    self.cut.remove(&p);
                    commits.next.retain(|(_, q), _| *q != p);
                    commits.caps.retain(|(_, q), _| *q != p);
                }
            }
            for (&p, &(e, start)) in &epochs {
                if self.epochs.get(&p) != Some(&e)
                    && let Some(start) = start
                {
                    // The state stands at `start`: the next message to apply is there,
                    // whatever the client delivers first. The restored snapshot is this
                    // ownership's first cut.
                    self.reads.resume(p, start);
                    self.cut.insert(p, start);
                }
            }
            self.epochs = epochs.into_iter().map(|(p, (e, _))| (p, e)).collect();
        }
        self.epochs.get(&partition).copied()
    }

    /// Writes the snapshots that are complete; returns how many.
    pub(super) fn write_ready(&mut self, cx: &ComponentContext) -> usize {
        let ready = self.hub.take_ready();
        let mut revocations = lock(&self.revocations);
        for (p, snapshot) in &ready {
            tracing::debug!(partition = p, offset = snapshot.offset, "snapshot written");
            match self.changelog.write(*p, snapshot) {
                Ok(()) => revocations.written(*p, snapshot.offset),
                Err(e) => cx.emit(ComponentErrorOccurred { error: &e }),
            }
        }
        ready.len()
    }

    /// Takes in the revocations the rebalance callback deferred since the last look:
    /// cuts each partition at the offset after the last message decoded (no message of
    /// it is decoded any more), for a last snapshot. A partition with nothing read since
    /// its last cut waits only for that cut, if it is still pending.
    pub(super) fn take_in_revocations(&mut self) {
        let revocations = self.revocations.clone();
        let mut revocations = lock(&revocations);
        if !revocations.any() {
            return;
        }
        // The group's rebalance waits for it: looked at often until it is carried out.
        let soon = tokio::time::Instant::now() + REVOKING_UPKEEP;
        self.upkeep_at = self.upkeep_at.min(soon);
        let (hub, reads, cut) = (&self.hub, &self.reads, &mut self.cut);
        let cuts = revocations.take_in(|p| {
            let next = *reads.next.get(&p)?;
            if cut.get(&p).is_some_and(|c| *c >= next) {
                return hub.has_cut(p).then_some(next);
            }
            // No cut possible (a stage stopped): given up as it stands.
            hub.recut(p, next).then(|| {
                cut.insert(p, next);
                next
            })
        });
        if !cuts.is_empty() {
            tracing::info!(
                ?cuts,
                "revoked: each partition read is cut after its last message for a last snapshot"
            );
        }
    }

    /// Stopping, once the last batch is sent: cuts every partition read since its last
    /// cut at the last message read, so the stages hand in their state as it stands when
    /// their input ends, and the next owner goes on from there.
    pub(super) fn final_cuts(&mut self) {
        self.take_in_revocations();
        let owned = self.hub.owned();
        let mut cuts = Vec::new();
        for (&p, &next) in &self.reads.next {
            if owned.contains(&p)
                && self.cut.get(&p).is_none_or(|c| *c < next)
                && self.hub.recut(p, next)
            {
                self.cut.insert(p, next);
                cuts.push((p, next));
            }
        }
        tracing::info!(
            ?cuts,
            "stopping: each partition read is cut after its last message for a last snapshot"
        );
    }

    /// Stopping, after the last acknowledgement: writes the final snapshots as the stages
    /// hand them in (a stage that stops without handing its state in withdraws the cut),
    /// at most `timeout`, and waits for the broker to have them.
    pub(super) async fn write_final(&mut self, cx: &ComponentContext, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut written = 0;
        loop {
            written += self.write_ready(cx);
            if !self.hub.cutting() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.hub.cutting();
        let changelog = self.changelog.clone();
        let flushed = tokio::task::spawn_blocking(move || changelog.flush(timeout))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = flushed {
            cx.emit(ComponentErrorOccurred { error: &e });
        }
        if left {
            tracing::warn!(
                written,
                "not every last snapshot was complete within drain_timeout_ms: those \
                 partitions' next owners go on from their previous snapshots"
            );
        } else {
            tracing::info!("last snapshots written to the changelog");
        }
    }

    /// Writes the snapshots that are complete, and cuts the partitions read since their
    /// last cut when the interval is up.
    pub(super) fn maintain(&mut self, cx: &ComponentContext) {
        self.write_ready(cx);
        if self.last_cut.elapsed() < self.interval {
            return;
        }
        self.last_cut = Instant::now();
        self.report(cx);
        let owned = self.hub.owned();
        self.reads.next.retain(|p, _| owned.contains(p));
        self.cut.retain(|p, _| owned.contains(p));
        for (&p, &offset) in &self.reads.next {
            if self.cut.get(&p).is_some_and(|c| *c >= offset) {
                continue;
            }
            if self.hub.cut(p, offset) {
                self.cut.insert(p, offset);
            }
        }
    }
}
