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
    log_gate: Mutex<LogGate>,
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
        }
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
