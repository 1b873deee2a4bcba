//! The rules every `Detector` promises the engine, checked on every detector with the same
//! harness: verdict invariants, non-finite input never touching state, determinism of
//! cloned state, no panics on any timestamp or value.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tidegauge_detect::{
    Baseline, BaselineParams, ChangePoint, ChangePointMethod, ChangePointParams, Detector, Ewma,
    EwmaParams, Flatline, FlatlineParams, HalfLife, Mad, MadParams, Rate, RateParams,
    RelativeEntropy, RelativeEntropyParams, Seasonal, SeasonalParams, Threshold, ThresholdParams,
    Verdict, ZScore, ZScoreParams,
};

/// Checks one detector on one stream of (timestamp, value).
fn check<D: Detector>(fresh: D, events: &[(i64, f64)]) -> Result<(), TestCaseError> {
    let mut d = fresh.clone();
    let mut verdicts = Vec::with_capacity(events.len());
    for &(t, v) in events {
        let got = d.observe(t, v);
        prop_assert!(
            (0.0..=1.0).contains(&got.score),
            "score {} out of range",
            got.score
        );
        prop_assert_eq!(got.is_anomaly, got.score > 0.5, "score side: {:?}", got);
        prop_assert!(got.statistic.is_none_or(|s| !s.is_nan()));
        if !v.is_finite() {
            prop_assert_eq!(got, Verdict::WARMING_UP, "non-finite input gets no verdict");
        }
        if got.is_anomaly {
            prop_assert!(!d.explain(&got).is_empty());
        }
        verdicts.push(got);
    }

    // Non-finite values leave no trace: the finite events alone get the same verdicts.
    let mut clean = fresh.clone();
    for (&(t, v), want) in events.iter().zip(&verdicts) {
        if v.is_finite() {
            let got = clean.observe(t, v);
            prop_assert_eq!(
                got.statistic.map(f64::to_bits),
                want.statistic.map(f64::to_bits)
            );
            prop_assert_eq!(got.is_anomaly, want.is_anomaly);
        }
    }

    // A clone taken mid-stream continues exactly like the original.
    let half = events.len() / 2;
    let mut a = fresh;
    for &(t, v) in &events[..half] {
        a.observe(t, v);
    }
    let mut b = a.clone();
    for &(t, v) in &events[half..] {
        prop_assert_eq!(a.observe(t, v), b.observe(t, v));
    }
    Ok(())
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        10 => -10.0f64..10.0,
        3 => (0i32..3).prop_map(f64::from),
        1 => prop_oneof![Just(100.0), Just(-100.0)],
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
        1 => any::<f64>(),
    ]
}

fn stream() -> impl Strategy<Value = Vec<(i64, f64)>> {
    prop::collection::vec(
        (
            prop_oneof![8 => 0i64..2000, 1 => -2000i64..0, 1 => Just(0i64), 1 => any::<i64>()],
            value(),
        ),
        0..400,
    )
    .prop_map(|steps| {
        let mut t = 1_700_000_000_000i64;
        steps
            .into_iter()
            .map(|(dt, v)| {
                t = t.wrapping_add(dt);
                (t, v)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn zscore(events in stream()) {
        check(ZScore::new(ZScoreParams { window: 8, threshold: 2.0 }), &events)?;
    }

    #[test]
    fn ewma(events in stream(), by_time in any::<bool>()) {
        let half_life = if by_time { HalfLife::Millis(5000.0) } else { HalfLife::Events(5.0) };
        check(Ewma::new(EwmaParams { half_life, threshold: 2.0, min_events: 5 }), &events)?;
    }

    #[test]
    fn mad(events in stream(), window in prop_oneof![Just(5usize), Just(8)], tree in any::<bool>()) {
        let params = MadParams { window, threshold: 3.0 };
        if tree {
            check(Mad::new_tree_backed(params), &events)?;
        } else {
            check(Mad::new(params), &events)?;
        }
    }

    #[test]
    fn threshold(events in stream()) {
        let params = ThresholdParams { low: Some(-5.0), high: Some(5.0), hysteresis: 1.0, scale: 2.0 };
        check(Threshold::new(params), &events)?;
    }

    #[test]
    fn rate(events in stream()) {
        check(Rate::new(RateParams { max_rate_per_sec: 5.0 }), &events)?;
    }

    #[test]
    fn flatline(events in stream()) {
        check(Flatline::new(FlatlineParams { epsilon: 0.5, min_duration_ms: 3000, min_events: 3 }), &events)?;
    }

    #[test]
    fn seasonal(events in stream()) {
        let params = SeasonalParams { slot_ms: 1000, slots: 3, min_per_slot: 3, ..SeasonalParams::default() };
        check(Seasonal::new(params), &events)?;
    }

    #[test]
    fn changepoint(events in stream(), page_hinkley in any::<bool>()) {
        let method = if page_hinkley { ChangePointMethod::PageHinkley } else { ChangePointMethod::Cusum };
        let params = ChangePointParams { method, min_events: 5, h: 3.0, ..ChangePointParams::default() };
        check(ChangePoint::new(params), &events)?;
    }

    #[test]
    fn baseline(events in stream(), half_life in prop_oneof![Just(0.5), Just(3.0)], calibrated in any::<bool>()) {
        let params = if calibrated {
            BaselineParams { warmup: 8, half_life, threshold: 3.0, target_alarm_rate: 0.01, adapt_half_life: 20.0 }
        } else {
            BaselineParams::held(5, half_life, 3.0)
        };
        check(Baseline::new(params), &events)?;
    }

    #[test]
    fn relative_entropy(events in stream(), bins in prop_oneof![Just(2u32), Just(4)], min_support in 1u32..3) {
        let params = RelativeEntropyParams {
            window: 4, bins, warmup: 8, target_alarm_rate: 0.01, hypotheses: 3, min_support,
        };
        check(RelativeEntropy::new(params), &events)?;
    }
}

#[test]
fn every_default_is_valid() {
    assert!(ZScoreParams::default().validate().is_ok());
    assert!(EwmaParams::default().validate().is_ok());
    assert!(MadParams::default().validate().is_ok());
    assert!(RateParams::default().validate().is_ok());
    assert!(FlatlineParams::default().validate().is_ok());
    assert!(SeasonalParams::default().validate().is_ok());
    assert!(ChangePointParams::default().validate().is_ok());
    assert!(BaselineParams::default().validate().is_ok());
    assert!(RelativeEntropyParams::default().validate().is_ok());
    assert!(
        tidegauge_detect::HeartbeatParams::default()
            .validate()
            .is_ok()
    );
    // Threshold has no meaningful default bound: its default must be rejected.
    assert!(ThresholdParams::default().validate().is_err());
}
