//! Internal telemetry: typed events that update per-component counters and log.
//!
//! Components never touch counters or write log lines for these facts directly; they emit
//! one of the event structs below through [`ComponentTelemetry::emit`]. The counters are
//! plain atomics, read by the run summary and exported as metrics.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::registry::ComponentKind;
use crate::resilience::BreakerState;

/// Counters of one component. Cheap to update from any thread.
#[derive(Debug)]
pub struct ComponentTelemetry {
    /// Component id as written in the pipeline file.
    pub id: Arc<str>,
    /// Source, transform or sink.
    pub kind: ComponentKind,
    /// Registered type name (`zscore`, `file`, ...).
    pub type_name: &'static str,
    events_in: AtomicU64,
    events_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
    dead_lettered: AtomicU64,
    anomalies: AtomicU64,
    stale_events: AtomicU64,
    missing_readings: AtomicU64,
    breaker_transitions: AtomicU64,
    /// Per endpoint (network sources and sinks): breaker state and whether data is missing.
    endpoints: Mutex<std::collections::BTreeMap<String, EndpointHealth>>,
    log_gate: Mutex<LogGate>,
}

/// How one endpoint of a component fares (a gauge per endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointHealth {
    /// State of its circuit breaker.
    pub breaker: BreakerState,
    /// Whether its data is missing (failing for longer than stale readings may stand in).
    pub missing: bool,
}

/// A point-in-time copy of a component's counters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TelemetrySnapshot {
    /// Component id.
    pub id: String,
    /// `source`, `transform` or `sink`.
    pub kind: ComponentKind,
    /// Registered type name.
    pub type_name: String,
    /// Events received from upstream (for sources: events decoded from their input).
    pub events_in: u64,
    /// Events sent downstream (for sinks: events written).
    pub events_out: u64,
    /// Raw bytes read (sources) or received.
    pub bytes_in: u64,
    /// Raw bytes written (sinks).
    pub bytes_out: u64,
    /// Errors (including records that could not be processed).
    pub errors: u64,
    /// Records sent to the dead-letter output.
    pub dead_lettered: u64,
    /// Events flagged as anomalies (detectors).
    pub anomalies: u64,
    /// Stale readings emitted in place of fresh ones (polled sources).
    pub stale_events: u64,
    /// Polls whose endpoint had neither a fresh nor a recent enough reading.
    pub missing_readings: u64,
    /// Circuit-breaker state changes.
    pub breaker_transitions: u64,
}

impl ComponentTelemetry {
    /// Fresh counters for a component.
    pub fn new(id: impl Into<Arc<str>>, kind: ComponentKind, type_name: &'static str) -> Self {
        ComponentTelemetry {
            id: id.into(),
            kind,
            type_name,
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            anomalies: AtomicU64::new(0),
            stale_events: AtomicU64::new(0),
            missing_readings: AtomicU64::new(0),
            breaker_transitions: AtomicU64::new(0),
            endpoints: Mutex::new(Default::default()),
            log_gate: Mutex::new(LogGate::default()),
        }
    }

    /// Records an internal event: updates counters and logs as the event says.
    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }

    /// The current counters.
    pub fn snapshot(&self) -> TelemetrySnapshot {
        TelemetrySnapshot {
            id: self.id.to_string(),
            kind: self.kind,
            type_name: self.type_name.to_string(),
            events_in: self.events_in.load(Ordering::Relaxed),
            events_out: self.events_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            anomalies: self.anomalies.load(Ordering::Relaxed),
            stale_events: self.stale_events.load(Ordering::Relaxed),
            missing_readings: self.missing_readings.load(Ordering::Relaxed),
            breaker_transitions: self.breaker_transitions.load(Ordering::Relaxed),
        }
    }

    /// Health of every endpoint the component has reported on, by endpoint.
    pub fn endpoints(&self) -> Vec<(String, EndpointHealth)> {
        self.lock_endpoints()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn lock_endpoints(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, EndpointHealth>> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn endpoint(&self, endpoint: &str, f: impl FnOnce(&mut EndpointHealth)) {
        let mut map = self.lock_endpoints();
        let health = map.entry(endpoint.to_string()).or_insert(EndpointHealth {
            breaker: BreakerState::Closed,
            missing: false,
        });
        f(health);
    }

    /// Whether a repeated warning may be logged now; at most one per second per
    /// component, the rest counted and reported with the next one that passes.
    fn log_allowed(&self) -> Option<u64> {
        let mut gate = match self.log_gate.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        gate.allow(Instant::now())
    }
}

#[derive(Debug, Default)]
struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    const PERIOD: Duration = Duration::from_secs(1);

    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < Self::PERIOD => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// An internal event: one struct per fact a component reports.
pub trait InternalEvent {
    /// Updates the component's counters and logs.
    fn emit(self, telemetry: &ComponentTelemetry);
}

/// Events taken in by a component (decoded by a source, received by a transform or sink).
pub struct EventsReceived {
    /// Number of events.
    pub count: u64,
}

impl InternalEvent for EventsReceived {
    fn emit(self, t: &ComponentTelemetry) {
        t.events_in.fetch_add(self.count, Ordering::Relaxed);
    }
}

/// Events passed downstream (or written, for a sink).
pub struct EventsSent {
    /// Number of events.
    pub count: u64,
}

impl InternalEvent for EventsSent {
    fn emit(self, t: &ComponentTelemetry) {
        t.events_out.fetch_add(self.count, Ordering::Relaxed);
    }
}

/// Raw input bytes read by a source.
pub struct BytesReceived {
    /// Number of bytes.
    pub bytes: u64,
}

impl InternalEvent for BytesReceived {
    fn emit(self, t: &ComponentTelemetry) {
        t.bytes_in.fetch_add(self.bytes, Ordering::Relaxed);
    }
}

/// Raw output bytes written by a sink.
pub struct BytesSent {
    /// Number of bytes.
    pub bytes: u64,
}

impl InternalEvent for BytesSent {
    fn emit(self, t: &ComponentTelemetry) {
        t.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
    }
}

/// Events a detector flagged as anomalous.
pub struct AnomaliesDetected {
    /// Number of anomalous events.
    pub count: u64,
}

impl InternalEvent for AnomaliesDetected {
    fn emit(self, t: &ComponentTelemetry) {
        t.anomalies.fetch_add(self.count, Ordering::Relaxed);
    }
}

/// A record could not be processed and went to the dead-letter output.
pub struct RecordDeadLettered<'a> {
    /// Where it came from (`data.jsonl:12`).
    pub location: &'a str,
    /// Why it could not be processed.
    pub reason: &'a str,
}

