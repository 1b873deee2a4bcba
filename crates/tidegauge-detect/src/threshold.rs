//! Static bounds with hysteresis.
//!
//! The detector is either *normal* or *in alarm*. Normal: an observation is anomalous when
//! it lies above `high` or below `low` (strictly; either bound may be absent), and the
//! detector goes into alarm. In alarm: the observation stays anomalous until it is back
//! inside by at least `hysteresis`, i.e. in `[low + hysteresis, high − hysteresis]`; then
//! the detector is normal again. A value hovering at a bound therefore does not flap.
//!
//! Statistic: the signed distance past the *active* boundary, in the value's units —
//! `max(x − high′, low′ − x)` where `high′ = high` and `low′ = low` when normal,
//! `high′ = high − hysteresis` and `low′ = low + hysteresis` in alarm. It is > 0 exactly for
//! anomalies and 0 on the boundary.
//!
//! Score: the logistic of the statistic over `scale`, `1 / (1 + e^(−d/scale))`: 0.5 on the
//! boundary, 0.73 at one `scale` beyond it, 0.95 at three, 0.27 one `scale` inside.
//!
//! Warm-up: none; every finite observation is judged. Cost: O(1), no history.

use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Parameters of the [`Threshold`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ThresholdParams {
    /// Values below this are anomalous. Finite if set. Default: none.
    pub low: Option<f64>,
    /// Values above this are anomalous. Finite if set. Default: none. At least one of
    /// `low` and `high` must be set, and `low ≤ high`.
    pub high: Option<f64>,
    /// How far back inside the bounds a value must come to end an alarm, in the value's
    /// units. Finite, ≥ 0, and with both bounds `high − low ≥ 2 × hysteresis`. Default 0.
    pub hysteresis: f64,
    /// Distance past the boundary, in the value's units, at which the score reaches 0.73
    /// (logistic scale). Finite, above 0. Default 1.0.
    pub scale: f64,
}

impl Default for ThresholdParams {
    fn default() -> Self {
        ThresholdParams {
            low: None,
            high: None,
            hysteresis: 0.0,
            scale: 1.0,
        }
    }
}

impl ThresholdParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if self.low.is_none() && self.high.is_none() {
            errors.push(ParamError::new("high", "set `low`, `high` or both"));
        }
        for (field, bound) in [("low", self.low), ("high", self.high)] {
            if let Some(b) = bound.filter(|b| !b.is_finite()) {
                errors.push(ParamError::new(
                    field,
                    format!("must be a finite number, got {b}"),
                ));
            }
        }
        judge::check_non_negative(&mut errors, "hysteresis", self.hysteresis);
        judge::check_positive(&mut errors, "scale", self.scale);
        if let (Some(low), Some(high)) = (self.low, self.high) {
            if low > high {
                errors.push(ParamError::new(
                    "low",
                    format!("must not be above high ({low} > {high})"),
                ));
            } else if high - low < 2.0 * self.hysteresis {
                errors.push(ParamError::new(
                    "hysteresis",
                    format!(
                        "must be at most half of high − low ({}), or an alarm could never end; got {}",
                        (high - low) / 2.0,
                        self.hysteresis
                    ),
                ));
            }
        }
        judge::into_result(errors)
    }
}

/// Static-bounds detector with hysteresis. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Threshold {
    params: ThresholdParams,
    in_alarm: bool,
    /// The value last judged (for `explain`).
    last_value: f64,
}

impl Threshold {
    /// A detector in the normal state.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: ThresholdParams) -> Self {
        judge::assert_valid("threshold", params.validate());
        Threshold {
            params,
            in_alarm: false,
            last_value: 0.0,
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &ThresholdParams {
        &self.params
    }

    /// Whether the latest finite observation left the detector in alarm.
    pub fn in_alarm(&self) -> bool {
        self.in_alarm
    }

    /// Signed distance of `x` past the active boundary (−∞ if no bound applies).
    fn excess(&self, x: f64) -> f64 {
        let h = if self.in_alarm {
            self.params.hysteresis
        } else {
            0.0
        };
        let above = self.params.high.map_or(f64::NEG_INFINITY, |b| x - (b - h));
        let below = self.params.low.map_or(f64::NEG_INFINITY, |b| (b + h) - x);
        above.max(below)
    }
}

impl Detector for Threshold {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        let d = self.excess(value);
        let is_anomaly = d > 0.0;
        let score = 1.0 / (1.0 + (-d / self.params.scale).exp());
        self.in_alarm = is_anomaly;
        self.last_value = value;
        judge::consistent(Some(d), score, is_anomaly)
    }

