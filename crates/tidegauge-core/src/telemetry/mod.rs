//! Internal telemetry: typed events that update per-component counters and log.
//!
//! Components never touch counters or write log lines for these facts directly; they emit
//! one of the event structs below through [`ComponentTelemetry::emit`]. The counters are
//! plain atomics, read by the run summary and exported as metrics.

mod declared;
mod events;

pub use declared::{Metric, MetricAdded, MetricDesc, MetricKind, MetricSet, MetricValue};
pub use events::*;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kind::ComponentKind;
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
    breaker_transitions: AtomicU64,
    /// Per endpoint (network sources and sinks): breaker state and whether data is missing.
    endpoints: Mutex<std::collections::BTreeMap<String, EndpointHealth>>,
    log_gate: Mutex<LogGate>,
    /// Time per batch spent processing (transforms) or writing (sinks).
    latency: LatencyHistogram,
    /// Profiling: whether waits are measured, and the waits measured so far.
    profiling: AtomicBool,
    waited_ns: AtomicU64,
    /// Active time: from the first start to the last finish of the component's task.
    active: Mutex<ActiveTime>,
    /// `BreakerState::as_gauge`, or `NO_BREAKER`.
    breaker_state: AtomicU64,
    /// Reads the fill of the component's input queue (set by the topology).
    queue_probe: ProbeSlot,
    /// The latest anomalies a detector flagged, newest last.
    recent_anomalies: Mutex<std::collections::VecDeque<AnomalyRecord>>,
    /// Whether the component is a detector (declares verdict columns).
    detector: AtomicBool,
    /// Incidents open now (components that raise alerts).
    open_incidents: Mutex<Vec<OpenIncident>>,
    /// The partitions a consumer-group member owns (a `kafka` source with partition
    /// state).
    ownership: Mutex<Option<Ownership>>,
    /// The metrics the component declared for itself, in order of declaration.
    declared: Mutex<Vec<(&'static MetricDesc, Metric)>>,
}

/// A partition a consumer-group member owns, as the admin API (`GET /partitions`) shows
/// it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset after the last message read (-1: none read yet).
    pub position: i64,
    /// The partition's high watermark as last reported by the client (-1: not yet).
    pub high_watermark: i64,
    /// Messages behind the high watermark (-1: unknown yet).
    pub lag: i64,
    /// Bytes of the partition's last state snapshot written to the changelog.
    pub state_bytes: u64,
}

/// What a consumer-group member owns, and its rebalances so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ownership {
    /// The partitions owned now.
    pub partitions: Vec<OwnedPartition>,
    /// Assignments handled.
    pub assignments: u64,
    /// Revocations handled.
    pub revocations: u64,
    /// Duration of the last assignment, state restore included, in ms.
    pub last_assign_ms: u64,
    /// Duration of the last revocation, in ms.
    pub last_revoke_ms: u64,
}

/// An incident that is open, as the admin API (`GET /alerts`) and `tidegauge top` show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenIncident {
    /// What it is about: the group's values (the sensor), joined by `/`.
    pub key: String,
    /// The incident's id, as its alert events carry it.
    pub incident_id: String,
    /// Event time of its first anomaly, ms since the Unix epoch.
    pub starts_at_ms: i64,
    /// Event time of its latest anomaly.
    pub last_anomaly_ms: i64,
    /// Anomalies so far.
    pub anomalies: u64,
    /// Highest anomaly score so far.
    pub peak_score: f64,
    /// Detector of the peak anomaly.
    pub detector: Option<String>,
    /// Its reason.
    pub reason: Option<String>,
    /// Whether the group is flapping.
    pub flapping: bool,
}

/// Anomalies kept per detector for live views.
pub const RECENT_ANOMALIES: usize = 16;

/// One anomaly, as live views show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnomalyRecord {
    /// When it was flagged, ms since the Unix epoch.
    pub time_ms: u64,
    /// The sensor (the event's `sensor_id`), when the event has one.
    pub key: Option<String>,
    /// The detector's reason.
    pub reason: Option<String>,
}

#[derive(Default)]
struct ProbeSlot(Mutex<Option<QueueProbe>>);

impl std::fmt::Debug for ProbeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueProbe")
    }
}

