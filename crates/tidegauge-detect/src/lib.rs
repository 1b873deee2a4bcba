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

pub mod aggregate;
pub mod baseline;
pub mod calibrate;
pub mod changepoint;
pub mod ensemble;
pub mod entropy;
pub mod ewma;
pub mod flatline;
pub mod heartbeat;
pub mod hotelling;
mod judge;
pub mod mad;
mod order_stats;
pub mod rate;
pub mod rolling;
pub mod seasonal;
pub mod threshold;
pub mod zscore;

pub use aggregate::{Accumulator, Aggregate, AggregateMismatch};
pub use baseline::{Baseline, BaselineParams};
pub use calibrate::{Calibrated, CalibrationParams, TailModel};
pub use changepoint::{ChangePoint, ChangePointMethod, ChangePointParams};
pub use ensemble::Combine;
pub use entropy::{RelativeEntropy, RelativeEntropyParams};
pub use ewma::{Ewma, EwmaParams, HalfLife};
pub use flatline::{Flatline, FlatlineParams};
pub use heartbeat::{DeadlineTracker, HeartbeatParams};
pub use hotelling::{Hotelling, HotellingParams};
pub use mad::{Mad, MadParams};
pub use rate::{Rate, RateParams};
pub use rolling::RollingStats;
pub use seasonal::{Seasonal, SeasonalParams};
pub use threshold::{Threshold, ThresholdParams};
pub use zscore::{ZScore, ZScoreParams};

/// A per-key anomaly detector: plain numbers in, one [`Verdict`] per observation out.
///
/// The engine keeps one value of the implementing type per sensor key and feeds it that
/// key's observations in event-time order. All detectors in this crate share these rules:
/// - a detector returns [`Verdict::WARMING_UP`] until it has seen its documented minimum
///   of history;
/// - a non-finite value (NaN, ±∞) gets a verdict with no statistic, score 0 and no anomaly,
///   and leaves the state untouched;
/// - the score is in `0..=1`, exactly 0.5 at the decision boundary and above 0.5 exactly
///   when `is_anomaly` is true;
/// - no input (any `f64`, any `i64` timestamp, in any order) makes a detector panic.
pub trait Detector: Clone + Send + 'static {
    /// Feed one observation at event time `ts_ms` (epoch milliseconds, non-decreasing per key
    /// in normal use — handle out-of-order/equal timestamps without panicking); returns the
    /// verdict on this observation, judged against history *before* it, then learns from it.
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict;
    /// Short human reason for an anomalous verdict, e.g. "|z| 4.21 > 3" (called only for anomalies, may allocate).
    fn explain(&self, verdict: &Verdict) -> String;
    /// Brings what the next [`Detector::observe`] reads toward the CPU's cache (a hint;
    /// see [`prefetch`]): a stage judging many sensors asks for a sensor's state a few
    /// readings before it judges it, so that waiting for memory overlaps. By default,
    /// nothing beyond the detector itself.
    #[inline]
    fn prefetch(&self) {}
}

/// Asks the CPU to bring the cache line holding `data` into its caches, so that a read
/// of it a little later does not wait for memory. A hint: nothing is read, and it does
/// nothing on processors other than x86-64.
#[inline(always)]
pub fn prefetch<T>(data: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault (the address is a live
    // reference's anyway); SSE, which it needs, is part of every x86-64 processor.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((data as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// One problem found by a `Params::validate`: the offending field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// Name of the field, as spelled in the `Params` struct (e.g. `"window"`).
    pub field: &'static str,
    /// What is wrong and what is accepted, e.g. "must be at least 2, got 1".
    pub message: String,
}

impl ParamError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        ParamError {
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ParamError {}

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
