//! Exponentially weighted moving average (EWMA) z-score.
//!
//! Each past value carries a weight that halves every `half_life` — counted in events or in
//! milliseconds of event time ([`HalfLife`]). With decay `d = 2^(−steps / half_life)` per
//! step (`steps` = 1 event, or the event-time gap in ms), the state is the normalised
//! weighted mean and population variance of all finite values seen:
//!
//! ```text
//! W ← d·W + 1;   a = 1/W;   δ = x − mean;   mean ← mean + a·δ;   var ← (1 − a)·(var + a·δ²)
//! ```
//!
//! Once the history is long, `a` settles at `α = 1 − 2^(−steps / half_life)`, the usual EWMA
//! smoothing factor; early on the weights are normalised, so the first value does not
//! dominate the mean. In the time mode a gap of 0 ms (equal timestamps) gives the new value
//! the same weight as the previous one, and a timestamp earlier than the latest one seen
//! counts as a gap of 0 (the clock never runs backwards).
//!
//! Statistic: `z = (x − mean) / std` against the state *before* `x`; anomaly when
//! `|z| > threshold`; score [`score_from_ratio`](crate::score_from_ratio)`(|z| / threshold)`.
//! No statistic while the variance is 0 (all values so far equal).
//!
//! Warm-up: `min_events` finite values. A finite value so extreme that the variance
//! overflows restarts the statistics from that value (and so the warm-up).
//!
//! Cost: O(1) per event, 48 bytes of state.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// How fast old values lose weight: their weight halves every half-life.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum HalfLife {
    /// Half-life in number of (finite) events. Finite, above 0.
    Events(f64),
    /// Half-life in milliseconds of event time. Finite, above 0.
    Millis(f64),
}

/// Parameters of the [`Ewma`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct EwmaParams {
    /// How fast the mean and variance forget. Default `HalfLife::Events(30.0)`.
    pub half_life: HalfLife,
    /// Anomaly when `|z|` exceeds this. Finite, above 0. Default 3.0.
    pub threshold: f64,
    /// Finite values to learn from before judging. At least 2. Default 30.
    pub min_events: u32,
}

impl Default for EwmaParams {
    fn default() -> Self {
        EwmaParams {
            half_life: HalfLife::Events(30.0),
            threshold: 3.0,
            min_events: 30,
        }
    }
}

impl EwmaParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        let (HalfLife::Events(h) | HalfLife::Millis(h)) = self.half_life;
        judge::check_positive(&mut errors, "half_life", h);
        judge::check_positive(&mut errors, "threshold", self.threshold);
        if self.min_events < 2 {
            errors.push(ParamError::new(
                "min_events",
                format!("must be at least 2, got {}", self.min_events),
            ));
        }
        judge::into_result(errors)
    }
}

/// Exponentially weighted mean and population variance with normalised weights; shared by
/// [`Ewma`] and the per-slot baselines of [`Seasonal`](crate::Seasonal).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct EwStats {
    /// Sum of the weights of all values seen (the newest weighs 1).
    weight: f64,
    mean: f64,
    var: f64,
    /// Finite values learned since the last (re)start.
    count: u64,
}

impl EwStats {
    /// Number of values learned.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn mean(&self) -> f64 {
        self.mean
    }

    pub(crate) fn std(&self) -> f64 {
        self.var.sqrt()
    }

    /// z of `x` against the current state; `None` when the variance is 0.
    pub(crate) fn z(&self, x: f64) -> Option<f64> {
        (self.var > 0.0).then(|| (x - self.mean) / self.var.sqrt())
    }

    /// Learns finite `x` after the older weights were multiplied by `decay` (in `0..=1`).
    pub(crate) fn push(&mut self, x: f64, decay: f64) {
        let old = self.weight * decay;
        let w = old + 1.0;
        let a = 1.0 / w;
        // 1 − a, computed as old/w: `1.0 - a` cancels catastrophically when the history has
        // decayed to almost nothing (a ≈ 1), e.g. after a long gap in event time.
        let keep = old / w;
        let diff = x - self.mean;
        let mean = self.mean + a * diff;
        let var = if old == 0.0 {
            0.0
        } else {
            keep * (self.var + a * diff * diff)
        };
        if mean.is_finite() && var.is_finite() {
            *self = EwStats {
                weight: w,
                mean,
                var,
                count: self.count + 1,
            };
        } else {
            // Overflow from values near f64::MAX: start again from this value.
            *self = EwStats {
                weight: 1.0,
                mean: x,
                var: 0.0,
                count: 1,
            };
        }
    }
}

/// EWMA z-score detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Ewma {
    params: EwmaParams,
    stats: EwStats,
    /// Latest event time seen (time mode), `None` before the first event.
    clock_ms: Option<i64>,
    /// Decay per event in the events mode, `2^(−1/half_life)` (computed once).
    event_decay: f64,
}