impl InternalEvent for RecordDeadLettered<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.dead_lettered.fetch_add(1, Ordering::Relaxed);
        t.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = t.log_allowed() {
            tracing::warn!(
                component_id = %t.id,
                location = self.location,
                suppressed,
                "record dead-lettered: {}",
                self.reason
            );
        }
    }
}

/// A component hit an error that it survives (a retry, a skipped file).
pub struct ComponentErrorOccurred<'a> {
    /// What happened.
    pub error: &'a str,
}

impl InternalEvent for ComponentErrorOccurred<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = t.log_allowed() {
            tracing::warn!(component_id = %t.id, suppressed, "{}", self.error);
        }
    }
}

/// An endpoint's circuit breaker changed state.
pub struct BreakerTransitioned<'a> {
    /// The endpoint (URL or id).
    pub endpoint: &'a str,
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
}

impl InternalEvent for BreakerTransitioned<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.breaker_transitions.fetch_add(1, Ordering::Relaxed);
        t.endpoint(self.endpoint, |h| h.breaker = self.to);
        let (from, to) = (self.from, self.to);
        if to == BreakerState::Open {
            tracing::warn!(component_id = %t.id, endpoint = self.endpoint, ?from, ?to, "circuit breaker opened");
        } else {
            tracing::info!(component_id = %t.id, endpoint = self.endpoint, ?from, ?to, "circuit breaker changed state");
        }
    }
}

/// Stale readings (last good values, flagged `stale`) were emitted for failing endpoints.
pub struct StaleReadingsEmitted {
    /// Number of stale readings.
    pub count: u64,
}

impl InternalEvent for StaleReadingsEmitted {
    fn emit(self, t: &ComponentTelemetry) {
        t.stale_events.fetch_add(self.count, Ordering::Relaxed);
    }
}

/// A poll of an endpoint gave no reading, and its last good one is too old (or there is
/// none): the endpoint's data is missing.
pub struct EndpointDataMissing<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
    /// Age of the last good reading, if any, in milliseconds.
    pub last_good_age_ms: Option<u64>,
}

impl InternalEvent for EndpointDataMissing<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.missing_readings.fetch_add(1, Ordering::Relaxed);
        let mut newly = false;
        t.endpoint(self.endpoint, |h| {
            newly = !h.missing;
            h.missing = true;
        });
        if newly {
            match self.last_good_age_ms {
                Some(age) => {
                    tracing::warn!(component_id = %t.id, endpoint = self.endpoint, "data missing: last good reading is {age} ms old, past max_stale_ms; no readings until it recovers")
                }
                None => {
                    tracing::warn!(component_id = %t.id, endpoint = self.endpoint, "data missing: no good reading yet")
                }
            }
        }
    }
}

/// An endpoint whose data was missing answered again.
pub struct EndpointRecovered<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
}

impl InternalEvent for EndpointRecovered<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        let was = t
            .lock_endpoints()
            .get_mut(self.endpoint)
            .is_some_and(|h| std::mem::replace(&mut h.missing, false));
        if was {
            tracing::info!(component_id = %t.id, endpoint = self.endpoint, "data flows again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_update_counters() {
        let t = ComponentTelemetry::new("x", ComponentKind::Transform, "zscore");
        t.emit(EventsReceived { count: 10 });
        t.emit(EventsSent { count: 4 });
        t.emit(AnomaliesDetected { count: 2 });
        t.emit(RecordDeadLettered {
            location: "f:1",
            reason: "bad",
        });
        let s = t.snapshot();
        assert_eq!((s.events_in, s.events_out, s.anomalies), (10, 4, 2));
        assert_eq!((s.dead_lettered, s.errors), (1, 1));
    }

    #[test]
    fn log_gate_lets_one_per_period() {
        let mut g = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(g.allow(t0), Some(0));
        assert_eq!(g.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(g.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(g.allow(t0 + Duration::from_millis(1100)), Some(2));
    }
}
