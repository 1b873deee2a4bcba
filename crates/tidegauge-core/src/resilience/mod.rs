//! Retries with exponential backoff and full jitter, a retry budget shared by a component
//! (no retry storms), and a circuit breaker. One implementation, used by every network
//! source and sink.
//!
//! - [`RetryPolicy`]: attempt `n` (from 1) waits a uniformly random time in
//!   `[0, min(max_backoff, initial_backoff · multiplier^(n-1))]` before the next attempt
//!   ("full jitter"), up to `max_attempts` attempts in all.
//! - [`RetryBudget`]: retries may add at most `ratio` of the first attempts (plus
//!   `min_per_sec` retries every second) — when many calls fail at once, only a few are
//!   retried. It is tower's `retry::budget::TpsBudget`; the jitter comes from `fastrand`.
//! - [`CircuitBreaker`]: after `failure_threshold` consecutive failures, or a failure rate
//!   of at least `failure_rate` over the last `window` calls, the breaker opens and calls
//!   fail fast for `cool_down_ms`; then one probe at a time is let through (half-open);
//!   `probes_to_close` successes close it, a failure opens it again.
//!
//! What stays written here, and why: the backoff bound is one line of arithmetic; the
//! retry loop must call blocking and async code alike, ask the breaker before each
//! attempt and report each attempt to the component's telemetry, which a
//! `tower::Service` middleware would only do by wrapping every call of every connector
//! (MQTT, Kafka and NATS clients are not `Service`s); and the breaker's states and
//! transitions are what `/metrics`, the logs and `tidegauge top` show, with both a
//! consecutive-failure and a failure-rate trigger, which the maintained breaker crates
//! do not offer together.

mod breaker;
mod retry;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

pub use breaker::{BreakerConfig, BreakerOpen, BreakerState, CircuitBreaker, Transition};
pub use retry::{RetryBudget, RetryPolicy};

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
