//! Deviation of a smoothed value from a reference learnt over a warm-up, with a threshold
//! the detector sets for each sensor from what that sensor did while it was normal.
//!
//! Built for sustained shifts (a valve closing, a leak, a bearing wearing): a rolling
//! window learns a new level within a window's length and stops flagging it, while this
//! detector keeps comparing against the sensor's normal operation as seen during its
//! warm-up, for as long as the shift lasts (and, with `adapt_half_life`, until a lasting
//! change has become the new normal).
//!
//! Each finite value first updates an exponentially weighted mean `s` of the values seen
//! so far, whose weights halve every `half_life` values (normalised weights, so the first
//! value does not dominate; see [`Ewma`](crate::Ewma)):
//!
//! ```text
//! W ← d·W + 1;   s ← s + (x − s)/W;   d = 2^(−1/half_life)
//! ```
//!
//! **Warm-up** (the first `warmup` finite values): the smoothed values give the reference
//! mean `μ` and population standard deviation `σ` (while `σ` is still 0 the warm-up goes
//! on until it is not). From the middle of the warm-up on, each smoothed value is first
//! judged against the reference learnt from the values before it, `m = |s − μ|/σ`, and
//! only then learnt: those out-of-sample deviations show how far this sensor strays while
//! it is normal.
//!
//! **Self-calibrated threshold** (`target_alarm_rate = r > 0`): at the end of the warm-up
//! an exponential tail is fitted to those deviations (peaks over a threshold: `u`, their
//! 90th percentile, nearest rank, and `β`, the mean excess above it), so that
//! `P(m > t) ≈ 0.1·exp(−(t − u)/β)`, and the threshold is the `t` at which that is `r`:
//!
//! ```text
//! threshold = max(min_threshold, u + β·ln(0.1 / r))
//! ```
//!
//! A sensor that strays a lot while normal (a temperature warming up) gets a high
//! threshold, a steady one the floor `min_threshold`. With `r = 0` the threshold is
//! `min_threshold` for every sensor (the fixed threshold of earlier versions).
//!
//! **Adaptation** (`adapt_half_life = h > 0`): after the warm-up the reference keeps
//! learning, slowly, with a half-life of `h` values (`a = 1 − 2^(−1/h)`, `δ = s − μ`): the
//! mean from every value, `μ ← μ + a·δ`, so a lasting change of level stops being flagged
//! after a few half-lives instead of never; the spread only from values that are not
//! anomalies, `σ² ← (1 − a)(σ² + a·δ²)`, so a shift does not widen it (which would hide
//! the shift long before the mean has moved). `h = 0` holds the reference for ever.
//!
//! Statistic: `z = (s − μ)/σ`, the smoothed value including the current one against the
//! reference before it; anomaly when `|z| > threshold`; score
//! [`score_from_ratio`](crate::score_from_ratio)`(|z| / threshold)`. Smoothing makes the
//! statistic persistent: a single outlier moves `s` by at most `(x − s)(1 − d)`, a shift
//! that lasts is flagged for as long as it lasts.
//!
//! A finite value so extreme that the sums overflow restarts the detector from that value
//! (and so the warm-up). Cost: O(1) per event after the warm-up (sorting the warm-up's
//! deviations once at its end, O(w log w)); state 152 bytes, plus 4 bytes per value of the
//! second half of the warm-up while it lasts.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Share of the warm-up's deviations above the tail's threshold `u` (its 90th percentile).
const TAIL_SHARE: f64 = 0.1;

/// Parameters of the [`Baseline`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct BaselineParams {
    /// Finite values whose smoothed values give the reference mean and spread; the second
    /// half of them also the self-calibrated threshold. At least 2, at most 1,000,000.
    /// Default 400 (the training part of a SKAB experiment: about 7 minutes at 1 Hz).
    pub warmup: u32,
    /// Half-life of the smoothing, in values. Finite, above 0. Default 5.
    pub half_life: f64,
    /// The lowest threshold on `|z|` (the threshold itself when `target_alarm_rate` is 0).
    /// Finite, above 0. Default 5.5, derived from the SKAB training rows without labels
    /// (see `docs/detectors.md`).
    pub threshold: f64,
    /// Share of normal values the self-calibrated threshold aims to flag, in `0..1`; 0
    /// turns the self-calibration off. Default 0.001 (one value in a thousand).
    pub target_alarm_rate: f64,
    /// Half-life, in values, of the reference's slow adaptation after the warm-up; 0 holds
    /// it for ever. Finite, ≥ 0. Default 3600 (an hour at 1 Hz).
    pub adapt_half_life: f64,
}

