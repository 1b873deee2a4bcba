//! Prometheus text exposition of the counters that the typed internal events keep
//! ([`crate::telemetry`]). The names of what every component has are written here; what
//! only some components have, they declare themselves
//! ([`MetricDesc`](crate::telemetry::MetricDesc)) and this renders as declared.
//!
//! The counters already live as atomics in each component's
//! [`ComponentTelemetry`](crate::telemetry::ComponentTelemetry), read by the run summary,
//! the admin API and `top` alike; rendering the (small, stable) text format from their
//! snapshots keeps one source of truth instead of mirroring every counter into a second,
//! string-keyed registry.

use std::fmt::Write as _;

use crate::kind::ComponentKind;
use crate::telemetry::{LATENCY_BUCKETS_NS, TelemetrySnapshot};

/// Process-wide facts that belong to no single component.
#[derive(Clone, Debug, Default)]
pub struct ProcessMetrics {
    /// Seconds since the pipeline started.
    pub uptime_seconds: f64,
    /// Configuration reloads that were applied.
    pub reloads_applied: u64,
    /// Configuration reloads rejected (invalid config, build failure).
    pub reloads_rejected: u64,
    /// Parameters changed while running (admin API).
    pub parameter_changes: u64,
    /// Checkpointing, when the pipeline has a `[checkpoint]` table.
    pub checkpoint: Option<CheckpointMetrics>,
}

/// Checkpointing of a running pipeline.
#[derive(Clone, Debug, Default)]
pub struct CheckpointMetrics {
    /// Id of the last complete checkpoint (written, or restored from).
    pub last_id: u64,
    /// Seconds since this process last wrote one (`None`: not yet).
    pub age_seconds: Option<f64>,
    /// Seconds the last one took, from the barrier request to the manifest on disk.
    pub last_duration_seconds: f64,
    /// Bytes the last one wrote.
    pub last_bytes: u64,
    /// Checkpoints written by this process.
    pub completed: u64,
    /// Checkpoints that failed.
    pub failures: u64,
    /// Restarts that fell back to an older checkpoint (the newest damaged or missing).
    pub restore_fallbacks: u64,
}

