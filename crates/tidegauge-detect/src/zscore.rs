//! Rolling z-score: how many standard deviations an observation lies from the mean of the
//! previous `window` observations.
//!
//! Statistic: `z = (x − mean) / std` over the previous `window` finite values (population
//! standard deviation); anomaly when `|z| > threshold`; score
//! [`score_from_ratio`](crate::score_from_ratio)`(|z| / threshold)`.
//!
//! Warm-up: until `window` finite values have been seen. A window with zero spread (all
//! values equal) gives no statistic and no anomaly — a stuck sensor is the
//! [`Flatline`](crate::Flatline) detector's job.
//!
//! Cost: O(1) amortised per event on [`RollingStats`]; O(window) for an event whose `|z|`
//! lies within 1e-9 of the threshold (relative; wider by the running mean's possible
//! rounding drift, `4 × window × 2.2e-16 × max|x| / std`, for long windows over values
//! large next to their spread), or when the spread is below 1e-9 of the squared mean
//! (values with a large offset and a tiny spread), where the verdict is taken from exact
//! statistics. Memory: `8 × window` bytes once the window is full, growing as values
//! arrive.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, RollingStats, Verdict};

/// Parameters of the [`ZScore`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ZScoreParams {
    /// Number of previous values the mean and standard deviation are taken over; also the
    /// warm-up length. In `2..=10_000_000`. Default 100.
    pub window: usize,
    /// Anomaly when `|z|` exceeds this. Finite, above 0. Default 3.0.
    pub threshold: f64,
}

impl Default for ZScoreParams {
    fn default() -> Self {
        ZScoreParams {
            window: 100,
            threshold: 3.0,
        }
    }
}

/// Largest accepted window: 80 MB of values per sensor once full (memory grows as values
/// arrive, 8 bytes each).
pub const MAX_WINDOW: usize = 10_000_000;

impl ZScoreParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        judge::check_window_and_threshold(self.window, 2..=MAX_WINDOW, self.threshold)
    }
}

/// Rolling z-score detector. See the [module documentation](self).
///
/// It keeps the threshold and takes the window from its [`RollingStats`], rather than a
/// copy of [`ZScoreParams`]: one sensor's state is a word smaller. With the `serde`
/// feature it (de)serializes as `{ params, stats }`, as it always has.
#[derive(Clone, Debug)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(try_from = "ZScoreRepr")
)]
pub struct ZScore {
    threshold: f64,
    stats: RollingStats,
}

/// The serialized form of a [`ZScore`], as written.
#[cfg(feature = "serde")]
#[derive(serde::Serialize)]
#[serde(rename = "ZScore")]
struct ZScoreOut<'a> {
    params: ZScoreParams,
    stats: &'a RollingStats,
}

#[cfg(feature = "serde")]
impl serde::Serialize for ZScore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ZScoreOut {
            params: self.params(),
            stats: &self.stats,
        }
        .serialize(serializer)
    }
}

/// The serialized form of a [`ZScore`], checked before it becomes one.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct ZScoreRepr {
    params: ZScoreParams,
    stats: RollingStats,
}

#[cfg(feature = "serde")]
impl TryFrom<ZScoreRepr> for ZScore {
    type Error = String;

    /// The window is kept once, in the statistics: a state whose parameters name another
    /// window than its statistics hold (never written by this crate) is rejected.
    fn try_from(r: ZScoreRepr) -> Result<Self, String> {
        if r.params.window != r.stats.window() {
            return Err(format!(
                "zscore state with window {} holds statistics over a window of {}",
                r.params.window,
                r.stats.window()
            ));
        }
        Ok(ZScore {
            threshold: r.params.threshold,
            stats: r.stats,
        })
    }
}

impl ZScore {
    /// A detector with no history.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: ZScoreParams) -> Self {
        judge::assert_valid("zscore", params.validate());
        ZScore {
            threshold: params.threshold,
            stats: RollingStats::new(params.window),
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> ZScoreParams {
        ZScoreParams {
            window: self.stats.window(),
            threshold: self.threshold,
        }
    }

    /// Changes the parameters while keeping the history: a new window keeps the most
    /// recent values, up to its length.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate first.
    pub fn set_params(&mut self, params: ZScoreParams) {
        judge::assert_valid("zscore", params.validate());
        if params.window != self.stats.window() {
            let mut stats = RollingStats::new(params.window);
            let skip = self.stats.len().saturating_sub(params.window);
            self.stats.values().skip(skip).for_each(|v| stats.push(v));
            self.stats = stats;
        }
        self.threshold = params.threshold;
    }
}

impl Detector for ZScore {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        let threshold = self.threshold;
        let verdict = match self.stats.zscore(value, threshold) {
            Some(z) => judge::over_threshold(z, z.abs(), threshold),
            None => NO_VERDICT,
        };
        self.stats.push(value);
        verdict
    }

    /// The window's slot the value replaces (the running sums are in the detector).
    #[inline]
    fn prefetch(&self) {
        self.stats.prefetch();
    }

