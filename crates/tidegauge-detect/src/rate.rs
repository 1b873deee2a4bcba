//! Rate of change: how fast the value moves between consecutive observations.
//!
//! Statistic: the signed rate `(x − x_prev) / Δt` in the value's units per second, where
//! `x_prev` is the previous learned observation and `Δt` the event-time gap; anomaly when
//! `|rate| > max_rate_per_sec`; score [`score_from_ratio`](crate::score_from_ratio)`(|rate| /
//! max_rate_per_sec)`. Values near `f64::MAX` can give a rate of ±∞ (anomaly, score 1).
//!
//! Warm-up: the first finite observation (there is nothing to compare it with).
//!
//! Equal or earlier timestamps (`Δt ≤ 0`): the rate is undefined, so the verdict has no
//! statistic and no anomaly, and the observation is *not* learned — the next observation is
//! compared with the latest one in event time. A burst of readings sharing a timestamp is
//! thus judged by its first reading, and a late reading never shortens `Δt`.
//!
//! Cost: O(1), 16 bytes of history.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Parameters of the [`Rate`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct RateParams {
    /// Largest normal rate of change, in the value's units per second (either direction).
    /// Finite, above 0. Default 1.0 — set it for the sensor's units.
    pub max_rate_per_sec: f64,
}

impl Default for RateParams {
    fn default() -> Self {
        RateParams {
            max_rate_per_sec: 1.0,
        }
    }
}

impl RateParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        judge::check_positive(&mut errors, "max_rate_per_sec", self.max_rate_per_sec);
        judge::into_result(errors)
    }
}

/// Rate-of-change detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Rate {
    params: RateParams,
    /// Latest learned observation: (event time, value).
    last: Option<(i64, f64)>,
    /// Gap of the latest judged observation, for `explain`.
    last_gap_ms: i64,
}

impl Rate {
    /// A detector with no history.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: RateParams) -> Self {
        judge::assert_valid("rate", params.validate());
        Rate {
            params,
            last: None,
            last_gap_ms: 0,
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &RateParams {
        &self.params
    }
}

impl Detector for Rate {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        let Some((prev_ts, prev)) = self.last else {
            self.last = Some((ts_ms, value));
            return Verdict::WARMING_UP;
        };
        let gap_ms = judge::elapsed_ms(ts_ms, prev_ts);
        if gap_ms <= 0 {
            return NO_VERDICT;
        }
        let rate = (value - prev) / (gap_ms as f64 / 1000.0);
        self.last = Some((ts_ms, value));
        self.last_gap_ms = gap_ms;
        judge::over_threshold(rate, rate.abs(), self.params.max_rate_per_sec)
    }

    fn explain(&self, verdict: &Verdict) -> String {
        match verdict.statistic {
            Some(rate) => format!(
                "rate {rate:+.3}/s beyond ±{}/s (over {})",
                self.params.max_rate_per_sec,
                judge::human_ms(self.last_gap_ms)
            ),
            None => String::from("no rate"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(max: f64) -> Rate {
        Rate::new(RateParams {
            max_rate_per_sec: max,
        })
    }

    #[test]
    fn first_event_warms_up_then_rates() {
        let mut d = rate(10.0);
        assert_eq!(d.observe(1000, 5.0), Verdict::WARMING_UP);
        let v = d.observe(1500, 9.0); // +4 in 0.5 s
        assert_eq!(v.statistic, Some(8.0));
        assert!(!v.is_anomaly);
        let v = d.observe(1600, 7.0); // −2 in 0.1 s
        assert_eq!(v.statistic, Some(-20.0));
        assert!(v.is_anomaly);
        assert_eq!(d.explain(&v), "rate -20.000/s beyond ±10/s (over 100 ms)");
    }

    #[test]
    fn zero_and_negative_gaps_are_not_learned() {
        let mut d = rate(10.0);
        d.observe(1000, 0.0);
        assert_eq!(d.observe(1000, 100.0), NO_VERDICT);
        assert_eq!(d.observe(900, 100.0), NO_VERDICT);
        // Compared with (1000, 0.0), the first reading.
        assert_eq!(d.observe(2000, 1.0).statistic, Some(1.0));
        assert_eq!(d.observe(i64::MIN, 1.0), NO_VERDICT);
        assert_eq!(d.observe(i64::MAX, 1.0).statistic, Some(0.0));
    }

    #[test]
    fn nan_is_skipped() {
        let mut d = rate(1.0);
        assert_eq!(d.observe(0, f64::NAN), NO_VERDICT);
        assert_eq!(d.observe(1, 1.0), Verdict::WARMING_UP);
        assert_eq!(d.observe(2, f64::INFINITY), NO_VERDICT);
        assert_eq!(d.observe(1001, 2.0).statistic, Some(1.0));
    }

    proptest! {
        #[test]
        fn matches_naive_reference(
            max in 0.1f64..100.0,
            events in prop::collection::vec((-100i64..2000, prop_oneof![-1e3f64..1e3, Just(f64::NAN)]), 1..200),
        ) {
            let mut d = rate(max);
            let mut learned: Vec<(i64, f64)> = Vec::new();
            for (ts, v) in crate::judge::timed(&events) {
                let got = d.observe(ts, v);
                if !crate::judge::check_verdict(&got, !v.is_nan())? {
                    continue;
                }
                match learned.last() {
                    None => {
                        prop_assert_eq!(got, Verdict::WARMING_UP);
                        learned.push((ts, v));
                    }
                    Some(&(pt, _)) if ts <= pt => prop_assert_eq!(got, NO_VERDICT),
                    Some(&(pt, pv)) => {
                        let want = (v - pv) * 1000.0 / (ts - pt) as f64;
                        let r = got.statistic.expect("rate");
                        prop_assert!((r - want).abs() <= 1e-9 * want.abs().max(1.0));
                        if (want.abs() - max).abs() > 1e-9 * max {
                            prop_assert_eq!(got.is_anomaly, want.abs() > max);
                        }
                        learned.push((ts, v));
                    }
                }
            }
        }

        #[test]
        fn never_panics(events in prop::collection::vec((any::<i64>(), any::<f64>()), 0..100)) {
            let mut d = rate(1.0);
            for &(t, v) in &events {
                let got = d.observe(t, v);
                crate::judge::check_consistent(&got)?;
                prop_assert!(got.statistic.is_none_or(|s| !s.is_nan()));
            }
        }
    }
}
