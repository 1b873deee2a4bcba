//! Relative entropy over histograms (after Wang et al., "Statistical techniques for online
//! anomaly detection in data centers", IM 2011): is the distribution of the recent window
//! one of the states the sensor is known to have?
//!
//! **Bins.** The first `warmup` finite values fix `bins` bins of equal probability: the
//! edges are the warm-up's quantiles `k/bins` (nearest rank, `k = 1..bins−1`, repeated
//! edges merged), the outer bins open-ended. A value goes into the bin of the number of
//! edges at or below it. Equal-probability bins need no scale: the same defaults fit a
//! temperature in kelvin and a current in microamperes. A warm-up whose values are all
//! equal (no edge) starts again.
//!
//! **Hypotheses.** The values are cut into blocks of `window`, the warm-up's included.
//! Each block's histogram `P` (shares of its values per bin) is tested against each
//! known hypothesis `Q` (a histogram, with ½ count per bin added so that no share is 0)
//! by the G-test, twice the window times the relative entropy:
//!
//! ```text
//! G(P, Q) = 2·W·D(P‖Q) = 2·Σ_b c_b·ln(c_b / (W·q_b)),   c_b = W·p_b the counts
//! ```
//!
//! which, were the block's values independent draws from `Q`, would follow a chi-square
//! law with `k − 1` degrees of freedom (`k` bins). Sensor readings are not independent
//! (a slow wander fills a window unevenly), so the critical value is learnt per sensor
//! from its warm-up, as `baseline` learns its threshold: the warm-up is replayed once,
//! the `G` of each window against the closest hypothesis learnt before it noted, an
//! exponential tail fitted to those (90th percentile `u`, mean excess `β`) and cut where
//! it predicts `target_alarm_rate`: `critical = max(χ²(k − 1), u + β·ln(0.1 / r))`, the
//! chi-square value at significance `r` (Wilson–Hilferty) as the floor. The warm-up is
//! then replayed again to learn the hypotheses under that value. If the best hypothesis is not
//! rejected, its support grows by one and it moves toward `P` (mean of the last
//! `min(support, 32)` blocks it took); otherwise `P` becomes a new hypothesis of support
//! 1, taking, when `hypotheses` are already known, the place of the least supported
//! (the oldest of those).
//!
//! **Verdict**, on every value once the warm-up is over and some hypothesis has support
//! `min_support` or more: the statistic is `G` of the window of the last `window` values
//! (this one included) against the closest hypothesis of that support; an anomaly when it
//! exceeds the critical value, scored [`score_from_ratio`](crate::score_from_ratio)
//! `(G / critical)`. A window unlike every state seen often enough is an anomaly: a level
//! shift, a change of spread or of shape, a stuck sensor (all values in one bin). A state
//! that keeps coming back (`min_support` blocks) becomes normal, as in the paper. A single
//! spike moves one count of the window and is not what this detector sees.
//!
//! Cost: O(bins × hypotheses) per event, bounded by the parameters (a logarithm per
//! bin, a product per bin and hypothesis), and twice that per warm-up value once, at its
//! end; state with the defaults under 2 kB, plus 8 bytes per warm-up value while it lasts
//! (and 4 more at its end).

use crate::baseline::tail_threshold;
use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Most blocks a hypothesis averages over: it keeps following a slowly changing state.
const MAX_AVERAGE: u32 = 32;
/// Pseudo-count added to every bin of a hypothesis.
const PSEUDO_COUNT: f64 = 0.5;

/// Parameters of the [`RelativeEntropy`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct RelativeEntropyParams {
    /// Values per window (and per block a hypothesis learns from). In `4..=100_000`.
    /// Default 50.
    pub window: u32,
    /// Bins of equal probability over the warm-up. In `2..=64`. Default 8 (about 6 values
    /// per bin in a window of 50).
    pub bins: u32,
    /// Finite values that fix the bins; at least `window`, at most 1,000,000. Default 400.
    pub warmup: u32,
    /// Share of normal windows the critical value learnt from the warm-up aims to flag,
    /// and the significance of its chi-square floor (the measured share differs: see
    /// `docs/detectors.md`). Above 0 and below 0.5. Default 0.001.
    pub target_alarm_rate: f64,
    /// Most hypotheses kept. In `1..=64`. Default 8.
    pub hypotheses: u32,
    /// Blocks a hypothesis must have taken before a window that matches it is normal.
    /// At least 1. Default 3.
    pub min_support: u32,
}

