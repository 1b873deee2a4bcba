use super::*;

#[test]
fn backoff_grows_capped_and_jittered() {
    let p = RetryPolicy {
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
        multiplier: 3.0,
        ..RetryPolicy::default()
    };
    assert_eq!(p.backoff_bound(1), Duration::from_millis(100));
    assert_eq!(p.backoff_bound(2), Duration::from_millis(300));
    assert_eq!(p.backoff_bound(3), Duration::from_millis(900));
    assert_eq!(p.backoff_bound(4), Duration::from_millis(1000));
    assert_eq!(p.backoff_bound(400), Duration::from_millis(1000));
    let waits: Vec<Duration> = (0..200).map(|_| p.backoff(2)).collect();
    assert!(waits.iter().all(|w| *w <= Duration::from_millis(300)));
    let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
    assert!(distinct.len() > 150, "full jitter spreads the waits");
    let mean = waits.iter().map(|w| w.as_secs_f64()).sum::<f64>() / 200.0;
    assert!((0.1..0.2).contains(&mean), "mean {mean} near 150 ms");
}

#[tokio::test(start_paused = true)]
async fn budget_limits_retries_to_a_share_of_first_attempts() {
    let policy = RetryPolicy {
        budget_ratio: 0.1,
        budget_min_per_sec: 0,
        ..RetryPolicy::default()
    };
    let b = RetryBudget::new(&policy);
    for _ in 0..100 {
        b.deposit();
    }
    let granted = (0..100).filter(|_| b.try_withdraw()).count();
    assert_eq!(granted, 10);
    // Deposits expire: later, nothing is left.
    for _ in 0..100 {
        b.deposit();
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(!b.try_withdraw());
}

#[tokio::test(start_paused = true)]
async fn budget_allows_min_per_sec_without_first_attempts_and_takes_any_ratio_in_range() {
    let policy = RetryPolicy {
        budget_ratio: 0.0,
        budget_min_per_sec: 2,
        ..RetryPolicy::default()
    };
    let b = RetryBudget::new(&policy);
    // Two a second over the ten-second window.
    let granted = (0..100).filter(|_| b.try_withdraw()).count();
    assert_eq!(granted, 20);
    // The schema's extremes build a budget (no panic in the library's own checks).
    for (ratio, min) in [(1000.0, 1_000_000), (0.0, 0), (f64::NAN, u32::MAX)] {
        let p = RetryPolicy {
            budget_ratio: ratio,
            budget_min_per_sec: min,
            ..RetryPolicy::default()
        };
        let b = RetryBudget::new(&p);
        b.deposit();
        let _ = b.try_withdraw();
    }
}

#[test]
fn breaker_opens_cools_probes_and_closes() {
    let b = CircuitBreaker::new(BreakerConfig {
        failure_threshold: 3,
        cool_down_ms: 50,
        ..BreakerConfig::default()
    });
    for _ in 0..2 {
        b.acquire().unwrap();
        assert_eq!(b.record(false), None);
    }
    b.acquire().unwrap();
    assert_eq!(
        b.record(false),
        Some(Transition {
            from: BreakerState::Closed,
            to: BreakerState::Open
        })
    );
    assert_eq!(b.acquire(), Err(BreakerOpen));
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        b.acquire(),
        Ok(Some(Transition {
            from: BreakerState::Open,
            to: BreakerState::HalfOpen
        }))
    );
    assert_eq!(b.acquire(), Err(BreakerOpen), "one probe at a time");
    // A failed probe opens it again.
    assert_eq!(b.record(false).map(|t| t.to), Some(BreakerState::Open));
    std::thread::sleep(Duration::from_millis(60));
    b.acquire().unwrap();
    assert_eq!(b.record(true).map(|t| t.to), Some(BreakerState::Closed));
    assert_eq!(b.transitions(), 5);
}

#[test]
fn breaker_trips_on_failure_rate() {
    let b = CircuitBreaker::new(BreakerConfig {
        failure_threshold: 100,
        failure_rate: Some(0.5),
        window: 10,
        ..BreakerConfig::default()
    });
    let mut opened = None;
    for i in 0..10 {
        b.acquire().unwrap();
        if let Some(t) = b.record(i % 2 == 0) {
            opened = Some((i, t.to));
        }
    }
    assert_eq!(opened, Some((9, BreakerState::Open)));
}

#[tokio::test(start_paused = true)]
async fn call_retries_until_success_within_attempts() {
    let r = Resilience::new(RetryPolicy::default());
    let mut calls = 0;
    let out: Result<u32, RetryError<&str>> = r
        .call(
            None,
            |n| {
                calls += 1;
                async move { if n < 3 { Err("boom") } else { Ok(n) } }
            },
            |_| true,
            |_| {},
        )
        .await;
    assert_eq!(out.unwrap(), 3);
    assert_eq!(calls, 3);

    let out: Result<u32, RetryError<&str>> = r
        .call(None, |_| async { Err("no") }, |_| true, |_| {})
        .await;
    assert!(matches!(out, Err(RetryError::Failed { attempts: 4, .. })));

    let out: Result<u32, RetryError<&str>> = r
        .call(None, |_| async { Err("fatal") }, |_| false, |_| {})
        .await;
    assert!(matches!(out, Err(RetryError::Failed { attempts: 1, .. })));
}

#[test]
fn blocking_calls_retry_the_same_way() {
    let r = Resilience::new(RetryPolicy {
        initial_backoff_ms: 1,
        max_backoff_ms: 2,
        ..RetryPolicy::default()
    });
    let mut calls = 0;
    let out: Result<u32, RetryError<&str>> = r.call_blocking(
        None,
        |n| {
            calls += 1;
            if n < 3 { Err("down") } else { Ok(n) }
        },
        |_| true,
        |_| {},
    );
    assert_eq!(out.unwrap(), 3);
    assert_eq!(calls, 3);
    let out: Result<u32, RetryError<&str>> =
        r.call_blocking(None, |_| Err("down"), |_| true, |_| {});
    assert!(matches!(out, Err(RetryError::Failed { attempts: 4, .. })));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast() {
    let r = Resilience::new(RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    });
    let b = CircuitBreaker::new(BreakerConfig {
        failure_threshold: 1,
        ..BreakerConfig::default()
    });
    let mut seen = Vec::new();
    let _: Result<(), _> = r
        .call(
            Some(&b),
            |_| async { Err(()) },
            |_| true,
            |t| seen.push(t.to),
        )
        .await;
    let out: Result<(), _> = r
        .call(
            Some(&b),
            |_| async { Ok::<(), ()>(()) },
            |_| true,
            |t| seen.push(t.to),
        )
        .await;
    assert!(matches!(out, Err(RetryError::BreakerOpen)));
    assert_eq!(seen, vec![BreakerState::Open]);
}
