//! Streaming, mergeable aggregators for window transforms.
//!
//! An [`Aggregate`] names what to compute; [`Aggregate::accumulator`] makes an empty
//! [`Accumulator`] that takes values one at a time ([`update`](Accumulator::update)),
//! combines with another accumulator of the same aggregate built over other values
//! ([`merge`](Accumulator::merge) — for partial aggregates, session windows, parallel
//! shards) and gives the result ([`finish`](Accumulator::finish)).
//!
//! Non-finite values (NaN, ±∞) are ignored by every aggregate, `Count` included. An empty
//! accumulator finishes as `Some(0)` for `Count` and `None` for all others.
//!
//! | aggregate | state | update | merge |
//! | --- | --- | --- | --- |
//! | `Count` | u64 | O(1) | O(1) |
//! | `Sum` | Neumaier compensated sum | O(1) | O(1) |
//! | `Mean`, `Std` | Welford count/mean/M2, merged by Chan et al.; population std | O(1) | O(1) |
//! | `Min`, `Max` | one value | O(1) | O(1) |
//! | `First`, `Last` | (event time, value); ties: first arrival for `First`, last for `Last` | O(1) | O(1) |
//! | `Quantile` | DDSketch (≤ 2 × 2048 bins) | O(1) amortised | O(bins) |
//!
//! `Quantile { q, relative_accuracy }` returns a value within `relative_accuracy` (relative)
//! of the exact `q`-quantile, the element of rank `⌊q·(n − 1)⌋` in sorted order; `q = 0`
//! and `q = 1` return the exact minimum and maximum. Magnitudes below 1e-9 count as 0.
//! With 2048 bins per sign the guarantee covers values spanning a ratio of up to
//! `((1 + α)/(1 − α))^2048` (about 10¹⁷ for α = 0.01); beyond it, the smallest
//! magnitudes are merged.
//!
//! In `merge(a, b)` the values of `b` count as arriving after those of `a` (this only
//! matters for `First`/`Last` ties).

use sketches_ddsketch::{Config, DDSketch};

use crate::ParamError;

/// Bins per sign of a quantile sketch.
const SKETCH_BINS: u32 = 2048;
/// Magnitudes below this count as 0 in a quantile sketch.
const SKETCH_MIN_VALUE: f64 = 1e-9;

/// What an [`Accumulator`] computes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Aggregate {
    /// Number of finite values.
    Count,
    /// Sum (compensated, so the order of values barely matters).
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Population standard deviation.
    Std,
    /// Value with the earliest event time.
    First,
    /// Value with the latest event time.
    Last,
    /// Approximate quantile from a DDSketch.
    Quantile {
        /// Which quantile, in `0..=1` (0.5 the median, 0.99 the 99th percentile).
        q: f64,
        /// Relative accuracy of the answer, in `(0, 1)`; 0.01 means within 1 %.
        relative_accuracy: f64,
    },
}

impl Aggregate {
    /// Checks the parameters; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if let Aggregate::Quantile {
            q,
            relative_accuracy,
        } = *self
        {
            if !(0.0..=1.0).contains(&q) {
                errors.push(ParamError::new("q", format!("must be in 0..=1, got {q}")));
            }
            if !(relative_accuracy > 0.0 && relative_accuracy < 1.0) {
                errors.push(ParamError::new(
                    "relative_accuracy",
                    format!("must be in (0, 1), e.g. 0.01, got {relative_accuracy}"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// An empty accumulator for this aggregate.
    ///
    /// # Panics
    /// If `validate()` fails; validate configuration first.
    pub fn accumulator(&self) -> Accumulator {
        crate::judge::assert_valid("aggregate", self.validate());
        let state = match *self {
            Aggregate::Count => State::Count(0),
            Aggregate::Sum => State::Sum {
                n: 0,
                sum: 0.0,
                comp: 0.0,
            },
            Aggregate::Mean | Aggregate::Std => State::Moments {
                n: 0,
                mean: 0.0,
                m2: 0.0,
            },
            Aggregate::Min | Aggregate::Max => State::Extreme(None),
            Aggregate::First | Aggregate::Last => State::Timed(None),
            Aggregate::Quantile {
                relative_accuracy, ..
            } => State::Sketch(Box::new(DDSketch::new(Config::new(
                relative_accuracy,
                SKETCH_BINS,
                SKETCH_MIN_VALUE,
            )))),
        };
        Accumulator { kind: *self, state }
    }
}

/// The two aggregates given to [`Accumulator::merge`] differ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregateMismatch {
    /// The aggregate merged into.
    pub left: Aggregate,
    /// The aggregate of the accumulator being merged.
    pub right: Aggregate,
}

impl std::fmt::Display for AggregateMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot merge a {:?} accumulator into a {:?} one",
            self.right, self.left
        )
    }
}