/// Reads how many batches sit in a component's input queue, and how many it holds.
pub type QueueProbe = Box<dyn Fn() -> Option<QueueFill> + Send + Sync>;

/// How full a bounded input queue is, in batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueFill {
    /// Batches waiting.
    pub queued: usize,
    /// Batches the queue holds at most.
    pub capacity: usize,
}

const NO_BREAKER: u64 = u64::MAX;

#[derive(Debug, Default)]
struct ActiveTime {
    started: Option<Instant>,
    finished: Option<Instant>,
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
    /// Circuit breaker state, for components that call out through one.
    pub breaker: Option<BreakerState>,
    /// Breaker state changes so far.
    pub breaker_transitions: u64,
    /// Input queue fill (transforms and sinks), when the component is running.
    pub queue: Option<QueueFill>,
    /// Per-batch processing time.
    pub latency: LatencySnapshot,
    /// Time the component's task has been running (to now, or to its end), in ns.
    pub active_ns: u64,
    /// Whether its task runs now.
    pub running: bool,
    /// Time spent waiting for input or for room downstream, in ns (measured only when
    /// profiling; 0 otherwise).
    pub waited_ns: u64,
    /// The latest anomalies flagged (detectors), newest last.
    pub recent_anomalies: Vec<AnomalyRecord>,
    /// Whether the component is a detector (declares verdict columns).
    pub detector: bool,
    /// The metrics the component declared for itself (keys of a keyed stage, a
    /// window's watermark lag, ...), in order of declaration.
    pub metrics: Vec<MetricValue>,
}

impl TelemetrySnapshot {
    /// The stored value of the declared metric `name`, if the component declared it.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .find(|m| m.desc.name == name)
            .map(|m| m.raw)
    }

    /// Time spent working: active time less waits (profiling only; else active time).
    pub fn busy_ns(&self) -> u64 {
        self.active_ns.saturating_sub(self.waited_ns)
    }
}

impl ComponentTelemetry {
    /// Replaces the list of open incidents (a component that raises alerts).
    pub fn set_open_incidents(&self, open: Vec<OpenIncident>) {
        *lock(&self.open_incidents) = open;
    }

    /// The incidents open now.
    pub fn open_incidents(&self) -> Vec<OpenIncident> {
        lock(&self.open_incidents).clone()
    }

    /// Replaces what the component owns of its consumer group.
    pub fn set_ownership(&self, ownership: Ownership) {
        *lock(&self.ownership) = Some(ownership);
    }

