//! Partition-aligned state: what a `kafka` source with a changelog and the keyed
//! transforms of the same process tell each other.
//!
//! With a changelog, the source fills two declared fields of every event, the message's
//! partition ([`PARTITION_FIELD`]) and offset ([`OFFSET_FIELD`]). A keyed transform whose
//! input has both keeps, for every key, the partition it came from, so its state splits
//! by partition exactly like its input.
//!
//! The [`Hub`] is how they meet (both run in the same process; nothing here crosses a
//! network):
//! - **Ownership.** The source records every assignment (with the snapshot it read back
//!   from the changelog, if any) and revocation. A transform applies them before its next
//!   batch: a revoked partition's keys are dropped and its late rows ignored (its new
//!   owner replays them), an assigned partition's keys are restored. The source assigns
//!   the partition to its consumer only after recording it, so the restore comes before
//!   the partition's first row.
//! - **Cuts.** Every snapshot interval the source cuts each partition it reads at the
//!   offset after the last message it decoded: `X`. Each transform snapshots the
//!   partition's keys when they reflect exactly the rows below `X` (at its first row at
//!   or past `X`, splitting a batch that straddles it, or when idle once the sinks hold
//!   everything below `X`), and hands the snapshot to the hub.
//! - **Publication.** Once every transform has handed in its snapshot for the cut, and
//!   every sink has made the outputs of the rows below `X` durable (the source's commit
//!   frontier reached `X`), the source writes `(X, snapshots)` to the changelog. A new
//!   owner restores those snapshots and consumes from `X`: state and offset always
//!   belong together, whatever happened to the group's committed offsets.
//! - **Handing over.** A source that stops, or that a rebalance takes a partition from,
//!   cuts the partition once more at the offset after the last message it read
//!   ([`Hub::recut`]) and writes that last snapshot before it lets the partition go (a
//!   revocation is given up to the group only then, within a deadline): the next owner
//!   goes on from exactly there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// The declared field a changelog-backed `kafka` source fills with the partition.
pub const PARTITION_FIELD: &str = "kafka_partition";
/// The declared field a changelog-backed `kafka` source fills with the offset.
pub const OFFSET_FIELD: &str = "kafka_offset";

/// A partition's snapshots at one offset, one per transform (by component id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The offset to consume from with these states (the state reflects every row below).
    pub offset: i64,
    /// Each transform's state of the partition's keys.
    pub states: BTreeMap<String, Vec<u8>>,
}

/// An assignment as a transform applies it: the partition, the offset consumption
/// resumes from (-1: where the group stands), and this transform's state of it (`None`:
/// the partition starts empty).
pub type Restore = (i32, i64, Option<Vec<u8>>);

/// What a transform must apply before its next batch.
#[derive(Debug, Default)]
pub struct Changes {
    /// The partitions the source owns now.
    pub owned: BTreeSet<i32>,
    /// Partitions newly assigned: where consumption resumes, and this transform's state
    /// (`None`: no snapshot, the partition starts empty).
    pub restores: Vec<Restore>,
}

#[derive(Default)]
struct Cut {
    offset: i64,
    states: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct State {
    transforms: BTreeSet<String>,
    owned: BTreeSet<i32>,
    /// Per transform, the assignments it has yet to apply.
    restores: HashMap<String, Vec<Restore>>,
    cuts: BTreeMap<i32, Cut>,
    /// Per partition, the offset below which the sinks hold every output.
    durable: HashMap<i32, i64>,
    /// The size of the last snapshot written of each partition (for the admin API).
    sizes: BTreeMap<i32, u64>,
    /// Per partition, bumped at every assignment and revocation: positions read under an
    /// older epoch belong to an earlier ownership.
    epochs: HashMap<i32, u64>,
    /// Per owned partition restored from a snapshot, the offset its state stands at: the
    /// first message this ownership may apply.
    starts: HashMap<i32, i64>,
    /// Transforms that left (stopped) and were not registered again: while any is gone,
    /// no cut is made, since no snapshot could hold its state.
    left: BTreeSet<String>,
}

/// Where a changelog-backed source and the keyed transforms meet. See the module
/// documentation.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    /// Bumped whenever ownership changes; transforms compare it once per batch.
    version: AtomicU64,
    /// Bumped whenever a cut is made or the durable frontier moves.
    cuts: AtomicU64,
}

