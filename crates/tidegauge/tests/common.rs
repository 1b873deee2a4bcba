//! Helpers for tests that run the real binary on real files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The shared material beside the checkout (W1 kit, SKAB data).
pub fn shared() -> PathBuf {
    root().join("../shared")
}

/// A command running the tidegauge binary.
pub fn tidegauge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidegauge"));
    c.env_remove("TIDEGAUGE_LOG");
    c
}

/// Runs `tidegauge args...` to completion.
pub fn run(args: &[&str]) -> Output {
    tidegauge()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tidegauge")
}

/// Runs a pipeline given as text, with extra environment variables.
pub fn run_pipeline(dir: &Path, text: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let mut c = tidegauge();
    c.arg("run").arg(&path).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run tidegauge")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Generates W1 events with the shared generator.
pub fn w1_events(n: usize, seed: u64, out: &Path) {
    let status = Command::new("python3")
        .arg(shared().join("bench/w1_gen.py"))
        .arg(n.to_string())
        .arg(out)
        .arg(seed.to_string())
        .status()
        .expect("python3 runs the W1 generator");
    assert!(status.success());
}

/// The W1 oracle's anomalies for `input`, as (sensor_id, ts) pairs.
pub fn w1_oracle(input: &Path) -> std::collections::BTreeSet<(String, i64)> {
    let out = Command::new("python3")
        .arg(shared().join("bench/w1_reference.py"))
        .arg(input)
        .output()
        .expect("python3 runs the W1 oracle");
    assert!(out.status.success());
    keys(&String::from_utf8(out.stdout).unwrap())
}

/// (sensor_id, ts) of every JSON line.
pub fn keys(jsonl: &str) -> std::collections::BTreeSet<(String, i64)> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON line");
            (
                v["sensor_id"].as_str().unwrap().to_string(),
                v["ts"].as_i64().unwrap(),
            )
        })
        .collect()
}
