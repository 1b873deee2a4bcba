//! Rolling mean and standard deviation over the last `window` values.
//!
//! Updates are O(1): the mean and the sum of squared deviations (`m2`) slide with each
//! value (Welford's update, generalised to a replacement). Rounding error cannot pile up
//! over billions of events because the statistics are recomputed exactly from the window
//! once every `window` replacements, which keeps the cost O(1) amortised. Where a decision
//! hangs on the last bits (a z-score within 1e-9 of the threshold, more for long windows
//! over values large next to their spread, or a spread that is tiny next to the mean),
//! [`RollingStats::zscore`] decides with exact two-pass statistics, so verdicts match a
//! naive exact implementation.

use std::ptr::NonNull;

/// Rolling population statistics over the most recent `window` values.
///
/// With the `serde` feature the state (de)serializes field by field, so a restored
/// checkpoint continues bit for bit; deserializing checks the ring-buffer invariants and
/// rejects a state that would index out of bounds.
///
/// 40 bytes besides the values: a sensor's state is kept once per sensor, so every word
/// counts (a million sensors with full windows of 100 hold 800 MB of values and 40 MB of
/// this).
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(try_from = "RollingStatsRepr")
)]
pub struct RollingStats {
    /// The values: in arrival order while the window fills (it grows as values arrive,
    /// never allocating more than twice what it holds), a ring once full. It holds
    /// [`RollingStats::capacity`] slots, a number derived from `window` and `pos`, so it
    /// is one pointer rather than a boxed slice's two words.
    slots: Slots,
    /// The window's length, with [`FULL`] set once it holds that many values.
    window: u32,
    /// While the window fills, the number of values held; once full, the slot the next
    /// value replaces (the oldest). Either way where the next value goes: the running
    /// statistics are recomputed exactly each time it comes back to 0 in a full window
    /// (every `window` replacements).
    pos: u32,
    mean: f64,
    m2: f64,
    /// The largest square of a value that went into the running `mean` and `m2` since
    /// they were last computed exactly: their rounding error is a tiny multiple of it.
    /// Capped at `f64::MAX`, so that it is always finite (and serializable as JSON).
    peak_sq: f64,
}

/// The bit of [`RollingStats::window`] set once the window is full; windows stay below it.
const FULL: u32 = 1 << 31;

/// The most `sqrt(peak_sq) / std` can be where [`RollingStats::zscore`] trusts the running
/// statistics (there `var > 1e-9 * peak_sq`): sqrt(1e9) = 31,622.8, rounded up.
const MOST_PEAK_OVER_STD: f64 = 31_623.0;

/// The largest window a [`RollingStats`] holds.
pub const MAX_ROLLING_WINDOW: usize = (FULL - 1) as usize;

/// Slots of a window holding `len` values of at most `window`: 0 for none, then 4, 8, 16,
/// ... (doubling) and never more than `window`. A window grows to the next size when a
/// value arrives and the slots are all taken, so this is always its size.
fn capacity_for(len: usize, window: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.next_power_of_two().max(4).min(window)
    }
}

/// `f64` slots behind one pointer, owned like a `Box<[f64]>` whose length is kept by the
/// owner instead ([`RollingStats::capacity`]). It frees nothing by itself: the owner
/// turns it back into the box ([`Slots::into_box`]) with that length.
struct Slots(NonNull<f64>);

// SAFETY: `Slots` owns its values exclusively, as the `Box<[f64]>` it is made from does,
// and that box is `Send` and `Sync`.
unsafe impl Send for Slots {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Slots {}

impl Slots {
    /// Takes over `values` (an empty box allocates nothing, and its pointer is a valid
    /// dangling one for a slice of length 0).
    fn new(values: Box<[f64]>) -> Self {
        Slots(NonNull::from(Box::leak(values)).cast())
    }

    /// The slots.
    ///
    /// # Safety
    /// `len` is the length of the box this was made from.
    unsafe fn get(&self, len: usize) -> &[f64] {
        // SAFETY: the pointer and length are those of a live `Box<[f64]>` owned by self.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), len) }
    }

