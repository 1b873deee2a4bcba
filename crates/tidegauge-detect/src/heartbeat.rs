//! Missing data: which keys have gone silent.
//!
//! Not a [`Detector`](crate::Detector) — silence is noticed by the passage of time, not by
//! a value. [`DeadlineTracker`] records when each key was last seen
//! ([`touch`](DeadlineTracker::touch)) and, asked at time `now_ms`
//! ([`expired`](DeadlineTracker::expired)), returns the keys silent for longer than
//! `expected_interval_ms × tolerance`. Each silence is reported once; the key is re-armed
//! when it is seen again at a later time.
//!
//! Times are whatever clock the caller uses consistently (event time with a watermark, or
//! processing time). A touch at or before the key's latest time is not a new sign of life:
//! it neither re-arms a reported key nor moves its deadline.
//!
//! Cost: `touch` is one hash-map look-up (plus an O(log n) heap push when the key is not
//! armed); `expired` pops due deadlines from a binary heap, O(log n) each. The heap holds
//! at most one entry per key: an entry whose key was touched since is not removed but
//! re-pushed with the later deadline when it comes due (lazy invalidation). Memory is
//! bounded by the number of keys (plus keys removed less than one limit ago).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

use crate::ParamError;
use crate::judge;

/// Parameters of a [`DeadlineTracker`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct HeartbeatParams {
    /// How often a key normally reports, in milliseconds. Above 0. Default 60 000 (1 min).
    pub expected_interval_ms: i64,
    /// How many expected intervals of silence are tolerated before the key is reported.
    /// Finite, above 0. Default 3.0.
    pub tolerance: f64,
}

impl Default for HeartbeatParams {
    fn default() -> Self {
        HeartbeatParams {
            expected_interval_ms: 60_000,
            tolerance: 3.0,
        }
    }
}

impl HeartbeatParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if self.expected_interval_ms <= 0 {
            errors.push(ParamError::new(
                "expected_interval_ms",
                format!("must be above 0, got {}", self.expected_interval_ms),
            ));
        }
        judge::check_positive(&mut errors, "tolerance", self.tolerance);
        judge::into_result(errors)
    }

    /// The silence, in milliseconds, beyond which a key is reported:
    /// `expected_interval_ms × tolerance`, rounded, saturating at `i64::MAX`.
    pub fn limit_ms(&self) -> i64 {
        let limit = (self.expected_interval_ms as f64 * self.tolerance).round();
        // `as` saturates for out-of-range floats and maps NaN to 0.
        (limit as i64).max(0)
    }
}

#[derive(Clone, Debug)]
struct Slot<K> {
    /// `None` once the key was removed (the slot is freed when its heap entry pops).
    key: Option<K>,
    last_seen_ms: i64,
    /// Whether the heap holds this slot's (single) entry.
    in_heap: bool,
    /// Whether the current silence has been reported.
    reported: bool,
}

/// Tracks the last time each key was seen and reports keys that went silent.
/// See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(
        into = "TrackerRepr<K>",
        try_from = "TrackerRepr<K>",
        bound(
            serialize = "K: serde::Serialize + Clone + Eq + Hash",
            deserialize = "K: serde::Deserialize<'de> + Clone + Eq + Hash"
        )
    )
)]
pub struct DeadlineTracker<K> {
    params: HeartbeatParams,
    limit_ms: i64,
    index: HashMap<K, u32>,
    slots: Vec<Slot<K>>,
    free: Vec<u32>,
    /// (deadline, slot), earliest first.
    heap: BinaryHeap<Reverse<(i64, u32)>>,
}

