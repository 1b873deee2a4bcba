//! Periodic baseline: each observation is compared with what is normal *at that time of the
//! cycle* (time of day, day of week, …).
//!
//! The cycle is cut into `slots` slots of `slot_ms` each; an event at `ts_ms` falls in slot
//! `⌊(ts_ms + offset_ms) / slot_ms⌋ mod slots` (floor division, so times before 1970 work).
//! 96 slots of 15 min give a daily profile, 168 hourly slots a weekly one; `offset_ms`
//! shifts the cycle, e.g. `3_600_000` for a UTC+1 day.
//!
//! Each slot keeps its own exponentially weighted mean and variance (normalised weights,
//! half-life `half_life_events` counted in that slot's observations — see [`Ewma`](crate::Ewma)
//! for the update). Statistic: `z = (x − mean) / std` of the event's slot, before learning
//! `x`; anomaly when `|z| > threshold`; score
//! [`score_from_ratio`](crate::score_from_ratio)`(|z| / threshold)`. No statistic while the
//! slot's variance is 0.
//!
//! Warm-up: per slot, until it has learned `min_per_slot` finite values. So a daily profile
//! needs about `min_per_slot` days of data before every slot judges.
//!
//! Cost: O(1) per event; memory `32 × slots` bytes (3 KiB for 96 slots).

use crate::ewma::EwStats;
use crate::judge::{self, NO_VERDICT};
use crate::{Detector, ParamError, Verdict};

/// Parameters of the [`Seasonal`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct SeasonalParams {
    /// Length of one slot in milliseconds. Above 0. Default 900 000 (15 min).
    pub slot_ms: i64,
    /// Number of slots in the cycle. In `1..=100_000`. Default 96 (one day of 15-min slots).
    pub slots: u32,
    /// Added to the event time before slotting, to align the cycle (e.g. with local
    /// midnight). Default 0 (UTC).
    pub offset_ms: i64,
    /// Half-life of each slot's mean and variance, in that slot's observations. Finite,
    /// above 0. Default 20.
    pub half_life_events: f64,
    /// Anomaly when `|z|` against the slot exceeds this. Finite, above 0. Default 3.0.
    pub threshold: f64,
    /// Observations a slot must learn before it judges. At least 2. Default 10.
    pub min_per_slot: u32,
}

impl Default for SeasonalParams {
    fn default() -> Self {
        SeasonalParams {
            slot_ms: 900_000,
            slots: 96,
            offset_ms: 0,
            half_life_events: 20.0,
            threshold: 3.0,
            min_per_slot: 10,
        }
    }
}

/// Largest accepted number of slots.
const MAX_SLOTS: u32 = 100_000;

impl SeasonalParams {
    /// Checks every field; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        let mut errors = Vec::new();
        if self.slot_ms <= 0 {
            errors.push(ParamError::new(
                "slot_ms",
                format!("must be above 0, got {}", self.slot_ms),
            ));
        }
        judge::check_count(&mut errors, "slots", self.slots, 1..=MAX_SLOTS);
        judge::check_positive(&mut errors, "half_life_events", self.half_life_events);
        judge::check_positive(&mut errors, "threshold", self.threshold);
        if self.min_per_slot < 2 {
            errors.push(ParamError::new(
                "min_per_slot",
                format!("must be at least 2, got {}", self.min_per_slot),
            ));
        }
        judge::into_result(errors)
    }

    /// The slot an event at `ts_ms` falls in.
    pub fn slot_of(&self, ts_ms: i64) -> usize {
        if let Some(t) = ts_ms.checked_add(self.offset_ms) {
            // i64 division is several times cheaper than i128; the result is in 0..slots.
            let period = self.slot_ms.max(1);
            return t
                .div_euclid(period)
                .rem_euclid(i64::from(self.slots.max(1))) as usize;
        }
        let t = i128::from(ts_ms) + i128::from(self.offset_ms);
        let period = i128::from(self.slot_ms.max(1));
        let slots = i128::from(self.slots.max(1));
        // In 0..slots, which fits usize.
        t.div_euclid(period).rem_euclid(slots) as usize
    }
}

