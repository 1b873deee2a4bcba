//! Detectors and windows as a user runs them: pipelines on simulated data with a known
//! ground truth, on hand-made files, and sharded across workers.

use std::collections::HashMap;

use crate::common::*;
use serde_json::Value;

fn rows(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `simulate` (deterministic, as fast as possible) through `transforms` into a
/// JSON Lines file and returns its rows. The last transform must be called `last`.
fn simulate_through(transforms: &str, inject: &str, events: u64) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = format!(
        r#"
[sources.fleet]
type = "simulate"
sensors = 10
rate = 1000
realtime = false
events = {events}
seed = 7
start_ms = 1700000000000

[sources.fleet.inject]
{inject}

{transforms}
"#
    );
    run_into_jsonl(d, &pipeline)
}

/// Runs a pipeline whose last transform is called `last`, given without its sink, into
/// `out.jsonl` in `d`, and returns the rows written.
fn run_into_jsonl(d: &std::path::Path, pipeline: &str) -> Vec<Value> {
    let pipeline = format!(
        "{pipeline}\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"last\"]\npath = \"{}/out.jsonl\"\n",
        d.display()
    );
    let out = run_pipeline(d, &pipeline, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    rows(&d.join("out.jsonl"))
}

fn flagged(r: &Value) -> bool {
    r["is_anomaly"].as_bool().unwrap()
}

#[test]
fn an_ensemble_finds_the_injected_spikes_and_little_else() {
    let out = simulate_through(
        r#"
[transforms.last]
type = "ensemble"
inputs = ["fleet"]
members = [{ type = "zscore", window = 50, threshold = 4.0 }, { type = "mad", window = 50, threshold = 5.0 }]
combine = "max"
"#,
        "spike_probability = 0.005\ndrift_probability = 0.0\nstuck_probability = 0.0\ndropout_probability = 0.0",
        30_000,
    );
    assert_eq!(out.len(), 30_000);
    // Past warm-up (50 readings per sensor).
    let judged: Vec<&Value> = out.iter().skip(1000).collect();
    let spikes: Vec<&&Value> = judged.iter().filter(|r| r["label"] == "spike").collect();
    let normal: Vec<&&Value> = judged.iter().filter(|r| r["label"].is_null()).collect();
    let found = spikes.iter().filter(|r| flagged(r)).count();
    let false_alarms = normal.iter().filter(|r| flagged(r)).count();
    assert!(spikes.len() > 100);
    assert!(
        found as f64 >= 0.9 * spikes.len() as f64,
        "recall {found}/{}",
        spikes.len()
    );
    assert!(
        (false_alarms as f64) < 0.005 * normal.len() as f64,
        "false alarms {false_alarms}/{}",
        normal.len()
    );
    let r = spikes.iter().find(|r| flagged(r)).unwrap();
    assert_eq!(r["detector"], "ensemble");
    assert!(r["reason"].as_str().unwrap().contains("zscore: |z|"), "{r}");
    assert!(r["anomaly_score"].as_f64().unwrap() > 0.5);
}

#[test]
fn flatline_finds_stuck_sensors() {
    let out = simulate_through(
        r#"
[transforms.last]
type = "flatline"
inputs = ["fleet"]
min_duration_ms = 100
min_events = 5
"#,
        "spike_probability = 0.0\ndrift_probability = 0.0\nstuck_probability = 0.001\nstuck_events = 60\ndropout_probability = 0.0",
        40_000,
    );
    let stuck: Vec<&Value> = out.iter().filter(|r| r["label"] == "stuck").collect();
    let found = stuck.iter().filter(|r| flagged(r)).count();
    let false_alarms = out
        .iter()
        .filter(|r| r["label"].is_null() && flagged(r))
        .count();
    assert!(stuck.len() > 200, "{}", stuck.len());
    // The first readings of a stuck run cannot be told apart from normal ones.
    assert!(
        found as f64 > 0.7 * stuck.len() as f64,
        "{found}/{}",
        stuck.len()
    );
    assert_eq!(false_alarms, 0);
    assert!(
        out.iter()
            .any(|r| flagged(r) && r["reason"].as_str().unwrap().starts_with("stuck at"))
    );
}

#[test]
fn heartbeat_reports_each_dropout_once() {
    let out = simulate_through(
        r#"
[transforms.last]
type = "heartbeat"
inputs = ["fleet"]
expected_interval_ms = 10
tolerance = 5
"#,
        "spike_probability = 0.0\ndrift_probability = 0.0\nstuck_probability = 0.0\ndropout_probability = 0.0005\ndropout_events = 30",
        50_000,
    );
    let silences: Vec<&Value> = out
        .iter()
        .filter(|r| r["detector"] == "heartbeat" && flagged(r))
        .collect();
    let dropouts = out.iter().filter(|r| r["label"] == "dropout").count();
    assert!(dropouts > 5, "{dropouts}");
    // One report per dropout that ended, plus at most one still silent at the end.
    assert!(
        silences.len() == dropouts || silences.len() == dropouts + 1,
        "{} silences for {dropouts} dropouts",
        silences.len()
    );
    for s in &silences {
        assert!(s["value"].is_null());
        assert!(s["silent_ms"].as_f64().unwrap() > 50.0);
        assert!(s["reason"].as_str().unwrap().starts_with("no data for"));
    }
}

#[test]
fn sharded_detectors_give_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    w1_events(60_000, 42, &d.join("in.jsonl"));
    let run = |detector: &str, workers: usize| {
        let out = d.join(format!("{detector}-{workers}.jsonl"));
        let pipeline = format!(
            r#"
[sources.in]
type = "file"
paths = ["{d}/in.jsonl"]
batch = {{ rows = 1000 }}

[transforms.det]
type = "{detector}"
inputs = ["in"]
workers = {workers}

[sinks.out]
type = "jsonl"
inputs = ["det"]
path = "{out}"
"#,
            d = d.display(),
            out = out.display()
        );
        let o = run_pipeline(d, &pipeline, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    for detector in ["zscore", "mad", "ewma"] {
        let one = run(detector, 1);
        assert_eq!(one.iter().filter(|&&b| b == b'\n').count(), 60_000);
        assert_eq!(one, run(detector, 3), "{detector}: 3 workers differ from 1");
    }
}

fn run_on_lines(lines: &[String], transform: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), lines.join("\n")).unwrap();
    let pipeline = format!(
        r#"
[sources.in]
type = "file"
paths = ["{d}/in.jsonl"]

[transforms.last]
inputs = ["in"]
{transform}
"#,
        d = d.display()
    );
    run_into_jsonl(d, &pipeline)
}

