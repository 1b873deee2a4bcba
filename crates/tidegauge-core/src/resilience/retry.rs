//! The retry policy (exponential backoff with full jitter) and the retry budget a
//! component's calls share.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::at_least_one;
use crate::error::ConfigError;

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

    pub(super) fn deposit_at(&self, now: Instant) {
        let mut s = self.lock();
        Self::expire(&mut s, now);
        s.deposits.push_back((now, self.ratio));
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    pub(super) fn try_withdraw_at(&self, now: Instant) -> bool {
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
