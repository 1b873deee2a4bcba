//! Checkpoints and acknowledged positions, through the real binary: a z-score pipeline
//! killed with SIGKILL and restarted gives, for every event, exactly the z of an
//! uninterrupted run (no lost warm-up, nothing counted twice); a clean stop and restart
//! continues warm.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// `n` events over 40 sensors with a deterministic wobble and a few spikes.
fn events(range: std::ops::Range<usize>) -> String {
    let mut out = String::new();
    for i in range {
        let sensor = i % 40;
        let wobble = ((i * 7919) % 1000) as f64 / 100.0;
        let value = if i % 997 == 0 { 500.0 } else { 20.0 + wobble };
        out.push_str(&format!(
            "{{\"sensor_id\":\"s-{sensor}\",\"ts\":{i},\"value\":{value}}}\n"
        ));
    }
    out
}

fn pipeline(input: &Path, out: &Path, state: Option<&Path>, workers: usize) -> String {
    let mut p = format!(
        r#"
[sources.in]
type = "file"
paths = ["{}"]
batch = {{ rows = 500 }}

[transforms.z]
type = "zscore"
inputs = ["in"]
window = 30
workers = {}

[sinks.out]
type = "jsonl"
inputs = ["z"]
path = "{}"
flush_interval_ms = 20
"#,
        input.display(),
        workers,
        out.display()
    );
    if let Some(state) = state {
        p.push_str(&format!(
            "\n[checkpoint]\ndir = \"{}\"\ninterval_ms = 30\ncommit_interval_ms = 10\n",
            state.display()
        ));
    }
    p
}

/// (sensor, ts) -> every z written for it (as text, so equality is exact), and the
/// number of lines.
fn z_by_event(path: &Path) -> (BTreeMap<(String, i64), Vec<String>>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut map: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON lines only");
        map.entry((
            v["sensor_id"].as_str().unwrap().to_string(),
            v["ts"].as_i64().unwrap(),
        ))
        .or_default()
        .push(v["z"].to_string());
        n += 1;
    }
    (map, n)
}

fn reference(dir: &Path, input: &Path) -> BTreeMap<(String, i64), Vec<String>> {
    let out = dir.join("reference.jsonl");
    let o = run_pipeline(dir, &pipeline(input, &out, None, 1), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    z_by_event(&out).0
}

#[test]
fn killed_and_restarted_zscore_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.jsonl");
    std::fs::write(&input, events(0..60_000)).unwrap();
    let expected = reference(d, &input);
    assert_eq!(expected.len(), 60_000);

    let out = d.join("out.jsonl");
    let state = d.join("state");
    // Keys sharded over two worker threads: each worker's state is checkpointed.
    let text = pipeline(&input, &out, Some(&state), 2);
    let path = d.join("p.toml");
    std::fs::write(&path, &text).unwrap();
    // Kill at different moments: before the first checkpoint, between checkpoints, while
    // writing. Which moment each kill lands on does not change what must hold after.
    for delay_ms in [40, 250, 400, 150, 600, 300] {
        let mut child = tidegauge()
            .arg("run")
            .arg("--quiet")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let o = tidegauge()
        .arg("run")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("checkpoints:"), "{}", stderr(&o));

    let (got, lines) = z_by_event(&out);
    assert_eq!(got.len(), expected.len(), "every event is in the output");
    for (key, zs) in &got {
        let want = &expected[key][0];
        assert!(
            zs.iter().all(|z| z == want),
            "{key:?}: z {zs:?}, uninterrupted run gave {want}"
        );
    }
    eprintln!(
        "{} lines for {} events ({} duplicates)",
        lines,
        got.len(),
        lines - got.len()
    );
}

#[test]
fn a_clean_stop_and_restart_continues_warm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let all = d.join("all.jsonl");
    std::fs::write(&all, events(0..4_000)).unwrap();
    let expected = reference(d, &all);

    // First run: the first half, to its end (a final checkpoint is written).
    let input = d.join("in.jsonl");
    std::fs::write(&input, events(0..2_000)).unwrap();
    let out = d.join("out.jsonl");
    let state = d.join("state");
    let text = pipeline(&input, &out, Some(&state), 1);
    let o = run_pipeline(d, &text, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // More data arrives; the second run reads only it, with the state of the first,
    // its keys dealt out to three worker threads.
    let text = text.replace("workers = 1", "workers = 3");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(events(2_000..4_000).as_bytes())
        .unwrap();
    let o = run_pipeline(d, &text, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stderr(&o);
    assert!(summary.contains("2,000 events"), "{summary}");

    let (got, lines) = z_by_event(&out);
    assert_eq!(lines, 4_000, "nothing read twice after a clean stop");
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, z)| got.get(*k) != Some(*z))
        .take(5)
        .map(|(k, z)| (k, z, got.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "same z for every event as one uninterrupted run; differ (event, want, got): {differ:?}"
    );
}

