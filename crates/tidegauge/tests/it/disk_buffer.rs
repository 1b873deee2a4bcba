//! A sink's disk buffer through the real binary: it takes events while the sink cannot
//! write, keeps them across a SIGKILL, reports a damaged record and delivers the rest.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

fn pipeline(d: &Path, sink_path: &str) -> String {
    format!(
        r#"
[sources.in]
type = "file"
paths = ["{d}/in.jsonl"]
fields = {{ sensor_id = "string", ts = "timestamp", value = "float64", seq = "int64" }}
batch = {{ rows = 100 }}

[sinks.out]
type = "jsonl"
inputs = ["in"]
path = "{sink_path}"
flush_interval_ms = 20
retry = {{ max_attempts = 1000000, initial_backoff_ms = 10, max_backoff_ms = 50, budget_min_per_sec = 1000 }}
buffer = {{ path = "{d}/buffer", max_bytes = 67108864 }}

[checkpoint]
dir = "{d}/state"
interval_ms = 50
commit_interval_ms = 10

[dead_letter]
path = "{d}/dead.jsonl"
"#,
        d = d.display()
    )
}

fn committed_lines(d: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(d.join("state/acked/in.json")) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["position"]["files"][0]["lines"].as_u64().unwrap_or(0)
}

#[test]
fn a_buffer_keeps_events_through_an_outage_and_a_kill_and_reports_damage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut input = String::new();
    for i in 0..5_000 {
        input.push_str(&format!(
            "{{\"sensor_id\":\"s-{}\",\"ts\":{i},\"value\":{i}.5,\"seq\":{i}}}\n",
            i % 7
        ));
    }
    std::fs::write(d.join("in.jsonl"), input).unwrap();

    // The sink writes to /dev/full: every write fails, it keeps retrying. The buffer
    // takes every event; the source's position is committed once they are in it.
    let p = d.join("p.toml");
    std::fs::write(&p, pipeline(d, "/dev/full")).unwrap();
    let mut child = tidegauge()
        .arg("run")
        .arg(&p)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_lines(d) < 5_000 {
        assert!(Instant::now() < deadline, "events never reached the buffer");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Damage one record: flip a bit in the middle of the first segment.
    let segment = std::fs::read_dir(d.join("buffer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .min()
        .expect("a buffer segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&segment, bytes).unwrap();

    // The sink works again: the buffer delivers what it holds, minus the damaged record.
    let out = d.join("out.jsonl");
    std::fs::write(&p, pipeline(d, &out.display().to_string())).unwrap();
    let o = tidegauge()
        .arg("run")
        .arg(&p)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("whole lines");
        *seen.entry(v["seq"].as_i64().unwrap()).or_default() += 1;
    }
    let lost = 5_000 - seen.len();
    assert!(
        (1..=100).contains(&lost),
        "exactly one batch (at most 100 events) is in the damaged record; lost {lost}"
    );
    assert!(seen.values().all(|&n| n == 1), "nothing delivered twice");
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap();
    let reports: Vec<&str> = dead.lines().filter(|l| l.contains("disk buffer")).collect();
    assert_eq!(reports.len(), 1, "{dead}");
    assert!(reports[0].contains("seg-"), "{}", reports[0]);
    // Everything delivered was acknowledged: no segment is left.
    let left: Vec<_> = std::fs::read_dir(d.join("buffer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
