//! Calibrated scores: any detector's statistic turned into a tail probability under the
//! sensor's own recent history, so that one score threshold means the same false-alarm
//! rate on every sensor, whatever its scale, noise or distribution.
//!
//! [`TailModel`] keeps the distribution of a statistic's magnitude `m = |statistic|` as an
//! exponentially decayed histogram on a logarithmic scale: 4 buckets per octave (each
//! about 19 % wide), 64 of them, so a window of 16 octaves (a factor 65,536); what falls
//! below the window is kept as one mass, "below". The window starts with its top two
//! octaves above the first magnitude and slides up for a larger one, unless that one lies
//! more than 8 octaves above the window's top: such an extreme (a z-score of 10¹⁵ after a
//! stuck stretch) counts in the top bucket instead of pushing the sensor's usual
//! magnitudes out of the window.
//! Each new magnitude weighs `2^(1/half_life)` times the one before (forward decay: the
//! counts are never multiplied down, the weights of new values grow, and everything is
//! rescaled once they get large), so the history's weight halves every `half_life`
//! values. A magnitude of exactly 0 counts as the lowest possible.
//!
//! The tail probability of `m` is the share of the history's weight above it:
//! the buckets above `m`'s, plus the part of `m`'s own bucket above `m` (linear in
//! `log m` within the bucket). `p(0) = 1`, and 1 below the window (a magnitude smaller than
//! what the window holds is never rare); a magnitude above the window gets 0.
//!
//! [`Calibrated`] wraps any [`Detector`]: each verdict with a statistic is judged by the
//! tail probability `p` of its magnitude under the history *before* it, then learnt.
//! With the target false-alarm rate `r`:
//!
//! ```text
//! is_anomaly = p < r;    anomaly_score = 1 − p^k,  k = ln 2 / ln(1/r)
//! ```
//!
//! so the score is 0.5 exactly at `p = r` (the crate's decision boundary), 0.75 at `p = r²`,
//! 0.875 at `r³`: the same score is the same rarity on every sensor, and a threshold on it
//! gives the same false-alarm rate on every stationary sensor (checked across scales from
//! 10⁻³ to 10⁶ and Gaussian, heavy-tailed, skewed and integer-valued noise by
//! `same_threshold_same_alarm_rate` below). Until `min_events` magnitudes are learnt the
//! verdict is [`Verdict::WARMING_UP`]. Cost: O(1) per event (a logarithm and a sum over at
//! most 64 buckets); state 296 bytes besides the wrapped detector's.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Buckets per octave of magnitude.
const PER_OCTAVE: f64 = 4.0;
/// Buckets kept.
const BUCKETS: usize = 64;
/// Largest slide of the window, in buckets (8 octaves); beyond, a magnitude saturates.
const MAX_SLIDE: i32 = 32;
/// Weights are rescaled once the newest one exceeds this.
const RESCALE_AT: f64 = 1e30;

/// Parameters of a [`TailModel`] and of [`Calibrated`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct CalibrationParams {
    /// Target share of normal values flagged, in `0..0.5`, above 0. Default 0.001.
    pub target_alarm_rate: f64,
    /// Half-life of the history, in values. Finite, at least 10. Default 10,000.
    pub half_life: f64,
    /// Magnitudes to learn before judging. At least 1. Default 1,000.
    pub min_events: u32,
}

impl Default for CalibrationParams {
    fn default() -> Self {
        CalibrationParams {
            target_alarm_rate: 0.001,
            half_life: 10_000.0,
            min_events: 1_000,
        }
    }
}

impl CalibrationParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if !(self.target_alarm_rate > 0.0 && self.target_alarm_rate < 0.5) {
            errors.push(ParamError::new(
                "target_alarm_rate",
                format!(
                    "must be above 0 and below 0.5, got {}",
                    self.target_alarm_rate
                ),
            ));
        }
        if !(self.half_life.is_finite() && self.half_life >= 10.0) {
            errors.push(ParamError::new(
                "half_life",
                format!("must be a finite number ≥ 10, got {}", self.half_life),
            ));
        }
        if self.min_events < 1 {
            errors.push(ParamError::new("min_events", "must be at least 1, got 0"));
        }
        judge::into_result(errors)
    }

    /// The exponent `k` of the score `1 − p^k` (0.5 at `p = r`).
    fn score_exponent(&self) -> f64 {
        std::f64::consts::LN_2 / (1.0 / self.target_alarm_rate).ln()
    }
}