impl Default for BaselineParams {
    fn default() -> Self {
        BaselineParams {
            warmup: 400,
            half_life: 5.0,
            threshold: 5.5,
            target_alarm_rate: 0.001,
            adapt_half_life: 3600.0,
        }
    }
}

impl BaselineParams {
    /// The old held-reference detector: fixed `threshold`, reference never adapted.
    pub fn held(warmup: u32, half_life: f64, threshold: f64) -> Self {
        BaselineParams {
            warmup,
            half_life,
            threshold,
            target_alarm_rate: 0.0,
            adapt_half_life: 0.0,
        }
    }

    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        judge::check_count(&mut errors, "warmup", self.warmup, 2..=1_000_000);
        judge::check_positive(&mut errors, "half_life", self.half_life);
        judge::check_positive(&mut errors, "threshold", self.threshold);
        judge::check_alarm_rate(&mut errors, "target_alarm_rate", self.target_alarm_rate);
        judge::check_non_negative(&mut errors, "adapt_half_life", self.adapt_half_life);
        judge::into_result(errors)
    }

    /// Where the warm-up starts collecting out-of-sample deviations: its second half.
    fn calibration_start(&self) -> u64 {
        u64::from(self.warmup / 2).max(2)
    }
}

/// The reference once the warm-up is over.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Reference {
    /// Reference mean of the smoothed values.
    pub mean: f64,
    /// Reference variance of the smoothed values.
    pub var: f64,
    /// Threshold on `|z|` in force for this sensor.
    pub threshold: f64,
}

/// Held-reference detector with a self-calibrated threshold. See the
/// [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Baseline {
    params: BaselineParams,
    /// Decay per value, `2^(−1/half_life)` (computed once).
    decay: f64,
    /// Adaptation step after the warm-up, `1 − 2^(−1/adapt_half_life)` (0: held).
    adapt: f64,
    /// Sum of the smoothing weights (the newest weighs 1).
    weight: f64,
    /// The smoothed value.
    smoothed: f64,
    /// Warm-up: count, mean and sum of squared deviations of the smoothed values (Welford).
    n: u64,
    mean: f64,
    m2: f64,
    /// Out-of-sample deviations of the warm-up's second half (emptied at its end).
    deviations: Vec<f32>,
    /// The reference once the warm-up is over.
    reference: Option<Reference>,
}

/// The self-calibrated threshold from the warm-up's deviations (see the module docs).
pub(crate) fn tail_threshold(deviations: &mut [f32], floor: f64, rate: f64) -> f64 {
    if rate <= 0.0 || deviations.is_empty() {
        return floor;
    }
    deviations.sort_unstable_by(f32::total_cmp);
    let n = deviations.len();
    let rank = ((1.0 - TAIL_SHARE) * n as f64).ceil() as usize;
    let u = f64::from(deviations[rank.clamp(1, n) - 1]);
    let (count, sum) = deviations
        .iter()
        .map(|&d| f64::from(d))
        .filter(|&d| d > u)
        .fold((0u32, 0.0), |(c, s), d| (c + 1, s + d - u));
    let beta = if count > 0 { sum / f64::from(count) } else { u };
    let t = u + beta * (TAIL_SHARE / rate).ln();
    if t.is_finite() { floor.max(t) } else { floor }
}

