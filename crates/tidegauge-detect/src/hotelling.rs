//! Several sensors of one machine at once: Hotelling's T² of their smoothed values against
//! a reference learnt over a warm-up, with a self-calibrated threshold.
//!
//! The multivariate counterpart of [`Baseline`](crate::Baseline). Each observation is a
//! vector `x` of `d` readings taken together (a row). Each reading is smoothed on its own,
//! as `baseline` does (`W ← d·W + 1; s ← s + (x − s)/W`, half-life `half_life`). Over the
//! warm-up the smoothed vectors give the reference mean `μ` and covariance `Σ`; the
//! statistic is the Mahalanobis distance
//!
//! ```text
//! D = sqrt((s − μ)ᵀ (Σ + λ·diag(Σ))⁻¹ (s − μ))
//! ```
//!
//! with a ridge `λ` (`ridge`) on the diagonal, so that sensors that move together (flow
//! and pressure, say) count once and a change in how they move together counts too, and a
//! sensor that barely moved during the warm-up does not make `Σ` singular. A channel with
//! no spread at all over the warm-up is left out of `D` (it cannot be scaled).
//!
//! As in `baseline`, from the middle of the warm-up on each smoothed vector is first judged
//! against the reference learnt from the vectors before it (out of sample), and an
//! exponential tail fitted to those distances sets the threshold for `target_alarm_rate`,
//! never below `threshold`. The reference is then held.
//!
//! A row with a non-finite reading, or with another number of readings than the first
//! row, gets no verdict and leaves the state untouched. Cost per row: O(d²) (a triangular
//! solve with the Cholesky factor computed once at the end of the warm-up; O(d³) per row
//! in the warm-up's second half). State: about `8·(d² + 4d)` bytes.

use crate::baseline::tail_threshold;
use crate::judge::{self, NO_VERDICT};
use crate::{ParamError, Verdict};

/// Most readings per row.
pub const MAX_CHANNELS: usize = 64;

/// Parameters of the [`Hotelling`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct HotellingParams {
    /// Rows whose smoothed values give the reference. At least 4, at most 1,000,000.
    /// Default 400.
    pub warmup: u32,
    /// Half-life of each reading's smoothing, in rows. Finite, above 0. Default 5.
    pub half_life: f64,
    /// Lowest threshold on the distance `D`. Finite, above 0. Default 8, derived from the
    /// SKAB training rows without labels (`scripts/skab --derive-defaults`).
    pub threshold: f64,
    /// Share of normal rows the learnt threshold aims to flag, in `0..1`; 0 uses
    /// `threshold` alone. Default 0.001.
    pub target_alarm_rate: f64,
    /// Ridge added to the covariance's diagonal, relative to it. Finite, ≥ 0. Default 0.1.
    pub ridge: f64,
}

impl Default for HotellingParams {
    fn default() -> Self {
        HotellingParams {
            warmup: 400,
            half_life: 5.0,
            threshold: 8.0,
            target_alarm_rate: 0.001,
            ridge: 0.1,
        }
    }
}

impl HotellingParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        judge::check_count(&mut errors, "warmup", self.warmup, 4..=1_000_000);
        judge::check_positive(&mut errors, "half_life", self.half_life);
        judge::check_positive(&mut errors, "threshold", self.threshold);
        judge::check_alarm_rate(&mut errors, "target_alarm_rate", self.target_alarm_rate);
        judge::check_non_negative(&mut errors, "ridge", self.ridge);
        judge::into_result(errors)
    }
}

/// The held reference: mean, the Cholesky factor of the regularised covariance over the
/// channels that had spread, and the threshold.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Reference {
    mean: Vec<f64>,
    /// Channels in the distance.
    used: Vec<usize>,
    /// Lower-triangular factor, row-major, `used.len()²`.
    chol: Vec<f64>,
    threshold: f64,
}

/// Multivariate held-reference detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Hotelling {
    params: HotellingParams,
    decay: f64,
    weight: f64,
    smoothed: Vec<f64>,
    n: u64,
    mean: Vec<f64>,
    /// Co-moment matrix of the smoothed vectors (Welford), row-major `d²`.
    m2: Vec<f64>,
    deviations: Vec<f32>,
    reference: Option<Reference>,
    /// Distance of the latest verdict and the channel that contributed most.
    last: (f64, usize),
}

