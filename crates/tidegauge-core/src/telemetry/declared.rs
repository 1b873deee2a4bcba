//! Counters and gauges a component declares for itself.
//!
//! The runtime counts what every component has (events in and out, bytes, errors,
//! latency); what only some components know (a keyed stage's keys, a window's
//! watermark, a polled source's stale readings) they declare as [`MetricDesc`]s, in
//! their config's `METRICS` (registered before `build`, so they read 0 from the start)
//! or on first use through [`ComponentTelemetry::metric`]. The exposition
//! ([`crate::metrics`]) and the admin API list whatever a component declared, under
//! the name and help text given here: core names none of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ComponentTelemetry;

/// Whether a declared metric only grows or may go up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Only grows (`_total`).
    Counter,
    /// Set to the current value.
    Gauge,
}

impl MetricKind {
    /// The Prometheus type name.
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// A metric a component declares: its exposition name, kind and help text.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDesc {
    /// Full exposition name (`tidegauge_component_keys`).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// One line for `# HELP`.
    pub help: &'static str,
    /// Units the stored integer counts per exposed unit: 1, or 1000 for a value kept in
    /// milliseconds and exposed in seconds.
    pub per_unit: u64,
}

impl MetricDesc {
    /// A counter.
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        MetricDesc {
            name,
            kind: MetricKind::Counter,
            help,
            per_unit: 1,
        }
    }

    /// A gauge.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        MetricDesc {
            name,
            kind: MetricKind::Gauge,
            help,
            per_unit: 1,
        }
    }

    /// The same metric, stored in `per_unit` parts of the exposed unit (milliseconds of
    /// a metric exposed in seconds: 1000).
    pub const fn stored_in(self, per_unit: u64) -> Self {
        MetricDesc { per_unit, ..self }
    }
}

/// A handle on one declared metric of one component; cheap to clone and update from
/// any thread.
#[derive(Clone, Debug, Default)]
pub struct Metric(Arc<AtomicU64>);

impl Metric {
    /// Adds `n` (counters).
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value (gauges).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The stored value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A declared metric's value at a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricValue {
    /// What it is.
    pub desc: &'static MetricDesc,
    /// The stored integer (see [`MetricDesc::per_unit`]).
    pub raw: u64,
}

impl MetricValue {
    /// The value in the exposed unit.
    pub fn value(&self) -> f64 {
        self.raw as f64 / self.desc.per_unit.max(1) as f64
    }
}

impl serde::Serialize for MetricValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("MetricValue", 4)?;
        m.serialize_field("name", self.desc.name)?;
        m.serialize_field("kind", &self.desc.kind)?;
        m.serialize_field("help", self.desc.help)?;
        m.serialize_field("value", &self.value())?;
        m.end()
    }
}

/// Adds `count` to a declared counter (declaring it if need be).
pub struct MetricAdded {
    /// The counter.
    pub metric: &'static MetricDesc,
    /// How much.
    pub count: u64,
}

impl super::InternalEvent for MetricAdded {
    fn emit(self, t: &ComponentTelemetry) {
        t.metric(self.metric).add(self.count);
    }
}

/// Sets a declared gauge (declaring it if need be), in its stored unit.
pub struct MetricSet {
    /// The gauge.
    pub metric: &'static MetricDesc,
    /// The value.
    pub value: u64,
}

impl super::InternalEvent for MetricSet {
    fn emit(self, t: &ComponentTelemetry) {
        t.metric(self.metric).set(self.value);
    }
}

impl ComponentTelemetry {
    /// The component's metric `desc`, declared now if it was not yet (by name: two
    /// descriptions of one name are one metric).
    pub fn metric(&self, desc: &'static MetricDesc) -> Metric {
        let mut declared = super::lock(&self.declared);
        if let Some((_, m)) = declared.iter().find(|(d, _)| d.name == desc.name) {
            return m.clone();
        }
        let m = Metric::default();
        declared.push((desc, m.clone()));
        m
    }

    /// Declares every metric of `descs` (a config's `METRICS`), so they read 0 until
    /// first moved.
    pub fn declare(&self, descs: &[&'static MetricDesc]) {
        for d in descs {
            self.metric(d);
        }
    }

    /// The declared metrics' values, in order of declaration.
    pub(super) fn declared_values(&self) -> Vec<MetricValue> {
        super::lock(&self.declared)
            .iter()
            .map(|(desc, m)| MetricValue { desc, raw: m.get() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ComponentKind;

    static SEEN: MetricDesc = MetricDesc::counter("tidegauge_test_seen_total", "Seen.");
    static LAG: MetricDesc =
        MetricDesc::gauge("tidegauge_test_lag_seconds", "Lag.").stored_in(1000);

    #[test]
    fn a_metric_is_declared_once_and_shared_by_its_handles() {
        let t = ComponentTelemetry::new("w", ComponentKind::Transform, "window");
        t.declare(&[&SEEN, &LAG]);
        t.metric(&SEEN).add(2);
        t.metric(&SEEN).add(3);
        t.metric(&LAG).set(1500);
        let s = t.snapshot();
        assert_eq!(s.metrics.len(), 2);
        assert_eq!(s.metric("tidegauge_test_seen_total"), Some(5));
        assert_eq!(s.metrics[1].value(), 1.5);
        let json = serde_json::to_value(s.metrics[1]).unwrap();
        assert_eq!(json["value"], 1.5);
        assert_eq!(json["kind"], "gauge");
        assert_eq!(s.metric("tidegauge_test_other"), None);
    }
}