    /// The slots, to change.
    ///
    /// # Safety
    /// `len` is the length of the box this was made from.
    unsafe fn get_mut(&mut self, len: usize) -> &mut [f64] {
        // SAFETY: as in `get`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), len) }
    }

    /// The box this was made from (to drop it or keep its values).
    ///
    /// # Safety
    /// `len` is the length of the box this was made from.
    unsafe fn into_box(self, len: usize) -> Box<[f64]> {
        // SAFETY: pointer and length of the box `Box::leak` gave up in `Slots::new`,
        // taken back once (`self` is consumed).
        unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.0.as_ptr(), len)) }
    }
}

impl Drop for RollingStats {
    fn drop(&mut self) {
        let cap = self.capacity();
        let slots = std::mem::replace(&mut self.slots, Slots::new(Box::default()));
        // SAFETY: `capacity()` is the length of the slots (the type's invariant).
        drop(unsafe { slots.into_box(cap) });
    }
}

impl Clone for RollingStats {
    fn clone(&self) -> Self {
        RollingStats {
            slots: Slots::new(self.buf().into()),
            window: self.window,
            pos: self.pos,
            mean: self.mean,
            m2: self.m2,
            peak_sq: self.peak_sq,
        }
    }
}

impl std::fmt::Debug for RollingStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingStats")
            .field("window", &self.window())
            .field("len", &self.len())
            .field("pos", &self.pos)
            .field("mean", &self.mean)
            .field("m2", &self.m2)
            .field("peak_sq", &self.peak_sq)
            .field("values", &self.values().collect::<Vec<_>>())
            .finish()
    }
}

impl RollingStats {
    /// A new, empty window holding up to `window` values. Memory grows with the values
    /// held (8 bytes each), not with `window`.
    ///
    /// # Panics
    /// If `window` is 0 or above [`MAX_ROLLING_WINDOW`] (configuration validation
    /// rejects both).
    pub fn new(window: usize) -> Self {
        assert!(
            window > 0 && window <= MAX_ROLLING_WINDOW,
            "window must be in 1..={MAX_ROLLING_WINDOW}"
        );
        RollingStats {
            slots: Slots::new(Box::default()),
            window: window as u32,
            pos: 0,
            mean: 0.0,
            m2: 0.0,
            peak_sq: 0.0,
        }
    }

    /// Capacity of the window.
    pub fn window(&self) -> usize {
        (self.window & !FULL) as usize
    }

    /// Number of values currently held.
    pub fn len(&self) -> usize {
        if self.is_full() {
            self.window()
        } else {
            self.pos as usize
        }
    }

