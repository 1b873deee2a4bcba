//! Rolling mean and standard deviation over the last `window` values.
//!
//! Updates are O(1): the mean and the sum of squared deviations (`m2`) slide with each
//! value (Welford's update, generalised to a replacement). Rounding error cannot pile up
//! over billions of events because the statistics are recomputed exactly from the window
//! once every `window` replacements, which keeps the cost O(1) amortised. Where a decision
//! hangs on the last bits (a z-score within 1e-9 of the threshold, or a spread that is
//! tiny next to the mean), [`RollingStats::zscore`] decides with exact two-pass
//! statistics, so verdicts match a naive exact implementation.

/// Rolling population statistics over the most recent `window` values.
///
/// With the `serde` feature the state (de)serializes field by field, so a restored
/// checkpoint continues bit for bit; deserializing checks the ring-buffer invariants and
/// rejects a state that would index out of bounds.
#[derive(Clone, Debug)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(try_from = "RollingStatsRepr")
)]
pub struct RollingStats {
    /// The values: in arrival order while the window fills (it grows as values arrive,
    /// never allocating more than twice what it holds), a ring once full. Its length is
    /// its capacity, the first `len` slots hold values: a boxed slice rather than a
    /// `Vec` saves a word in every sensor's state.
    buf: Box<[f64]>,
    /// Capacity of the window.
    window: u32,
    len: u32,
    head: u32,
    since_exact: u32,
    mean: f64,
    m2: f64,
    /// The largest square of a value that went into the running `mean` and `m2` since
    /// they were last computed exactly: their rounding error is a tiny multiple of it.
    /// Capped at `f64::MAX`, so that it is always finite (and serializable as JSON).
    peak_sq: f64,
}

impl RollingStats {
    /// A new, empty window holding up to `window` values. Memory grows with the values
    /// held (8 bytes each), not with `window`.
    ///
    /// # Panics
    /// If `window` is 0 or above `u32::MAX` (configuration validation rejects both).
    pub fn new(window: usize) -> Self {
        assert!(
            window > 0 && window <= u32::MAX as usize,
            "window must be in 1..=u32::MAX"
        );
        RollingStats {
            buf: Box::default(),
            window: window as u32,
            len: 0,
            head: 0,
            since_exact: 0,
            mean: 0.0,
            m2: 0.0,
            peak_sq: 0.0,
        }
    }

    /// Capacity of the window.
    pub fn window(&self) -> usize {
        self.window as usize
    }

    /// Number of values currently held.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no value has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the window holds `window` values (warm-up is over).
    pub fn is_full(&self) -> bool {
        self.len == self.window
    }

    /// Mean of the values held (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population variance of the values held (0 when empty).
    pub fn variance(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            (self.m2 / self.len as f64).max(0.0)
        }
    }

    /// Population standard deviation of the values held.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// The values held, oldest first.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let n = self.buf.len().max(1);
        let len = self.len as usize;
        let start = if self.is_full() {
            self.head as usize
        } else {
            0
        };
        (0..len).map(move |i| self.buf[(start + i) % n])
    }

    /// Brings the slot the next value replaces (the oldest, once full) toward the CPU's
    /// cache ([`crate::prefetch`]), for a push a little later.
    #[inline]
    pub fn prefetch(&self) {
        if let Some(slot) = self.buf.get(self.head as usize) {
            crate::prefetch(slot);
        }
    }

    /// Adds a value, evicting the oldest one when the window is full.
    pub fn push(&mut self, x: f64) {
        self.peak_sq = self.peak_sq.max(square(x));
        let n = self.window as usize;
        let head = self.head as usize;
        if !self.is_full() && self.len as usize == self.buf.len() {
            // Doubling, but never past the window.
            self.grow((self.buf.len() * 2).max(4).min(n));
        }
        if self.is_full() {
            let old = self.buf[head];
            self.buf[head] = x;
            let d = x - old;
            let new_mean = self.mean + d / n as f64;
            self.m2 += d * ((x - new_mean) + (old - self.mean));
            self.mean = new_mean;
            if self.m2 < 0.0 {
                self.m2 = 0.0;
            }
            self.since_exact += 1;
            if self.since_exact as usize >= n {
                self.recompute();
            }
        } else {
            self.buf[self.len as usize] = x;
            self.len += 1;
            let d = x - self.mean;
            self.mean += d / self.len as f64;
            self.m2 += d * (x - self.mean);
        }
        self.head = ((head + 1) % n) as u32;
    }

    /// Moves the values into a buffer of `cap` slots (at least `len`). Not inlined: it
    /// runs a logarithmic number of times per window, and stays out of `push`'s hot path.
    #[inline(never)]
    fn grow(&mut self, cap: usize) {
        let len = self.len as usize;
        let mut buf = vec![0.0; cap].into_boxed_slice();
        buf[..len].copy_from_slice(&self.buf[..len]);
        self.buf = buf;
    }

    /// Recomputes mean and `m2` exactly (compensated two-pass) from the held values.
    fn recompute(&mut self) {
        let (mean, m2) = self.exact_mean_m2();
        self.mean = mean;
        self.m2 = m2;
        self.since_exact = 0;
        self.peak_sq = self.buf[..self.len as usize]
            .iter()
            .fold(0.0, |m, &v| m.max(square(v)));
    }

    /// Mean and sum of squared deviations by compensated (Neumaier) two-pass sums.
    fn exact_mean_m2(&self) -> (f64, f64) {
        let len = self.len as usize;
        if len == 0 {
            return (0.0, 0.0);
        }
        // The first `len` slots hold exactly the values; order does not matter to a sum.
        let values = &self.buf[..len];
        let mean = neumaier_sum(values.iter().copied()) / len as f64;
        let m2 = neumaier_sum(values.iter().map(|&v| (v - mean) * (v - mean)));
        (mean, m2)
    }

    /// Exact (compensated two-pass) mean and population standard deviation.
    pub fn exact_mean_std(&self) -> (f64, f64) {
        let (mean, m2) = self.exact_mean_m2();
        let var = if self.len == 0 {
            0.0
        } else {
            m2 / self.len as f64
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
            let z = (x - mean) / var.sqrt();
            if (z.abs() - threshold).abs() > 1e-9 * threshold.abs().max(1.0) {
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
        RollingStatsOut {
            buf: &self.buf[..self.len as usize],
            window: self.window,
            len: self.len,
            head: self.head,
            since_exact: self.since_exact,
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
    since_exact: u32,
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

    fn try_from(mut r: RollingStatsRepr) -> Result<Self, String> {
        let n = match r.window {
            Some(w) => w as usize,
            None => r.buf.len(),
        };
        if n == 0 || n > u32::MAX as usize {
            return Err(format!("window must be in 1..=u32::MAX, got {n}"));
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
        // An old state's unfilled tail held zeros, not values.
        r.buf.truncate(len);
        let mut stats = RollingStats {
            buf: r.buf.into_boxed_slice(),
            window: n as u32,
            len: r.len,
            head: r.head,
            since_exact: r.since_exact.min(r.len),
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
            since_exact: 0,
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
            since_exact: 0,
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
        assert!(r.buf.len() < 64, "{}", r.buf.len());
        let mut r = RollingStats::new(100);
        for v in 0..1000 {
            r.push(f64::from(v));
        }
        assert_eq!(r.buf.len(), 100);
        assert_eq!(r.values().next(), Some(900.0));
    }

    proptest! {
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
