//! Shared helpers: turning a statistic into a consistent [`Verdict`], parameter checks and
//! the small formatting used by `explain`.

use crate::{ParamError, Verdict, score_from_ratio};

/// The verdict for an observation that cannot be judged (non-finite input, undefined
/// statistic): no statistic, score 0, no anomaly. Same value as [`Verdict::WARMING_UP`].
pub(crate) const NO_VERDICT: Verdict = Verdict::WARMING_UP;

/// Builds a verdict whose score is forced onto the right side of 0.5: strictly above it for
/// an anomaly, at most 0.5 otherwise. Rounding can put `ratio / (1 + ratio)` at exactly 0.5
/// for a ratio a hair above 1; this keeps "score > 0.5 ⇔ anomaly" true for every input.
pub(crate) fn consistent(statistic: Option<f64>, score: f64, is_anomaly: bool) -> Verdict {
    let score = if score.is_nan() {
        0.0
    } else {
        score.clamp(0.0, 1.0)
    };
    let score = if is_anomaly {
        if score > 0.5 { score } else { 0.5f64.next_up() }
    } else {
        score.min(0.5)
    };
    Verdict {
        statistic,
        score,
        is_anomaly,
    }
}

/// Verdict for `statistic` when the decision is `magnitude > threshold` (`threshold > 0`),
/// scored by [`score_from_ratio`]`(magnitude / threshold)`. A NaN statistic (e.g. ∞/∞ from
/// values near `f64::MAX`) gives [`NO_VERDICT`].
pub(crate) fn over_threshold(statistic: f64, magnitude: f64, threshold: f64) -> Verdict {
    if statistic.is_nan() || magnitude.is_nan() {
        return NO_VERDICT;
    }
    let is_anomaly = magnitude > threshold;
    consistent(
        Some(statistic),
        score_from_ratio(magnitude / threshold),
        is_anomaly,
    )
}

/// Collects a [`ParamError`] unless `value` is finite and strictly positive.
pub(crate) fn check_positive(errors: &mut Vec<ParamError>, field: &'static str, value: f64) {
    if !(value.is_finite() && value > 0.0) {
        errors.push(ParamError::new(
            field,
            format!("must be a finite number above 0, got {value}"),
        ));
    }
}

/// Collects a [`ParamError`] unless `value` is finite and at least 0.
pub(crate) fn check_non_negative(errors: &mut Vec<ParamError>, field: &'static str, value: f64) {
    if !(value.is_finite() && value >= 0.0) {
        errors.push(ParamError::new(
            field,
            format!("must be a finite number ≥ 0, got {value}"),
        ));
    }
}

/// Collects a [`ParamError`] unless `value` is a rate in `[0, 1)` (an alarm rate: 0 turns
/// the self-calibrated threshold off).
pub(crate) fn check_alarm_rate(errors: &mut Vec<ParamError>, field: &'static str, value: f64) {
    if !(value.is_finite() && (0.0..1.0).contains(&value)) {
        errors.push(ParamError::new(
            field,
            format!("must be at least 0 and below 1, got {value}"),
        ));
    }
}

/// Collects a [`ParamError`] unless `value` lies in `range` (a count: a window, a warm-up,
/// a number of slots).
pub(crate) fn check_count<T>(
    errors: &mut Vec<ParamError>,
    field: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) where
    T: PartialOrd + std::fmt::Display,
{
    if !range.contains(&value) {
        errors.push(ParamError::new(
            field,
            format!(
                "must be in {}..={}, got {value}",
                range.start(),
                range.end()
            ),
        ));
    }
}

/// For property tests: `got` is a consistent verdict, a score in `[0, 1]` and an anomaly
/// exactly when the score is above 0.5.
#[cfg(test)]
pub(crate) fn check_consistent(got: &Verdict) -> Result<(), proptest::test_runner::TestCaseError> {
    proptest::prop_assert!((0.0..=1.0).contains(&got.score), "score {}", got.score);
    proptest::prop_assert_eq!(got.is_anomaly, got.score > 0.5);
    Ok(())
}

/// For property tests: [`check_consistent`], and no verdict at all for a value that cannot
/// be judged (`judged` false). Returns `judged`: whether the test goes on with this value.
#[cfg(test)]
pub(crate) fn check_verdict(
    got: &Verdict,
    judged: bool,
) -> Result<bool, proptest::test_runner::TestCaseError> {
    check_consistent(got)?;
    if !judged {
        proptest::prop_assert_eq!(got, &NO_VERDICT);
    }
    Ok(judged)
}

/// For property tests: feeds `values` to `d` (each at its index as time), checks every
/// verdict with [`check_verdict`] (a value that is not finite gets none) and hands each
/// judged value with its verdict to `check`, the detector beside them.
#[cfg(test)]
pub(crate) fn judge_finite<D: crate::Detector>(
    d: &mut D,
    values: &[f64],
    mut check: impl FnMut(&mut D, f64, Verdict) -> Result<(), proptest::test_runner::TestCaseError>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    for (i, &v) in values.iter().enumerate() {
        let got = d.observe(i as i64, v);
        if check_verdict(&got, v.is_finite())? {
            check(d, v, got)?;
        }
    }
    Ok(())
}