impl Ewma {
    /// A detector with no history.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: EwmaParams) -> Self {
        judge::assert_valid("ewma", params.validate());
        Ewma {
            params,
            stats: EwStats::default(),
            clock_ms: None,
            event_decay: match params.half_life {
                HalfLife::Events(h) => (-1.0 / h).exp2(),
                HalfLife::Millis(_) => 1.0,
            },
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &EwmaParams {
        &self.params
    }

    /// Current weighted mean (0 before any value).
    pub fn mean(&self) -> f64 {
        self.stats.mean()
    }

    /// Current weighted population standard deviation.
    pub fn std(&self) -> f64 {
        self.stats.std()
    }

    /// Weight decay applied to the history when an event at `ts_ms` arrives.
    fn decay(&self, ts_ms: i64) -> f64 {
        match self.params.half_life {
            HalfLife::Events(_) => self.event_decay,
            HalfLife::Millis(h) => match self.clock_ms {
                Some(clock) => {
                    let gap = judge::elapsed_ms(ts_ms, clock).max(0) as f64;
                    (-gap / h).exp2()
                }
                None => 1.0,
            },
        }
    }
}

impl Detector for Ewma {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        let verdict = if self.stats.count() < u64::from(self.params.min_events) {
            Verdict::WARMING_UP
        } else {
            match self.stats.z(value) {
                Some(z) => judge::over_threshold(z, z.abs(), self.params.threshold),
                None => NO_VERDICT,
            }
        };
        let decay = self.decay(ts_ms);
        self.stats.push(value, decay);
        self.clock_ms = Some(self.clock_ms.map_or(ts_ms, |c| c.max(ts_ms)));
        verdict
    }

