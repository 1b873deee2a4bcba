//! An order-statistic multiset of finite `f64` for sliding windows: a treap with subtree
//! sizes, stored in an arena whose node `i` is ring-buffer slot `i` of the window.
//!
//! Insert, remove and select (k-th smallest) are O(log n) expected. Priorities come from a
//! private xorshift generator, so no input order can unbalance the tree. Equal values are
//! ordered by slot, which makes every key unique and removal exact.

use std::cmp::Ordering;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    value: f64,
    left: u32,
    right: u32,
    size: u32,
    prio: u32,
}

/// Multiset of at most `capacity` finite values, addressed by slot `0..capacity`.
#[derive(Clone, Debug)]
pub(crate) struct OrderStats {
    nodes: Vec<Node>,
    root: u32,
    rng: u64,
}

impl OrderStats {
    /// An empty multiset with slots `0..capacity` (`capacity < u32::MAX`). Nodes are
    /// allocated as slots are first used, not up front.
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity < u32::MAX as usize);
        OrderStats {
            nodes: Vec::new(),
            root: NIL,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Number of values held.
    pub(crate) fn len(&self) -> usize {
        self.size(self.root) as usize
    }

    fn size(&self, t: u32) -> u32 {
        if t == NIL {
            0
        } else {
            self.nodes[t as usize].size
        }
    }

    fn update(&mut self, t: u32) {
        let n = self.nodes[t as usize];
        self.nodes[t as usize].size = 1 + self.size(n.left) + self.size(n.right);
    }

    /// Order of slot `a` relative to the key `(value, slot)`.
    fn cmp(&self, a: u32, value: f64, slot: u32) -> Ordering {
        self.nodes[a as usize]
            .value
            .total_cmp(&value)
            .then(a.cmp(&slot))
    }

    fn next_prio(&mut self) -> u32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// Splits `t` into keys below `(value, slot)` and keys at or above it.
    fn split(&mut self, t: u32, value: f64, slot: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.cmp(t, value, slot) == Ordering::Less {
            let (l, r) = self.split(self.nodes[t as usize].right, value, slot);
            self.nodes[t as usize].right = l;
            self.update(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.nodes[t as usize].left, value, slot);
            self.nodes[t as usize].left = r;
            self.update(t);
            (l, t)
        }
    }

    /// Joins two treaps where every key of `a` is below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let r = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = r;
            self.update(a);
            a
        } else {
            let l = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = l;
            self.update(b);
            b
        }
    }

    /// Inserts `value` at the empty slot `slot`.
    pub(crate) fn insert(&mut self, slot: usize, value: f64) {
        let prio = self.next_prio();
        let s = slot as u32;
        let node = Node {
            value,
            left: NIL,
            right: NIL,
            size: 1,
            prio,
        };
        if slot < self.nodes.len() {
            self.nodes[slot] = node;
        } else {
            // Slots are first used in order while the window fills.
            self.nodes.resize(slot, node);
            self.nodes.push(node);
        }
        let root = self.insert_at(self.root, s);
        self.root = root;
    }

    /// Inserts node `n` below `t`: descends while the priorities are higher, then splits.
    fn insert_at(&mut self, t: u32, n: u32) -> u32 {
        let Node { value, prio, .. } = self.nodes[n as usize];
        if t == NIL {
            return n;
        }
        if prio > self.nodes[t as usize].prio {
            let (l, r) = self.split(t, value, n);
            self.nodes[n as usize].left = l;
            self.nodes[n as usize].right = r;
            self.update(n);
            return n;
        }
        if self.cmp(t, value, n) == Ordering::Less {
            let r = self.insert_at(self.nodes[t as usize].right, n);
            self.nodes[t as usize].right = r;
        } else {
            let l = self.insert_at(self.nodes[t as usize].left, n);
            self.nodes[t as usize].left = l;
        }
        self.update(t);
        t
    }

    /// Removes the value at occupied slot `slot`.
    pub(crate) fn remove(&mut self, slot: usize) {
        let value = self.nodes[slot].value;
        let root = self.remove_at(self.root, value, slot as u32);
        self.root = root;
    }

    fn remove_at(&mut self, t: u32, value: f64, slot: u32) -> u32 {
        if t == NIL {
            return NIL;
        }
        match self.cmp(t, value, slot) {
            Ordering::Equal => {
                let n = self.nodes[t as usize];
                self.merge(n.left, n.right)
            }
            Ordering::Less => {
                let r = self.remove_at(self.nodes[t as usize].right, value, slot);
                self.nodes[t as usize].right = r;
                self.update(t);
                t
            }
            Ordering::Greater => {
                let l = self.remove_at(self.nodes[t as usize].left, value, slot);
                self.nodes[t as usize].left = l;
                self.update(t);
                t
            }
        }
    }

    /// The `k`-th smallest value (0-based); `k < len()`, else the largest (or 0 if empty).
    pub(crate) fn select(&self, mut k: u32) -> f64 {
        let mut t = self.root;
        let mut last = 0.0;
        while t != NIL {
            let n = &self.nodes[t as usize];
            last = n.value;
            let ls = self.size(n.left);
            match k.cmp(&ls) {
                Ordering::Less => t = n.left,
                Ordering::Equal => return n.value,
                Ordering::Greater => {
                    k -= ls + 1;
                    t = n.right;
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn depth(s: &OrderStats, t: u32) -> usize {
        if t == NIL {
            0
        } else {
            let n = s.nodes[t as usize];
            1 + depth(s, n.left).max(depth(s, n.right))
        }
    }

    #[test]
    fn sorted_input_stays_shallow() {
        let n = 4096;
        let mut s = OrderStats::new(n);
        for i in 0..n {
            s.insert(i, i as f64);
        }
        assert_eq!(s.len(), n);
        // Expected depth ~2.99 ln n ≈ 25; a degenerate tree would be 4096 deep.
        assert!(depth(&s, s.root) < 60, "depth {}", depth(&s, s.root));
        for k in 0..n {
            assert_eq!(s.select(k as u32), k as f64);
        }
    }

    proptest! {
        #[test]
        fn sliding_window_matches_sorted_vec(
            cap in 1usize..40,
            values in prop::collection::vec(prop_oneof![(-5i32..5).prop_map(f64::from), -1e9f64..1e9], 1..300),
        ) {
            let mut s = OrderStats::new(cap);
            let mut ring: Vec<Option<f64>> = vec![None; cap];
            for (i, &v) in values.iter().enumerate() {
                let slot = i % cap;
                if ring[slot].is_some() {
                    s.remove(slot);
                }
                s.insert(slot, v);
                ring[slot] = Some(v);
                let mut sorted: Vec<f64> = ring.iter().flatten().copied().collect();
                sorted.sort_by(f64::total_cmp);
                prop_assert_eq!(s.len(), sorted.len());
                for (k, want) in sorted.iter().enumerate() {
                    prop_assert_eq!(s.select(k as u32).to_bits(), want.to_bits());
                }
            }
        }
    }
}
