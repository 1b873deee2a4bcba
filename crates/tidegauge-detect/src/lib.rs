//! Pure anomaly-detection algorithms for tidegauge.
//!
//! Everything here works on plain numbers: no I/O, no async runtime, no Arrow. The
//! transforms in `tidegauge-components` hold one detector state per sensor key and feed it
//! values; the same code serves the live pipeline and `tidegauge score`.
//!
//! Every detector reports a [`Verdict`] per observation. While a detector has not seen
//! enough history to judge (its warm-up), the verdict has no statistic, a score of 0 and
//! is never an anomaly.
#![deny(missing_docs)]

pub mod rolling;

pub use rolling::RollingStats;

/// What a detector says about one observation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The detector's own statistic (the z-score for `zscore`), `None` during warm-up or
    /// when the statistic is undefined (e.g. a window with zero spread).
    pub statistic: Option<f64>,
    /// Anomaly score in `0..=1`; exactly 0.5 at the decision boundary, above it for anomalies.
    pub score: f64,
    /// Whether the observation is an anomaly.
    pub is_anomaly: bool,
}

impl Verdict {
    /// The verdict while a detector is still warming up: no statistic, score 0, no anomaly.
    pub const WARMING_UP: Verdict = Verdict {
        statistic: None,
        score: 0.0,
        is_anomaly: false,
    };
}

/// Maps `ratio = statistic / threshold` (≥ 0) to a score in `0..1` with 0.5 at the
/// threshold: `ratio / (1 + ratio)`. Monotonic, so ranking by score ranks by statistic.
pub fn score_from_ratio(ratio: f64) -> f64 {
    if ratio.is_nan() || ratio <= 0.0 {
        0.0
    } else if ratio.is_infinite() {
        1.0
    } else {
        ratio / (1.0 + ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_half_at_threshold_and_monotonic() {
        assert_eq!(score_from_ratio(1.0), 0.5);
        assert_eq!(score_from_ratio(0.0), 0.0);
        assert_eq!(score_from_ratio(f64::INFINITY), 1.0);
        assert_eq!(score_from_ratio(f64::NAN), 0.0);
        let mut last = 0.0;
        for i in 1..1000 {
            let s = score_from_ratio(i as f64 / 100.0);
            assert!(s > last && s < 1.0);
            last = s;
        }
    }
}
