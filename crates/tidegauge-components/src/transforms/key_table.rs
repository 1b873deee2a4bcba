//! Per-key state with a cap on the number of keys: what every keyed stage holds (the
//! detectors' keyed stage, `hotelling`, `heartbeat`).
//!
//! At most `max_keys` keys hold state. A new key past the cap takes the place of keys
//! silent for at least the idle time (the least recently seen, all of those found in one
//! sweep); when none has been silent that long, the new key gets no state and the caller
//! passes its event on without a verdict. A sweep is one pass over the keys, done at most
//! once per stretch in which no key can have become idle, so a flood of new keys costs
//! O(1) per event. Ids stay dense: an evicted key's id goes to the key with the last id
//! (and a stage that keeps more per id is told, [`EvictionHooks`]).

use std::time::Instant;

use super::{KEY_OVERHEAD_BYTES, KeyInterner};

/// A stage's cap on keys and the silence after which a key may be evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    /// Most keys holding state.
    pub max_keys: usize,
    /// Seconds a key must have been silent before it may be evicted.
    pub idle_secs: u32,
}

impl KeyLimits {
    /// From `max_keys` and an idle time in milliseconds (rounded up to seconds).
    pub fn new(max_keys: usize, key_idle_ms: u64) -> Self {
        KeyLimits {
            max_keys: max_keys.max(1),
            idle_secs: key_idle_ms.div_ceil(1000).min(u32::MAX as u64) as u32,
        }
    }
}

/// Bytes a key costs besides its state and its name: the interner's entry and its
/// last-seen time.
pub const TABLE_BYTES_PER_KEY: u64 = KEY_OVERHEAD_BYTES + 4;

/// What a stage that keeps more per key id must do when keys are evicted.
pub trait EvictionHooks {
    /// Whether key `id` may be evicted now (a stage may keep keys it still needs).
    fn evictable(&self, _id: usize) -> bool {
        true
    }
    /// Key `id` was evicted; the key that had id `moved_from` (if any) now has id `id`.
    fn evicted(&mut self, _id: usize, _moved_from: Option<usize>) {}
}

/// No hooks: the table holds everything about a key.
pub struct NoHooks;

impl EvictionHooks for NoHooks {}

/// What the cap did since the last report, and the keys held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCounts {
    /// Keys holding state.
    pub keys: u64,
    /// Keys evicted.
    pub evicted: u64,
    /// Events of new keys that got no state.
    pub refused: u64,
}

impl std::ops::AddAssign for KeyCounts {
    fn add_assign(&mut self, o: KeyCounts) {
        self.keys += o.keys;
        self.evicted += o.evicted;
        self.refused += o.refused;
    }
}

/// Keys, their states and when each was last seen.
#[derive(Debug)]
pub struct KeyTable<S> {
    keys: KeyInterner,
    states: Vec<S>,
    /// When each key (by id) was last seen, in seconds since `epoch`.
    last_seen: Vec<u32>,
    epoch: Instant,
    /// No key can be idle long enough before this second: no sweep before it.
    next_sweep: u32,
    limits: KeyLimits,
    evicted: u64,
    refused: u64,
}

impl<S> KeyTable<S> {
    /// An empty table.
    pub fn new(limits: KeyLimits) -> Self {
        KeyTable {
            keys: KeyInterner::default(),
            states: Vec::new(),
            last_seen: Vec::new(),
            epoch: Instant::now(),
            next_sweep: 0,
            limits,
            evicted: 0,
            refused: 0,
        }
    }

    /// A table holding restored keys and states (all counted as seen now; more than
    /// the cap are kept, and make room as they fall idle).
    pub fn restored(limits: KeyLimits, keys: KeyInterner, states: Vec<S>) -> Self {
        let mut t = KeyTable::new(limits);
        t.last_seen = vec![0; states.len()];
        t.keys = keys;
        t.states = states;
        t
    }