impl std::error::Error for AggregateMismatch {}

#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
enum State {
    Count(u64),
    Sum { n: u64, sum: f64, comp: f64 },
    Moments { n: u64, mean: f64, m2: f64 },
    Extreme(Option<f64>),
    Timed(Option<(i64, f64)>),
    Sketch(Box<DDSketch>),
}

/// Running state of one [`Aggregate`]. See the [module documentation](self).
#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Accumulator {
    kind: Aggregate,
    state: State,
}

impl std::fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accumulator")
            .field("kind", &self.kind)
            .field("result", &self.finish())
            .finish()
    }
}

/// Neumaier step: adds `v` to `(sum, comp)`.
fn neumaier_add(sum: &mut f64, comp: &mut f64, v: f64) {
    let t = *sum + v;
    if sum.abs() >= v.abs() {
        *comp += (*sum - t) + v;
    } else {
        *comp += (v - t) + *sum;
    }
    *sum = t;
}

impl Accumulator {
    /// The aggregate this accumulator computes.
    pub fn aggregate(&self) -> Aggregate {
        self.kind
    }

    /// Adds the value observed at event time `ts_ms`; non-finite values are ignored.
    pub fn update(&mut self, ts_ms: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        match (&mut self.state, self.kind) {
            (State::Count(n), _) => *n += 1,
            (State::Sum { n, sum, comp }, _) => {
                *n += 1;
                neumaier_add(sum, comp, value);
            }
            (State::Moments { n, mean, m2 }, _) => {
                *n += 1;
                let d = value - *mean;
                *mean += d / *n as f64;
                *m2 += d * (value - *mean);
            }
            (State::Extreme(e), Aggregate::Min) => {
                *e = Some(e.map_or(value, |m| m.min(value)));
            }
            (State::Extreme(e), _) => *e = Some(e.map_or(value, |m| m.max(value))),
            (State::Timed(slot), Aggregate::First) => {
                if slot.is_none_or(|(t, _)| ts_ms < t) {
                    *slot = Some((ts_ms, value));
                }
            }
            (State::Timed(slot), _) => {
                if slot.is_none_or(|(t, _)| ts_ms >= t) {
                    *slot = Some((ts_ms, value));
                }
            }
            (State::Sketch(s), _) => s.add(value),
        }
    }