/// Decayed log-scale histogram of a statistic's magnitude. See the
/// [module documentation](self).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TailModel {
    /// Weight growth per value, `2^(1/half_life)`.
    growth: f64,
    /// Weight of the next value.
    weight: f64,
    /// Total weight learnt.
    total: f64,
    /// Weight below the window (including magnitudes of 0).
    below: f64,
    /// Bucket index (`floor(log2(m)·4)`) of `counts[0]`; `None` before any magnitude above 0.
    offset: Option<i32>,
    /// Values learnt.
    count: u64,
    counts: Vec<f32>,
}

fn bucket_position(m: f64) -> f64 {
    m.log2() * PER_OCTAVE
}

impl TailModel {
    /// An empty history whose weight halves every `half_life` values.
    pub fn new(half_life: f64) -> Self {
        TailModel {
            growth: (1.0 / half_life).exp2(),
            weight: 1.0,
            total: 0.0,
            below: 0.0,
            offset: None,
            count: 0,
            counts: vec![0.0; BUCKETS],
        }
    }

    /// Values learnt.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Share of the history's weight above magnitude `m` (1 with no history).
    pub fn tail(&self, m: f64) -> f64 {
        if self.total <= 0.0 || self.total.is_nan() || m.is_nan() {
            return 1.0;
        }
        if m <= 0.0 {
            return 1.0;
        }
        let Some(offset) = self.offset else {
            // Every magnitude so far was 0.
            return 0.0;
        };
        let pos = bucket_position(m);
        let rel = pos - f64::from(offset);
        if rel < 0.0 {
            // Below the window: among the smallest magnitudes seen, never rare.
            return 1.0;
        }
        if rel >= BUCKETS as f64 {
            return 0.0;
        }
        let i = rel as usize;
        let within = rel - i as f64;
        let above: f64 = self.counts[i + 1..]
            .iter()
            .map(|&c| f64::from(c))
            .sum::<f64>()
            + f64::from(self.counts[i]) * (1.0 - within);
        (above / self.total).clamp(0.0, 1.0)
    }

    /// Learns magnitude `m` (non-finite ones are ignored).
    pub fn learn(&mut self, m: f64) {
        if !m.is_finite() {
            return;
        }
        let w = self.weight;
        self.count += 1;
        self.total += w;
        if m <= 0.0 {
            self.below += w;
        } else {
            let mut idx = bucket_position(m).floor().clamp(-1e6, 1e6) as i32;
            let offset = *self
                .offset
                .get_or_insert(idx - BUCKETS as i32 + 2 * PER_OCTAVE as i32);
            let top = offset + BUCKETS as i32 - 1;
            if idx > top + MAX_SLIDE {
                // An extreme: saturate rather than slide the usual magnitudes out.
                idx = top;
            }
            if idx >= offset + BUCKETS as i32 {
                // Slide the window up: the lowest buckets join "below".
                let shift = (idx - (offset + BUCKETS as i32 - 1)) as usize;
                let gone = shift.min(BUCKETS);
                self.below += self.counts[..gone]
                    .iter()
                    .map(|&c| f64::from(c))
                    .sum::<f64>();
                self.counts.rotate_left(gone);
                self.counts[BUCKETS - gone..].fill(0.0);
                self.offset = Some(idx - (BUCKETS as i32 - 1));
            }
            let offset = self.offset.unwrap_or(idx);
            if idx < offset {
                self.below += w;
            } else {
                self.counts[(idx - offset) as usize] += w as f32;
            }
        }
        self.weight *= self.growth;
        if self.weight > RESCALE_AT {
            let s = 1.0 / self.weight;
            self.weight = 1.0;
            self.total *= s;
            self.below *= s;
            for c in &mut self.counts {
                *c = (f64::from(*c) * s) as f32;
            }
        }
    }
}