    /// Whether no value has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the window holds `window` values (warm-up is over).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.window & FULL != 0
    }

    /// Slots allocated: the length of `slots`.
    #[inline]
    fn capacity(&self) -> usize {
        if self.is_full() {
            self.window()
        } else {
            capacity_for(self.pos as usize, self.window())
        }
    }

    /// The slots (the values held, then unused ones while filling).
    #[inline]
    fn buf(&self) -> &[f64] {
        // SAFETY: the slots always hold `capacity()` values: they are replaced, with
        // `pos` and `window` updated to match, only in `push`.
        unsafe { self.slots.get(self.capacity()) }
    }

    /// The slots, to change.
    #[inline]
    fn buf_mut(&mut self) -> &mut [f64] {
        let cap = self.capacity();
        // SAFETY: as in `buf`.
        unsafe { self.slots.get_mut(cap) }
    }

    /// Mean of the values held (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population variance of the values held (0 when empty).
    pub fn variance(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            (self.m2 / self.len() as f64).max(0.0)
        }
    }

    /// Population standard deviation of the values held.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// The values held, oldest first.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let buf = self.buf();
        let n = buf.len().max(1);
        let start = if self.is_full() { self.pos as usize } else { 0 };
        (0..self.len()).map(move |i| buf[(start + i) % n])
    }

    /// Brings the slot the next value replaces (the oldest, once full) toward the CPU's
    /// cache ([`crate::prefetch`]), for a push a little later.
    #[inline]
    pub fn prefetch(&self) {
        if let Some(slot) = self.buf().get(self.pos as usize) {
            crate::prefetch(slot);
        }
    }

    /// Adds a value, evicting the oldest one when the window is full.
    pub fn push(&mut self, x: f64) {
        self.peak_sq = self.peak_sq.max(square(x));
        if !self.is_full() {
            self.push_filling(x);
            return;
        }
        let n = self.window();
        let head = self.pos as usize;
        let slot = &mut self.buf_mut()[head];
        let old = std::mem::replace(slot, x);
        let d = x - old;
        let new_mean = self.mean + d / n as f64;
        self.m2 += d * ((x - new_mean) + (old - self.mean));
        self.mean = new_mean;
        if self.m2 < 0.0 {
            self.m2 = 0.0;
        }
        self.pos = ((head + 1) % n) as u32;
        if self.pos == 0 {
            self.recompute();
        }
    }

    /// [`RollingStats::push`] while the window fills: the value goes after the others, in
    /// new slots when they are all taken.
    fn push_filling(&mut self, x: f64) {
        let n = self.window();
        let len = self.pos as usize;
        let cap = self.capacity();
        if len == cap {
            self.grow_with(x);
        } else {
            self.buf_mut()[len] = x;
        }
        // `len + 1` values: `capacity()` now gives the slots `grow_with` made.
        if len + 1 == n {
            self.window |= FULL;
            self.pos = 0;
        } else {
            self.pos += 1;
        }
        let d = x - self.mean;
        self.mean += d / (len + 1) as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Moves the values and `x` after them into the slots of a window holding one value
    /// more (doubling, never past the window). Not inlined: it runs a logarithmic number
    /// of times per window, and stays out of `push`'s hot path. The caller then counts the
    /// value, which makes `capacity()` the new size again.
    #[inline(never)]
    fn grow_with(&mut self, x: f64) {
        let len = self.pos as usize;
        let mut buf = vec![0.0; capacity_for(len + 1, self.window())].into_boxed_slice();
        buf[..len].copy_from_slice(self.buf());
        buf[len] = x;
        let old = std::mem::replace(&mut self.slots, Slots::new(buf));
        // SAFETY: the old slots were `len` long (they were full).
        drop(unsafe { old.into_box(len) });
    }

    /// Recomputes mean and `m2` exactly (compensated two-pass) from the held values.
    fn recompute(&mut self) {
        let (mean, m2) = self.exact_mean_m2();
        self.mean = mean;
        self.m2 = m2;
        self.peak_sq = self.buf()[..self.len()]
            .iter()
            .fold(0.0, |m, &v| m.max(square(v)));
    }

    /// Mean and sum of squared deviations by compensated (Neumaier) two-pass sums.
    fn exact_mean_m2(&self) -> (f64, f64) {
        let len = self.len();
        if len == 0 {
            return (0.0, 0.0);
        }
        // The first `len` slots hold exactly the values; order does not matter to a sum.
        let values = &self.buf()[..len];
        let mean = neumaier_sum(values.iter().copied()) / len as f64;
        let m2 = neumaier_sum(values.iter().map(|&v| (v - mean) * (v - mean)));
        (mean, m2)
    }

    /// Exact (compensated two-pass) mean and population standard deviation.
    pub fn exact_mean_std(&self) -> (f64, f64) {
        let (mean, m2) = self.exact_mean_m2();
        let var = if self.is_empty() {
            0.0
        } else {
            m2 / self.len() as f64
        };
        (mean, var.sqrt())
    }

    /// z-score of `x` against the held values: `(x - mean) / std`.
    ///
    /// `None` until the window is full, and when the standard deviation is 0. Where the
    /// running statistics leave `|z|` within a hair of `threshold`, or the spread is tiny
    /// next to the mean, the answer comes from exact statistics instead, so comparing the
    /// result against `threshold` gives the same verdict as an exact computation.
    pub fn zscore(&self, x: f64, threshold: f64) -> Option<f64> {
        if !self.is_full() {
            return None;
        }
        let var = self.variance();
        let mean = self.mean;
        // A spread within the running sums' rounding error of zero: the window may hold
        // one value repeated (no z-score), which only exact statistics can tell. The
        // error scales with the largest value involved, not the mean: after 1000 the
        // window [0, 0, 0] keeps a residue in `m2` while its mean is near 0.
        let suspicious_spread =
            var <= 1e-9 * mean * mean || var <= 1e-9 * self.peak_sq || var <= 0.0;
        if !suspicious_spread {
            let std = var.sqrt();
            let z = (x - mean) / std;
            // How far the running z-score may be from the exact one: a fixed 1e-9, plus
            // the drift of the running mean, whose rounding errors (half an ulp of the
            // values each) add up over the up to `window` replacements since the last
            // exact recomputation. Divided by the spread, that drift moves z; it matters
            // for long windows over values large next to their spread (a window of
            // 1,000,000 values near 1e6 with a spread of 32 moved z by 4e-9).
            let off = (z.abs() - threshold).abs();
            let scale = threshold.abs().max(1.0);
            let drift_scale = 4.0 * self.window() as f64 * f64::EPSILON;
            // The spread is not tiny (peak_sq / var < 1e9), so the drift is at most
            // `4 × window × eps × sqrt(1e9)`: most verdicts are clear of that bound, and
            // the drift itself (a square root and a division) is needed only near it.
            if off > (1e-9 + drift_scale * MOST_PEAK_OVER_STD) * scale
                || off > (1e-9 + drift_scale * self.peak_sq.sqrt() / std) * scale
            {
                return Some(z);
            }
        }
        let (mean, std) = self.exact_mean_std();
        (std > 0.0).then(|| (x - mean) / std)
    }
}