    fn explain(&self, _verdict: &Verdict) -> String {
        let x = self.last_value;
        let h = self.params.hysteresis;
        let n = judge::num;
        if let Some(high) = self.params.high.filter(|&b| x > b) {
            return format!("value {} above high {} by {}", n(x), n(high), n(x - high));
        }
        if let Some(low) = self.params.low.filter(|&b| x < b) {
            return format!("value {} below low {} by {}", n(x), n(low), n(low - x));
        }
        if let Some(high) = self.params.high.filter(|&b| x > b - h) {
            return format!(
                "value {} not yet {} below high {} (alarm holds)",
                n(x),
                n(h),
                n(high)
            );
        }
        if let Some(low) = self.params.low.filter(|&b| x < b + h) {
            return format!(
                "value {} not yet {} above low {} (alarm holds)",
                n(x),
                n(h),
                n(low)
            );
        }
        format!("value {} within bounds", n(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn th(low: Option<f64>, high: Option<f64>, hysteresis: f64) -> Threshold {
        Threshold::new(ThresholdParams {
            low,
            high,
            hysteresis,
            scale: 1.0,
        })
    }

    #[test]
    fn hysteresis_prevents_flapping() {
        let mut d = th(None, Some(100.0), 2.0);
        let seq = [
            (99.0, false),
            (100.0, false), // on the bound: not above
            (100.5, true),
            (99.5, true), // back inside, but not by 2
            (98.5, true),
            (98.0, false), // exactly 2 inside: alarm ends
            (99.9, false),
            (100.1, true),
        ];
        for (i, (x, want)) in seq.into_iter().enumerate() {
            let v = d.observe(i as i64, x);
            assert_eq!(v.is_anomaly, want, "at {x}");
            assert_eq!(v.is_anomaly, v.score > 0.5);
        }
    }

    #[test]
    fn score_scale_is_logistic() {
        let mut d = th(Some(0.0), Some(10.0), 0.0);
        assert_eq!(d.observe(0, 10.0).score, 0.5);
        let v = d.observe(0, 11.0);
        assert!((v.score - 0.731_058_578_630_005).abs() < 1e-12);
        assert_eq!(v.statistic, Some(1.0));
        let v = d.observe(0, 5.0);
        assert_eq!(v.statistic, Some(-5.0));
        let v = d.observe(0, -3.0);
        assert!(v.is_anomaly && (v.score - 0.952_574_126_822_433_4).abs() < 1e-12);
        assert_eq!(d.explain(&v), "value -3 below low 0 by 3");
    }

    #[test]
    fn nan_leaves_alarm_state_alone() {
        let mut d = th(Some(0.0), None, 1.0);
        assert!(d.observe(0, -1.0).is_anomaly);
        assert_eq!(d.observe(1, f64::NAN), NO_VERDICT);
        assert!(d.in_alarm());
        assert!(d.observe(2, 0.5).is_anomaly);
        assert!(d.explain(&Verdict::WARMING_UP).contains("alarm holds"));
    }

    #[test]
    fn validate_catches_bad_configs() {
        assert!(ThresholdParams::default().validate().is_err());
        let e = ThresholdParams {
            low: Some(10.0),
            high: Some(0.0),
            hysteresis: -1.0,
            scale: 0.0,
        }
        .validate()
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["hysteresis", "scale", "low"]);
        let e = ThresholdParams {
            low: Some(0.0),
            high: Some(3.0),
            hysteresis: 2.0,
            scale: 1.0,
        }
        .validate()
        .unwrap_err();
        assert_eq!(e[0].field, "hysteresis");
    }

    proptest! {
        #[test]
        fn matches_naive_state_machine(
            low in prop::option::of(-50i32..0),
            high in prop::option::of(0i32..50),
            hysteresis in 0i32..5,
            values in prop::collection::vec(prop_oneof![(-80i32..80).prop_map(f64::from), -80f64..80.0, Just(f64::NAN)], 1..200),
        ) {
            prop_assume!(low.is_some() || high.is_some());
            let (low, high, h) = (low.map(f64::from), high.map(f64::from), f64::from(hysteresis));
            prop_assume!(ThresholdParams { low, high, hysteresis: h, scale: 1.0 }.validate().is_ok());
            let mut d = th(low, high, h);
            let mut alarm = false;
            for &x in &values {
                let got = d.observe(0, x);
                crate::judge::check_consistent(&got)?;
                if x.is_nan() {
                    prop_assert_eq!(got, NO_VERDICT);
                    continue;
                }
                let outside = low.is_some_and(|l| x < l) || high.is_some_and(|hi| x > hi);
                let well_inside = low.is_none_or(|l| x >= l + h) && high.is_none_or(|hi| x <= hi - h);
                alarm = if alarm { !well_inside } else { outside };
                prop_assert_eq!(got.is_anomaly, alarm, "x {}", x);
                prop_assert_eq!(got.statistic.is_some_and(|s| s > 0.0), alarm);
            }
        }

        #[test]
        fn never_panics(values in prop::collection::vec(any::<f64>(), 0..100)) {
            let mut d = th(Some(-f64::MAX), Some(f64::MAX), 1.0);
            for &x in &values {
                let got = d.observe(0, x);
                crate::judge::check_consistent(&got)?;
            }
        }
    }
}