/// Any detector with its score calibrated on the sensor's own history. See the
/// [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Calibrated<D> {
    inner: D,
    params: CalibrationParams,
    /// `ln 2 / ln(1/r)`.
    exponent: f64,
    model: TailModel,
    /// Tail probability of the latest verdict (for `explain`).
    last_p: f64,
}

impl<D: Detector> Calibrated<D> {
    /// `inner` with its scores calibrated.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(inner: D, params: CalibrationParams) -> Self {
        judge::assert_valid("calibration", params.validate());
        Calibrated {
            inner,
            params,
            exponent: params.score_exponent(),
            model: TailModel::new(params.half_life),
            last_p: 1.0,
        }
    }

    /// The wrapped detector.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The calibration parameters.
    pub fn params(&self) -> &CalibrationParams {
        &self.params
    }

    /// The history of magnitudes.
    pub fn model(&self) -> &TailModel {
        &self.model
    }
}

impl<D> Calibrated<D> {
    /// The same calibration around `f(inner)` (to restore a wrapped state kept in another
    /// form, e.g. one deserialized by its own factory).
    pub fn try_map_inner<E, Err>(
        self,
        f: impl FnOnce(D) -> Result<E, Err>,
    ) -> Result<Calibrated<E>, Err> {
        Ok(Calibrated {
            inner: f(self.inner)?,
            params: self.params,
            exponent: self.exponent,
            model: self.model,
            last_p: self.last_p,
        })
    }
}