/// The serialized form of a [`RollingStats`], as written: the values held (not the unused
/// slots of the buffer) and the fields in their order of declaration, the form a derived
/// `Serialize` on the former `Vec` buffer wrote, so checkpoints read either way.
#[cfg(feature = "serde")]
#[derive(serde::Serialize)]
#[serde(rename = "RollingStats")]
struct RollingStatsOut<'a> {
    buf: &'a [f64],
    window: u32,
    len: u32,
    head: u32,
    since_exact: u32,
    mean: f64,
    m2: f64,
    peak_sq: f64,
}

#[cfg(feature = "serde")]
impl serde::Serialize for RollingStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.len();
        RollingStatsOut {
            buf: &self.buf()[..len],
            window: self.window() as u32,
            len: len as u32,
            head: self.pos,
            // Replacements since the last exact computation: the ring's head, once full.
            since_exact: if self.is_full() { self.pos } else { 0 },
            mean: self.mean,
            m2: self.m2,
            peak_sq: self.peak_sq,
        }
        .serialize(serializer)
    }
}

/// The serialized form of [`RollingStats`], checked before it becomes one. States
/// written before windows grew as values arrived have no `window`: their buffer was the
/// whole window.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct RollingStatsRepr {
    buf: Vec<f64>,
    #[serde(default)]
    window: Option<u32>,
    len: u32,
    head: u32,
    mean: f64,
    m2: f64,
    /// States saved before it was kept have none: until their next exact computation,
    /// verdicts then come from exact statistics.
    #[serde(default = "unknown_peak")]
    peak_sq: f64,
}

#[cfg(feature = "serde")]
fn unknown_peak() -> f64 {
    f64::MAX
}

#[cfg(feature = "serde")]
impl TryFrom<RollingStatsRepr> for RollingStats {
    type Error = String;