/// For property tests: any events at all (any times, any values, NaN and infinities
/// included) give consistent verdicts without a NaN statistic, an anomaly has an
/// explanation, and `also` holds of the detector after each event.
#[cfg(test)]
pub(crate) fn check_any_input<D: crate::Detector>(
    d: &mut D,
    events: impl IntoIterator<Item = (i64, f64)>,
    mut also: impl FnMut(&D) -> Result<(), proptest::test_runner::TestCaseError>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    for (t, v) in events {
        let got = d.observe(t, v);
        check_consistent(&got)?;
        proptest::prop_assert!(got.statistic.is_none_or(|s| !s.is_nan()));
        also(d)?;
        if got.is_anomaly {
            let _ = d.explain(&got);
        }
    }
    Ok(())
}

/// For property tests: events given as (time step, value) with their absolute times, the
/// first step counted from 0.
#[cfg(test)]
pub(crate) fn timed(events: &[(i64, f64)]) -> impl Iterator<Item = (i64, f64)> + '_ {
    events.iter().scan(0i64, |ts, &(dt, v)| {
        *ts += dt;
        Some((*ts, v))
    })
}

/// Checks a rolling window's length (in `windows`) and a positive threshold: the
/// parameters of the window detectors.
pub(crate) fn check_window_and_threshold(
    window: usize,
    windows: std::ops::RangeInclusive<usize>,
    threshold: f64,
) -> Result<(), Vec<ParamError>> {
    let mut errors = Vec::new();
    check_count(&mut errors, "window", window, windows);
    check_positive(&mut errors, "threshold", threshold);
    into_result(errors)
}

/// Turns collected errors into the `validate` result.
pub(crate) fn into_result(errors: Vec<ParamError>) -> Result<(), Vec<ParamError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Panics with every validation error listed; used by constructors, whose documentation
/// tells callers to validate first.
pub(crate) fn assert_valid(detector: &str, result: Result<(), Vec<ParamError>>) {
    if let Err(errors) = result {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("invalid {detector} parameters: {}", list.join("; "));
    }
}

/// `a - b` in milliseconds without overflow (saturating at the `i64` range).
pub(crate) fn elapsed_ms(later: i64, earlier: i64) -> i64 {
    later.saturating_sub(earlier)
}

/// A duration for humans: "850 ms", "42.5 s", "15 min 3 s", "2 h 5 min", "3 d 4 h".
pub(crate) fn human_ms(ms: i64) -> String {
    let ms_abs = ms.unsigned_abs();
    let sign = if ms < 0 { "-" } else { "" };
    let s = ms_abs / 1000;
    if ms_abs < 1000 {
        format!("{sign}{ms_abs} ms")
    } else if s < 60 {
        format!("{sign}{:.1} s", ms_abs as f64 / 1000.0)
    } else if s < 3600 {
        format!("{sign}{} min {} s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{sign}{} h {} min", s / 3600, (s % 3600) / 60)
    } else {
        format!("{sign}{} d {} h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_keeps_score_on_the_right_side() {
        assert_eq!(consistent(Some(1.0), 0.5, true).score, 0.5f64.next_up());
        assert_eq!(consistent(Some(1.0), 0.7, false).score, 0.5);
        assert_eq!(consistent(Some(1.0), f64::NAN, false).score, 0.0);
        assert_eq!(consistent(Some(1.0), 0.7, true).score, 0.7);
        // A ratio one ulp above 1 rounds to a score of exactly 0.5 without the fix-up.
        let t = 3.0;
        let m = t * 1.0f64.next_up();
        let v = over_threshold(m, m, t);
        assert!(v.is_anomaly && v.score > 0.5);
        let v = over_threshold(t, t, t);
        assert!(!v.is_anomaly && v.score == 0.5);
    }

    #[test]
    fn nan_statistic_gives_no_verdict() {
        assert_eq!(over_threshold(f64::NAN, 1.0, 3.0), NO_VERDICT);
        let v = over_threshold(f64::INFINITY, f64::INFINITY, 3.0);
        assert!(v.is_anomaly && v.score == 1.0);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(42_500), "42.5 s");
        assert_eq!(human_ms(903_000), "15 min 3 s");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
        assert_eq!(human_ms(i64::MIN), "-106751991167 d 7 h");
    }

    #[test]
    fn elapsed_saturates() {
        assert_eq!(elapsed_ms(i64::MAX, i64::MIN), i64::MAX);
        assert_eq!(elapsed_ms(i64::MIN, i64::MAX), i64::MIN);
        assert_eq!(elapsed_ms(10, 3), 7);
    }
}

/// A test statistic for a human reason: two decimals (`6.14`), in short scientific
/// notation from 10^7 up (`1.000e300`, not three hundred digits).
pub(crate) fn stat(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e7 {
        format!("{x:.3e}")
    } else {
        format!("{x:.2}")
    }
}

/// A number for a human reason: four decimals at most, trailing zeros dropped; very large
/// or very small magnitudes in scientific notation.
pub(crate) fn num(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        return format!("{x:.3e}");
    }
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod num_tests {
    #[test]
    fn numbers_read_well() {
        assert_eq!(super::num(35.604320266602414), "35.6043");
        assert_eq!(super::num(2.0), "2");
        assert_eq!(super::num(0.42188598884465733), "0.4219");
        assert_eq!(super::num(-0.00001), "-1.000e-5");
        assert_eq!(super::num(0.0), "0");
        assert_eq!(super::num(123456789.0), "1.235e8");
        assert_eq!(super::num(1e300), "1.000e300");
        assert_eq!(super::stat(6.1449), "6.14");
        assert_eq!(super::stat(1e300), "1.000e300");
        assert_eq!(super::stat(-2.5e9), "-2.500e9");
        assert_eq!(super::stat(f64::INFINITY), "inf");
    }
}
