//! Retries with exponential backoff and full jitter, a retry budget shared by a component
//! (no retry storms), and a circuit breaker. One implementation, used by every network
//! source and sink.
//!
//! - [`RetryPolicy`]: attempt `n` (from 1) waits a uniformly random time in
//!   `[0, min(max_backoff, initial_backoff · multiplier^(n-1))]` before the next attempt
//!   ("full jitter"), up to `max_attempts` attempts in all.
//! - [`RetryBudget`]: retries may add at most `ratio` of the first attempts (plus
//!   `min_per_sec` retries every second) — when many calls fail at once, only a few are
//!   retried (after tower's `retry::budget`).
//! - [`CircuitBreaker`]: after `failure_threshold` consecutive failures, or a failure rate
//!   of at least `failure_rate` over the last `window` calls, the breaker opens and calls
//!   fail fast for `cool_down_ms`; then one probe at a time is let through (half-open);
//!   `probes_to_close` successes close it, a failure opens it again.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Collects an error at `{prefix}.{field}` unless `value` is at least 1 (a count of
/// attempts, failures, calls or probes).
fn at_least_one(errors: &mut Vec<ConfigError>, prefix: &str, field: &str, value: u32) {
    if value == 0 {
        errors.push(ConfigError::new(
            format!("{prefix}.{field}"),
            "expected at least 1",
        ));
    }
}

/// Why a call with retries gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The breaker was open: nothing was tried.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// The last attempt failed and no further retry was allowed (attempts used up, the
    /// error not retryable, or the budget spent).
    #[error("{error} (after {attempts} attempt(s))")]
    Failed {
        /// The last error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
}

/// Everything one component needs to call out: its policy, budget and breaker.
#[derive(Debug)]
pub struct Resilience {
    /// The retry policy.
    pub policy: RetryPolicy,
    /// The retry budget shared by the component's calls.
    pub budget: RetryBudget,
}