impl Baseline {
    /// A detector at the start of its warm-up.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: BaselineParams) -> Self {
        judge::assert_valid("baseline", params.validate());
        Baseline {
            params,
            decay: (-1.0 / params.half_life).exp2(),
            adapt: if params.adapt_half_life > 0.0 {
                -(-std::f64::consts::LN_2 / params.adapt_half_life).exp_m1()
            } else {
                0.0
            },
            weight: 0.0,
            smoothed: 0.0,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            deviations: Vec::new(),
            reference: None,
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &BaselineParams {
        &self.params
    }

    /// The reference mean and standard deviation, once warmed up.
    pub fn reference(&self) -> Option<(f64, f64)> {
        self.reference.map(|r| (r.mean, r.var.sqrt()))
    }

    /// The threshold on `|z|` in force, once warmed up.
    pub fn threshold(&self) -> Option<f64> {
        self.reference.map(|r| r.threshold)
    }

    /// The current smoothed value (0 before any value).
    pub fn smoothed(&self) -> f64 {
        self.smoothed
    }

    fn restart(&mut self) {
        *self = Baseline::new(self.params);
    }

    /// Smooths `x` in; false when the smoothed value overflowed.
    fn smooth(&mut self, x: f64) -> bool {
        self.weight = self.weight * self.decay + 1.0;
        self.smoothed += (x - self.smoothed) / self.weight;
        self.smoothed.is_finite()
    }

    /// Learns the smoothed value into the warm-up statistics (after noting its deviation
    /// from the reference so far, in the warm-up's second half); false on overflow.
    fn learn(&mut self) -> bool {
        let s = self.smoothed;
        if self.n >= self.params.calibration_start() && self.params.target_alarm_rate > 0.0 {
            let sigma = (self.m2 / self.n as f64).sqrt();
            if sigma > 0.0 {
                let m = ((s - self.mean) / sigma).abs();
                if m.is_finite() {
                    self.deviations.push(m as f32);
                }
            }
        }
        self.n += 1;
        let d = s - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (s - self.mean);
        self.mean.is_finite() && self.m2.is_finite()
    }

    /// Ends the warm-up once it is long enough and has spread.
    fn maybe_finish_warmup(&mut self) {
        let var = (self.m2 / self.n as f64).max(0.0);
        if self.n >= u64::from(self.params.warmup) && var > 0.0 {
            let threshold = tail_threshold(
                &mut self.deviations,
                self.params.threshold,
                self.params.target_alarm_rate,
            );
            self.deviations = Vec::new();
            self.reference = Some(Reference {
                mean: self.mean,
                var,
                threshold,
            });
        }
    }
}

impl Detector for Baseline {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        if !self.smooth(value) {
            // Overflow from values near f64::MAX: start again from this value.
            self.restart();
            self.smooth(value);
            self.learn();
            return Verdict::WARMING_UP;
        }
        let Some(r) = self.reference else {
            if !self.learn() {
                self.restart();
                self.smooth(value);
                self.learn();
                return Verdict::WARMING_UP;
            }
            self.maybe_finish_warmup();
            return Verdict::WARMING_UP;
        };
        let sigma = r.var.sqrt();
        let diff = self.smoothed - r.mean;
        let verdict = if sigma > 0.0 {
            let z = diff / sigma;
            judge::over_threshold(z, z.abs(), r.threshold)
        } else {
            NO_VERDICT
        };
        if self.adapt > 0.0 {
            let a = self.adapt;
            let mean = r.mean + a * diff;
            let var = if verdict.is_anomaly {
                r.var
            } else {
                (1.0 - a) * (r.var + a * diff * diff)
            };
            if mean.is_finite() && var.is_finite() {
                self.reference = Some(Reference { mean, var, ..r });
            }
        }
        verdict
    }