impl<K: Clone + Eq + Hash> DeadlineTracker<K> {
    /// A tracker with no keys.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: HeartbeatParams) -> Self {
        judge::assert_valid("heartbeat", params.validate());
        DeadlineTracker {
            params,
            limit_ms: params.limit_ms(),
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// The parameters this tracker was built with.
    pub fn params(&self) -> &HeartbeatParams {
        &self.params
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// When `key` was last seen, if it is tracked.
    pub fn last_seen(&self, key: &K) -> Option<i64> {
        self.index
            .get(key)
            .map(|&i| self.slots[i as usize].last_seen_ms)
    }

    /// Records that `key` was seen at `ts_ms`. Returns `Some(silent_for_ms)` when this ends a
    /// silence that [`expired`](Self::expired) reported (the gap since the key was last
    /// seen), so the caller can say the key is back; `None` otherwise.
    pub fn touch(&mut self, key: &K, ts_ms: i64) -> Option<i64> {
        let idx = match self.index.get(key) {
            Some(&i) => i as usize,
            None => {
                let i = self.allocate(key.clone(), ts_ms);
                self.arm(i);
                return None;
            }
        };
        let slot = &mut self.slots[idx];
        if ts_ms <= slot.last_seen_ms {
            return None;
        }
        let ended = slot
            .reported
            .then(|| judge::elapsed_ms(ts_ms, slot.last_seen_ms));
        slot.last_seen_ms = ts_ms;
        slot.reported = false;
        if !slot.in_heap {
            self.arm(idx);
        }
        ended
    }

    /// Every key tracked, with when it was last seen and whether its current silence has
    /// been reported.
    pub fn entries(&self) -> impl Iterator<Item = (&K, i64, bool)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| Some((s.key.as_ref()?, s.last_seen_ms, s.reported)))
    }

    /// Tracks `key`, last seen at `last_seen_ms`, its current silence reported already or
    /// not (what [`entries`](Self::entries) gave, restored). Returns false, changing
    /// nothing, when `key` is tracked already.
    pub fn insert(&mut self, key: K, last_seen_ms: i64, reported: bool) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        let i = self.allocate(key, last_seen_ms);
        self.slots[i].reported = reported;
        if !reported {
            self.arm(i);
        }
        true
    }

    /// Stops tracking `key`; returns whether it was tracked.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        let slot = &mut self.slots[i as usize];
        slot.key = None;
        if !slot.in_heap {
            self.free.push(i);
        }
        true
    }

    /// Tracks key `from` as `to` from now on, with all it has (its last time, whether it
    /// was reported); `to` must not be tracked. Returns whether `from` was tracked.
    pub fn rename(&mut self, from: &K, to: K) -> bool {
        let Some(i) = self.index.remove(from) else {
            return false;
        };
        self.slots[i as usize].key = Some(to.clone());
        self.index.insert(to, i);
        true
    }

    /// Keys silent for longer than the limit at `now_ms` and not yet reported for this
    /// silence, with how long each has been silent (`now_ms − last seen`), longest first.
    pub fn expired(&mut self, now_ms: i64) -> Vec<(K, i64)> {
        let mut out = Vec::new();
        while let Some(&Reverse((deadline, i))) = self.heap.peek() {
            if deadline >= now_ms {
                break;
            }
            self.heap.pop();
            let limit = self.limit_ms;
            let slot = &mut self.slots[i as usize];
            slot.in_heap = false;
            let Some(key) = &slot.key else {
                self.free.push(i);
                continue;
            };
            let current = slot.last_seen_ms.saturating_add(limit);
            if current < now_ms {
                if !slot.reported {
                    slot.reported = true;
                    out.push((key.clone(), judge::elapsed_ms(now_ms, slot.last_seen_ms)));
                }
            } else {
                slot.in_heap = true;
                self.heap.push(Reverse((current, i)));
            }
        }
        // Entries pop by the deadline they were pushed with, which may predate a later
        // touch; sort by the actual silence.
        out.sort_by_key(|&(_, silent)| Reverse(silent));
        out
    }

    fn allocate(&mut self, key: K, ts_ms: i64) -> usize {
        let slot = Slot {
            key: Some(key.clone()),
            last_seen_ms: ts_ms,
            in_heap: false,
            reported: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                // Keys beyond u32::MAX cannot be held in memory at ~100 bytes each anyway.
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        i as usize
    }

    fn arm(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.in_heap = true;
        let deadline = slot.last_seen_ms.saturating_add(self.limit_ms);
        self.heap.push(Reverse((deadline, i as u32)));
    }
}