impl Resilience {
    /// From a policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Resilience {
            budget: RetryBudget::new(&policy),
            policy,
        }
    }

    /// Calls `attempt` until it succeeds, the error is not retryable, attempts run out or
    /// the budget is spent; waits with full jitter between attempts; goes through
    /// `breaker` if one is given. `on_transition` hears of every breaker state change.
    pub async fn call<T, E, Fut>(
        &self,
        breaker: Option<&CircuitBreaker>,
        mut attempt: impl FnMut(u32) -> Fut,
        retryable: impl Fn(&E) -> bool,
        on_transition: impl FnMut(Transition),
    ) -> Result<T, RetryError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut call = Attempts::start(self, breaker, on_transition);
        loop {
            let n = call.admit()?;
            match call.settle(attempt(n).await, &retryable) {
                ControlFlow::Break(outcome) => return outcome,
                ControlFlow::Continue(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

impl Resilience {
    /// Like [`Resilience::call`], for code running on a thread of its own (a sink writing
    /// files): waits by sleeping the thread.
    pub fn call_blocking<T, E>(
        &self,
        breaker: Option<&CircuitBreaker>,
        mut attempt: impl FnMut(u32) -> Result<T, E>,
        retryable: impl Fn(&E) -> bool,
        on_transition: impl FnMut(Transition),
    ) -> Result<T, RetryError<E>> {
        let mut call = Attempts::start(self, breaker, on_transition);
        loop {
            let n = call.admit()?;
            match call.settle(attempt(n), &retryable) {
                ControlFlow::Break(outcome) => return outcome,
                ControlFlow::Continue(wait) => std::thread::sleep(wait),
            }
        }
    }
}

/// One call's way through the policy, the budget and the breaker; [`Resilience::call`]
/// and [`Resilience::call_blocking`] drive it, each waiting in its own way.
struct Attempts<'a, F> {
    resilience: &'a Resilience,
    breaker: Option<&'a CircuitBreaker>,
    on_transition: F,
    /// The attempt under way, from 1.
    n: u32,
}

impl<'a, F: FnMut(Transition)> Attempts<'a, F> {
    /// A first attempt: deposits in the budget.
    fn start(
        resilience: &'a Resilience,
        breaker: Option<&'a CircuitBreaker>,
        on_transition: F,
    ) -> Self {
        resilience.budget.deposit();
        Attempts {
            resilience,
            breaker,
            on_transition,
            n: 1,
        }
    }

    /// Lets the next attempt through the breaker, if there is one; its number.
    fn admit<E>(&mut self) -> Result<u32, RetryError<E>> {
        if let Some(b) = self.breaker {
            match b.acquire() {
                Ok(Some(t)) => (self.on_transition)(t),
                Ok(None) => {}
                Err(BreakerOpen) => return Err(RetryError::BreakerOpen),
            }
        }
        Ok(self.n)
    }

    /// Records an attempt's result: the call's outcome, or how long to wait before the
    /// next attempt (the error retryable, attempts and budget left).
    fn settle<T, E>(
        &mut self,
        result: Result<T, E>,
        retryable: impl Fn(&E) -> bool,
    ) -> ControlFlow<Result<T, RetryError<E>>, Duration> {
        if let Some(b) = self.breaker
            && let Some(t) = b.record(result.is_ok())
        {
            (self.on_transition)(t);
        }
        let e = match result {
            Ok(v) => return ControlFlow::Break(Ok(v)),
            Err(e) => e,
        };
        let (policy, budget) = (&self.resilience.policy, &self.resilience.budget);
        if self.n < policy.max_attempts && retryable(&e) && budget.try_withdraw() {
            let wait = policy.backoff(self.n);
            self.n += 1;
            ControlFlow::Continue(wait)
        } else {
            ControlFlow::Break(Err(RetryError::Failed {
                error: e,
                attempts: self.n,
            }))
        }
    }
}

/// `retry = { ... }` in a component's settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most attempts per call, the first included (1 = no retries).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Upper bound of the wait before the first retry, in milliseconds.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Cap on any wait, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Growth of the bound from one retry to the next.
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0))]
    pub multiplier: f64,
    /// Retries allowed on top of first attempts, as a fraction of them (0.2 = 20 %),
    /// shared by every call of the component.
    #[serde(default = "default_budget_ratio")]
    #[schemars(range(min = 0.0))]
    pub budget_ratio: f64,
    /// Retries allowed every second whatever the ratio says.
    #[serde(default = "default_budget_min_per_sec")]
    pub budget_min_per_sec: u32,
}

fn default_max_attempts() -> u32 {
    4
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    10_000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_min_per_sec() -> u32 {
    10
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            multiplier: default_multiplier(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_sec: default_budget_min_per_sec(),
        }
    }
}

impl RetryPolicy {
    /// Range checks; paths relative to the `retry` table.
    pub fn validate(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        at_least_one(&mut errors, prefix, "max_attempts", self.max_attempts);
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            errors.push(ConfigError::new(
                format!("{prefix}.multiplier"),
                "expected a number of at least 1",
            ));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            errors.push(ConfigError::new(
                format!("{prefix}.max_backoff_ms"),
                "must be at least initial_backoff_ms",
            ));
        }
        if !(self.budget_ratio.is_finite() && self.budget_ratio >= 0.0) {
            errors.push(ConfigError::new(
                format!("{prefix}.budget_ratio"),
                "expected a non-negative number",
            ));
        }
        errors
    }

    /// The upper bound of the wait after failed attempt `attempt` (1-based).
    pub fn backoff_bound(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let ms = (self.initial_backoff_ms as f64 * exp).min(self.max_backoff_ms as f64);
        Duration::from_millis(ms as u64)
    }

    /// A random wait in `[0, backoff_bound(attempt)]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let bound = self.backoff_bound(attempt).as_nanos() as f64;
        Duration::from_nanos((bound * jitter()) as u64)
    }
}