    /// The clock the table reads: seconds since it was made. Read it once per batch.
    pub fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32
    }

    /// The id of `key` (with its hash), marked seen at `now`; a new key gets a state from
    /// `make` when there is room (after evicting idle keys if needed). `None`: the cap is
    /// reached and no key may be evicted; the event gets no state (counted).
    #[inline]
    pub fn get_or_insert(
        &mut self,
        key: &str,
        hash: u64,
        now: u32,
        make: impl FnOnce() -> S,
        hooks: &mut dyn EvictionHooks,
    ) -> Option<usize> {
        let id = match self.keys.find_hashed(key, hash) {
            Some(id) => id,
            None => {
                if !self.keys.has_room_for(key) || !self.make_room(now, hooks) {
                    self.refused += 1;
                    return None;
                }
                let (id, _) = self.keys.id_hashed(key, hash);
                self.states.push(make());
                self.last_seen.push(now);
                id
            }
        };
        self.last_seen[id] = now;
        Some(id)
    }

    /// The id of `key` (with its hash), marked seen at `now`, if it holds state.
    #[inline]
    pub fn find(&mut self, key: &str, hash: u64, now: u32) -> Option<usize> {
        let id = self.keys.find_hashed(key, hash)?;
        self.last_seen[id] = now;
        Some(id)
    }

    /// Makes room when the cap is reached (see the module documentation).
    fn make_room(&mut self, now: u32, hooks: &mut dyn EvictionHooks) -> bool {
        if self.keys.len() < self.limits.max_keys {
            return true;
        }
        if now < self.next_sweep {
            return false;
        }
        let idle = self.limits.idle_secs;
        let mut id = 0;
        let mut kept_idle = false;
        while id < self.states.len() {
            if now.saturating_sub(self.last_seen[id]) < idle {
                id += 1;
                continue;
            }
            if !hooks.evictable(id) {
                kept_idle = true;
                id += 1;
                continue;
            }
            self.remove_at(id, hooks);
            self.evicted += 1;
        }
        // An idle key kept by the stage may become evictable at any time: look again in
        // a second. Otherwise nobody can be idle before the oldest key's time is up.
        let oldest = self.last_seen.iter().copied().min().unwrap_or(now);
        self.next_sweep = if kept_idle {
            now.saturating_add(1)
        } else {
            oldest.saturating_add(idle).max(now.saturating_add(1))
        };
        self.keys.len() < self.limits.max_keys
    }

    /// Removes every key whose state `gone` picks (its partition was given up); ids stay
    /// dense as when keys are evicted, and `hooks` are told the same way. Returns how
    /// many went.
    pub fn remove_where(
        &mut self,
        mut gone: impl FnMut(&S) -> bool,
        hooks: &mut dyn EvictionHooks,
    ) -> usize {
        let mut removed = 0;
        let mut id = 0;
        while id < self.states.len() {
            if !gone(&self.states[id]) {
                id += 1;
                continue;
            }
            self.remove_at(id, hooks);
            removed += 1;
        }
        removed
    }

    /// Removes key `id`; the key with the last id takes it.
    fn remove_at(&mut self, id: usize, hooks: &mut dyn EvictionHooks) {
        let last = self.states.len() - 1;
        self.keys.remove_id(id);
        self.states.swap_remove(id);
        self.last_seen.swap_remove(id);
        hooks.evicted(id, (id != last).then_some(last));
    }

    /// What the cap did since the last call, and the keys held.
    pub fn take_counts(&mut self) -> KeyCounts {
        KeyCounts {
            keys: self.keys.len() as u64,
            evicted: std::mem::take(&mut self.evicted),
            refused: std::mem::take(&mut self.refused),
        }
    }

    /// The interned keys.
    pub fn keys(&self) -> &KeyInterner {
        &self.keys
    }

    /// The states, by id.
    pub fn states(&self) -> &[S] {
        &self.states
    }

    /// The states, by id, to change.
    pub fn states_mut(&mut self) -> &mut [S] {
        &mut self.states
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The limits in force.
    pub fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// Moves the clock on by `secs` (tests of idle times).
    #[cfg(test)]
    pub fn advance(&mut self, secs: u64) {
        self.epoch -= std::time::Duration::from_secs(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::key_hash;

    fn touch(t: &mut KeyTable<u32>, key: &str, hooks: &mut dyn EvictionHooks) -> Option<usize> {
        let now = t.now();
        t.get_or_insert(key, key_hash(key), now, || 0, hooks)
    }

    fn held(t: &KeyTable<u32>) -> Vec<String> {
        assert_eq!(t.keys.len(), t.states.len());
        assert_eq!(t.keys.len(), t.last_seen.len());
        let mut keys: Vec<String> = t
            .keys
            .iter()
            .map(|(k, id)| {
                assert_eq!(t.keys.find_hashed(k, key_hash(k)), Some(id as usize));
                k.to_string()
            })
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn refuses_until_a_key_is_idle_then_evicts_it() {
        let mut t = KeyTable::new(KeyLimits::new(3, 3_600_000));
        for k in ["a", "b", "c", "a"] {
            assert!(touch(&mut t, k, &mut NoHooks).is_some());
        }
        assert_eq!(touch(&mut t, "d", &mut NoHooks), None);
        assert_eq!(
            t.take_counts(),
            KeyCounts {
                keys: 3,
                evicted: 0,
                refused: 1
            }
        );
        // An hour later b and c report again; a has been silent all along.
        t.advance(3600);
        touch(&mut t, "b", &mut NoHooks);
        touch(&mut t, "c", &mut NoHooks);
        assert!(touch(&mut t, "d", &mut NoHooks).is_some());
        assert_eq!(t.take_counts().evicted, 1);
        assert_eq!(held(&t), ["b", "c", "d"]);
        assert_eq!(touch(&mut t, "a", &mut NoHooks), None);
    }

    /// Records what it was told; keeps key ids in `pinned` from eviction.
    #[derive(Default)]
    struct Recorder {
        pinned: Vec<usize>,
        events: Vec<(usize, Option<usize>)>,
    }

    impl EvictionHooks for Recorder {
        fn evictable(&self, id: usize) -> bool {
            !self.pinned.contains(&id)
        }
        fn evicted(&mut self, id: usize, moved_from: Option<usize>) {
            self.events.push((id, moved_from));
        }
    }

    #[test]
    fn hooks_keep_keys_and_hear_of_moves() {
        let mut t = KeyTable::new(KeyLimits::new(3, 1000));
        let mut hooks = Recorder::default();
        for k in ["a", "b", "c"] {
            touch(&mut t, k, &mut hooks);
        }
        t.advance(10);
        // a (id 0) is pinned; b (id 1) goes, c (id 2) takes its id.
        hooks.pinned = vec![0];
        assert_eq!(touch(&mut t, "d", &mut hooks), Some(1));
        assert_eq!(hooks.events, [(1, Some(2)), (1, None)]);
        assert_eq!(held(&t), ["a", "d"]);
        assert_eq!(t.keys.find_hashed("a", key_hash("a")), Some(0));
    }
}