    /// Folds `other` (built from the same [`Aggregate`] over other values) into `self`, as
    /// if its values had been added after those already here.
    pub fn merge(&mut self, other: &Accumulator) -> Result<(), AggregateMismatch> {
        let mismatch = AggregateMismatch {
            left: self.kind,
            right: other.kind,
        };
        if self.kind != other.kind {
            return Err(mismatch);
        }
        match (&mut self.state, &other.state) {
            (State::Count(a), State::Count(b)) => *a += b,
            (
                State::Sum { n, sum, comp },
                State::Sum {
                    n: nb,
                    sum: sb,
                    comp: cb,
                },
            ) => {
                *n += nb;
                neumaier_add(sum, comp, *sb);
                *comp += cb;
            }
            (
                State::Moments { n, mean, m2 },
                State::Moments {
                    n: nb,
                    mean: mb,
                    m2: m2b,
                },
            ) => {
                if *nb > 0 {
                    let total = *n + nb;
                    let delta = mb - *mean;
                    let (na, nbf, nt) = (*n as f64, *nb as f64, total as f64);
                    *mean += delta * (nbf / nt);
                    *m2 += m2b + delta * delta * (na * nbf / nt);
                    *n = total;
                }
            }
            (State::Extreme(a), State::Extreme(Some(b))) => {
                let min = self.kind == Aggregate::Min;
                *a = Some(match *a {
                    None => *b,
                    Some(x) if min => x.min(*b),
                    Some(x) => x.max(*b),
                });
            }
            (State::Timed(a), State::Timed(Some((tb, vb)))) => {
                let take = match (self.kind, *a) {
                    (_, None) => true,
                    (Aggregate::First, Some((ta, _))) => *tb < ta,
                    (_, Some((ta, _))) => *tb >= ta,
                };
                if take {
                    *a = Some((*tb, *vb));
                }
            }
            (State::Extreme(_), State::Extreme(None)) | (State::Timed(_), State::Timed(None)) => {}
            (State::Sketch(a), State::Sketch(b)) => a.merge(b).map_err(|_| mismatch)?,
            _ => return Err(mismatch),
        }
        Ok(())
    }