    fn explain(&self, verdict: &Verdict) -> String {
        let r = self.reference.unwrap_or(Reference {
            mean: 0.0,
            var: 0.0,
            threshold: self.params.threshold,
        });
        format!(
            "|z| {} > {}: smoothed value {} vs reference mean {}, std {}",
            judge::stat(verdict.statistic.unwrap_or(0.0).abs()),
            judge::num(r.threshold),
            judge::num(self.smoothed),
            judge::num(r.mean),
            judge::num(r.var.sqrt())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn baseline(warmup: u32, half_life: f64, threshold: f64) -> Baseline {
        Baseline::new(BaselineParams::held(warmup, half_life, threshold))
    }

    /// Deterministic noise in roughly −1..1.
    fn noise(i: u64) -> f64 {
        let x = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn flags_a_sustained_shift_for_as_long_as_it_lasts() {
        let mut d = baseline(200, 5.0, 4.0);
        let shifted = |i: u64| (300..700).contains(&i);
        let mut flagged = Vec::new();
        for i in 0..1000u64 {
            let v = d.observe(i as i64, noise(i) + if shifted(i) { 2.0 } else { 0.0 });
            if i < 200 {
                assert_eq!(v, Verdict::WARMING_UP, "row {i}");
            }
            flagged.push(v.is_anomaly);
        }
        // A rolling window would have learnt the new level long before row 700.
        let inside = (320..700).filter(|&i| flagged[i]).count();
        assert_eq!(
            inside, 380,
            "every row of the shift after the smoothing caught up"
        );
        let outside = (200..300).chain(730..1000).filter(|&i| flagged[i]).count();
        assert_eq!(outside, 0);
        let v = d.observe(1000, 30.0);
        assert!(
            d.explain(&v).contains("reference mean"),
            "{}",
            d.explain(&v)
        );
    }

    #[test]
    fn a_single_outlier_is_damped() {
        let mut d = baseline(100, 5.0, 4.0);
        for i in 0..200u64 {
            d.observe(i as i64, noise(i));
        }
        // One reading 3 noise amplitudes away moves the smoothed value by about 13 % of it.
        let v = d.observe(200, 3.0);
        assert!(!v.is_anomaly, "{v:?}");
    }

    #[test]
    fn constant_warm_up_extends_until_spread_appears() {
        let mut d = baseline(3, 2.0, 3.0);
        for i in 0..10 {
            assert_eq!(d.observe(i, 1.0), Verdict::WARMING_UP);
        }
        assert!(d.reference().is_none());
        assert_eq!(d.observe(10, 2.0), Verdict::WARMING_UP);
        assert!(d.reference().is_some());
        assert_eq!(d.observe(11, f64::NAN), NO_VERDICT);
        assert!(d.observe(12, 2.0).statistic.is_some());
    }

    #[test]
    fn non_finite_values_are_not_learned() {
        let mut d = baseline(2, 1.0, 3.0);
        d.observe(0, 1.0);
        let before = (d.smoothed(), d.n);
        assert_eq!(d.observe(1, f64::INFINITY), NO_VERDICT);
        assert_eq!(d.observe(1, f64::NAN), NO_VERDICT);
        assert_eq!((d.smoothed(), d.n), before);
    }

    #[test]
    fn extreme_values_restart_instead_of_poisoning() {
        let mut d = baseline(2, 3.0, 3.0);
        d.observe(0, f64::MAX);
        d.observe(1, -f64::MAX);
        d.observe(2, f64::MAX);
        assert!(d.smoothed().is_finite());
        for i in 3..20 {
            d.observe(i, i as f64);
        }
        let (mu, sigma) = d.reference().expect("warmed up again");
        assert!(mu.is_finite() && sigma.is_finite() && sigma > 0.0);
    }

    #[test]
    fn state_is_as_small_as_documented() {
        assert_eq!(std::mem::size_of::<Baseline>(), 152);
    }

    #[test]
    fn validate_reports_every_field() {
        let errs = BaselineParams {
            warmup: 1,
            half_life: 0.0,
            threshold: f64::INFINITY,
            target_alarm_rate: 1.0,
            adapt_half_life: -1.0,
        }
        .validate()
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            vec![
                "warmup",
                "half_life",
                "threshold",
                "target_alarm_rate",
                "adapt_half_life"
            ]
        );
        assert!(BaselineParams::default().validate().is_ok());
    }

    /// The naive reference: the smoothed value recomputed from every weight, the reference
    /// by two passes over the warm-up's smoothed values.
    fn naive_smoothed(hist: &[f64], half_life: f64) -> f64 {
        let n = hist.len();
        let (mut num, mut den) = (0.0, 0.0);
        for (i, x) in hist.iter().enumerate() {
            let w = 2f64.powf(-((n - 1 - i) as f64) / half_life);
            num += w * x;
            den += w;
        }
        num / den
    }

    fn two_pass(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (
            m,
            (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n).sqrt(),
        )
    }

    #[test]
    fn self_calibration_sets_each_sensor_its_own_threshold() {
        let params = BaselineParams {
            warmup: 200,
            adapt_half_life: 0.0,
            ..BaselineParams::default()
        };
        // A steady sensor (white noise) and one drifting while normal (a slow sine).
        let mut steady = Baseline::new(params);
        let mut drifting = Baseline::new(params);
        for i in 0..200u64 {
            steady.observe(i as i64, noise(i));
            drifting.observe(i as i64, noise(i) + 3.0 * (i as f64 / 40.0).sin());
        }
        let (ts, td) = (steady.threshold().unwrap(), drifting.threshold().unwrap());
        assert!(ts >= params.threshold && td >= ts, "{ts} {td}");
        // With the self-calibration off, both get the floor.
        let mut fixed = Baseline::new(BaselineParams {
            target_alarm_rate: 0.0,
            ..params
        });
        for i in 0..200u64 {
            fixed.observe(i as i64, noise(i) + 3.0 * (i as f64 / 40.0).sin());
        }
        assert_eq!(fixed.threshold(), Some(params.threshold));
    }

    #[test]
    fn tail_threshold_follows_the_fitted_tail() {
        // 10 deviations: u (90th percentile, nearest rank) = 9, one excess of 1 -> β = 1.
        let mut d: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let t = tail_threshold(&mut d, 0.5, 0.001);
        assert!((t - (9.0 + (100.0f64).ln())).abs() < 1e-9, "{t}");
        assert_eq!(tail_threshold(&mut d, 50.0, 0.001), 50.0);
        assert_eq!(tail_threshold(&mut d, 0.5, 0.0), 0.5);
        assert_eq!(tail_threshold(&mut [], 0.5, 0.01), 0.5);
    }

    #[test]
    fn a_lasting_shift_is_absorbed_by_adaptation() {
        let params = BaselineParams {
            warmup: 100,
            threshold: 4.0,
            target_alarm_rate: 0.0,
            adapt_half_life: 50.0,
            ..BaselineParams::default()
        };
        let mut adaptive = Baseline::new(params);
        let mut held = Baseline::new(BaselineParams {
            adapt_half_life: 0.0,
            ..params
        });
        let mut flags = Vec::new();
        for i in 0..2000u64 {
            let v = noise(i) + if i >= 300 { 5.0 } else { 0.0 };
            flags.push((
                adaptive.observe(i as i64, v).is_anomaly,
                held.observe(i as i64, v).is_anomaly,
            ));
        }
        assert_eq!(flags[320], (true, true), "both flag the shift first");
        assert_eq!(
            flags[1999],
            (false, true),
            "held flags for ever, adaptive stops"
        );
    }

    /// The threshold the naive reference expects from the warm-up's deviations.
    fn naive_threshold(deviations: &[f32], floor: f64, rate: f64) -> f64 {
        if rate == 0.0 || deviations.is_empty() {
            return floor;
        }
        let mut v: Vec<f64> = deviations.iter().map(|&d| f64::from(d)).collect();
        v.sort_by(f64::total_cmp);
        let k = ((0.9 * v.len() as f64).ceil() as usize).max(1);
        let u = v[k - 1];
        let ex: Vec<f64> = v.iter().filter(|&&d| d > u).map(|d| d - u).collect();
        let beta = if ex.is_empty() {
            u
        } else {
            ex.iter().sum::<f64>() / ex.len() as f64
        };
        floor.max(u + beta * (0.1 / rate).ln())
    }

    proptest! {
        #[test]
        fn matches_naive_reference(
            warmup in 2u32..40,
            half_life in 0.3f64..20.0,
            threshold in 0.5f64..6.0,
            values in prop::collection::vec(
                prop_oneof![8 => -1e3f64..1e3, 1 => Just(f64::NAN), 1 => (0i32..3).prop_map(f64::from)],
                1..250),
        ) {
            let mut d = baseline(warmup, half_life, threshold);
            let mut hist: Vec<f64> = Vec::new();
            let mut smoothed: Vec<f64> = Vec::new();
            // Length of the warm-up once it ended (None while warming up).
            let mut warm: Option<usize> = None;
            crate::judge::judge_finite(&mut d, &values, |d, v, got| {
                hist.push(v);
                let s = naive_smoothed(&hist, half_life);
                let scale = hist.iter().fold(1.0f64, |a, x| a.max(x.abs()));
                match warm {
                    None => {
                        smoothed.push(s);
                        prop_assert_eq!(got, Verdict::WARMING_UP);
                        let (m, sd) = two_pass(&smoothed);
                        match d.reference() {
                            Some((mu, sigma)) => {
                                prop_assert!(smoothed.len() >= warmup as usize);
                                prop_assert!((mu - m).abs() <= 1e-9 * scale, "{} vs {}", mu, m);
                                prop_assert!((sigma - sd).abs() <= 1e-6 * scale, "{} vs {}", sigma, sd);
                                warm = Some(smoothed.len());
                            }
                            None => prop_assert!(
                                smoothed.len() < warmup as usize || sd <= 1e-6 * scale,
                                "still warming up with spread {}", sd
                            ),
                        }
                    }
                    Some(n) => {
                        let (m, sd) = two_pass(&smoothed[..n]);
                        let z = got.statistic.expect("statistic once warm");
                        if sd > 1e-6 * scale {
                            let want = (s - m) / sd;
                            prop_assert!((z - want).abs() <= 1e-6 * want.abs().max(1.0), "{} vs {}", z, want);
                            if (want.abs() - threshold).abs() > 1e-6 * threshold.max(want.abs()) {
                                prop_assert_eq!(got.is_anomaly, want.abs() > threshold);
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }

        #[test]
        fn never_panics_and_stays_consistent(
            values in prop::collection::vec(any::<f64>(), 0..200),
            ts in prop::collection::vec(any::<i64>(), 200),
        ) {
            let mut d = baseline(3, 2.0, 3.0);
            let events = ts.iter().copied().zip(values.iter().copied());
            crate::judge::check_any_input(&mut d, events, |d| {
                prop_assert!(d.smoothed().is_finite());
                Ok(())
            })?;
        }

        #[test]
        fn self_calibrated_matches_naive_reference(
            warmup in 4u32..60,
            half_life in 0.3f64..10.0,
            floor in 0.5f64..6.0,
            rate in prop_oneof![Just(0.0), 1e-4f64..0.2],
            adapt in prop_oneof![Just(0.0), 1.0f64..100.0],
            values in prop::collection::vec(
                prop_oneof![8 => -1e3f64..1e3, 1 => Just(f64::NAN), 1 => (0i32..3).prop_map(f64::from)],
                1..250),
        ) {
            let params = BaselineParams { warmup, half_life, threshold: floor, target_alarm_rate: rate, adapt_half_life: adapt };
            let mut d = Baseline::new(params);
            let a = if adapt > 0.0 { 1.0 - 2f64.powf(-1.0 / adapt) } else { 0.0 };
            let start = ((warmup / 2) as usize).max(2);
            let mut hist: Vec<f64> = Vec::new();
            let mut smoothed: Vec<f64> = Vec::new();
            let mut deviations: Vec<f32> = Vec::new();
            // (mean, var, threshold) once warm.
            let mut reference: Option<(f64, f64, f64)> = None;
            crate::judge::judge_finite(&mut d, &values, |d, v, got| {
                hist.push(v);
                let s = naive_smoothed(&hist, half_life);
                let scale = hist.iter().fold(1.0f64, |a, x| a.max(x.abs()));
                match reference {
                    None => {
                        prop_assert_eq!(got, Verdict::WARMING_UP);
                        if smoothed.len() >= start && rate > 0.0 {
                            let (m, sd) = two_pass(&smoothed);
                            if sd > 1e-6 * scale {
                                deviations.push(((s - m) / sd).abs() as f32);
                            }
                        }
                        smoothed.push(s);
                        let (m, sd) = two_pass(&smoothed);
                        if let Some((mu, sigma)) = d.reference() {
                            prop_assert!((mu - m).abs() <= 1e-9 * scale);
                            prop_assert!((sigma - sd).abs() <= 1e-6 * scale);
                            let want = naive_threshold(&deviations, floor, rate);
                            let t = d.threshold().unwrap();
                            prop_assert!((t - want).abs() <= 1e-3 * want, "threshold {} vs {}", t, want);
                            reference = Some((mu, sigma * sigma, t));
                        }
                    }
                    Some((mu, var, t)) => {
                        let z = got.statistic.expect("statistic once warm");
                        let want = (s - mu) / var.sqrt();
                        prop_assert!((z - want).abs() <= 1e-6 * want.abs().max(1.0), "{} vs {}", z, want);
                        if (want.abs() - t).abs() > 1e-6 * t.max(want.abs()) {
                            prop_assert_eq!(got.is_anomaly, want.abs() > t);
                        }
                        let diff = s - mu;
                        let var = if got.is_anomaly { var } else { (1.0 - a) * (var + a * diff * diff) };
                        reference = Some((mu + a * diff, var, t));
                    }
                }
                Ok(())
            })?;
        }
    }
}