/// Cholesky factor of the regularised covariance over the channels with spread; `None`
/// when no channel has spread or the matrix is not positive definite.
fn factor(cov: &[f64], d: usize, ridge: f64) -> Option<(Vec<usize>, Vec<f64>)> {
    let used: Vec<usize> = (0..d).filter(|&i| cov[i * d + i] > 0.0).collect();
    let k = used.len();
    if k == 0 {
        return None;
    }
    let mut l = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..=a {
            let mut sum = cov[used[a] * d + used[b]];
            if a == b {
                sum *= 1.0 + ridge;
            }
            for c in 0..b {
                sum -= l[a * k + c] * l[b * k + c];
            }
            if a == b {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[a * k + a] = sum.sqrt();
            } else {
                l[a * k + b] = sum / l[b * k + b];
            }
        }
    }
    Some((used, l))
}

/// `sqrt(vᵀ Σ⁻¹ v)` for `Σ = L Lᵀ`, over `used` channels of `diff`; also the channel with
/// the largest whitened component.
fn distance(diff: &[f64], used: &[usize], l: &[f64]) -> (f64, usize) {
    let k = used.len();
    let mut y = [0.0f64; MAX_CHANNELS];
    let (mut sum, mut top, mut top_v) = (0.0, used.first().copied().unwrap_or(0), -1.0);
    for a in 0..k {
        let mut v = diff[used[a]];
        for c in 0..a {
            v -= l[a * k + c] * y[c];
        }
        v /= l[a * k + a];
        y[a] = v;
        sum += v * v;
        if v.abs() > top_v {
            top_v = v.abs();
            top = used[a];
        }
    }
    (sum.sqrt(), top)
}