    /// The aggregate's value: `Some(0)` for an empty `Count`, `None` for any other empty
    /// accumulator.
    pub fn finish(&self) -> Option<f64> {
        match &self.state {
            State::Count(n) => Some(*n as f64),
            State::Sum { n, sum, comp } => (*n > 0).then_some(sum + comp),
            State::Moments { n, mean, m2 } => (*n > 0).then(|| match self.kind {
                Aggregate::Std => (m2 / *n as f64).max(0.0).sqrt(),
                _ => *mean,
            }),
            State::Extreme(e) => *e,
            State::Timed(t) => t.map(|(_, v)| v),
            State::Sketch(s) => match self.kind {
                Aggregate::Quantile { q, .. } => s.quantile(q).ok().flatten(),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Aggregate; 10] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Mean,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Std,
        Aggregate::First,
        Aggregate::Last,
        Aggregate::Quantile {
            q: 0.5,
            relative_accuracy: 0.01,
        },
        Aggregate::Quantile {
            q: 0.95,
            relative_accuracy: 0.02,
        },
    ];

    /// Naive reference over the finite values with their times, in arrival order.
    fn naive(agg: Aggregate, vals: &[(i64, f64)]) -> Option<f64> {
        let xs: Vec<f64> = vals.iter().map(|v| v.1).collect();
        let n = xs.len() as f64;
        if xs.is_empty() {
            return (agg == Aggregate::Count).then_some(0.0);
        }
        let mean = xs.iter().sum::<f64>() / n;
        Some(match agg {
            Aggregate::Count => n,
            Aggregate::Sum => xs.iter().sum(),
            Aggregate::Mean => mean,
            Aggregate::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregate::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Aggregate::Std => (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt(),
            Aggregate::First => {
                let t = vals.iter().map(|v| v.0).min()?;
                vals.iter().find(|v| v.0 == t)?.1
            }
            Aggregate::Last => {
                let t = vals.iter().map(|v| v.0).max()?;
                vals.iter().rev().find(|v| v.0 == t)?.1
            }
            Aggregate::Quantile { q, .. } => {
                let mut s = xs.clone();
                s.sort_by(f64::total_cmp);
                s[(q * (n - 1.0)) as usize]
            }
        })
    }

    /// Equal, or within rounding for floating sums (`scale` = Σ|x|), or within the
    /// sketch's relative accuracy for quantiles.
    fn close(agg: Aggregate, got: Option<f64>, want: Option<f64>, scale: f64) -> bool {
        match (got, want) {
            (Some(g), Some(w)) => match agg {
                Aggregate::Quantile {
                    relative_accuracy, ..
                } => (g - w).abs() <= relative_accuracy * w.abs() + SKETCH_MIN_VALUE,
                Aggregate::Sum | Aggregate::Mean | Aggregate::Std => {
                    (g - w).abs() <= 1e-12 * scale.max(1.0)
                }
                _ => g == w,
            },
            (g, w) => g == w,
        }
    }

    #[test]
    fn empty_and_single() {
        for agg in ALL {
            let mut a = agg.accumulator();
            assert_eq!(a.finish(), (agg == Aggregate::Count).then_some(0.0));
            a.update(0, f64::NAN);
            a.update(0, f64::INFINITY);
            assert_eq!(a.finish(), (agg == Aggregate::Count).then_some(0.0));
            a.update(5, 2.5);
            let want = match agg {
                Aggregate::Count => 1.0,
                Aggregate::Std => 0.0,
                _ => 2.5,
            };
            assert!(
                close(agg, a.finish(), Some(want), 2.5),
                "{agg:?}: {:?}",
                a.finish()
            );
        }
    }

    #[test]
    fn first_last_by_event_time_not_arrival() {
        let mut first = Aggregate::First.accumulator();
        let mut last = Aggregate::Last.accumulator();
        for (t, v) in [(10, 1.0), (5, 2.0), (20, 3.0), (5, 4.0), (20, 5.0)] {
            first.update(t, v);
            last.update(t, v);
        }
        assert_eq!(first.finish(), Some(2.0));
        assert_eq!(last.finish(), Some(5.0));
    }

    #[test]
    fn mismatched_merge_is_an_error() {
        let mut a = Aggregate::Sum.accumulator();
        let b = Aggregate::Mean.accumulator();
        let e = a.merge(&b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot merge a Mean accumulator into a Sum one"
        );
        let mut q1 = ALL[8].accumulator();
        assert!(q1.merge(&ALL[9].accumulator()).is_err());
    }

    #[test]
    fn validate_quantile() {
        let bad = Aggregate::Quantile {
            q: 1.5,
            relative_accuracy: 0.0,
        };
        assert_eq!(bad.validate().unwrap_err().len(), 2);
    }

    #[test]
    fn std_merge_is_stable_with_large_offset() {
        let mut a = Aggregate::Std.accumulator();
        let mut b = Aggregate::Std.accumulator();
        for i in 0..1000 {
            a.update(i, 1e9 + (i % 2) as f64);
            b.update(i, 1e9 + (i % 2) as f64);
        }
        a.merge(&b).unwrap();
        assert!((a.finish().unwrap() - 0.5).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn matches_naive_and_merges_like_one_stream(
            vals in prop::collection::vec(
                (-50i64..50, prop_oneof![8 => -1e4f64..1e4, 1 => (0i32..3).prop_map(f64::from), 1 => Just(f64::NAN)]),
                0..200),
            cuts in prop::collection::vec(0usize..200, 0..3),
        ) {
            let finite: Vec<(i64, f64)> = vals.iter().copied().filter(|v| v.1.is_finite()).collect();
            let scale: f64 = finite.iter().map(|v| v.1.abs()).sum();
            let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(vals.len())).collect();
            bounds.push(0);
            bounds.push(vals.len());
            bounds.sort_unstable();
            for agg in ALL {
                let mut whole = agg.accumulator();
                for &(t, v) in &vals {
                    whole.update(t, v);
                }
                let want = naive(agg, &finite);
                prop_assert!(close(agg, whole.finish(), want, scale), "{:?}: {:?} vs {:?}", agg, whole.finish(), want);

                // The same stream cut into parts, each accumulated alone, then merged in order.
                let mut merged = agg.accumulator();
                for w in bounds.windows(2) {
                    let mut part = agg.accumulator();
                    for &(t, v) in &vals[w[0]..w[1]] {
                        part.update(t, v);
                    }
                    merged.merge(&part).unwrap();
                }
                match agg {
                    Aggregate::Sum | Aggregate::Mean | Aggregate::Std => {
                        prop_assert!(close(agg, merged.finish(), whole.finish(), scale));
                    }
                    _ => prop_assert_eq!(merged.finish(), whole.finish(), "{:?}", agg),
                }
            }
        }
    }
}