    /// `since_exact` is not read back: the statistics are next recomputed exactly when
    /// the ring's head comes back to its first slot, which is where this crate always
    /// recomputed them (it wrote `since_exact` equal to the head).
    fn try_from(r: RollingStatsRepr) -> Result<Self, String> {
        let n = match r.window {
            Some(w) => w as usize,
            None => r.buf.len(),
        };
        if n == 0 || n > MAX_ROLLING_WINDOW {
            return Err(format!(
                "window must be in 1..={MAX_ROLLING_WINDOW}, got {n}"
            ));
        }
        let (len, head) = (r.len as usize, r.head as usize);
        let ring_ok = if len < n {
            head == len && r.buf.len() >= len
        } else {
            len == n && head < n && r.buf.len() == n
        };
        if !ring_ok {
            return Err(format!(
                "inconsistent ring buffer: len {len}, head {head}, window {n}, {} values",
                r.buf.len()
            ));
        }
        // The slots a window holding `len` values has; an old state's unfilled tail held
        // zeros, not values.
        let mut buf = vec![0.0; capacity_for(len, n)].into_boxed_slice();
        buf[..len].copy_from_slice(&r.buf[..len]);
        let full = len == n;
        let mut stats = RollingStats {
            slots: Slots::new(buf),
            window: if full { n as u32 | FULL } else { n as u32 },
            pos: r.head,
            mean: r.mean,
            m2: r.m2,
            peak_sq: if r.peak_sq.is_finite() {
                r.peak_sq.max(0.0)
            } else {
                f64::MAX
            },
        };
        if !(stats.mean.is_finite() && stats.m2.is_finite()) {
            stats.recompute();
        }
        Ok(stats)
    }
}

/// `x²`, capped at `f64::MAX`.
fn square(x: f64) -> f64 {
    (x * x).min(f64::MAX)
}

