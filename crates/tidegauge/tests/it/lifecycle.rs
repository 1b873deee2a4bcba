//! Running pipelines as a user does: the default, stdin, following a file, Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn interrupt(child: &std::process::Child) {
    signal(child, libc::SIGINT);
}

fn wait_for(path: &std::path::Path, what: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if what(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_default_pipeline_runs_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (printed, logged) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = tidegauge()
        .arg("run")
        .stdout(std::fs::File::create(&printed).unwrap())
        .stderr(std::fs::File::create(&logged).unwrap())
        .spawn()
        .unwrap();
    // Ctrl-C once it says it runs (its handler is installed by then).
    wait_for(&logged, |t| t.contains("Ctrl-C stops it"));
    interrupt(&child);
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&logged).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("tidegauge: stopped after"), "{err}");
    for id in ["fleet", "spikes", "anomalies", "console"] {
        assert!(err.contains(id), "summary lacks {id}: {err}");
    }
    assert!(err.lines().any(|l| l.contains("events/s")), "{err}");
    // Every printed anomaly is a complete line with the detector's reason.
    for l in std::fs::read_to_string(&printed).unwrap().lines() {
        assert!(l.contains("ANOMALY zscore: |z| "), "{l}");
    }
}

#[test]
fn stdin_to_json_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_piped(
        dir.path(),
        r#"
[sources.in]
type = "stdin"

[transforms.big]
type = "filter"
inputs = ["in"]
condition = "value >= 10"

[sinks.out]
type = "stdout"
inputs = ["big"]
format = "json"
"#,
    );
    {
        let mut input = child.stdin.take().unwrap();
        for i in 0..1000 {
            writeln!(
                input,
                "{{\"sensor_id\":\"s-{}\",\"ts\":{i},\"value\":{}}}",
                i % 7,
                i % 20
            )
            .unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 500);
    assert!(lines.iter().all(|v| v["value"].as_f64().unwrap() >= 10.0));
    assert_eq!(lines[0]["ts"], 10);
}

#[test]
fn a_slow_stdin_stream_flows_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_piped(
        dir.path(),
        "[sources.in]\ntype = \"stdin\"\nbatch = { linger_ms = 50 }\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"in\"]\nformat = \"json\"\n",
    );
    let mut input = child.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    for i in 0..3 {
        writeln!(input, "{{\"sensor_id\":\"a\",\"ts\":{i},\"value\":1}}").unwrap();
        input.flush().unwrap();
        let mut line = String::new();
        // One line in, one line out, while the input stays open.
        std::io::BufRead::read_line(&mut output, &mut line).unwrap();
        assert!(line.contains(&format!("\"ts\":{i}")), "{line}");
    }
    drop(input);
    assert!(child.wait().unwrap().success());
}

/// Runs a `file` source following `live.jsonl` in `d` (one reading in it) into `out.jsonl`,
/// with extra settings for each, and waits until that first reading is out.
fn follow_into_jsonl(d: &Path, source: &str, sink: &str) -> (PathBuf, Child) {
    let input = d.join("live.jsonl");
    std::fs::write(&input, "{\"sensor_id\":\"a\",\"ts\":1,\"value\":1}\n").unwrap();
    let pipeline = d.join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\nfollow = true\n{source}\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"in\"]\npath = \"{}\"\n{sink}\n",
            input.display(),
            d.join("out.jsonl").display()
        ),
    )
    .unwrap();
    let child = tidegauge()
        .arg("run")
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&d.join("out.jsonl"), |t| t.lines().count() == 1);
    (input, child)
}

#[test]
fn following_a_growing_file_then_ctrl_c_flushes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (input, child) = follow_into_jsonl(d, "poll_interval_ms = 20", "flush_interval_ms = 20");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap();
        for ts in 2..=100 {
            writeln!(f, "{{\"sensor_id\":\"a\",\"ts\":{ts},\"value\":1}}").unwrap();
        }
        // A line still being written when we stop: not emitted until it is complete.
        write!(f, "{{\"sensor_id\":\"a\",").unwrap();
    }
    wait_for(&d.join("out.jsonl"), |t| t.lines().count() == 100);
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    let ts: Vec<i64> = keys(&text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(ts, (1..=100).collect::<Vec<_>>());
    assert!(text.ends_with('\n'));
}

#[test]
fn a_jsonl_sink_shows_lines_when_idle_long_before_its_sync_interval() {
    // Lines reach the file as soon as the sink's input is idle; the sync to disk (and
    // the acknowledgement) waits for the interval, here far beyond the test's life.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (input, child) = follow_into_jsonl(d, "", "flush_interval_ms = 3600000");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap();
        writeln!(f, "{{\"sensor_id\":\"a\",\"ts\":2,\"value\":1}}").unwrap();
    }
    wait_for(&d.join("out.jsonl"), |t| t.lines().count() == 2);
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    let ts: Vec<i64> = keys(&text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(ts, vec![1, 2]);
}

#[test]
fn a_failing_sink_stops_the_pipeline_with_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"sensor_id\":\"a\",\"ts\":1,\"value\":1}\n",
    )
    .unwrap();
    // /dev/full accepts the open and fails every write with ENOSPC.
    let pipeline = format!(
        "[sources.in]\ntype = \"file\"\npaths = [\"{}/in.jsonl\"]\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"in\"]\npath = \"/dev/full\"\nappend = false\n",
        d.display()
    );
    let out = run_pipeline(d, &pipeline, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("component `out` failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn heartbeat_on_the_wall_clock_reports_silence_while_nothing_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_piped(
        dir.path(),
        r#"
[sources.in]
type = "stdin"
batch = { linger_ms = 20 }

[transforms.silent]
type = "heartbeat"
inputs = ["in"]
expected_interval_ms = 100
tolerance = 2
clock = "wall"

[transforms.alerts]
type = "filter"
inputs = ["silent"]
condition = "is_anomaly"

[sinks.out]
type = "stdout"
inputs = ["alerts"]
format = "json"
"#,
    );
    let mut input = child.stdin.take().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    writeln!(
        input,
        "{{\"sensor_id\":\"pump-7\",\"ts\":{now},\"value\":1}}"
    )
    .unwrap();
    input.flush().unwrap();
    // Nothing more arrives; the input stays open. The silence is reported on its own.
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut output, &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["sensor_id"], "pump-7");
    assert_eq!(v["detector"], "heartbeat");
    assert!(v["silent_ms"].as_f64().unwrap() > 200.0, "{line}");
    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn every_live_example_runs_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // w1 reads a file to its end: the W1 test runs it.
        if !name.ends_with(".toml") || name == "w1.toml" {
            continue;
        }
        let windows = dir.path().join(format!("{name}.windows.jsonl"));
        let running = Running::launch(
            Some(dir.path()),
            &[&path],
            &[("WINDOWS_OUTPUT", windows.to_str().unwrap())],
        );
        // It says it runs once its signal handler is installed. An example
        // that writes windows must have written some (five sensors, one-second windows)
        // before Ctrl-C; the others are stopped right away.
        running.wait_stderr(|s| s.contains("tidegauge: running"));
        if std::fs::read_to_string(&path)
            .unwrap()
            .contains("WINDOWS_OUTPUT")
        {
            wait_for(&windows, |text| text.lines().count() >= 5);
        }
        let (code, err) = running.stop();
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(err.contains("tidegauge: stopped after"), "{name}: {err}");
        assert!(!err.contains("failed"), "{name}: {err}");
    }
}