/// Periodic-baseline detector. See the [module documentation](self).
#[derive(Clone, Debug)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "SeasonalRepr")
)]
pub struct Seasonal {
    params: SeasonalParams,
    /// Weight decay per slot observation, `2^(−1/half_life_events)`.
    decay: f64,
    slots: Box<[EwStats]>,
    /// For `explain`: slot, mean and std the latest verdict was judged against.
    last: (usize, f64, f64),
}

impl Seasonal {
    /// A detector with every slot empty.
    ///
    /// # Panics
    /// If `params.validate()` fails; validate configuration first.
    pub fn new(params: SeasonalParams) -> Self {
        judge::assert_valid("seasonal", params.validate());
        Seasonal {
            params,
            decay: (-1.0 / params.half_life_events).exp2(),
            slots: vec![EwStats::default(); params.slots as usize].into_boxed_slice(),
            last: (0, 0.0, 0.0),
        }
    }

    /// The parameters this detector was built with.
    pub fn params(&self) -> &SeasonalParams {
        &self.params
    }

    /// Mean, standard deviation and number of learned values of slot `slot`.
    pub fn slot_stats(&self, slot: usize) -> Option<(f64, f64, u64)> {
        self.slots.get(slot).map(|s| (s.mean(), s.std(), s.count()))
    }
}

impl Detector for Seasonal {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return NO_VERDICT;
        }
        let i = self.params.slot_of(ts_ms);
        let Some(slot) = self.slots.get_mut(i) else {
            return NO_VERDICT;
        };
        let verdict = if slot.count() < u64::from(self.params.min_per_slot) {
            Verdict::WARMING_UP
        } else {
            self.last = (i, slot.mean(), slot.std());
            match slot.z(value) {
                Some(z) => judge::over_threshold(z, z.abs(), self.params.threshold),
                None => NO_VERDICT,
            }
        };
        slot.push(value, self.decay);
        verdict
    }

    fn explain(&self, verdict: &Verdict) -> String {
        let (slot, mean, std) = self.last;
        let start = judge::human_ms(self.params.slot_ms.saturating_mul(slot as i64));
        format!(
            "|z| {} > {} against slot {slot} of {} (starting {start} into the cycle; mean {}, std {})",
            judge::stat(verdict.statistic.unwrap_or(0.0).abs()),
            self.params.threshold,
            self.params.slots,
            judge::num(mean),
            judge::num(std),
        )
    }
}

/// Deserialized form of [`Seasonal`], checked before use.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct SeasonalRepr {
    params: SeasonalParams,
    decay: f64,
    slots: Box<[EwStats]>,
    last: (usize, f64, f64),
}

#[cfg(feature = "serde")]
impl TryFrom<SeasonalRepr> for Seasonal {
    type Error = String;