static PROCESS: LazyLock<Arc<Hub>> = LazyLock::new(|| Arc::new(Hub::default()));

/// The hub of this process (one changelog-backed source per process).
pub fn process_hub() -> Arc<Hub> {
    PROCESS.clone()
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a few assignments: a panicking holder cannot leave it torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a transform that keeps partition-aligned state; its snapshot is then
    /// part of every cut.
    pub fn register(self: &Arc<Self>, id: &str) -> Registration {
        let mut s = self.lock();
        s.transforms.insert(id.to_string());
        s.left.remove(id);
        // A transform built after partitions were assigned (a reload) restores nothing:
        // it starts from the partitions owned now, empty.
        Registration {
            hub: self.clone(),
            id: id.to_string(),
        }
    }

    /// The source was assigned `partition`, to be consumed from `snapshot.offset` with
    /// its states (or from where the group stands, without a snapshot).
    pub fn assign(&self, partition: i32, snapshot: Option<Snapshot>) {
        let mut s = self.lock();
        s.owned.insert(partition);
        *s.epochs.entry(partition).or_insert(0) += 1;
        s.cuts.remove(&partition);
        s.durable.remove(&partition);
        match &snapshot {
            Some(snap) => s.starts.insert(partition, snap.offset),
            None => s.starts.remove(&partition),
        };
        let transforms: Vec<String> = s.transforms.iter().cloned().collect();
        for t in transforms {
            let (offset, state) = match &snapshot {
                Some(snap) => (snap.offset, snap.states.get(&t).cloned()),
                None => (-1, None),
            };
            s.restores
                .entry(t)
                .or_default()
                .push((partition, offset, state));
        }
        drop(s);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The source lost `partition`.
    pub fn revoke(&self, partition: i32) {
        let mut s = self.lock();
        s.owned.remove(&partition);
        *s.epochs.entry(partition).or_insert(0) += 1;
        s.cuts.remove(&partition);
        s.durable.remove(&partition);
        s.sizes.remove(&partition);
        s.starts.remove(&partition);
        for r in s.restores.values_mut() {
            r.retain(|(p, _, _)| *p != partition);
        }
        drop(s);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The partitions owned now.
    pub fn owned(&self) -> BTreeSet<i32> {
        self.lock().owned.clone()
    }

    /// Bumped at every assignment and revocation.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The partitions owned now, each with its ownership epoch and, if it was restored
    /// from a snapshot, the offset its state stands at.
    pub fn epochs(&self) -> BTreeMap<i32, (u64, Option<i64>)> {
        let s = self.lock();
        s.owned
            .iter()
            .map(|p| {
                let epoch = s.epochs.get(p).copied().unwrap_or(0);
                (*p, (epoch, s.starts.get(p).copied()))
            })
            .collect()
    }

    /// Cuts `partition` at `offset` unless a cut of it is pending; true if cut.
    pub fn cut(&self, partition: i32, offset: i64) -> bool {
        self.cut_with(partition, offset, false)
    }

    /// Cuts `partition` at `offset`, in place of a pending cut of it (whose snapshots are
    /// dropped): the final cut of a stopping source, at the last message it read.
    pub fn recut(&self, partition: i32, offset: i64) -> bool {
        self.cut_with(partition, offset, true)
    }

    fn cut_with(&self, partition: i32, offset: i64, replace: bool) -> bool {
        let mut s = self.lock();
        if !s.owned.contains(&partition)
            || !s.left.is_empty()
            || (!replace && s.cuts.contains_key(&partition))
        {
            return false;
        }
        s.cuts.insert(
            partition,
            Cut {
                offset,
                states: BTreeMap::new(),
            },
        );
        drop(s);
        self.cuts.fetch_add(1, Ordering::Release);
        true
    }

    /// Whether a cut of `partition` is pending.
    pub fn has_cut(&self, partition: i32) -> bool {
        self.lock().cuts.contains_key(&partition)
    }

    /// Whether any cut is pending.
    pub fn cutting(&self) -> bool {
        !self.lock().cuts.is_empty()
    }

    /// The sinks hold every output of the rows of `partition` below `offset`.
    pub fn set_durable(&self, partition: i32, offset: i64) {
        let mut s = self.lock();
        if !s.owned.contains(&partition) {
            return;
        }
        let d = s.durable.entry(partition).or_insert(offset);
        if *d != offset {
            *d = offset;
        }
        drop(s);
        self.cuts.fetch_add(1, Ordering::Release);
    }

    /// The cuts whose snapshots are all in and whose rows' outputs are durable, removed
    /// from the hub: what to write to the changelog now.
    pub fn take_ready(&self) -> Vec<(i32, Snapshot)> {
        let mut s = self.lock();
        let ready: Vec<i32> = s
            .cuts
            .iter()
            .filter(|(p, cut)| {
                s.transforms.iter().all(|t| cut.states.contains_key(t))
                    && s.durable.get(p).is_some_and(|d| *d >= cut.offset)
            })
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::new();
        for p in ready {
            if let Some(cut) = s.cuts.remove(&p) {
                let size = cut.states.values().map(|b| b.len() as u64).sum();
                s.sizes.insert(p, size);
                out.push((
                    p,
                    Snapshot {
                        offset: cut.offset,
                        states: cut.states,
                    },
                ));
            }
        }
        out
    }

    /// The bytes of the last snapshot written of each owned partition.
    pub fn state_sizes(&self) -> BTreeMap<i32, u64> {
        self.lock().sizes.clone()
    }
}

/// A transform's membership in the hub; leaves it when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    id: String,
}

/// What a transform has seen of the hub, so it looks only when something changed.
#[derive(Default, Clone, Copy)]
pub struct Seen {
    version: u64,
    cuts: u64,
}

impl Registration {
    /// The ownership changes since `seen` (none if nothing changed).
    pub fn changes(&self, seen: &mut Seen) -> Option<Changes> {
        let v = self.hub.version.load(Ordering::Acquire);
        if v == seen.version {
            return None;
        }
        seen.version = v;
        let mut s = self.hub.lock();
        let restores = s.restores.remove(&self.id).unwrap_or_default();
        Some(Changes {
            owned: s.owned.clone(),
            restores,
        })
    }

    /// The cuts this transform has yet to snapshot, with whether the sinks already hold
    /// every output below each (`None` if nothing changed since `seen`).
    pub fn pending_cuts(&self, seen: &mut Seen) -> Option<Vec<(i32, i64, bool)>> {
        let c = self.hub.cuts.load(Ordering::Acquire);
        if c == seen.cuts {
            return None;
        }
        let s = self.hub.lock();
        let pending: Vec<(i32, i64, bool)> = s
            .cuts
            .iter()
            .filter(|(_, cut)| !cut.states.contains_key(&self.id))
            .map(|(p, cut)| {
                let durable = s.durable.get(p).is_some_and(|d| *d >= cut.offset);
                (*p, cut.offset, durable)
            })
            .collect();
        if pending.is_empty() {
            // Nothing left to do until the next cut.
            seen.cuts = c;
        }
        Some(pending)
    }

    /// Hands in this transform's snapshot of `partition` at `offset` (ignored if that
    /// cut is gone: revoked meanwhile).
    pub fn snapshot(&self, partition: i32, offset: i64, state: Vec<u8>) {
        let mut s = self.hub.lock();
        if let Some(cut) = s.cuts.get_mut(&partition).filter(|c| c.offset == offset) {
            cut.states.insert(self.id.clone(), state);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = self.hub.lock();
        s.transforms.remove(&self.id);
        s.restores.remove(&self.id);
        // A cut this transform has not handed its state in for can never be complete:
        // written without it, its next owner would restore this transform empty and
        // judge from the cut's offset on with no history. Cuts it is part of stay.
        let id = &self.id;
        s.cuts.retain(|_, cut| cut.states.contains_key(id));
        s.left.insert(self.id.clone());
    }
}

/// Rebalances this process went through: count and duration of the last assignment
/// (restores included) and revocation, in milliseconds.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RebalanceStats {
    /// Assignments handled.
    pub assignments: u64,
    /// Revocations handled.
    pub revocations: u64,
    /// Duration of the last assignment, restores from the changelog included.
    pub last_assign_ms: u64,
    /// Duration of the last revocation.
    pub last_revoke_ms: u64,
}

static REBALANCES: Mutex<RebalanceStats> = Mutex::new(RebalanceStats {
    assignments: 0,
    revocations: 0,
    last_assign_ms: 0,
    last_revoke_ms: 0,
});

/// Notes a rebalance step (`assign`: an assignment, else a revocation) that took
/// `elapsed`.
pub fn record_rebalance(elapsed: std::time::Duration, assign: bool) {
    let mut r = REBALANCES.lock().unwrap_or_else(|p| p.into_inner());
    if assign {
        r.assignments += 1;
        r.last_assign_ms = elapsed.as_millis() as u64;
    } else {
        r.revocations += 1;
        r.last_revoke_ms = elapsed.as_millis() as u64;
    }
}

/// The rebalances so far.
pub fn rebalance_stats() -> RebalanceStats {
    *REBALANCES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encodes a snapshot for the changelog: a JSON header line (offset, and each state's
/// transform and length), then the states' bytes one after the other.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let lengths: Vec<(String, usize)> = snapshot
        .states
        .iter()
        .map(|(t, b)| (t.clone(), b.len()))
        .collect();
    let header = serde_json::json!({ "offset": snapshot.offset, "states": lengths });
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    for b in snapshot.states.values() {
        out.extend_from_slice(b);
    }
    out
}

/// Decodes what [`encode_snapshot`] wrote.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let nl = memchr::memchr(b'\n', bytes).ok_or("no header line")?;
    #[derive(serde::Deserialize)]
    struct Header {
        offset: i64,
        states: Vec<(String, usize)>,
    }
    let header: Header =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("bad header: {e}"))?;
    let mut rest = &bytes[nl + 1..];
    let mut states = BTreeMap::new();
    for (t, len) in header.states {
        if rest.len() < len {
            return Err(format!("state of `{t}` is cut short"));
        }
        let (b, r) = rest.split_at(len);
        states.insert(t, b.to_vec());
        rest = r;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last state", rest.len()));
    }
    Ok(Snapshot {
        offset: header.offset,
        states,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let snap = Snapshot {
            offset: 42,
            states: [("z".to_string(), vec![1, 2, 3]), ("w".to_string(), vec![])]
                .into_iter()
                .collect(),
        };
        assert_eq!(decode_snapshot(&encode_snapshot(&snap)).unwrap(), snap);
        let mut cut = encode_snapshot(&snap);
        cut.pop();
        assert!(decode_snapshot(&cut).is_err());
    }

    #[test]
    fn a_transform_that_stops_leaves_no_snapshot_without_its_state() {
        // A stopping pipeline drops its transforms while the source still settles: a cut
        // one of them never handed its state in for must not be written (its next owner
        // would judge from the cut's offset with no history), nor a new cut be made.
        let hub = Arc::new(Hub::default());
        let a = hub.register("a");
        let b = hub.register("b");
        hub.assign(1, None);
        hub.assign(2, None);
        assert!(hub.cut(1, 10) && hub.cut(2, 20));
        a.snapshot(1, 10, vec![1]);
        b.snapshot(1, 10, vec![2]);
        a.snapshot(2, 20, vec![3]);
        drop(b);
        hub.set_durable(1, 10);
        hub.set_durable(2, 20);
        let ready = hub.take_ready();
        assert_eq!(ready.len(), 1, "only the cut both handed in: {ready:?}");
        assert_eq!(ready[0].0, 1);
        assert_eq!(ready[0].1.states.len(), 2);
        assert!(!hub.cut(2, 30), "no cut while a transform is gone");
        drop(a);
        assert!(!hub.cut(2, 30));
        assert!(hub.take_ready().is_empty());
        // Registered again (a reload keeps its ids): cuts resume.
        let _b = hub.register("b");
        let _a = hub.register("a");
        assert!(hub.cut(2, 30));
    }

    #[test]
    fn a_recut_replaces_the_pending_cut() {
        let hub = Arc::new(Hub::default());
        let a = hub.register("a");
        hub.assign(4, None);
        assert!(hub.cut(4, 100));
        a.snapshot(4, 100, vec![1]);
        assert!(hub.recut(4, 150));
        a.snapshot(4, 100, vec![9]);
        hub.set_durable(4, 150);
        assert!(hub.take_ready().is_empty(), "the cut at 100 is gone");
        a.snapshot(4, 150, vec![2]);
        let ready = hub.take_ready();
        assert_eq!(ready[0].1.offset, 150);
        assert_eq!(ready[0].1.states["a"], vec![2]);
    }

    #[test]
    fn a_cut_is_written_once_every_transform_snapshotted_and_outputs_are_durable() {
        let hub = Arc::new(Hub::default());
        let a = hub.register("a");
        let b = hub.register("b");
        hub.assign(3, None);
        let (mut sa, mut sb) = (Seen::default(), Seen::default());
        assert_eq!(a.changes(&mut sa).unwrap().restores, vec![(3, -1, None)]);
        assert!(a.changes(&mut sa).is_none());
        assert!(hub.cut(3, 100));
        assert!(!hub.cut(3, 200), "one cut per partition at a time");
        assert_eq!(a.pending_cuts(&mut sa).unwrap(), vec![(3, 100, false)]);
        a.snapshot(3, 100, vec![7]);
        hub.set_durable(3, 100);
        assert!(hub.take_ready().is_empty(), "b has not snapshotted");
        assert_eq!(b.pending_cuts(&mut sb).unwrap(), vec![(3, 100, true)]);
        b.snapshot(3, 100, vec![8]);
        let ready = hub.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.offset, 100);
        assert_eq!(ready[0].1.states["b"], vec![8]);
        assert!(hub.take_ready().is_empty());
    }

    #[test]
    fn outputs_not_yet_durable_hold_the_cut_back() {
        let hub = Arc::new(Hub::default());
        let a = hub.register("a");
        hub.assign(0, None);
        hub.cut(0, 50);
        a.snapshot(0, 50, vec![1]);
        hub.set_durable(0, 49);
        assert!(hub.take_ready().is_empty());
        hub.set_durable(0, 50);
        assert_eq!(hub.take_ready().len(), 1);
    }

    #[test]
    fn assignment_hands_each_transform_its_own_state_and_revocation_drops_pending_work() {
        let hub = Arc::new(Hub::default());
        let a = hub.register("a");
        let snap = Snapshot {
            offset: 9,
            states: [("a".to_string(), vec![5])].into_iter().collect(),
        };
        hub.assign(1, Some(snap));
        hub.assign(2, None);
        hub.cut(2, 4);
        hub.revoke(2);
        assert_eq!(
            hub.epochs().get(&1),
            Some(&(1, Some(9))),
            "the source resumes partition 1 where its state stands"
        );
        let mut seen = Seen::default();
        let changes = a.changes(&mut seen).unwrap();
        assert_eq!(changes.owned, [1].into_iter().collect());
        assert_eq!(changes.restores, vec![(1, 9, Some(vec![5]))]);
        assert!(hub.take_ready().is_empty());
        drop(a);
        assert!(
            !hub.cut(1, 20),
            "a transform that stopped has no state to give: no cut is made"
        );
        // A pipeline without partitioned transforms: a cut is only offsets.
        let offsets_only = Hub::default();
        offsets_only.assign(1, None);
        assert!(offsets_only.cut(1, 20));
        offsets_only.set_durable(1, 20);
        assert_eq!(offsets_only.take_ready().len(), 1);
    }
}