#[test]
fn a_checkpoint_taken_with_other_tunable_parameters_is_brought_in_line() {
    // Window and threshold can change while running (admin API, reload), so a checkpoint
    // may hold other values than the file: the restart goes on with the file's values,
    // the restored state retuned as a change while running would be, and says so.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.jsonl");
    std::fs::write(&input, events(0..500)).unwrap();
    let out = d.join("out.jsonl");
    let state = d.join("state");
    let text = pipeline(&input, &out, Some(&state), 1);
    assert!(run_pipeline(d, &text, &[]).status.success());
    let changed = text.replace("window = 30", "window = 31");
    let o = run_pipeline(d, &changed, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("window = 30") && stderr(&o).contains("window = 31"),
        "the log names both windows: {}",
        stderr(&o)
    );
}

/// Runs `path` (with `extra` arguments) to its end.
fn run_file(path: &Path, extra: &[&str]) -> std::process::Output {
    tidegauge()
        .arg("run")
        .args(extra)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// A pipeline run once to its end, with its checkpoint directory.
struct Ran {
    dir: tempfile::TempDir,
    input: std::path::PathBuf,
    out: std::path::PathBuf,
    state: std::path::PathBuf,
    path: std::path::PathBuf,
}

fn ran(n: usize) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.jsonl");
    std::fs::write(&input, events(0..n)).unwrap();
    let out = d.join("out.jsonl");
    let state = d.join("state");
    let path = d.join("p.toml");
    std::fs::write(&path, pipeline(&input, &out, Some(&state), 1)).unwrap();
    let o = run_file(&path, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    Ran {
        dir,
        input,
        out,
        state,
        path,
    }
}

fn manifests(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint") && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_deleted_manifest_is_noticed_and_refused_without_older_ones_until_reset_state() {
    let r = ran(2_000);
    let kept = manifests(&r.state);
    assert!(
        kept.len() >= 2 && kept.contains(&"checkpoint.json".to_string()),
        "the newest and at least one before it are kept: {kept:?}"
    );
    // The newest manifest gone: the restart falls back to the one kept before it, and
    // says so, instead of silently starting from line 0.
    std::fs::remove_file(r.state.join("checkpoint.json")).unwrap();
    let o = run_file(&r.path, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("checkpoint.json is missing; falling back to checkpoint"),
        "{}",
        stderr(&o)
    );
    // Every manifest gone while acknowledged positions remain: refused, exit 1.
    for name in manifests(&r.state) {
        std::fs::remove_file(r.state.join(name)).unwrap();
    }
    let o = run_file(&r.path, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no checkpoint manifest") && e.contains("--reset-state"),
        "{e}"
    );
    // Told to start over, it does: every event read again.
    let o = run_file(&r.path, &["--reset-state"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2,000 events"), "{}", stderr(&o));
}

#[test]
fn a_different_input_file_with_the_same_state_dir_is_refused() {
    let r = ran(1_000);
    let other = r.dir.path().join("other.jsonl");
    std::fs::write(&other, events(5_000..6_000)).unwrap();
    let text = std::fs::read_to_string(&r.path)
        .unwrap()
        .replace(&r.input.display().to_string(), &other.display().to_string());
    std::fs::write(&r.path, text).unwrap();
    let o = run_file(&r.path, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("with source `in` reading")
            && e.contains("in.jsonl")
            && e.contains("other.jsonl")
            && e.contains("--reset-state"),
        "{e}"
    );
    // The same path with other content (rewritten in place): refused too.
    let text = std::fs::read_to_string(&r.path)
        .unwrap()
        .replace(&other.display().to_string(), &r.input.display().to_string());
    std::fs::write(&r.path, text).unwrap();
    std::fs::write(&r.input, events(7_000..8_000)).unwrap();
    let o = run_file(&r.path, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = run_file(&r.path, &["--reset-state"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1,000 events"), "{}", stderr(&o));
}

#[test]
fn a_damaged_acknowledged_position_gives_way_to_the_checkpoint() {
    let r = ran(1_000);
    std::fs::write(r.state.join("acked/in.json"), b"{\"version\":1,\"pos").unwrap();
    append(&r.input, &events(1_000..1_500));
    let o = run_file(&r.path, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("acked/in.json is not an acknowledged position")
            && e.contains("resumes from checkpoint"),
        "{e}"
    );
    assert!(
        e.contains("500 events"),
        "only what was appended is read: {e}"
    );
}

#[test]
fn a_damaged_newest_state_falls_back_to_an_older_checkpoint() {
    let r = ran(2_000);
    let d = r.dir.path();
    let all = d.join("all.jsonl");
    std::fs::write(&all, events(0..4_000)).unwrap();
    let expected = reference(d, &all);
    append(&r.input, &events(2_000..4_000));
    // Damage the state of the newest checkpoint.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.state.join("checkpoint.json")).unwrap()).unwrap();
    let file = manifest["transforms"]["z"]["file"].as_str().unwrap();
    let state_file = r.state.join("state").join(file);
    let mut bytes = std::fs::read(&state_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state_file, bytes).unwrap();

    let o = run_file(&r.path, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("checksum") && e.contains("falling back to checkpoint"),
        "{e}"
    );
    // Events after the older checkpoint are read again with its state: every z is the
    // one of an uninterrupted run.
    let (got, lines) = z_by_event(&r.out);
    assert_eq!(got.len(), 4_000);
    assert!(lines >= 4_000);
    for (key, zs) in &got {
        assert!(
            zs.iter().all(|z| z == &expected[key][0]),
            "{key:?}: z {zs:?}, want {}",
            expected[key][0]
        );
    }
}