impl Default for RelativeEntropyParams {
    fn default() -> Self {
        RelativeEntropyParams {
            window: 50,
            bins: 8,
            warmup: 400,
            target_alarm_rate: 0.001,
            hypotheses: 8,
            min_support: 3,
        }
    }
}

impl RelativeEntropyParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if !(4..=100_000).contains(&self.window) {
            errors.push(ParamError::new(
                "window",
                format!("must be between 4 and 100000, got {}", self.window),
            ));
        }
        if !(2..=64).contains(&self.bins) {
            errors.push(ParamError::new(
                "bins",
                format!("must be between 2 and 64, got {}", self.bins),
            ));
        }
        if !(self.window.max(4)..=1_000_000).contains(&self.warmup) {
            errors.push(ParamError::new(
                "warmup",
                format!(
                    "must be at least `window` ({}) and at most 1000000, got {}",
                    self.window, self.warmup
                ),
            ));
        }
        let r = self.target_alarm_rate;
        if !(r.is_finite() && r > 0.0 && r < 0.5) {
            errors.push(ParamError::new(
                "target_alarm_rate",
                format!("must be above 0 and below 0.5, got {r}"),
            ));
        }
        if !(1..=64).contains(&self.hypotheses) {
            errors.push(ParamError::new(
                "hypotheses",
                format!("must be between 1 and 64, got {}", self.hypotheses),
            ));
        }
        if self.min_support == 0 {
            errors.push(ParamError::new("min_support", "must be at least 1, got 0"));
        }
        judge::into_result(errors)
    }
}

/// The `z` with `P(Z > z) = p` for a standard normal `Z`, `0 < p < 1` (Acklam's rational
/// approximation, relative error below 1.2e-9).
pub(crate) fn normal_upper_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    const P_LOW: f64 = 0.02425;
    // Lower-tail quantile of `q`, then mirrored.
    let lower = |q: f64| -> f64 {
        if q < P_LOW {
            let t = (-2.0 * q.ln()).sqrt();
            (((((C[0] * t + C[1]) * t + C[2]) * t + C[3]) * t + C[4]) * t + C[5])
                / ((((D[0] * t + D[1]) * t + D[2]) * t + D[3]) * t + 1.0)
        } else if q <= 1.0 - P_LOW {
            let t = q - 0.5;
            let r = t * t;
            (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * t
                / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
        } else {
            let t = (-2.0 * (1.0 - q).ln()).sqrt();
            -(((((C[0] * t + C[1]) * t + C[2]) * t + C[3]) * t + C[4]) * t + C[5])
                / ((((D[0] * t + D[1]) * t + D[2]) * t + D[3]) * t + 1.0)
        }
    };
    -lower(p)
}

/// The chi-square critical value with `df` degrees of freedom at significance `alpha`
/// (the Wilson–Hilferty cube approximation, within 1 % of the exact value for the
/// degrees of freedom and significances used here).
pub(crate) fn chi_square_critical(df: f64, alpha: f64) -> f64 {
    let z = normal_upper_quantile(alpha);
    let v = 2.0 / (9.0 * df);
    let c = 1.0 - v + z * v.sqrt();
    (df * c * c * c).max(0.0)
}

/// One known state: a histogram, its logarithms (smoothed) and how many blocks it took.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Hypothesis {
    /// Share of values per bin.
    shares: Vec<f64>,
    /// `ln q_b` of the shares smoothed by the pseudo-count.
    log_q: Vec<f64>,
    /// Blocks taken.
    support: u32,
}

impl Hypothesis {
    fn new(shares: Vec<f64>, window: u32) -> Self {
        let mut h = Hypothesis {
            log_q: vec![0.0; shares.len()],
            shares,
            support: 1,
        };
        h.refresh(window);
        h
    }

