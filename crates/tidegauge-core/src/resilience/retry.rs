//! The retry policy (exponential backoff with full jitter) and the retry budget a
//! component's calls share.

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub budget_ratio: f64,
    /// Retries allowed every second whatever the ratio says.
    #[serde(default = "default_budget_min_per_sec")]
    #[schemars(range(max = 1000000))]
    pub budget_min_per_sec: u32,
}

/// Largest `budget_ratio` (as the schema says).
const MAX_BUDGET_RATIO: f64 = 1000.0;
/// Largest `budget_min_per_sec` (as the schema says).
const MAX_BUDGET_MIN_PER_SEC: u32 = 1_000_000;

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
    /// The checks a range cannot state (ranges are checked from the schema, by
    /// [`ranges::check`](crate::ranges::check)); paths under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        // Ranges are checked from the schema; what a range cannot say is checked here.
        for (name, v) in [
            ("multiplier", self.multiplier),
            ("budget_ratio", self.budget_ratio),
        ] {
            if !v.is_finite() {
                errors.push(ConfigError::new(
                    format!("{prefix}.{name}"),
                    format!("must be a finite number, got {v}"),
                ));
            }
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            errors.push(ConfigError::new(
                format!("{prefix}.max_backoff_ms"),
                "must be at least initial_backoff_ms",
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

/// Uniform in `[0, 1)`.
fn jitter() -> f64 {
    fastrand::f64()
}

/// A budget of retries shared by all calls of one component: every first attempt deposits
/// `ratio` retries, every retry withdraws one; `min_per_sec` retries are allowed each
/// second on top. Deposits expire after ten seconds, so a long quiet spell does not bank
/// a storm. tower's `TpsBudget` (Finagle's design): fixed memory (ten time slots) and
/// constant time per call, however many calls fail.
pub struct RetryBudget {
    inner: TpsBudget,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget").finish_non_exhaustive()
    }
}

/// How long a deposit counts.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryBudget {
    /// A budget from a policy's `budget_ratio` and `budget_min_per_sec` (their ranges,
    /// checked from the schema, are within what the budget accepts; values outside are
    /// clamped into it).
    pub fn new(policy: &RetryPolicy) -> Self {
        let ratio = if policy.budget_ratio.is_finite() {
            policy.budget_ratio.clamp(0.0, MAX_BUDGET_RATIO) as f32
        } else {
            0.0
        };
        let min_per_sec = policy.budget_min_per_sec.min(MAX_BUDGET_MIN_PER_SEC);
        RetryBudget {
            inner: TpsBudget::new(BUDGET_WINDOW, min_per_sec, ratio),
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}