fn checkpoint_metrics(f: &mut Family<'_>, c: &CheckpointMetrics) {
    let gauges: [(&str, &str, Option<f64>); 4] = [
        (
            "tidegauge_checkpoint_last_id",
            "Id of the last complete checkpoint (written, or restored from).",
            Some(c.last_id as f64),
        ),
        (
            "tidegauge_checkpoint_age_seconds",
            "Seconds since the last checkpoint was written (absent until one is).",
            c.age_seconds,
        ),
        (
            "tidegauge_checkpoint_duration_seconds",
            "How long the last checkpoint took, from the barrier request to the manifest on disk.",
            Some(c.last_duration_seconds),
        ),
        (
            "tidegauge_checkpoint_size_bytes",
            "Bytes the last checkpoint wrote (state files and manifest).",
            Some(c.last_bytes as f64),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            f.header(name, "gauge", help);
            f.sample(name, "", v);
        }
    }
    let counters = [
        (
            "tidegauge_checkpoints_total",
            "Checkpoints written.",
            c.completed,
        ),
        (
            "tidegauge_checkpoint_failures_total",
            "Checkpoints that failed (not written, a state not snapshotted, a sink that did not deliver).",
            c.failures,
        ),
        (
            "tidegauge_checkpoint_restore_fallbacks_total",
            "Restarts that fell back to an older checkpoint because the newest was damaged or missing.",
            c.restore_fallbacks,
        ),
    ];
    for (name, help, value) in counters {
        f.header(name, "counter", help);
        f.sample(name, "", value);
    }
}

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn component_labels(c: &TelemetrySnapshot) -> String {
    format!(
        "component_id=\"{}\",component_kind=\"{}\",component_type=\"{}\"",
        escape(&c.id),
        c.kind.name(),
        escape(&c.type_name)
    )
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A counter family with one sample per component, for those `pick` gives a value.
fn per_component(
    f: &mut Family<'_>,
    components: &[(String, &TelemetrySnapshot)],
    name: &str,
    kind: &str,
    help: &str,
    pick: impl Fn(&TelemetrySnapshot) -> Option<String>,
) {
    let values: Vec<(&String, String)> = components
        .iter()
        .filter_map(|(labels, c)| pick(c).map(|v| (labels, v)))
        .collect();
    if values.is_empty() {
        return;
    }
    f.header(name, kind, help);
    for (labels, v) in values {
        f.sample(name, labels, v);
    }
}

/// What components declared for themselves ([`crate::telemetry::MetricDesc`]): one
/// family per name, in order of first declaration, with a sample for each component
/// that declared it.
fn declared_metrics(f: &mut Family<'_>, components: &[(String, &TelemetrySnapshot)]) {
    let mut families: Vec<&'static crate::telemetry::MetricDesc> = Vec::new();
    for (_, c) in components {
        for m in &c.metrics {
            if !families.iter().any(|d| d.name == m.desc.name) {
                families.push(m.desc);
            }
        }
    }
    for desc in families {
        per_component(f, components, desc.name, desc.kind.name(), desc.help, |c| {
            c.metrics
                .iter()
                .find(|m| m.desc.name == desc.name)
                .map(|m| m.value().to_string())
        });
    }
}

/// The whole exposition: process facts, then every component's counters.
pub fn render(process: &ProcessMetrics, components: &[TelemetrySnapshot]) -> String {
    let mut out = String::new();
    let f = &mut Family { out: &mut out };
    f.header(
        "tidegauge_build_info",
        "gauge",
        "Version of the running tidegauge.",
    );
    f.sample(
        "tidegauge_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    f.header(
        "tidegauge_uptime_seconds",
        "gauge",
        "Seconds since the pipeline started.",
    );
    f.sample("tidegauge_uptime_seconds", "", process.uptime_seconds);
    f.header(
        "tidegauge_config_reloads_total",
        "counter",
        "Configuration reloads, by result.",
    );
    f.sample(
        "tidegauge_config_reloads_total",
        "result=\"applied\"",
        process.reloads_applied,
    );
    f.sample(
        "tidegauge_config_reloads_total",
        "result=\"rejected\"",
        process.reloads_rejected,
    );
    f.header(
        "tidegauge_parameter_changes_total",
        "counter",
        "Parameters changed while running.",
    );
    f.sample(
        "tidegauge_parameter_changes_total",
        "",
        process.parameter_changes,
    );
    if let Some(c) = &process.checkpoint {
        checkpoint_metrics(f, c);
    }

    let labelled: Vec<(String, &TelemetrySnapshot)> = components
        .iter()
        .map(|c| (component_labels(c), c))
        .collect();
    let all = |v: u64| Some(v.to_string());
    per_component(
        f,
        &labelled,
        "tidegauge_component_received_events_total",
        "counter",
        "Events taken in (decoded by a source, received by a transform or sink).",
        |c| all(c.events_in),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_sent_events_total",
        "counter",
        "Events passed downstream (written, for a sink).",
        |c| all(c.events_out),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_received_bytes_total",
        "counter",
        "Raw bytes read by a source.",
        |c| all(c.bytes_in),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_sent_bytes_total",
        "counter",
        "Raw bytes written by a sink.",
        |c| all(c.bytes_out),
    );

    f.header(
        "tidegauge_component_errors_total",
        "counter",
        "Errors by kind: `record` (a record that could not be processed) or `component` (an error the component survived).",
    );
    for (labels, c) in &labelled {
        f.sample(
            "tidegauge_component_errors_total",
            &format!("{labels},error_kind=\"record\""),
            c.dead_lettered,
        );
        f.sample(
            "tidegauge_component_errors_total",
            &format!("{labels},error_kind=\"component\""),
            c.errors.saturating_sub(c.dead_lettered),
        );
    }
    per_component(
        f,
        &labelled,
        "tidegauge_component_dead_lettered_events_total",
        "counter",
        "Records sent to the dead-letter output.",
        |c| all(c.dead_lettered),
    );
    declared_metrics(f, &labelled);

    // Anomalies by detector: a detector transform's type names its detector.
    let detectors: Vec<(String, &TelemetrySnapshot)> = labelled
        .iter()
        .filter(|(_, c)| c.detector)
        .map(|(l, c)| (format!("{l},detector=\"{}\"", escape(&c.type_name)), *c))
        .collect();
    per_component(
        f,
        &detectors,
        "tidegauge_detector_anomalies_total",
        "counter",
        "Events flagged as anomalies, by detector.",
        |c| all(c.anomalies),
    );

    per_component(
        f,
        &labelled,
        "tidegauge_component_input_queue_batches",
        "gauge",
        "Batches waiting in the component's bounded input queue.",
        |c| c.queue.map(|q| q.queued.to_string()),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_input_queue_capacity_batches",
        "gauge",
        "Batches the component's input queue holds at most.",
        |c| c.queue.map(|q| q.capacity.to_string()),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_breaker_state",
        "gauge",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        |c| c.breaker.map(|b| b.as_gauge().to_string()),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_breaker_transitions_total",
        "counter",
        "Circuit breaker state changes.",
        |c| c.breaker.map(|_| c.breaker_transitions.to_string()),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_active_seconds",
        "gauge",
        "Time the component has been running.",
        |c| Some(seconds(c.active_ns).to_string()),
    );
    per_component(
        f,
        &labelled,
        "tidegauge_component_waited_seconds_total",
        "counter",
        "Time spent waiting for input or for room downstream (measured when profiling).",
        |c| Some(seconds(c.waited_ns).to_string()),
    );

    let timed: Vec<&(String, &TelemetrySnapshot)> = labelled
        .iter()
        .filter(|(_, c)| c.kind != ComponentKind::Source)
        .collect();
    if !timed.is_empty() {
        let name = "tidegauge_component_processing_seconds";
        f.header(
            name,
            "histogram",
            "Time per batch spent processing (transforms) or writing (sinks).",
        );
        for (labels, c) in timed {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_NS.iter().enumerate() {
                cumulative += c.latency.buckets.get(i).copied().unwrap_or(0);
                f.sample(
                    &format!("{name}_bucket"),
                    &format!("{labels},le=\"{}\"", seconds(*bound)),
                    cumulative,
                );
            }
            f.sample(
                &format!("{name}_bucket"),
                &format!("{labels},le=\"+Inf\""),
                c.latency.count,
            );
            f.sample(&format!("{name}_sum"), labels, seconds(c.latency.sum_ns));
            f.sample(&format!("{name}_count"), labels, c.latency.count);
        }
    }
    out
}

/// Where one stage's time went (the profiler).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageProfile {
    /// Component id.
    pub id: String,
    /// Kind.
    pub kind: ComponentKind,
    /// Registered type.
    pub type_name: String,
    /// Events the stage took in.
    pub events: u64,
    /// Time working: running time less waits for input and for room downstream.
    pub busy_ns: u64,
    /// Busy time per event.
    pub ns_per_event: f64,
    /// Share of the busy time of all stages, 0..1.
    pub share: f64,
    /// Events per second of the stage's running time.
    pub events_per_sec: f64,
}