    fn explain(&self, verdict: &Verdict) -> String {
        let half_life = match self.params.half_life {
            HalfLife::Events(h) => format!("{h} events"),
            HalfLife::Millis(h) => judge::human_ms(h as i64),
        };
        match verdict.statistic {
            Some(z) => format!(
                "|z| {} > {} (EWMA, half-life {half_life})",
                judge::stat(z.abs()),
                self.params.threshold
            ),
            None => String::from("no z-score"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ewma(half_life: HalfLife, threshold: f64, min_events: u32) -> Ewma {
        Ewma::new(EwmaParams {
            half_life,
            threshold,
            min_events,
        })
    }

    /// The naive reference: keep everything, recompute every weight from scratch.
    /// `clock[i]` is the event time of value `i` (running maximum of timestamps).
    fn naive(hist: &[(f64, f64)], half_life: HalfLife) -> (f64, f64) {
        let n = hist.len();
        let last_clock = hist[n - 1].0;
        let weights: Vec<f64> = (0..n)
            .map(|i| match half_life {
                HalfLife::Events(h) => 2f64.powf(-((n - 1 - i) as f64) / h),
                HalfLife::Millis(h) => 2f64.powf(-(last_clock - hist[i].0) / h),
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mean = hist
            .iter()
            .zip(&weights)
            .map(|((_, x), w)| w * x)
            .sum::<f64>()
            / total;
        let var = hist
            .iter()
            .zip(&weights)
            .map(|((_, x), w)| w * (x - mean) * (x - mean))
            .sum::<f64>()
            / total;
        (mean, var)
    }

    #[test]
    fn warm_up_and_first_verdicts() {
        let mut d = ewma(HalfLife::Events(10.0), 3.0, 3);
        assert_eq!(d.observe(0, 1.0), Verdict::WARMING_UP);
        assert_eq!(d.observe(1, 2.0), Verdict::WARMING_UP);
        assert_eq!(d.observe(2, 3.0), Verdict::WARMING_UP);
        let v = d.observe(3, 2.0);
        assert!(v.statistic.is_some() && !v.is_anomaly);
        let v = d.observe(4, 50.0);
        assert!(v.is_anomaly, "{v:?}");
        assert!(d.explain(&v).contains("half-life 10 events"));
    }

    #[test]
    fn nan_is_not_learned() {
        let mut d = ewma(HalfLife::Events(10.0), 3.0, 2);
        d.observe(0, 1.0);
        d.observe(1, 3.0);
        let (m, s) = (d.mean(), d.std());
        assert_eq!(d.observe(2, f64::NAN), NO_VERDICT);
        assert_eq!(d.observe(3, f64::INFINITY), NO_VERDICT);
        assert_eq!((d.mean(), d.std()), (m, s));
    }

    #[test]
    fn constant_input_has_no_statistic() {
        let mut d = ewma(HalfLife::Events(5.0), 3.0, 2);
        for i in 0..50 {
            let v = d.observe(i, 7.0);
            assert_eq!(v.statistic, None);
        }
        assert_eq!(d.std(), 0.0);
    }

    #[test]
    fn equal_and_backward_timestamps_do_not_decay() {
        let mut d = ewma(HalfLife::Millis(1000.0), 3.0, 2);
        d.observe(5000, 1.0);
        d.observe(5000, 3.0); // same time: equal weights
        assert_eq!(d.mean(), 2.0);
        d.observe(4000, 5.0); // earlier: counts as no gap
        assert!((d.mean() - 3.0).abs() < 1e-12);
        d.observe(i64::MIN, 1.0);
        d.observe(i64::MAX, 1.0); // an enormous gap forgets everything
        assert_eq!(d.mean(), 1.0);
    }

    #[test]
    fn time_half_life_halves_weight() {
        let mut d = ewma(HalfLife::Millis(1000.0), 3.0, 2);
        d.observe(0, 0.0);
        d.observe(1000, 3.0);
        // weights 0.5 and 1: mean = 3 / 1.5 = 2
        assert!((d.mean() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn long_gap_keeps_variance_precise() {
        // After 5232 ms with a 150 ms half-life the old value weighs 2^-34.9; computing
        // 1 − a as `1.0 - 1.0 / w` lost 6 digits here (z off by 2e-6 relative).
        let mut d = ewma(HalfLife::Millis(150.0), 3.0, 2);
        d.observe(0, 0.0);
        d.observe(5232, -898.4809178551135);
        let z = d.observe(5232, 0.0).statistic.unwrap();
        let w0 = 2f64.powf(-5232.0 / 150.0);
        let mean = -898.4809178551135 / (1.0 + w0);
        let var = (w0 * mean * mean + (-898.4809178551135 - mean).powi(2)) / (1.0 + w0);
        let want = -mean / var.sqrt();
        assert!((z - want).abs() <= 1e-9 * want.abs(), "{z} vs {want}");
    }

    #[test]
    fn extreme_values_restart_instead_of_poisoning() {
        let mut d = ewma(HalfLife::Events(5.0), 3.0, 2);
        d.observe(0, f64::MAX);
        d.observe(1, -f64::MAX);
        assert!(d.mean().is_finite() && d.std().is_finite());
        for i in 2..10 {
            d.observe(i, i as f64);
        }
        assert!(d.mean().is_finite() && d.std() > 0.0);
    }

    proptest! {
        #[test]
        fn matches_naive_reference(
            time_mode in any::<bool>(),
            half_life in 0.5f64..50.0,
            min_events in 2u32..10,
            threshold in 0.5f64..4.0,
            events in prop::collection::vec(
                (prop_oneof![8 => -1e3f64..1e3, 1 => Just(f64::NAN), 1 => (0i32..3).prop_map(f64::from)],
                 -200i64..3000),
                1..200),
        ) {
            let hl = if time_mode { HalfLife::Millis(half_life * 300.0) } else { HalfLife::Events(half_life) };
            let mut d = ewma(hl, threshold, min_events);
            let mut hist: Vec<(f64, f64)> = Vec::new();
            let mut ts = 1_700_000_000_000i64;
            let mut clock = i64::MIN;
            for &(v, dt) in &events {
                ts += dt;
                let got = d.observe(ts, v);
                if !crate::judge::check_verdict(&got, v.is_finite())? {
                    continue;
                }
                clock = clock.max(ts);
                if hist.len() < min_events as usize {
                    prop_assert_eq!(got, Verdict::WARMING_UP);
                } else {
                    let (m, var) = naive(&hist, hl);
                    if var > 1e-9 {
                        let want = (v - m) / var.sqrt();
                        let z = got.statistic.expect("statistic once warm with spread");
                        prop_assert!((z - want).abs() <= 1e-6 * want.abs().max(1.0), "{} vs {}", z, want);
                        if (want.abs() - threshold).abs() > 1e-6 * threshold {
                            prop_assert_eq!(got.is_anomaly, want.abs() > threshold);
                        }
                    } else if var == 0.0 {
                        prop_assert_eq!(got.statistic, None);
                    }
                }
                hist.push(((clock - 1_700_000_000_000) as f64, v));
            }
        }

        #[test]
        fn never_panics_and_stays_consistent(
            time_mode in any::<bool>(),
            events in prop::collection::vec((any::<i64>(), any::<f64>()), 0..200),
        ) {
            let hl = if time_mode { HalfLife::Millis(1000.0) } else { HalfLife::Events(3.0) };
            let mut d = ewma(hl, 3.0, 2);
            crate::judge::check_any_input(&mut d, events, |d| {
                prop_assert!(d.mean().is_finite() && d.std().is_finite());
                Ok(())
            })?;
        }
    }
}