/// Checkpoint form of a [`DeadlineTracker`]: parameters and, per key, when it was last
/// seen and whether its current silence was reported. The heap is rebuilt on restore.
#[cfg(feature = "serde")]
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackerRepr<K> {
    params: HeartbeatParams,
    keys: Vec<(K, i64, bool)>,
}

#[cfg(feature = "serde")]
impl<K: Clone + Eq + Hash> From<DeadlineTracker<K>> for TrackerRepr<K> {
    fn from(t: DeadlineTracker<K>) -> Self {
        let keys = t
            .slots
            .into_iter()
            .filter_map(|s| Some((s.key?, s.last_seen_ms, s.reported)))
            .collect();
        TrackerRepr {
            params: t.params,
            keys,
        }
    }
}

#[cfg(feature = "serde")]
impl<K: Clone + Eq + Hash> TryFrom<TrackerRepr<K>> for DeadlineTracker<K> {
    type Error = String;

    fn try_from(r: TrackerRepr<K>) -> Result<Self, String> {
        if let Err(errors) = r.params.validate() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(list.join("; "));
        }
        let mut t = DeadlineTracker::new(r.params);
        for (key, last_seen_ms, reported) in r.keys {
            if !t.insert(key, last_seen_ms, reported) {
                return Err(String::from("duplicate key in heartbeat checkpoint"));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tracker(interval: i64, tolerance: f64) -> DeadlineTracker<u32> {
        DeadlineTracker::new(HeartbeatParams {
            expected_interval_ms: interval,
            tolerance,
        })
    }

    #[test]
    fn entries_inserted_elsewhere_carry_on_as_they_were() {
        let mut t = tracker(1000, 2.0);
        t.touch(&1, 0);
        t.touch(&2, 1500);
        assert_eq!(t.expired(2500), vec![(1, 2500)]);
        let mut moved = tracker(1000, 2.0);
        for (k, seen, reported) in t.entries() {
            assert!(moved.insert(*k, seen, reported));
        }
        assert!(!moved.insert(1, 0, false), "tracked already");
        // 1 was reported already; 2 goes silent as it would have where it was.
        assert_eq!(moved.expired(4000), vec![(2, 2500)]);
        assert_eq!(moved.touch(&1, 4100), Some(4100));
    }

    #[test]
    fn reports_once_per_silence_and_rearms() {
        let mut t = tracker(1000, 2.0); // limit 2000 ms
        t.touch(&1, 0);
        t.touch(&2, 500);
        assert!(t.expired(2000).is_empty()); // silent exactly 2000: not longer
        assert_eq!(t.expired(2001), vec![(1, 2001)]);
        assert_eq!(t.expired(2600), vec![(2, 2100)]);
        assert!(t.expired(10_000).is_empty()); // reported once only
        assert_eq!(t.touch(&1, 11_000), Some(11_000));
        assert!(t.expired(13_000).is_empty());
        assert_eq!(t.expired(13_001), vec![(1, 2001)]);
    }

    #[test]
    fn regular_touches_keep_a_key_alive_and_the_heap_small() {
        let mut t = tracker(1000, 1.5);
        for ts in (0..100_000).step_by(1000) {
            for k in 0..10 {
                t.touch(&k, ts);
            }
            assert!(t.expired(ts + 1).is_empty());
            assert!(t.heap.len() <= 10);
        }
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn stale_touch_does_not_rearm() {
        let mut t = tracker(100, 1.0);
        t.touch(&7, 1000);
        assert_eq!(t.expired(1200), vec![(7, 200)]);
        assert_eq!(t.touch(&7, 900), None);
        assert!(t.expired(5000).is_empty());
        assert_eq!(t.last_seen(&7), Some(1000));
    }

    #[test]
    fn removed_keys_are_not_reported_and_slots_are_reused() {
        let mut t = tracker(100, 1.0);
        t.touch(&1, 0);
        assert!(t.remove(&1));
        assert!(!t.remove(&1));
        assert!(t.expired(1000).is_empty());
        t.touch(&2, 1000);
        assert_eq!(t.slots.len(), 1);
        assert_eq!(t.expired(2000), vec![(2, 1000)]);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut t = tracker(i64::MAX, 10.0);
        assert_eq!(t.params().limit_ms(), i64::MAX);
        t.touch(&1, i64::MIN);
        t.touch(&2, i64::MAX);
        // Key 1 has been silent 2⁶⁴ − 1 ms, reported as i64::MAX; key 2 never expires.
        assert_eq!(t.expired(i64::MAX), vec![(1, i64::MAX)]);
        let mut t = tracker(1, 1.0);
        t.touch(&1, i64::MIN);
        assert_eq!(t.expired(i64::MAX), vec![(1, i64::MAX)]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Touch(u8, i64),
        Expired(i64),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..8, 0i64..100).prop_map(|(k, dt)| Op::Touch(k, dt)),
            3 => (0i64..300).prop_map(Op::Expired),
            1 => (0u8..8).prop_map(Op::Remove),
        ]
    }

    #[cfg(feature = "serde")]
    #[test]
    fn checkpoint_restores_deadlines_and_reports() {
        let mut t = tracker(100, 1.0);
        t.touch(&1, 0);
        t.touch(&2, 50);
        assert_eq!(t.expired(101), vec![(1, 101)]);
        t.touch(&3, 120);
        assert!(t.remove(&2));
        let mut r = DeadlineTracker::try_from(TrackerRepr::from(t.clone())).unwrap();
        assert_eq!(r.len(), 2);
        for now in [150, 221, 300, 1000] {
            assert_eq!(t.expired(now), r.expired(now));
        }
        assert_eq!(t.touch(&1, 2000), r.touch(&1, 2000));
        let dup = TrackerRepr {
            params: HeartbeatParams::default(),
            keys: vec![(1u32, 0, false), (1, 5, false)],
        };
        assert!(DeadlineTracker::try_from(dup).is_err());
    }

    proptest! {
        #[test]
        fn matches_naive_scan(
            interval in 1i64..50,
            tolerance in 0.5f64..4.0,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let mut t = tracker(interval, tolerance);
            let limit = t.params().limit_ms();
            // Naive: key -> (last seen, reported), scanned in full on every query.
            let mut naive: HashMap<u8, (i64, bool)> = HashMap::new();
            let mut clock = 0i64;
            for op in ops {
                match op {
                    Op::Touch(k, dt) => {
                        // Timestamps wander around the clock, sometimes backwards.
                        let ts = clock + dt - 30;
                        let got = t.touch(&u32::from(k), ts);
                        let want = match naive.get(&k).copied() {
                            None => { naive.insert(k, (ts, false)); None }
                            Some((last, rep)) if ts > last => {
                                naive.insert(k, (ts, false));
                                rep.then_some(ts - last)
                            }
                            Some(_) => None,
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Expired(dt) => {
                        clock += dt;
                        let mut got = t.expired(clock);
                        for w in got.windows(2) {
                            prop_assert!(w[0].1 >= w[1].1, "longest silence first");
                        }
                        got.sort_unstable();
                        let mut want: Vec<(u32, i64)> = Vec::new();
                        for (k, (last, rep)) in naive.iter_mut() {
                            if !*rep && clock - *last > limit {
                                *rep = true;
                                want.push((u32::from(*k), clock - *last));
                            }
                        }
                        want.sort_unstable();
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(t.remove(&u32::from(k)), naive.remove(&k).is_some());
                    }
                }
                prop_assert_eq!(t.len(), naive.len());
                prop_assert!(t.heap.len() <= t.slots.len());
            }
        }
    }
}
