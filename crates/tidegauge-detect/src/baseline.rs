//! Deviation of a smoothed value from a reference learnt at the start and then held.
//!
//! Built for sustained shifts (a valve closing, a leak, a bearing wearing): a rolling
//! window learns a new level within a window's length and stops flagging it, while this
//! detector keeps comparing against the sensor's normal operation as seen during its
//! warm-up, for as long as the shift lasts.
//!
//! Each finite value first updates an exponentially weighted mean `s` of the values seen
//! so far, whose weights halve every `half_life` values (normalised weights, so the first
//! value does not dominate; see [`Ewma`](crate::Ewma)):
//!
//! ```text
//! W ← d·W + 1;   s ← s + (x − s)/W;   d = 2^(−1/half_life)
//! ```
//!
//! Warm-up: the smoothed values of the first `warmup` finite values give the reference
//! mean `μ` and population standard deviation `σ` (while `σ` is still 0 the warm-up goes
//! on until it is not). Then the reference is held, never updated again.
//!
//! Statistic: `z = (s − μ)/σ`, the smoothed value including the current one against the
//! held reference; anomaly when `|z| > threshold`; score
//! [`score_from_ratio`](crate::score_from_ratio)`(|z| / threshold)`. Smoothing makes the
//! statistic persistent: a single outlier moves `s` by at most `(x − s)(1 − d)`, a shift
//! that lasts is flagged for as long as it lasts.
//!
//! Because `σ` is the spread of the *smoothed* warm-up, a sensor with white measurement
//! noise gets a small `σ` (the smoothing averages the noise away) and a drifting sensor a
//! large one: the threshold is in units of what the sensor did while it was normal.
//!
//! A finite value so extreme that the sums overflow restarts the detector from that value
//! (and so the warm-up). Cost: O(1) per event, 96 bytes of state (parameters included).

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Parameters of the [`Baseline`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct BaselineParams {
    /// Finite values whose smoothed values give the reference mean and spread. At least 2.
    /// Default 400 (the training part of a SKAB experiment: about 7 minutes at 1 Hz).
    pub warmup: u32,
    /// Half-life of the smoothing, in values. Finite, above 0. Default 5.
    pub half_life: f64,
    /// Anomaly when `|z|` exceeds this. Finite, above 0. Default 12.8, derived from the
    /// SKAB training rows by `scripts/skab` (12.816, rounded): warmed up on the first 200
    /// training rows of each file, one held-out row in 20 of the next 200 has some of its
    /// 8 sensors above it. Calibrate it on normal data of your own sensors.
    pub threshold: f64,
}

impl Default for BaselineParams {
    fn default() -> Self {
        BaselineParams {
            warmup: 400,
            half_life: 5.0,
            threshold: 12.8,
        }
    }
}

impl BaselineParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if self.warmup < 2 {
            errors.push(ParamError::new(
                "warmup",
                format!("must be at least 2, got {}", self.warmup),
            ));
        }
        judge::check_positive(&mut errors, "half_life", self.half_life);
        judge::check_positive(&mut errors, "threshold", self.threshold);
        judge::into_result(errors)
    }
}

/// Held-reference detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Baseline {
    params: BaselineParams,
    /// Decay per value, `2^(−1/half_life)` (computed once).
    decay: f64,
    /// Sum of the smoothing weights (the newest weighs 1).
    weight: f64,
    /// The smoothed value.
    smoothed: f64,
    /// Warm-up: count, mean and sum of squared deviations of the smoothed values (Welford).
    n: u64,
    mean: f64,
    m2: f64,
    /// (μ, σ) once the warm-up is over.
    reference: Option<(f64, f64)>,
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
            weight: 0.0,
            smoothed: 0.0,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            reference: None,
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &BaselineParams {
        &self.params
    }

    /// The held reference mean and standard deviation, once warmed up.
    pub fn reference(&self) -> Option<(f64, f64)> {
        self.reference
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

    /// Learns the smoothed value into the warm-up statistics; false on overflow.
    fn learn(&mut self) -> bool {
        let s = self.smoothed;
        self.n += 1;
        let d = s - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (s - self.mean);
        self.mean.is_finite() && self.m2.is_finite()
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
        let Some((mu, sigma)) = self.reference else {
            if !self.learn() {
                self.restart();
                self.smooth(value);
                self.learn();
                return Verdict::WARMING_UP;
            }
            let sigma = (self.m2 / self.n as f64).max(0.0).sqrt();
            if self.n >= u64::from(self.params.warmup) && sigma > 0.0 {
                self.reference = Some((self.mean, sigma));
            }
            return Verdict::WARMING_UP;
        };
        let z = (self.smoothed - mu) / sigma;
        judge::over_threshold(z, z.abs(), self.params.threshold)
    }

    fn explain(&self, verdict: &Verdict) -> String {
        let (mu, sigma) = self.reference.unwrap_or((0.0, 0.0));
        format!(
            "|z| {:.2} > {}: smoothed value {} vs reference mean {}, std {}",
            verdict.statistic.unwrap_or(0.0).abs(),
            self.params.threshold,
            judge::num(self.smoothed),
            judge::num(mu),
            judge::num(sigma)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn baseline(warmup: u32, half_life: f64, threshold: f64) -> Baseline {
        Baseline::new(BaselineParams {
            warmup,
            half_life,
            threshold,
        })
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
        assert_eq!(std::mem::size_of::<Baseline>(), 96);
    }

    #[test]
    fn validate_reports_every_field() {
        let errs = BaselineParams {
            warmup: 1,
            half_life: 0.0,
            threshold: f64::INFINITY,
        }
        .validate()
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["warmup", "half_life", "threshold"]);
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
            for (i, &v) in values.iter().enumerate() {
                let got = d.observe(i as i64, v);
                prop_assert!((0.0..=1.0).contains(&got.score));
                prop_assert_eq!(got.is_anomaly, got.score > 0.5);
                if !v.is_finite() {
                    prop_assert_eq!(got, NO_VERDICT);
                    continue;
                }
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
            }
        }

        #[test]
        fn never_panics_and_stays_consistent(
            values in prop::collection::vec(any::<f64>(), 0..200),
            ts in prop::collection::vec(any::<i64>(), 200),
        ) {
            let mut d = baseline(3, 2.0, 3.0);
            for (v, t) in values.iter().zip(&ts) {
                let got = d.observe(*t, *v);
                prop_assert!((0.0..=1.0).contains(&got.score));
                prop_assert_eq!(got.is_anomaly, got.score > 0.5);
                prop_assert!(got.statistic.is_none_or(|s| !s.is_nan()));
                prop_assert!(d.smoothed().is_finite());
                if got.is_anomaly {
                    let _ = d.explain(&got);
                }
            }
        }
    }
}