    fn refresh(&mut self, window: u32) {
        let w = f64::from(window);
        let denom = w + PSEUDO_COUNT * self.shares.len() as f64;
        for (l, &s) in self.log_q.iter_mut().zip(&self.shares) {
            *l = ((s * w + PSEUDO_COUNT) / denom).ln();
        }
    }
}

/// `Σ_b c_b·ln(c_b / W)` over the bins with a count: the part of `G` that does not
/// depend on the hypothesis.
fn self_part(counts: &[u32], window: u32) -> f64 {
    let w = f64::from(window);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| f64::from(c) * (f64::from(c) / w).ln())
        .sum()
}

/// `G` of the counts against hypothesis `h`, given their [`self_part`].
fn g_statistic(counts: &[u32], own: f64, h: &Hypothesis) -> f64 {
    let cross: f64 = counts
        .iter()
        .zip(&h.log_q)
        .filter(|(c, _)| **c > 0)
        .map(|(&c, &l)| f64::from(c) * l)
        .sum();
    (2.0 * (own - cross)).max(0.0)
}

/// Relative-entropy detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RelativeEntropy {
    params: RelativeEntropyParams,
    /// Warm-up values (emptied once the bins are fixed).
    warm: Vec<f64>,
    /// Bin edges, sorted and distinct; empty during the warm-up.
    edges: Vec<f64>,
    /// Chi-square critical value for `edges.len()` degrees of freedom.
    critical: f64,
    /// Bins of the last `window` values, a ring.
    ring: Vec<u8>,
    /// Next slot of the ring to write.
    head: usize,
    /// Values per bin in the ring.
    counts: Vec<u32>,
    /// Values since the last block ended.
    in_block: u32,
    /// Known states.
    hypotheses: Vec<Hypothesis>,
}