fn ev(sensor: &str, ts: i64, value: f64) -> String {
    format!("{{\"sensor_id\":\"{sensor}\",\"ts\":{ts},\"value\":{value}}}")
}

#[test]
fn threshold_with_hysteresis_and_rate_of_change() {
    let values = [1.0, 5.0, 11.0, 9.5, 8.9, 12.0, 3.0];
    let lines: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ev("a", i as i64 * 1000, *v))
        .collect();
    let out = run_on_lines(
        &lines,
        "type = \"threshold\"\nhigh = 10.0\nhysteresis = 1.0",
    );
    let flags: Vec<bool> = out.iter().map(flagged).collect();
    // 11 trips it; 9.5 is not back below 9, so the alarm holds; 8.9 ends it.
    assert_eq!(flags, vec![false, false, true, true, false, true, false]);

    let out = run_on_lines(&lines, "type = \"rate_of_change\"\nmax_rate_per_sec = 5.0");
    let flags: Vec<bool> = out.iter().map(flagged).collect();
    assert_eq!(flags, vec![false, false, true, false, false, false, true]);
    assert_eq!(out[6]["rate"].as_f64().unwrap(), -9.0);
}

#[test]
fn tumbling_windows_with_a_watermark_and_late_events() {
    let lines = [
        ev("a", 100, 1.0),
        ev("b", 150, 10.0),
        ev("a", 900, 3.0),
        ev("a", 1100, 5.0),
        ev("a", 2050, 7.0),
        ev("a", 500, 100.0),
        ev("b", 2100, 20.0),
    ];
    let out = run_on_lines(
        &lines,
        "type = \"window\"\nsize_ms = 1000\naggregates = [\"count\", \"mean\", \"max\", \"p50\"]\nlate = \"emit\"",
    );
    let got: Vec<(String, i64, i64, bool)> = out
        .iter()
        .map(|r| {
            (
                r["sensor_id"].as_str().unwrap().to_string(),
                r["window_start"].as_i64().unwrap(),
                r["count"].as_i64().unwrap(),
                r["late"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            // The watermark passes 1000 at ts 1100: both windows [0, 1000) close.
            ("a".into(), 0, 2, false),
            ("b".into(), 0, 1, false),
            // ts 2050 closes [1000, 2000) of a.
            ("a".into(), 1000, 1, false),
            // 500 arrives after [0, 1000) closed.
            ("a".into(), 0, 1, true),
            // End of input: the rest.
            ("a".into(), 2000, 1, false),
            ("b".into(), 2000, 1, false),
        ]
    );
    assert_eq!(out[0]["mean"].as_f64().unwrap(), 2.0);
    assert_eq!(out[0]["max"].as_f64().unwrap(), 3.0);
    assert!((out[0]["p50"].as_f64().unwrap() - 1.0).abs() < 0.03);
    assert_eq!(out[0]["window_end"].as_i64().unwrap(), 1000);
}

#[test]
fn sliding_and_session_windows() {
    let lines = [
        ev("a", 0, 1.0),
        ev("a", 600, 2.0),
        ev("a", 1200, 3.0),
        ev("a", 5000, 4.0),
    ];
    let out = run_on_lines(
        &lines,
        "type = \"window\"\nkind = \"sliding\"\nsize_ms = 1000\nslide_ms = 500\naggregates = [\"count\", \"sum\"]",
    );
    let sums: HashMap<i64, f64> = out
        .iter()
        .map(|r| {
            (
                r["window_start"].as_i64().unwrap(),
                r["sum"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sums[&-500], 1.0);
    assert_eq!(sums[&0], 3.0);
    assert_eq!(sums[&500], 5.0);
    assert_eq!(sums[&1000], 3.0);
    assert_eq!(sums[&4500], 4.0);
    assert_eq!(out.len(), 6);

    let out = run_on_lines(
        &lines,
        "type = \"window\"\nkind = \"session\"\ngap_ms = 1000\naggregates = [\"count\", \"first\", \"last\"]",
    );
    let sessions: Vec<(i64, i64, i64)> = out
        .iter()
        .map(|r| {
            (
                r["window_start"].as_i64().unwrap(),
                r["window_end"].as_i64().unwrap(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sessions, vec![(0, 2200, 3), (5000, 6000, 1)]);
    assert_eq!(out[0]["first"].as_f64().unwrap(), 1.0);
    assert_eq!(out[0]["last"].as_f64().unwrap(), 3.0);
}

#[test]
fn a_huge_z_reads_in_short_scientific_form() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A sensor that barely moves (std about 5e-11), then a reading of 5e289: z about
    // 1e300.
    let mut input = String::new();
    for i in 0..20 {
        let v = if i % 2 == 0 { 0.0 } else { 1e-10 };
        input.push_str(&format!(
            "{{\"sensor_id\":\"s\",\"ts\":{i},\"value\":{v:e}}}\n"
        ));
    }
    input.push_str("{\"sensor_id\":\"s\",\"ts\":20,\"value\":5e289}\n");
    std::fs::write(d.join("in.jsonl"), input).unwrap();
    let out = d.join("out.jsonl");
    let pipeline = format!(
        r#"
[sources.in]
type = "file"
paths = ["{}"]

[transforms.z]
type = "zscore"
inputs = ["in"]
window = 20
threshold = 3.0

[sinks.out]
type = "jsonl"
inputs = ["z"]
path = "{}"
"#,
        d.join("in.jsonl").display(),
        out.display()
    );
    let o = run_pipeline(d, &pipeline, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["z"].as_f64().unwrap() > 1e299, "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("|z| ") && (reason.contains("e29") || reason.contains("e300")),
        "{reason}"
    );
    assert!(reason.len() < 60, "short: {reason}");
}
