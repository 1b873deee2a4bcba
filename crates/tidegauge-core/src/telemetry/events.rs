//! The internal events: one struct per fact a component reports, each updating its
//! counters and logging as [`InternalEvent::emit`] says.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::resilience::BreakerState;

use super::*;

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

/// A batch was processed (transforms) or written (sinks) in `elapsed`.
pub struct BatchProcessed {
    /// Time the batch took.
    pub elapsed: Duration,
}

impl InternalEvent for BatchProcessed {
    fn emit(self, t: &ComponentTelemetry) {
        t.latency.observe(self.elapsed);
    }
}

/// The component waited `elapsed` for input or for room downstream (profiling).
pub struct Waited {
    /// How long.
    pub elapsed: Duration,
}

impl InternalEvent for Waited {
    fn emit(self, t: &ComponentTelemetry) {
        t.waited_ns
            .fetch_add(self.elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The component's task started (the first start counts; a rebuilt component goes on).
pub struct ComponentStarted;

impl InternalEvent for ComponentStarted {
    fn emit(self, t: &ComponentTelemetry) {
        let mut a = lock(&t.active);
        a.started.get_or_insert_with(Instant::now);
        a.finished = None;
        drop(a);
        tracing::debug!(component_id = %t.id, component_type = t.type_name, "started");
    }
}

/// The component's task finished.
pub struct ComponentStopped;

impl InternalEvent for ComponentStopped {
    fn emit(self, t: &ComponentTelemetry) {
        lock(&t.active).finished = Some(Instant::now());
        t.set_queue_probe(None);
        tracing::debug!(component_id = %t.id, "stopped");
    }
}

/// A detector flagged these anomalies (the latest of a batch, for live views).
pub struct AnomaliesSeen {
    /// The anomalies, oldest first.
    pub records: Vec<AnomalyRecord>,
}

impl InternalEvent for AnomaliesSeen {
    fn emit(self, t: &ComponentTelemetry) {
        let mut recent = lock(&t.recent_anomalies);
        for r in self.records {
            if recent.len() == RECENT_ANOMALIES {
                recent.pop_front();
            }
            recent.push_back(r);
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