/// Sum with Neumaier's compensation: error independent of the number of terms.
fn neumaier_sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut sum = 0.0f64;
    let mut comp = 0.0f64;
    for v in values {
        let t = sum + v;
        if sum.abs() >= v.abs() {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    sum + comp
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// The naive reference: a deque and exact two-pass statistics every time.
    fn naive(win: &VecDeque<f64>) -> (f64, f64) {
        let n = win.len() as f64;
        let mean = neumaier_sum(win.iter().copied()) / n;
        let var = neumaier_sum(win.iter().map(|v| (v - mean) * (v - mean))) / n;
        (mean, var.sqrt())
    }

    #[test]
    fn a_repeated_value_after_large_ones_has_no_z_score() {
        // The running sums keep a rounding residue from the large values that left the
        // window; the mean is near 0, so a spread test relative to the mean misses it.
        for big in [1000.5, -987.25, 1e12, 3.3e-3] {
            let mut s = RollingStats::new(3);
            for v in [big, 0.0, 0.0, 0.0] {
                s.push(v);
            }
            assert_eq!(s.exact_mean_std().1, 0.0);
            assert_eq!(s.zscore(0.0, 3.0), None, "after {big}");
            assert_eq!(s.zscore(1.0, 3.0), None, "after {big}");
        }
    }

    #[test]
    fn warm_up_gives_no_score() {
        let mut r = RollingStats::new(3);
        assert_eq!(r.zscore(1.0, 3.0), None);
        r.push(1.0);
        r.push(2.0);
        assert_eq!(r.zscore(1.0, 3.0), None);
        r.push(3.0);
        let z = r.zscore(4.0, 3.0).unwrap();
        // mean 2, population std sqrt(2/3)
        assert!((z - 2.0 / (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn constant_window_has_no_score() {
        let mut r = RollingStats::new(5);
        for _ in 0..20 {
            r.push(7.25);
        }
        assert_eq!(r.zscore(100.0, 3.0), None);
    }

    #[test]
    fn long_windows_decide_thresholds_as_exact_statistics_do() {
        // A window of a million values near 1e6 with a spread of about 32 (just wide
        // enough not to count as "tiny next to the mean"): by the end of a round of
        // replacements the running mean has drifted enough to move z by about 4e-9.
        // Thresholds 5e-10 either side of the exact |z| must still get the exact verdict.
        const N: usize = 1_000_000;
        let mut r = RollingStats::new(N);
        let mut state = 12345u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            1e6 + 33.0 * 1.7 * (2.0 * ((state >> 11) as f64 / (1u64 << 53) as f64) - 1.0)
        };
        for _ in 0..2 * N - 20 {
            r.push(next());
        }
        let mut checked = 0;
        for _ in 0..20 {
            let x = next();
            let (mean, std) = r.exact_mean_std();
            let exact = ((x - mean) / std).abs();
            if exact > 0.5 {
                for threshold in [exact * (1.0 + 5e-10), exact * (1.0 - 5e-10)] {
                    let z = r.zscore(x, threshold).expect("a spread");
                    assert_eq!(
                        z.abs() > threshold,
                        exact > threshold,
                        "z {z} (exact {exact}) against {threshold}"
                    );
                    checked += 1;
                }
            }
            r.push(x);
        }
        assert!(checked >= 10, "{checked} verdicts checked");
    }

    #[test]
    fn stays_accurate_with_large_offset_over_many_events() {
        // Values around 1e9 with a spread of 1e-3: sum-of-squares would lose everything.
        let mut r = RollingStats::new(100);
        let mut win = VecDeque::new();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = 1e9 + ((x >> 11) as f64 / (1u64 << 53) as f64) * 1e-3;
            r.push(v);
            win.push_back(v);
            if win.len() > 100 {
                win.pop_front();
            }
            if i % 9973 == 0 && win.len() == 100 {
                let (m, s) = naive(&win);
                // The mean can be no closer than a few ulps of its magnitude.
                assert!(
                    (r.mean() - m).abs() <= 4.0 * f64::EPSILON * m.abs(),
                    "mean drift at {i}"
                );
                assert!(
                    (r.std() - s).abs() <= 1e-3 * s,
                    "std drift at {i}: {} vs {s}",
                    r.std()
                );
            }
        }
    }

    #[test]
    fn prefetching_changes_nothing() {
        let mut r = RollingStats::new(3);
        r.prefetch();
        for v in [1.0, 2.0, 3.0, 4.0] {
            r.prefetch();
            r.push(v);
        }
        r.prefetch();
        crate::prefetch(&r);
        assert_eq!(r.values().collect::<Vec<_>>(), vec![2.0, 3.0, 4.0]);
    }

    #[test]
    fn values_are_oldest_first() {
        let mut r = RollingStats::new(3);
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            r.push(v);
        }
        assert_eq!(r.values().collect::<Vec<_>>(), vec![3.0, 4.0, 5.0]);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn restore_rejects_broken_ring_buffers() {
        // The old form: no `window`, the buffer is the whole window.
        let repr = |len, head| RollingStatsRepr {
            buf: vec![1.0, 2.0, 3.0],
            window: None,
            len,
            head,
            mean: 0.0,
            m2: 0.0,
            peak_sq: unknown_peak(),
        };
        assert!(RollingStats::try_from(repr(2, 2)).is_ok());
        assert!(RollingStats::try_from(repr(3, 1)).is_ok());
        assert!(RollingStats::try_from(repr(2, 1)).is_err());
        assert!(RollingStats::try_from(repr(4, 0)).is_err());
        assert!(RollingStats::try_from(repr(3, 3)).is_err());
        let mut r = RollingStats::try_from(RollingStatsRepr {
            mean: f64::NAN,
            ..repr(3, 0)
        })
        .unwrap();
        assert_eq!(r.mean(), 2.0); // recomputed from the values
        r.push(4.0);
        assert_eq!(r.values().collect::<Vec<_>>(), vec![2.0, 3.0, 4.0]);
        // An old state still filling: its tail of zeros is not taken for values.
        let mut r = RollingStats::try_from(repr(2, 2)).unwrap();
        assert_eq!(r.values().collect::<Vec<_>>(), vec![1.0, 2.0]);
        r.push(5.0);
        r.push(6.0);
        assert_eq!(r.values().collect::<Vec<_>>(), vec![2.0, 5.0, 6.0]);
        // The new form: the window given, the buffer as long as the values.
        let new_form = |buf: Vec<f64>, len, head| RollingStatsRepr {
            buf,
            window: Some(3),
            len,
            head,
            mean: 0.0,
            m2: 0.0,
            peak_sq: 1.0,
        };
        assert!(RollingStats::try_from(new_form(vec![1.0], 1, 1)).is_ok());
        assert!(RollingStats::try_from(new_form(vec![1.0], 2, 2)).is_err());
        assert!(RollingStats::try_from(new_form(vec![1.0, 2.0], 3, 0)).is_err());
    }

    #[test]
    fn memory_grows_with_the_values_not_the_window() {
        let mut r = RollingStats::new(1_000_000_000);
        for v in 0..10 {
            r.push(f64::from(v));
        }
        assert!(r.capacity() < 64, "{}", r.capacity());
        let mut r = RollingStats::new(100);
        for v in 0..1000 {
            r.push(f64::from(v));
        }
        assert_eq!(r.capacity(), 100);
        assert_eq!(r.values().next(), Some(900.0));
    }

    #[test]
    fn a_state_is_five_words() {
        assert_eq!(std::mem::size_of::<RollingStats>(), 40);
    }

    /// Everything a state holds, bit for bit.
    #[cfg(feature = "serde")]
    fn bits(r: &RollingStats) -> (usize, usize, u64, u64, u64, Vec<u64>) {
        (
            r.len(),
            r.capacity(),
            r.mean.to_bits(),
            r.m2.to_bits(),
            r.peak_sq.to_bits(),
            r.values().map(f64::to_bits).collect(),
        )
    }

    proptest! {
        /// A copy, or a state written and read back, at any point goes on exactly as the
        /// original (the slots' size is derived, so these exercise it at every size).
        #[cfg(feature = "serde")]
        #[test]
        fn copies_and_restored_states_go_on_bit_for_bit(
            window in 1usize..70,
            values in prop::collection::vec(-1e3f64..1e3, 0..300),
            cut in 0usize..300,
        ) {
            let mut r = RollingStats::new(window);
            let cut = cut.min(values.len());
            for &v in &values[..cut] {
                r.push(v);
            }
            let mut copy = r.clone();
            // Through a JSON value, which keeps every float's bits (text would round).
            let value = serde_json::to_value(&r).unwrap();
            let mut restored: RollingStats = serde_json::from_value(value).unwrap();
            prop_assert_eq!(bits(&restored), bits(&r));
            for &v in &values[cut..] {
                r.push(v);
                copy.push(v);
                restored.push(v);
                prop_assert_eq!(bits(&copy), bits(&r));
                prop_assert_eq!(bits(&restored), bits(&r));
            }
            prop_assert_eq!(r.capacity(), capacity_for(r.len(), window));
        }

        #[test]
        fn matches_naive_reference(
            window in 1usize..40,
            values in prop::collection::vec(-1e6f64..1e6, 1..400),
            threshold in 0.5f64..5.0,
        ) {
            let mut r = RollingStats::new(window);
            let mut win: VecDeque<f64> = VecDeque::new();
            for &v in &values {
                let got = r.zscore(v, threshold);
                if win.len() == window {
                    let (m, s) = naive(&win);
                    if s > 0.0 {
                        let want = (v - m) / s;
                        let got = got.expect("score when full and spread > 0");
                        prop_assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0),
                            "got {got} want {want}");
                        prop_assert_eq!(got.abs() > threshold, want.abs() > threshold);
                    } else {
                        prop_assert_eq!(got, None);
                    }
                } else {
                    prop_assert_eq!(got, None);
                }
                r.push(v);
                win.push_back(v);
                if win.len() > window { win.pop_front(); }
                prop_assert_eq!(r.values().collect::<Vec<_>>(), win.iter().copied().collect::<Vec<_>>());
            }
        }
    }
}
