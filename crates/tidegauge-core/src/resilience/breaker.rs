//! The circuit breaker: its settings, its states and the breaker itself.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::at_least_one;
use crate::error::ConfigError;

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