/// Per-stage profile from counters of a run made with profiling on.
pub fn profile(components: &[TelemetrySnapshot]) -> Vec<StageProfile> {
    let total: u64 = components.iter().map(|c| c.busy_ns()).sum();
    components
        .iter()
        .map(|c| {
            let events = if c.kind == ComponentKind::Source {
                c.events_in.max(c.events_out)
            } else {
                c.events_in
            };
            let busy_ns = c.busy_ns();
            StageProfile {
                id: c.id.clone(),
                kind: c.kind,
                type_name: c.type_name.clone(),
                events,
                busy_ns,
                ns_per_event: if events > 0 {
                    busy_ns as f64 / events as f64
                } else {
                    0.0
                },
                share: if total > 0 {
                    busy_ns as f64 / total as f64
                } else {
                    0.0
                },
                events_per_sec: if c.active_ns > 0 {
                    events as f64 / seconds(c.active_ns)
                } else {
                    0.0
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{BatchProcessed, ComponentTelemetry, EventsReceived, MetricDesc};
    use std::time::Duration;

    #[test]
    fn exposition_has_help_type_and_labelled_samples() {
        let t = ComponentTelemetry::new("spikes", ComponentKind::Transform, "zscore");
        t.set_detector(true);
        static LAG: MetricDesc =
            MetricDesc::gauge("tidegauge_test_lag_seconds", "How far behind.").stored_in(1000);
        t.metric(&LAG).set(2500);
        t.emit(EventsReceived { count: 42 });
        t.emit(BatchProcessed {
            elapsed: Duration::from_micros(20),
        });
        let text = render(&ProcessMetrics::default(), &[t.snapshot()]);
        assert!(text.contains("# TYPE tidegauge_component_received_events_total counter\n"));
        assert!(text.contains(
            "tidegauge_component_received_events_total{component_id=\"spikes\",component_kind=\"transform\",component_type=\"zscore\"} 42\n"
        ), "{text}");
        assert!(text.contains("le=\"0.00001\"} 0\n"), "{text}");
        assert!(text.contains("le=\"0.00005\"} 1\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("detector=\"zscore\"} 0\n"), "{text}");
        // What the component declared, under its own name and help.
        assert!(
            text.contains("# HELP tidegauge_test_lag_seconds How far behind.\n# TYPE tidegauge_test_lag_seconds gauge\n"),
            "{text}"
        );
        assert!(text.contains("tidegauge_test_lag_seconds{component_id=\"spikes\",component_kind=\"transform\",component_type=\"zscore\"} 2.5\n"), "{text}");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