impl<D: Detector> Detector for Calibrated<D> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        let raw = self.inner.observe(ts_ms, value);
        let Some(statistic) = raw.statistic else {
            return NO_VERDICT;
        };
        let m = statistic.abs();
        let p = self.model.tail(m);
        let warm = self.model.count() >= u64::from(self.params.min_events);
        self.model.learn(m);
        if !warm {
            return Verdict::WARMING_UP;
        }
        self.last_p = p;
        let score = 1.0 - p.powf(self.exponent);
        judge::consistent(Some(statistic), score, p < self.params.target_alarm_rate)
    }

    fn explain(&self, verdict: &Verdict) -> String {
        format!(
            "tail probability {:.2e} < {} on this sensor's history ({})",
            self.last_p,
            self.params.target_alarm_rate,
            self.inner.explain(verdict)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ewma, EwmaParams, ZScore, ZScoreParams};
    use proptest::prelude::*;

    /// Deterministic uniform numbers in (0, 1).
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// Noise of one synthetic sensor, before its scale and offset.
    #[derive(Clone, Copy, Debug)]
    enum Noise {
        Gaussian,
        /// Student t with 3 degrees of freedom: heavy tails.
        HeavyTailed,
        /// Exponential: skewed.
        Skewed,
        /// A Poisson-like count with mean 4: integer-valued.
        Counts,
        /// Gaussian rounded to steps of half its standard deviation: quantised.
        Quantised,
    }

    fn sample(noise: Noise, rng: &mut Rng) -> f64 {
        match noise {
            Noise::Gaussian => rng.normal(),
            Noise::HeavyTailed => {
                let z = rng.normal();
                let chi2: f64 = (0..3).map(|_| rng.normal().powi(2)).sum();
                z / (chi2 / 3.0).sqrt()
            }
            Noise::Skewed => -rng.uniform().ln(),
            Noise::Counts => {
                // Knuth's method.
                let l = (-4.0f64).exp();
                let (mut k, mut p) = (0.0, 1.0);
                loop {
                    p *= rng.uniform();
                    if p <= l {
                        break k;
                    }
                    k += 1.0;
                }
            }
            Noise::Quantised => (rng.normal() * 2.0).round() / 2.0,
        }
    }

    /// Share of values flagged with `anomaly_score > threshold` after the warm-up.
    fn alarm_rate<D: Detector>(
        mut d: D,
        noise: Noise,
        scale: f64,
        offset: f64,
        threshold: f64,
        seed: u64,
    ) -> f64 {
        let mut rng = Rng(seed);
        let (mut judged, mut flagged) = (0u32, 0u32);
        for i in 0..200_000i64 {
            let v = offset + scale * sample(noise, &mut rng);
            let verdict = d.observe(i * 1000, v);
            if verdict.statistic.is_some() && i >= 20_000 {
                judged += 1;
                flagged += u32::from(verdict.score > threshold);
            }
        }
        f64::from(flagged) / f64::from(judged)
    }

    /// The score calibration promise: one `anomaly_score` threshold, the same false-alarm
    /// rate (within a factor 1.5) on sensors of very different scales and noise.
    #[test]
    fn same_threshold_same_alarm_rate() {
        let params = CalibrationParams {
            target_alarm_rate: 0.01,
            ..CalibrationParams::default()
        };
        let sensors = [
            (Noise::Gaussian, 1e-3, 0.0),
            (Noise::Gaussian, 1e6, 5e7),
            (Noise::HeavyTailed, 1.0, 20.0),
            (Noise::HeavyTailed, 3e4, -1e5),
            (Noise::Skewed, 0.05, 1.0),
            (Noise::Counts, 1.0, 0.0),
            (Noise::Quantised, 10.0, 100.0),
        ];
        // Thresholds: the target itself (score 0.5, p = 0.01) and a stricter one
        // (score 0.6: p = 0.01^(0.4/0.5·...) — whatever it is, the same everywhere).
        for threshold in [0.5, 0.6] {
            for make in ["zscore", "ewma"] {
                let mut rates = Vec::new();
                for (i, &(noise, scale, offset)) in sensors.iter().enumerate() {
                    let rate = match make {
                        "zscore" => alarm_rate(
                            Calibrated::new(
                                ZScore::new(ZScoreParams {
                                    window: 100,
                                    threshold: 3.0,
                                }),
                                params,
                            ),
                            noise,
                            scale,
                            offset,
                            threshold,
                            i as u64 + 1,
                        ),
                        _ => alarm_rate(
                            Calibrated::new(Ewma::new(EwmaParams::default()), params),
                            noise,
                            scale,
                            offset,
                            threshold,
                            i as u64 + 1,
                        ),
                    };
                    rates.push(rate);
                }
                let lo = rates.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = rates.iter().cloned().fold(0.0, f64::max);
                println!(
                    "{make}, anomaly_score > {threshold}: false-alarm rates {:?} %, max/min {:.3}",
                    rates
                        .iter()
                        .map(|r| (r * 1e4).round() / 1e2)
                        .collect::<Vec<_>>(),
                    hi / lo
                );
                assert!(
                    lo > 0.0 && hi / lo <= 1.5,
                    "{make} at {threshold}: {rates:?}"
                );
                if threshold == 0.5 {
                    for r in &rates {
                        assert!(
                            (r / 0.01 - 1.0).abs() < 0.5,
                            "{make}: rate {r} far from the target 0.01: {rates:?}"
                        );
                    }
                }
            }
        }
    }

    /// Without calibration the same detector's verdicts differ widely between those
    /// sensors: the test above is not trivially met.
    #[test]
    fn raw_scores_are_not_calibrated() {
        let d = || {
            ZScore::new(ZScoreParams {
                window: 100,
                threshold: 3.0,
            })
        };
        let gaussian = alarm_rate(d(), Noise::Gaussian, 1.0, 0.0, 0.5, 1);
        let heavy = alarm_rate(d(), Noise::HeavyTailed, 1.0, 0.0, 0.5, 2);
        assert!(heavy / gaussian > 1.5, "{gaussian} {heavy}");
    }

    #[test]
    fn flat_and_zero_statistics_are_never_alarming() {
        let mut d = Calibrated::new(
            ZScore::new(ZScoreParams {
                window: 10,
                threshold: 3.0,
            }),
            CalibrationParams {
                min_events: 5,
                ..CalibrationParams::default()
            },
        );
        for i in 0..500 {
            let v = d.observe(i, 7.0);
            assert!(!v.is_anomaly);
        }
        let mut m = TailModel::new(100.0);
        for _ in 0..100 {
            m.learn(0.0);
        }
        assert_eq!(m.tail(0.0), 1.0);
        assert_eq!(m.tail(1.0), 0.0);
        // After a stuck stretch a z-score can be 10^15: it must not push the usual
        // magnitudes out of the window (which would make every one of them look rare).
        let mut m = TailModel::new(1000.0);
        for i in 0..1000 {
            m.learn(0.5 + (i % 10) as f64 / 5.0);
        }
        m.learn(1e15);
        assert!(m.tail(1.0) > 0.5, "{}", m.tail(1.0));
        assert!(m.tail(1e14) < 0.01);
    }

    /// The naive reference: every magnitude with its weight and its bucket as the window
    /// placed it (the window's moves replayed), the tail recomputed from scratch.
    fn naive_tail(history: &[f64], half_life: f64, m: f64) -> f64 {
        if history.is_empty() || m <= 0.0 {
            return 1.0;
        }
        let n = history.len();
        let w = |i: usize| 2f64.powf(-((n - 1 - i) as f64) / half_life);
        let total: f64 = (0..n).map(w).sum();
        // Replay the window: its lowest bucket, and each magnitude's bucket (None: 0).
        let mut low: Option<i32> = None;
        let mut buckets: Vec<Option<i32>> = Vec::new();
        for &x in history {
            if x <= 0.0 {
                buckets.push(None);
                continue;
            }
            let mut b = bucket_position(x).floor() as i32;
            let l = *low.get_or_insert(b - BUCKETS as i32 + 8);
            let top = l + BUCKETS as i32 - 1;
            if b > top + 32 {
                b = top;
            }
            if b > top {
                low = Some(b - (BUCKETS as i32 - 1));
            }
            buckets.push(Some(b));
        }
        let Some(low) = low else { return 0.0 };
        let pos = bucket_position(m);
        if pos < f64::from(low) {
            return 1.0;
        }
        if pos >= f64::from(low) + BUCKETS as f64 {
            return 0.0;
        }
        let b = pos.floor() as i32;
        let above: f64 = (0..n)
            .map(|i| match buckets[i] {
                Some(bi) if bi >= low && bi > b => w(i),
                Some(bi) if bi >= low && bi == b => w(i) * (1.0 - (pos - f64::from(b))),
                _ => 0.0,
            })
            .sum();
        above / total
    }

    proptest! {
        #[test]
        fn tail_matches_naive_reference(
            half_life in 10.0f64..500.0,
            history in prop::collection::vec(
                prop_oneof![8 => 1e-3f64..1e3, 1 => Just(0.0), 1 => 1e-30f64..1e30], 1..300),
            probes in prop::collection::vec(prop_oneof![0.0f64..2e3, 1e-40f64..1e40], 1..10),
        ) {
            let mut m = TailModel::new(half_life);
            for &x in &history {
                m.learn(x);
            }
            for &q in &probes {
                let got = m.tail(q);
                let want = naive_tail(&history, half_life, q);
                prop_assert!((got - want).abs() < 1e-4, "tail({}) = {} vs {}", q, got, want);
            }
        }

        #[test]
        fn calibrated_verdicts_are_consistent(
            values in prop::collection::vec(prop_oneof![-1e3f64..1e3, Just(f64::NAN), any::<f64>()], 0..400),
        ) {
            let mut d = Calibrated::new(
                ZScore::new(ZScoreParams { window: 5, threshold: 3.0 }),
                CalibrationParams { min_events: 10, target_alarm_rate: 0.05, half_life: 50.0 },
            );
            for (i, &v) in values.iter().enumerate() {
                let got = d.observe(i as i64, v);
                crate::judge::check_consistent(&got)?;
                if got.is_anomaly {
                    prop_assert!(!d.explain(&got).is_empty());
                }
            }
        }
    }
}