    /// What the component owns of its consumer group (`None`: not a member with
    /// partition state).
    pub fn ownership(&self) -> Option<Ownership> {
        lock(&self.ownership).clone()
    }

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
            breaker_transitions: AtomicU64::new(0),
            endpoints: Mutex::new(Default::default()),
            log_gate: Mutex::new(LogGate::default()),
            latency: LatencyHistogram::default(),
            profiling: AtomicBool::new(false),
            waited_ns: AtomicU64::new(0),
            active: Mutex::new(ActiveTime::default()),
            breaker_state: AtomicU64::new(NO_BREAKER),
            queue_probe: ProbeSlot::default(),
            recent_anomalies: Mutex::new(std::collections::VecDeque::new()),
            open_incidents: Mutex::new(Vec::new()),
            ownership: Mutex::new(None),
            detector: AtomicBool::new(false),
            declared: Mutex::new(Vec::new()),
        }
    }

    /// Turns wait measurement (the per-stage profiler) on or off.
    pub fn set_profiling(&self, on: bool) {
        self.profiling.store(on, Ordering::Relaxed);
    }

    /// Marks the component as a detector (the runtime does, when the transform declares
    /// its verdict columns).
    pub fn set_detector(&self, yes: bool) {
        self.detector.store(yes, Ordering::Relaxed);
    }

    /// Whether waits are being measured.
    pub fn profiling(&self) -> bool {
        self.profiling.load(Ordering::Relaxed)
    }

    /// Sets how the input queue's fill is read (the topology does, for transforms and
    /// sinks); `None` once the component has stopped.
    pub fn set_queue_probe(&self, probe: Option<QueueProbe>) {
        *lock(&self.queue_probe.0) = probe;
    }

    fn queue_fill(&self) -> Option<QueueFill> {
        lock(&self.queue_probe.0).as_ref().and_then(|p| p())
    }

    /// The breaker state to show: the worst over the component's endpoints, else the
    /// state of its single breaker, if it has one.
    fn breaker(&self) -> Option<BreakerState> {
        let worst = self
            .lock_endpoints()
            .values()
            .map(|h| h.breaker)
            .max_by_key(|b| b.as_gauge());
        worst.or(match self.breaker_state.load(Ordering::Relaxed) {
            0 => Some(BreakerState::Closed),
            1 => Some(BreakerState::HalfOpen),
            2 => Some(BreakerState::Open),
            _ => None,
        })
    }

    fn active_ns(&self) -> u64 {
        let a = lock(&self.active);
        match (a.started, a.finished) {
            (Some(s), Some(f)) => f.saturating_duration_since(s).as_nanos() as u64,
            (Some(s), None) => s.elapsed().as_nanos() as u64,
            _ => 0,
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
            breaker: self.breaker(),
            breaker_transitions: self.breaker_transitions.load(Ordering::Relaxed),
            queue: self.queue_fill(),
            latency: self.latency.snapshot(),
            active_ns: self.active_ns(),
            running: {
                let a = lock(&self.active);
                a.started.is_some() && a.finished.is_none()
            },
            waited_ns: self.waited_ns.load(Ordering::Relaxed),
            recent_anomalies: lock(&self.recent_anomalies).iter().cloned().collect(),
            detector: self.detector.load(Ordering::Relaxed),
            metrics: self.declared_values(),
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
    /// component, the rest counted and reported with the next one that passes (the
    /// count of those suppressed since the last one is returned).
    pub fn log_allowed(&self) -> Option<u64> {
        lock(&self.log_gate).allow(Instant::now())
    }
}

/// Locks a mutex whose data stays consistent whatever a panicking holder did (counters
/// and timestamps written in one step).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Upper bounds of the latency histogram's buckets, in nanoseconds (1 µs to 10 s).
pub const LATENCY_BUCKETS_NS: [u64; 15] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A fixed-bucket histogram of durations, updated with atomics.
#[derive(Debug, Default)]
struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let i = LATENCY_BUCKETS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a latency histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencySnapshot {
    /// Observations per bucket of [`LATENCY_BUCKETS_NS`] (not cumulative), then the
    /// observations above the last bound.
    pub buckets: Vec<u64>,
    /// Sum of all observations, ns.
    pub sum_ns: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencySnapshot {
    /// Mean per batch, ns (0 without observations).
    pub fn mean_ns(&self) -> u64 {
        self.sum_ns.checked_div(self.count).unwrap_or(0)
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1), ns; `None` without
    /// observations or when it lies above the last bound.
    pub fn quantile_bound_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BUCKETS_NS.get(i).copied();
            }
        }
        None
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
        assert_eq!(s.breaker, None);
        t.emit(BreakerTransitioned {
            endpoint: "http://a",
            from: BreakerState::Closed,
            to: BreakerState::Open,
        });
        let s = t.snapshot();
        assert_eq!(
            (s.breaker, s.breaker_transitions),
            (Some(BreakerState::Open), 1)
        );
    }

    #[test]
    fn latency_lands_in_its_bucket() {
        let t = ComponentTelemetry::new("x", ComponentKind::Transform, "zscore");
        t.emit(BatchProcessed {
            elapsed: Duration::from_micros(3),
        });
        t.emit(BatchProcessed {
            elapsed: Duration::from_micros(3),
        });
        t.emit(BatchProcessed {
            elapsed: Duration::from_secs(20),
        });
        let l = t.snapshot().latency;
        assert_eq!(l.count, 3);
        assert_eq!(l.buckets[1], 2, "3 µs is in the (1 µs, 5 µs] bucket");
        assert_eq!(*l.buckets.last().unwrap(), 1);
        assert_eq!(l.quantile_bound_ns(0.5), Some(5_000));
        assert_eq!(l.quantile_bound_ns(1.0), None);
        assert_eq!(l.sum_ns, 20_000_006_000);
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