impl RelativeEntropy {
    /// A detector at the start of its warm-up.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: RelativeEntropyParams) -> Self {
        judge::assert_valid("relative_entropy", params.validate());
        RelativeEntropy {
            params,
            warm: Vec::new(),
            edges: Vec::new(),
            critical: 0.0,
            ring: Vec::new(),
            head: 0,
            counts: Vec::new(),
            in_block: 0,
            hypotheses: Vec::new(),
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &RelativeEntropyParams {
        &self.params
    }

    /// The bin edges, once the warm-up has fixed them (empty before).
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The critical value of `G` in force (0 during the warm-up).
    pub fn critical(&self) -> f64 {
        self.critical
    }

    /// The supports of the known hypotheses, oldest first.
    pub fn supports(&self) -> Vec<u32> {
        self.hypotheses.iter().map(|h| h.support).collect()
    }

    fn bin(&self, x: f64) -> u8 {
        // At most 63 edges: fits a byte.
        self.edges.partition_point(|&e| e <= x) as u8
    }

    /// Fixes the bins from the warm-up, the critical value from it, and replays it to learn
    /// the hypotheses; false when it has no spread.
    fn finish_warmup(&mut self, values: &[f64]) -> bool {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        let n = sorted.len();
        let bins = self.params.bins as usize;
        let mut edges: Vec<f64> = (1..bins).map(|k| sorted[k * n / bins]).collect();
        edges.dedup();
        // An edge at the minimum leaves its lower bin empty for good: dropped.
        edges.retain(|&e| e > sorted[0]);
        if edges.is_empty() {
            return false;
        }
        let rate = self.params.target_alarm_rate;
        let chi2 = chi_square_critical(edges.len() as f64, rate);
        self.edges = edges;
        // First pass: how far windows of this sensor's normal operation lie from the
        // closest state learnt before them.
        self.reset_window(chi2);
        let mut seen = Vec::with_capacity(values.len());
        for &x in values {
            if let Some(g) = self.step(self.bin(x), 1) {
                seen.push(g as f32);
            }
        }
        let critical = tail_threshold(&mut seen, chi2, rate);
        // Second pass: the hypotheses, learnt under that critical value.
        self.reset_window(critical);
        for &x in values {
            self.step(self.bin(x), u32::MAX);
        }
        true
    }

    /// Empties the window and the hypotheses, with critical value `critical`.
    fn reset_window(&mut self, critical: f64) {
        self.critical = critical;
        self.counts = vec![0; self.edges.len() + 1];
        self.ring = Vec::with_capacity(self.params.window as usize);
        self.head = 0;
        self.in_block = 0;
        self.hypotheses.clear();
    }

    /// Puts bin `b` in the window (dropping the oldest once it is full); returns `G` of the
    /// full window against the closest hypothesis of support `min_support` or more, then
    /// learns the block if the window ends one.
    fn step(&mut self, b: u8, min_support: u32) -> Option<f64> {
        let w = self.params.window as usize;
        if self.ring.len() < w {
            self.ring.push(b);
        } else {
            let old = std::mem::replace(&mut self.ring[self.head], b);
            self.counts[usize::from(old)] -= 1;
            self.head = (self.head + 1) % w;
        }
        self.counts[usize::from(b)] += 1;
        let g = if self.ring.len() == w {
            self.statistic(min_support)
        } else {
            None
        };
        self.in_block += 1;
        if self.in_block == self.params.window {
            self.in_block = 0;
            self.learn_block();
        }
        g
    }

    /// The window is a finished block: the closest hypothesis takes it, or it becomes one.
    fn learn_block(&mut self) {
        let own = self_part(&self.counts, self.params.window);
        let best = self
            .hypotheses
            .iter()
            .enumerate()
            .map(|(i, h)| (i, g_statistic(&self.counts, own, h)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let w = f64::from(self.params.window);
        let shares: Vec<f64> = self.counts.iter().map(|&c| f64::from(c) / w).collect();
        match best {
            Some((i, g)) if g <= self.critical => {
                let h = &mut self.hypotheses[i];
                h.support = h.support.saturating_add(1);
                let k = f64::from(h.support.min(MAX_AVERAGE));
                for (q, p) in h.shares.iter_mut().zip(&shares) {
                    *q += (p - *q) / k;
                }
                h.refresh(self.params.window);
            }
            _ => {
                let h = Hypothesis::new(shares, self.params.window);
                if self.hypotheses.len() < self.params.hypotheses as usize {
                    self.hypotheses.push(h);
                } else {
                    // The least supported, the oldest of those (first minimum).
                    let weakest = self
                        .hypotheses
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, h)| h.support)
                        .map_or(0, |(i, _)| i);
                    self.hypotheses.remove(weakest);
                    self.hypotheses.push(h);
                }
            }
        }
    }

    /// `G` of the window against the closest hypothesis of support `min_support` or more.
    fn statistic(&self, min_support: u32) -> Option<f64> {
        if min_support == u32::MAX {
            return None;
        }
        let own = self_part(&self.counts, self.params.window);
        self.hypotheses
            .iter()
            .filter(|h| h.support >= min_support)
            .map(|h| g_statistic(&self.counts, own, h))
            .min_by(f64::total_cmp)
    }
}

impl Detector for RelativeEntropy {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        if self.edges.is_empty() {
            self.warm.push(value);
            if self.warm.len() >= self.params.warmup as usize {
                let warm = std::mem::take(&mut self.warm);
                // Without spread the warm-up starts again (it was emptied).
                self.finish_warmup(&warm);
            }
            return Verdict::WARMING_UP;
        }
        match self.step(self.bin(value), self.params.min_support) {
            Some(g) => judge::over_threshold(g, g, self.critical),
            None => NO_VERDICT,
        }
    }

    fn explain(&self, verdict: &Verdict) -> String {
        match verdict.statistic {
            Some(g) => format!(
                "relative entropy G {} > {} (last {} values in {} bins: no state seen {} times fits; {} known)",
                judge::num(g),
                judge::num(self.critical),
                self.params.window,
                self.counts.len(),
                self.params.min_support,
                self.hypotheses.len()
            ),
            None => String::from("no relative entropy"),
        }
    }
}

#[cfg(test)]
mod tests;