    fn explain(&self, verdict: &Verdict) -> String {
        match verdict.statistic {
            Some(z) => format!(
                "|z| {} > {} (last {} values)",
                judge::stat(z.abs()),
                self.threshold,
                self.stats.window()
            ),
            None => String::from("no z-score"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn zs(window: usize, threshold: f64) -> ZScore {
        ZScore::new(ZScoreParams { window, threshold })
    }

    #[test]
    fn warms_up_for_a_full_window() {
        let mut d = zs(3, 3.0);
        assert_eq!(d.observe(0, 1.0), Verdict::WARMING_UP);
        assert_eq!(d.observe(1, 2.0), Verdict::WARMING_UP);
        assert_eq!(d.observe(2, 3.0), Verdict::WARMING_UP);
        let v = d.observe(3, 2.0);
        assert_eq!(v.statistic, Some(0.0));
        assert!(!v.is_anomaly);
        let v = d.observe(4, 100.0);
        assert!(v.is_anomaly && v.score > 0.5);
        assert!(d.explain(&v).starts_with("|z| "), "{}", d.explain(&v));
    }

    #[test]
    fn non_finite_values_are_not_learned() {
        let mut d = zs(3, 3.0);
        for (i, v) in [1.0, f64::NAN, 2.0, f64::INFINITY, 3.0]
            .into_iter()
            .enumerate()
        {
            let verdict = d.observe(i as i64, v);
            assert_eq!(verdict, Verdict::WARMING_UP);
        }
        // Three finite values seen: the next is judged against exactly them.
        let v = d.observe(9, 2.0);
        assert_eq!(v.statistic, Some(0.0));
        assert_eq!(d.observe(10, f64::NEG_INFINITY), NO_VERDICT);
    }

    #[test]
    fn constant_window_gives_no_statistic() {
        let mut d = zs(5, 3.0);
        for i in 0..10 {
            d.observe(i, 4.0);
        }
        assert_eq!(d.observe(10, 1e6), NO_VERDICT);
    }

    #[test]
    fn validate_reports_every_field() {
        let errs = ZScoreParams {
            window: 1,
            threshold: f64::NAN,
        }
        .validate()
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["window", "threshold"]);
        assert!(ZScoreParams::default().validate().is_ok());
    }

    #[test]
    #[should_panic(expected = "invalid zscore parameters")]
    fn new_rejects_invalid_params() {
        zs(0, 3.0);
    }

    /// A state serializes as the derived form on `{ params, stats }` with a `Vec` buffer
    /// wrote it (the values held only), and reads back into the same state.
    #[cfg(feature = "serde")]
    #[test]
    fn serialized_form_is_the_former_one() {
        let mut d = zs(3, 2.5);
        d.observe(0, 1.0);
        d.observe(1, 2.0);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"params":{"window":3,"threshold":2.5},"stats":{"buf":[1.0,2.0],"window":3,"len":2,"head":2,"since_exact":0,"mean":1.5,"m2":0.5,"peak_sq":4.0}}"#
        );
        let mut back: ZScore = serde_json::from_str(&json).unwrap();
        assert_eq!(back.params(), d.params());
        for (i, v) in [3.0, 7.0, -1.0, 4.5, 2.0].into_iter().enumerate() {
            assert_eq!(back.observe(i as i64, v), d.observe(i as i64, v));
        }
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&d).unwrap()
        );
        // A full window, as written before: the ring and its head.
        let full = r#"{"params":{"window":3,"threshold":2.5},"stats":{"buf":[4.0,2.0,3.0],"window":3,"len":3,"head":1,"since_exact":1,"mean":3.0,"m2":2.0,"peak_sq":16.0}}"#;
        let d: ZScore = serde_json::from_str(full).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), full);
        // Parameters naming another window than the statistics hold: rejected.
        let skewed = full.replacen(r#""window":3,"threshold""#, r#""window":4,"threshold""#, 1);
        assert!(serde_json::from_str::<ZScore>(&skewed).is_err());
    }

    fn exact_mean_std(win: &VecDeque<f64>) -> (f64, f64) {
        // Plain two-pass over a sorted copy (sorting makes the sum order-independent
        // enough for values within 1e6; the assertion tolerance covers the rest).
        let n = win.len() as f64;
        let mean = win.iter().sum::<f64>() / n;
        let var = win.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    proptest! {
        #[test]
        fn matches_naive_reference(
            window in 2usize..30,
            values in prop::collection::vec(
                prop_oneof![8 => -1e3f64..1e3, 1 => Just(f64::NAN), 1 => (0i32..5).prop_map(f64::from)],
                1..300),
            threshold in 0.5f64..4.0,
        ) {
            let mut d = zs(window, threshold);
            let mut win: VecDeque<f64> = VecDeque::new();
            crate::judge::judge_finite(&mut d, &values, |_, v, got| {
                if win.len() < window {
                    prop_assert_eq!(got, Verdict::WARMING_UP);
                } else {
                    let (m, s) = exact_mean_std(&win);
                    if s > 1e-9 {
                        let want = (v - m) / s;
                        let z = got.statistic.expect("statistic once warm with spread");
                        prop_assert!((z - want).abs() <= 1e-6 * want.abs().max(1.0), "{} vs {}", z, want);
                        if (want.abs() - threshold).abs() > 1e-6 * threshold {
                            prop_assert_eq!(got.is_anomaly, want.abs() > threshold);
                        }
                    } else if s == 0.0 {
                        prop_assert_eq!(got, NO_VERDICT);
                    }
                }
                win.push_back(v);
                if win.len() > window {
                    win.pop_front();
                }
                Ok(())
            })?;
        }

        #[test]
        fn never_panics_and_stays_consistent(
            events in prop::collection::vec((any::<i64>(), any::<f64>()), 0..200),
        ) {
            crate::judge::check_any_input(&mut zs(4, 3.0), events, |_| Ok(()))?;
        }
    }
}