impl Hotelling {
    /// A detector at the start of its warm-up.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: HotellingParams) -> Self {
        judge::assert_valid("hotelling", params.validate());
        Hotelling {
            params,
            decay: (-1.0 / params.half_life).exp2(),
            weight: 0.0,
            smoothed: Vec::new(),
            n: 0,
            mean: Vec::new(),
            m2: Vec::new(),
            deviations: Vec::new(),
            reference: None,
            last: (0.0, 0),
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &HotellingParams {
        &self.params
    }

    /// The threshold on the distance in force, once warmed up.
    pub fn threshold(&self) -> Option<f64> {
        self.reference.as_ref().map(|r| r.threshold)
    }

    /// The reference mean, once warmed up.
    pub fn reference_mean(&self) -> Option<&[f64]> {
        self.reference.as_ref().map(|r| r.mean.as_slice())
    }

    fn covariance(&self) -> Vec<f64> {
        let n = self.n as f64;
        self.m2.iter().map(|v| v / n).collect()
    }

    /// Judges one row of readings taken together (event time `ts_ms` is not used).
    pub fn observe(&mut self, _ts_ms: i64, row: &[f64]) -> Verdict {
        let d = row.len();
        if d == 0 || d > MAX_CHANNELS || row.iter().any(|v| !v.is_finite()) {
            return NO_VERDICT;
        }
        if self.smoothed.is_empty() {
            self.smoothed = vec![0.0; d];
            self.mean = vec![0.0; d];
            self.m2 = vec![0.0; d * d];
        } else if self.smoothed.len() != d {
            return NO_VERDICT;
        }
        self.weight = self.weight * self.decay + 1.0;
        for (s, x) in self.smoothed.iter_mut().zip(row) {
            *s += (x - *s) / self.weight;
        }
        if self.smoothed.iter().any(|s| !s.is_finite()) {
            // Overflow from values near f64::MAX: start again.
            *self = Hotelling::new(self.params);
            return NO_VERDICT;
        }
        if let Some(r) = &self.reference {
            // On the stack: no allocation per row.
            let mut diff = [0.0f64; MAX_CHANNELS];
            for ((x, s), m) in diff.iter_mut().zip(&self.smoothed).zip(&r.mean) {
                *x = s - m;
            }
            let (dist, top) = distance(&diff[..d], &r.used, &r.chol);
            self.last = (dist, top);
            return judge::over_threshold(dist, dist, r.threshold);
        }
        self.learn();
        Verdict::WARMING_UP
    }

    fn learn(&mut self) {
        let d = self.smoothed.len();
        if self.n >= u64::from(self.params.warmup / 2).max(2)
            && self.params.target_alarm_rate > 0.0
            && let Some((used, l)) = factor(&self.covariance(), d, self.params.ridge)
        {
            let diff: Vec<f64> = self
                .smoothed
                .iter()
                .zip(&self.mean)
                .map(|(s, m)| s - m)
                .collect();
            let (dist, _) = distance(&diff, &used, &l);
            if dist.is_finite() {
                self.deviations.push(dist as f32);
            }
        }
        self.n += 1;
        let n = self.n as f64;
        let before: Vec<f64> = self
            .smoothed
            .iter()
            .zip(&self.mean)
            .map(|(s, m)| s - m)
            .collect();
        for (m, b) in self.mean.iter_mut().zip(&before) {
            *m += b / n;
        }
        let after: Vec<f64> = self
            .smoothed
            .iter()
            .zip(&self.mean)
            .map(|(s, m)| s - m)
            .collect();
        for (row, b) in self.m2.chunks_mut(d).zip(&before) {
            for (m, a) in row.iter_mut().zip(&after) {
                *m += b * a;
            }
        }
        if self.n >= u64::from(self.params.warmup)
            && let Some((used, chol)) = factor(&self.covariance(), d, self.params.ridge)
        {
            let threshold = tail_threshold(
                &mut self.deviations,
                self.params.threshold,
                self.params.target_alarm_rate,
            );
            self.deviations = Vec::new();
            self.reference = Some(Reference {
                mean: self.mean.clone(),
                used,
                chol,
                threshold,
            });
        }
    }

    /// Short human reason for an anomalous verdict: the distance, the threshold and the
    /// channel (its index in the row) that moved furthest.
    pub fn explain(&self, verdict: &Verdict) -> String {
        format!(
            "distance {} > {} from the reference; most of it from reading {}",
            judge::stat(verdict.statistic.unwrap_or(self.last.0)),
            judge::num(self.threshold().unwrap_or(self.params.threshold)),
            self.last.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(i: u64) -> f64 {
        let x = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Two sensors that move together (flow and pressure), a third independent one.
    fn row(i: u64, broken: bool) -> [f64; 3] {
        let common = noise(i) * 5.0;
        let flow = 30.0 + common + noise(i + 1_000_000) * 0.2;
        // Broken: pressure no longer follows flow (a leak), though each stays in range.
        let pressure = if broken {
            2.0 - 0.1 * common
        } else {
            2.0 + 0.1 * common
        } + noise(i + 2_000_000) * 0.01;
        [flow, pressure, 60.0 + noise(i + 3_000_000)]
    }

    #[test]
    fn flags_a_broken_relation_each_sensor_alone_would_miss() {
        let params = HotellingParams {
            warmup: 300,
            half_life: 1.0,
            threshold: 3.0,
            ..HotellingParams::default()
        };
        let mut d = Hotelling::new(params);
        // Each sensor alone, as `baseline` judges it with the same warm-up and smoothing.
        let alone = crate::BaselineParams {
            warmup: 300,
            half_life: 1.0,
            adapt_half_life: 0.0,
            ..crate::BaselineParams::default()
        };
        let mut singles: Vec<crate::Baseline> =
            (0..3).map(|_| crate::Baseline::new(alone)).collect();
        let mut flagged = (0, 0, 0);
        for i in 0..2000u64 {
            let broken = (1200..1500).contains(&i);
            let r = row(i, broken);
            let v = d.observe(i as i64, &r);
            let any_single = singles.iter_mut().zip(r).fold(false, |acc, (s, x)| {
                crate::Detector::observe(s, i as i64, x).is_anomaly || acc
            });
            if i >= 300 {
                if broken {
                    flagged.0 += u32::from(v.is_anomaly);
                    flagged.2 += u32::from(any_single);
                } else {
                    flagged.1 += u32::from(v.is_anomaly);
                }
            }
        }
        // Where the common swing is small the broken relation cannot show: about half.
        assert!(flagged.0 > 120, "{flagged:?}");
        assert!(flagged.1 < 10, "{flagged:?}");
        assert!(flagged.2 < flagged.0 / 4, "{flagged:?}");
    }

    #[test]
    fn bad_rows_are_skipped() {
        let mut d = Hotelling::new(HotellingParams {
            warmup: 4,
            ..HotellingParams::default()
        });
        assert_eq!(d.observe(0, &[1.0, f64::NAN]), NO_VERDICT);
        assert_eq!(d.observe(0, &[]), NO_VERDICT);
        d.observe(0, &[1.0, 2.0]);
        assert_eq!(d.observe(1, &[1.0, 2.0, 3.0]), NO_VERDICT);
        for i in 0..20 {
            d.observe(i, &[f64::MAX, -f64::MAX]);
        }
        // A constant channel is left out; the other still judges.
        let mut d = Hotelling::new(HotellingParams {
            warmup: 10,
            target_alarm_rate: 0.0,
            ..HotellingParams::default()
        });
        for i in 0..10u64 {
            d.observe(i as i64, &[5.0, noise(i)]);
        }
        assert!(d.observe(11, &[5.0, 100.0]).is_anomaly);
        let v = d.observe(12, &[5.0, 100.0]);
        assert!(d.explain(&v).contains("reading 1"));
    }

    /// Naive reference: smoothing from every weight, mean and covariance by two passes,
    /// the distance by solving with the full inverse (Gauss–Jordan).
    fn naive_distance(hist: &[Vec<f64>], warm: usize, half_life: f64, ridge: f64) -> Option<f64> {
        let d = hist[0].len();
        let smooth = |upto: usize| -> Vec<f64> {
            let (mut num, mut den) = (vec![0.0; d], 0.0);
            for (i, r) in hist[..upto].iter().enumerate() {
                let w = 2f64.powf(-((upto - 1 - i) as f64) / half_life);
                for c in 0..d {
                    num[c] += w * r[c];
                }
                den += w;
            }
            num.iter().map(|x| x / den).collect()
        };
        let s: Vec<Vec<f64>> = (1..=warm).map(smooth).collect();
        let mean: Vec<f64> = (0..d)
            .map(|c| s.iter().map(|v| v[c]).sum::<f64>() / warm as f64)
            .collect();
        let cov = |a: usize, b: usize| {
            s.iter()
                .map(|v| (v[a] - mean[a]) * (v[b] - mean[b]))
                .sum::<f64>()
                / warm as f64
        };
        let used: Vec<usize> = (0..d).filter(|&c| cov(c, c) > 0.0).collect();
        let k = used.len();
        if k == 0 {
            return None;
        }
        let mut m: Vec<Vec<f64>> = (0..k)
            .map(|a| {
                let mut row: Vec<f64> = (0..k)
                    .map(|b| cov(used[a], used[b]) * if a == b { 1.0 + ridge } else { 1.0 })
                    .collect();
                row.extend((0..k).map(|b| if a == b { 1.0 } else { 0.0 }));
                row
            })
            .collect();
        for i in 0..k {
            let p = m[i][i];
            if p.abs() < 1e-300 {
                return None;
            }
            for v in &mut m[i] {
                *v /= p;
            }
            for r in 0..k {
                if r != i {
                    let f = m[r][i];
                    let pivot = m[i].clone();
                    for (x, y) in m[r].iter_mut().zip(&pivot) {
                        *x -= f * y;
                    }
                }
            }
        }
        let now = smooth(hist.len());
        let diff: Vec<f64> = used.iter().map(|&c| now[c] - mean[c]).collect();
        let mut q = 0.0;
        for a in 0..k {
            for b in 0..k {
                q += diff[a] * m[a][k + b] * diff[b];
            }
        }
        Some(q.max(0.0).sqrt())
    }

    proptest! {
        #[test]
        fn matches_naive_reference(
            warmup in 4u32..30,
            half_life in 0.5f64..8.0,
            ridge in 0.01f64..1.0,
            d in 1usize..5,
            values in prop::collection::vec(-100.0f64..100.0, 4 * 60),
        ) {
            let params = HotellingParams { warmup, half_life, threshold: 2.0, target_alarm_rate: 0.0, ridge };
            let mut det = Hotelling::new(params);
            let rows: Vec<Vec<f64>> = values.chunks(4).map(|c| c[..d].to_vec()).collect();
            for (i, r) in rows.iter().enumerate() {
                let got = det.observe(i as i64, r);
                crate::judge::check_consistent(&got)?;
                if i < warmup as usize {
                    prop_assert_eq!(got, Verdict::WARMING_UP);
                    continue;
                }
                let want = naive_distance(&rows[..=i], warmup as usize, half_life, ridge);
                match (got.statistic, want) {
                    (Some(g), Some(w)) => prop_assert!((g - w).abs() <= 1e-6 * w.max(1.0), "{} vs {}", g, w),
                    (None, _) => prop_assert!(det.threshold().is_none()),
                    (Some(g), None) => prop_assert!(false, "statistic {} where the reference has none", g),
                }
            }
        }

        #[test]
        fn never_panics(rows in prop::collection::vec(prop::collection::vec(any::<f64>(), 0..4), 0..100)) {
            let mut det = Hotelling::new(HotellingParams { warmup: 4, ..HotellingParams::default() });
            for (i, r) in rows.iter().enumerate() {
                let got = det.observe(i as i64, r);
                crate::judge::check_consistent(&got)?;
                prop_assert!(got.statistic.is_none_or(|s| !s.is_nan()));
            }
        }
    }
}