    fn try_from(r: SeasonalRepr) -> Result<Self, String> {
        if let Err(errors) = r.params.validate() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(list.join("; "));
        }
        if r.slots.len() != r.params.slots as usize {
            return Err(format!(
                "{} slot states for {} slots",
                r.slots.len(),
                r.params.slots
            ));
        }
        let _ = r.decay; // derived from the parameters, recomputed
        Ok(Seasonal {
            decay: (-1.0 / r.params.half_life_events).exp2(),
            params: r.params,
            slots: r.slots,
            last: r.last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seasonal(slot_ms: i64, slots: u32, half_life_events: f64, min_per_slot: u32) -> Seasonal {
        Seasonal::new(SeasonalParams {
            slot_ms,
            slots,
            offset_ms: 0,
            half_life_events,
            threshold: 3.0,
            min_per_slot,
        })
    }

    #[test]
    fn slots_wrap_and_handle_negative_times() {
        let p = SeasonalParams {
            slot_ms: 10,
            slots: 4,
            ..SeasonalParams::default()
        };
        assert_eq!(p.slot_of(0), 0);
        assert_eq!(p.slot_of(39), 3);
        assert_eq!(p.slot_of(40), 0);
        assert_eq!(p.slot_of(-1), 3);
        let by_i128 = |ts: i64, offset: i64| {
            ((i128::from(ts) + i128::from(offset)).div_euclid(10)).rem_euclid(4) as usize
        };
        assert_eq!(p.slot_of(i64::MIN), by_i128(i64::MIN, 0));
        let shifted = SeasonalParams { offset_ms: 10, ..p };
        assert_eq!(shifted.slot_of(0), 1);
        // Overflowing i64: the wide path.
        assert_eq!(shifted.slot_of(i64::MAX - 5), by_i128(i64::MAX - 5, 10));
        assert_eq!(shifted.slot_of(i64::MAX - 25), by_i128(i64::MAX - 25, 10));
    }

    #[test]
    fn daily_pattern_is_normal_but_off_pattern_value_is_not() {
        // Hourly slots over a day; value = hour of day (+ small noise).
        let hour = 3_600_000;
        let mut d = seasonal(hour, 24, 10.0, 5);
        for day in 0..10i64 {
            for h in 0..24i64 {
                let noise = ((day * 7 + h * 13) % 5) as f64 * 0.1;
                let v = d.observe(day * 24 * hour + h * hour, h as f64 + noise);
                assert!(!v.is_anomaly, "day {day} hour {h}: {v:?}");
                if day < 5 {
                    assert_eq!(v, Verdict::WARMING_UP);
                }
            }
        }
        // 3 am reading a midday value.
        let v = d.observe(10 * 24 * hour + 3 * hour, 12.0);
        assert!(v.is_anomaly);
        assert!(d.explain(&v).contains("slot 3 of 24"), "{}", d.explain(&v));
        // The same value at noon is normal.
        assert!(!d.observe(10 * 24 * hour + 12 * hour, 12.2).is_anomaly);
    }

    #[test]
    fn nan_not_learned() {
        let mut d = seasonal(1000, 2, 5.0, 2);
        d.observe(0, f64::NAN);
        assert_eq!(d.slot_stats(0), Some((0.0, 0.0, 0)));
    }

    proptest! {
        #[test]
        fn matches_naive_per_slot_reference(
            slots in 1u32..6,
            half_life in 0.5f64..20.0,
            min_per_slot in 2u32..6,
            events in prop::collection::vec(
                (-5000i64..5000, prop_oneof![8 => -1e3f64..1e3, 1 => Just(f64::NAN), 1 => (0i32..2).prop_map(f64::from)]),
                1..300),
        ) {
            let mut d = seasonal(1000, slots, half_life, min_per_slot);
            let mut hist: Vec<Vec<f64>> = vec![Vec::new(); slots as usize];
            for &(ts, v) in &events {
                let got = d.observe(ts, v);
                if !crate::judge::check_verdict(&got, !v.is_nan())? {
                    continue;
                }
                let s = (ts.div_euclid(1000)).rem_euclid(i64::from(slots)) as usize;
                let h = &hist[s];
                if h.len() < min_per_slot as usize {
                    prop_assert_eq!(got, Verdict::WARMING_UP);
                } else {
                    // Weights recomputed from scratch.
                    let n = h.len();
                    let w: Vec<f64> = (0..n).map(|i| 2f64.powf(-((n - 1 - i) as f64) / half_life)).collect();
                    let tw: f64 = w.iter().sum();
                    let m = h.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>() / tw;
                    let var = h.iter().zip(&w).map(|(x, w)| w * (x - m) * (x - m)).sum::<f64>() / tw;
                    if var > 1e-9 {
                        let want = (v - m) / var.sqrt();
                        let z = got.statistic.expect("statistic");
                        prop_assert!((z - want).abs() <= 1e-6 * want.abs().max(1.0), "{} vs {}", z, want);
                        if (want.abs() - 3.0).abs() > 1e-6 {
                            prop_assert_eq!(got.is_anomaly, want.abs() > 3.0);
                        }
                    } else if var == 0.0 {
                        prop_assert_eq!(got.statistic, None);
                    }
                }
                hist[s].push(v);
            }
        }

        #[test]
        fn never_panics(events in prop::collection::vec((any::<i64>(), any::<f64>()), 0..200)) {
            let mut d = Seasonal::new(SeasonalParams { offset_ms: i64::MAX, min_per_slot: 2, ..SeasonalParams::default() });
            for &(t, v) in &events {
                let got = d.observe(t, v);
                crate::judge::check_consistent(&got)?;
                if got.is_anomaly {
                    let _ = d.explain(&got);
                }
            }
        }
    }
}