/// Uniform in `[0, 1)`, from a per-thread xorshift seeded by the clock and thread.
fn jitter() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            let addr = &t as *const u64 as u64;
            (t ^ addr.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// A budget of retries shared by all calls of one component: every first attempt deposits
/// `ratio` tokens, every retry withdraws one; `min_per_sec` tokens arrive each second.
/// Deposits expire after ten seconds, so a long quiet spell does not bank a storm.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    inner: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    /// (time, tokens) deposits within the last ten seconds.
    deposits: VecDeque<(Instant, f64)>,
    withdrawn: VecDeque<Instant>,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryBudget {
    /// A budget from a policy's `budget_ratio` and `budget_min_per_sec`.
    pub fn new(policy: &RetryPolicy) -> Self {
        RetryBudget {
            ratio: policy.budget_ratio,
            min_per_sec: policy.budget_min_per_sec,
            inner: Mutex::new(BudgetState {
                deposits: VecDeque::new(),
                withdrawn: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(state: &mut BudgetState, now: Instant) {
        while state
            .deposits
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > BUDGET_WINDOW)
        {
            state.deposits.pop_front();
        }
        while state
            .withdrawn
            .front()
            .is_some_and(|t| now.duration_since(*t) > BUDGET_WINDOW)
        {
            state.withdrawn.pop_front();
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn deposit_at(&self, now: Instant) {
        let mut s = self.lock();
        Self::expire(&mut s, now);
        s.deposits.push_back((now, self.ratio));
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut s = self.lock();
        Self::expire(&mut s, now);
        let deposited: f64 = s.deposits.iter().map(|(_, t)| t).sum();
        let reserve = self.min_per_sec as f64 * BUDGET_WINDOW.as_secs_f64();
        if (s.withdrawn.len() as f64) < deposited + reserve {
            s.withdrawn.push_back(now);
            true
        } else {
            false
        }
    }
}

/// Settings of a circuit breaker: `breaker = { ... }`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
    /// Failure rate over the last `window` calls that opens the breaker (0..1); unset:
    /// only consecutive failures count.
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// Calls the failure rate is taken over.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1))]
    pub window: u32,
    /// How long an open breaker rejects calls before letting a probe through, in ms.
    #[serde(default = "default_cool_down_ms")]
    pub cool_down_ms: u64,
    /// Successful probes that close a half-open breaker.
    #[serde(default = "default_probes_to_close")]
    #[schemars(range(min = 1))]
    pub probes_to_close: u32,
}

fn default_failure_threshold() -> u32 {
    5
}
fn default_window() -> u32 {
    20
}
fn default_cool_down_ms() -> u64 {
    5_000
}
fn default_probes_to_close() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: default_failure_threshold(),
            failure_rate: None,
            window: default_window(),
            cool_down_ms: default_cool_down_ms(),
            probes_to_close: default_probes_to_close(),
        }
    }
}

impl BreakerConfig {
    /// Range checks; paths relative to the `breaker` table.
    pub fn validate(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        at_least_one(
            &mut errors,
            prefix,
            "failure_threshold",
            self.failure_threshold,
        );
        if let Some(r) = self.failure_rate
            && !(r > 0.0 && r <= 1.0)
        {
            errors.push(ConfigError::new(
                format!("{prefix}.failure_rate"),
                "expected a fraction above 0 and at most 1",
            ));
        }
        at_least_one(&mut errors, prefix, "window", self.window);
        at_least_one(&mut errors, prefix, "probes_to_close", self.probes_to_close);
        errors
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast until the cool-down ends.
    Open,
    /// One probe at a time goes through.
    HalfOpen,
}

impl BreakerState {
    /// As a number for a gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    consecutive_failures: u32,
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    probe_successes: u32,
}

/// A circuit breaker for one endpoint or connection.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<BreakerInner>,
    transitions: AtomicU64,
}

/// The breaker rejected the call without trying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open")]
pub struct BreakerOpen;

/// A state change, for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                recent: VecDeque::new(),
                opened_at: None,
                probe_in_flight: false,
                probe_successes: 0,
            }),
            transitions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open breaker past its cool-down reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.state {
            BreakerState::Open if self.cooled(&inner, Instant::now()) => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Number of state changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    fn cooled(&self, inner: &BreakerInner, now: Instant) -> bool {
        inner.opened_at.is_none_or(|t| {
            now.duration_since(t) >= Duration::from_millis(self.config.cool_down_ms)
        })
    }

    fn set(&self, inner: &mut BreakerInner, to: BreakerState) -> Option<Transition> {
        if inner.state == to {
            return None;
        }
        let from = inner.state;
        inner.state = to;
        self.transitions.fetch_add(1, Ordering::Relaxed);
        match to {
            BreakerState::Open => {
                inner.opened_at = Some(Instant::now());
                inner.probe_in_flight = false;
            }
            BreakerState::HalfOpen => {
                inner.probe_successes = 0;
                inner.probe_in_flight = false;
            }
            BreakerState::Closed => {
                inner.consecutive_failures = 0;
                inner.recent.clear();
                inner.opened_at = None;
            }
        }
        Some(Transition { from, to })
    }

    /// Asks to make a call. `Err` when the breaker is open (or a probe is already out).
    /// Returns the transition to half-open when this call is the first probe.
    pub fn acquire(&self) -> Result<Option<Transition>, BreakerOpen> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(None),
            BreakerState::Open => {
                if self.cooled(&inner, Instant::now()) {
                    let t = self.set(&mut inner, BreakerState::HalfOpen);
                    inner.probe_in_flight = true;
                    Ok(t)
                } else {
                    Err(BreakerOpen)
                }
            }
            BreakerState::HalfOpen => {
                if inner.probe_in_flight {
                    Err(BreakerOpen)
                } else {
                    inner.probe_in_flight = true;
                    Ok(None)
                }
            }
        }
    }

    /// Reports the outcome of a call that [`CircuitBreaker::acquire`] allowed.
    pub fn record(&self, success: bool) -> Option<Transition> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::HalfOpen => {
                inner.probe_in_flight = false;
                if success {
                    inner.probe_successes += 1;
                    if inner.probe_successes >= self.config.probes_to_close {
                        return self.set(&mut inner, BreakerState::Closed);
                    }
                    None
                } else {
                    self.set(&mut inner, BreakerState::Open)
                }
            }
            BreakerState::Open => None,
            BreakerState::Closed => {
                inner.recent.push_back(success);
                while inner.recent.len() > self.config.window as usize {
                    inner.recent.pop_front();
                }
                if success {
                    inner.consecutive_failures = 0;
                    return None;
                }
                inner.consecutive_failures += 1;
                let failures = inner.recent.iter().filter(|ok| !**ok).count();
                let rate_trip = self.config.failure_rate.is_some_and(|r| {
                    inner.recent.len() >= self.config.window as usize
                        && failures as f64 / inner.recent.len() as f64 >= r
                });
                if inner.consecutive_failures >= self.config.failure_threshold || rate_trip {
                    self.set(&mut inner, BreakerState::Open)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn budget_limits_retries_to_a_share_of_first_attempts() {
        let policy = RetryPolicy {
            budget_ratio: 0.1,
            budget_min_per_sec: 0,
            ..RetryPolicy::default()
        };
        let b = RetryBudget::new(&policy);
        let now = Instant::now();
        for _ in 0..100 {
            b.deposit_at(now);
        }
        let granted = (0..100).filter(|_| b.try_withdraw_at(now)).count();
        assert_eq!(granted, 10);
        // Deposits expire: later, nothing is left.
        let later = now + Duration::from_secs(11);
        assert!(!b.try_withdraw_at(later));
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
}
