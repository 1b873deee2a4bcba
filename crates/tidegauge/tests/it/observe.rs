//! Watching and steering a running pipeline as an operator does: the admin API and its
//! token, the change history across restarts, metrics, logs, reload, the profiler, top.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Starts `tidegauge run <args>` with its admin API on a free port.
fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut env = env.to_vec();
    env.push(("TIDEGAUGE_ADMIN", "127.0.0.1:0"));
    Running::start(args, &env)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Starts `examples/observed.toml` with its state and its alerts in `dir`.
fn start_observed(dir: &Path) -> Running {
    let state = dir.join("state");
    let out = dir.join("alerts.jsonl");
    let example = root().join("examples/observed.toml");
    let args = [
        example.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    start(&args, &[("OBSERVED_OUTPUT", out.to_str().unwrap())])
}

#[test]
fn the_observed_example_serves_every_endpoint_and_enforces_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start_observed(dir.path());

    let health = tg.get("/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"], 4);

    let components = tg.get("/components");
    let ids: Vec<&str> = components
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fleet", "spikes", "anomalies", "alerts"]);
    assert_eq!(components[1]["tunable"], true);
    assert_eq!(components[0]["tunable"], false);

    let topology = tg.get("/topology");
    let edge = topology["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "spikes" && e["to"] == "anomalies")
        .expect("edge spikes -> anomalies");
    let fields: Vec<&str> = edge["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"is_anomaly") && fields.contains(&"z"),
        "{fields:?}"
    );

    let param = |name: &str| tg.param("spikes", name);
    assert_eq!(param("threshold")["value"], json!(4.0));
    assert_eq!(param("threshold")["tunable"], true);
    assert_eq!(param("window")["value"], json!(50));
    assert_eq!(param("window")["range"], "2..=10000000");
    assert_eq!(param("key_field")["tunable"], false);
    assert!(!param("window")["doc"].as_str().unwrap().is_empty());

    // Open to anyone: liveness, metrics, structure. Parameters and history need the
    // token.
    for (path, status) in [
        ("/health", 200),
        ("/components", 200),
        ("/topology", 200),
        ("/metrics", 200),
        ("/openapi.json", 200),
        ("/components/spikes/params", 401),
        ("/changes", 401),
    ] {
        let reply = tg
            .runtime
            .block_on(tg.client().request("GET", path, None))
            .unwrap();
        assert_eq!(reply.status, status, "GET {path}: {}", reply.text());
    }

    let openapi = tg.get("/openapi.json");
    assert_eq!(openapi["openapi"], "3.1.0");
    for path in [
        "/health",
        "/components",
        "/topology",
        "/components/{id}/params",
        "/changes",
        "/metrics",
        "/profile",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} undocumented");
    }

    // Changes: no token 401, wrong token 403, then a right one.
    let path = "/components/spikes/params";
    let anonymous = tg.client();
    let wrong = tg.client().with_token(Some("nope".into()));
    let alice = tg
        .client()
        .with_token(Some(TOKEN.into()))
        .with_actor(Some("alice".into()));
    assert_eq!(
        tg.send(anonymous, "PATCH", path, Some(r#"{"threshold": 5}"#))
            .status,
        401
    );
    assert_eq!(
        tg.send(wrong, "PATCH", path, Some(r#"{"threshold": 5}"#))
            .status,
        403
    );
    let reply = tg.send(alice.clone(), "PATCH", path, Some(r#"{"threshold": 5.5}"#));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let change = &reply.json().unwrap()["changes"][0];
    assert_eq!(change["old"], json!(4.0));
    assert_eq!(change["new"], json!(5.5));
    assert_eq!(change["actor"], "alice");
    assert_eq!(tg.param("spikes", "threshold")["value"], json!(5.5));
    // Validated like config; not every parameter is tunable; unknown ids; limits.
    let reply = tg.send(alice.clone(), "PATCH", path, Some(r#"{"threshold": -1}"#));
    assert_eq!(reply.status, 422);
    assert!(
        reply.text().contains("transforms.spikes.threshold"),
        "{}",
        reply.text()
    );
    let reply = tg.send(alice.clone(), "PATCH", path, Some(r#"{"key_field": "x"}"#));
    assert_eq!(reply.status, 409, "{}", reply.text());
    let reply = tg.send(
        alice.clone(),
        "PATCH",
        "/components/anomalies/params",
        Some(r#"{"condition": "value + 1"}"#),
    );
    assert_eq!(reply.status, 422, "{}", reply.text());
    let reply = tg.send(
        alice.clone(),
        "PATCH",
        "/components/anomalies/params",
        Some(r#"{"condition": "is_anomaly AND abs(z) > 5"}"#),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        tg.send(
            alice.clone(),
            "PATCH",
            "/components/nope/params",
            Some(r#"{"a": 1}"#)
        )
        .status,
        404
    );
    let big = format!(r#"{{"threshold": 5, "pad": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(
        tg.send(alice.clone(), "PATCH", path, Some(&big)).status,
        413
    );
    assert_eq!(tg.send(alice, "PATCH", path, Some("not json")).status, 400);

    // Metrics, scraped.
    wait_until("events to flow", || {
        tg.get("/components")[0]["events_out"].as_u64().unwrap() > 0
    });
    let metrics = tg.metrics();
    for needle in [
        "# TYPE tidegauge_component_received_events_total counter",
        "tidegauge_component_sent_events_total{component_id=\"fleet\",component_kind=\"source\",component_type=\"simulate\"}",
        "tidegauge_component_processing_seconds_bucket{component_id=\"spikes\",component_kind=\"transform\",component_type=\"zscore\",le=\"+Inf\"}",
        "tidegauge_component_input_queue_capacity_batches{component_id=\"alerts\",component_kind=\"sink\",component_type=\"jsonl\"} 4",
        "tidegauge_detector_anomalies_total{component_id=\"spikes\",component_kind=\"transform\",component_type=\"zscore\",detector=\"zscore\"}",
        "tidegauge_component_errors_total{component_id=\"fleet\",component_kind=\"source\",component_type=\"simulate\",error_kind=\"record\"} 0",
        "tidegauge_parameter_changes_total 2",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // Every metric a component declared for itself (listed by the admin API) is
    // exposed under that component's labels; the keyed detector declares its keys.
    let components = tg.get("/components");
    let mut declared = Vec::new();
    for c in components.as_array().unwrap() {
        let labels = format!(
            "{{component_id=\"{}\",component_kind=\"{}\",component_type=\"{}\"}}",
            c["id"].as_str().unwrap(),
            c["kind"].as_str().unwrap(),
            c["type_name"].as_str().unwrap()
        );
        for m in c["metrics"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            let kind = m["kind"].as_str().unwrap();
            assert!(
                metrics.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} has no TYPE line in\n{metrics}"
            );
            assert!(
                metrics.contains(&format!("\n{name}{labels} ")),
                "{name}{labels}, declared, is missing from\n{metrics}"
            );
            declared.push(format!("{}:{name}", c["id"].as_str().unwrap()));
        }
    }
    assert!(
        declared.contains(&"spikes:tidegauge_component_keys".to_string()),
        "{declared:?}"
    );
    // Only the detector declares verdicts; the filter passing them on is none.
    assert_eq!(components[1]["detector"], true);
    assert_eq!(components[2]["detector"], false);
    // A counter that a source has moved is positive.
    let sent = metrics
        .lines()
        .find(|l| l.starts_with("tidegauge_component_sent_events_total{component_id=\"fleet\""))
        .unwrap();
    assert!(sent.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0);

    let changes = tg.get("/changes");
    assert_eq!(changes.as_array().unwrap().len(), 2);
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.contains(TOKEN),
        "the token leaked into the output:\n{err}"
    );

    // The history outlives the process: on the command line and after a restart.
    let state = dir.path().join("state");
    let example = root().join("examples/observed.toml");
    let listed = run(&[
        "changes",
        example.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let text = stdout(&listed);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        text.contains("spikes") && text.contains("threshold") && text.contains("alice"),
        "{text}"
    );
    assert!(text.contains("is_anomaly AND abs(z) > 5"), "{text}");
    let tg = start_observed(dir.path());
    let changes = tg.get("/changes?component=spikes");
    assert_eq!(changes.as_array().unwrap().len(), 1);
    assert_eq!(changes[0]["new"], json!(5.5));
    // A restart runs the file's values again.
    assert_eq!(tg.param("spikes", "threshold")["value"], json!(4.0));
    let logs = tg.stop().1;
    assert!(!logs.contains(TOKEN));
    // Nothing in the log files carries the token either.
    for entry in std::fs::read_dir(state.join("logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(TOKEN));
    }
}

fn pipeline(threshold: &str, extra: &str, out: &Path) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"
token_env = "TIDEGAUGE_TOKEN"

[sources.fleet]
type = "simulate"
sensors = 5
rate = 400

[transforms.spikes]
type = "zscore"
inputs = ["fleet"]
window = 20
threshold = {threshold}

[transforms.all]
type = "filter"
inputs = ["spikes"]
condition = "true"

[sinks.out]
type = "jsonl"
inputs = ["all"]
path = "{}"
flush_interval_ms = 50
{extra}
"#,
        out.display()
    )
}

#[test]
fn reload_keeps_unchanged_state_and_rejects_invalid_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let out1 = dir.path().join("out1.jsonl");
    let out2 = dir.path().join("out2.jsonl");
    std::fs::write(&file, pipeline("4.0", "", &out1)).unwrap();
    let tg = start(&[file.to_str().unwrap()], &[]);
    // Every sensor is past its 20-value warm-up.
    wait_until("warm detectors", || lines(&out1).len() >= 300);

    // A valid change: a tunable parameter and a new sink.
    let added = format!(
        "\n[sinks.more]\ntype = \"jsonl\"\ninputs = [\"spikes\"]\npath = \"{}\"\nflush_interval_ms = 50\n",
        out2.display()
    );
    std::fs::write(&file, pipeline("3.5", &added, &out1)).unwrap();
    let err = tg.wait_stderr(|s| s.contains("tidegauge: reloaded"));
    let line = err.lines().find(|l| l.contains("reloaded")).unwrap();
    assert!(line.contains("kept: fleet, all, out"), "{line}");
    assert!(line.contains("retuned: spikes"), "{line}");
    assert!(line.contains("added: more"), "{line}");
    // The detector kept its per-sensor windows: no warm-up on the new sink. A detector
    // built anew gives a null z for each sensor's first 20 events; one that kept its
    // state gives a number from the first event on (unless the sensor is stuck: equal
    // values have no z either, so most sensors, not all, are asked for).
    wait_until("events on the new sink", || lines(&out2).len() >= 100);
    let fresh = lines(&out2);
    let mut first_seen = std::collections::BTreeMap::new();
    for e in &fresh {
        first_seen
            .entry(e["sensor_id"].as_str().unwrap().to_string())
            .or_insert_with(|| e["z"].is_number());
    }
    let warm = first_seen.values().filter(|&&w| w).count();
    assert!(
        warm >= 3,
        "first events per sensor with a z: {first_seen:?}"
    );
    assert_eq!(tg.param("spikes", "threshold")["value"], json!(3.5));
    let changes = tg.get("/changes");
    assert_eq!(changes[0]["actor"], "reload");
    assert_eq!(changes[0]["old"], json!(4.0));

    // An invalid file: errors reported with their line, the running pipeline goes on.
    std::fs::write(
        &file,
        pipeline("3.5", &added, &out1).replace("window = 20", "window = 1"),
    )
    .unwrap();
    let err = tg.wait_stderr(|s| s.contains("rejected"));
    assert!(
        err.contains("p.toml:14: transforms.spikes.window: must be in 2..=10000000, got 1"),
        "{err}"
    );
    let before = lines(&out2).len();
    wait_until("the old pipeline to go on", || {
        lines(&out2).len() > before + 50
    });
    let metrics = tg.metrics();
    assert!(metrics.contains("tidegauge_config_reloads_total{result=\"applied\"} 1"));
    assert!(!metrics.contains("tidegauge_config_reloads_total{result=\"rejected\"} 0"));

    // A change that needs a rebuild: the detector starts over (null z while warming up).
    let rebuilt = pipeline("3.5", &added, &out1)
        .replace("window = 20", "window = 20\nvalue_field = \"value\"");
    std::fs::write(&file, rebuilt).unwrap();
    tg.wait_stderr(|s| s.matches("tidegauge: reloaded").count() >= 2);
    let err = tg.stderr();
    let line = err.lines().rfind(|l| l.contains("reloaded")).unwrap();
    assert!(line.contains("rebuilt: spikes"), "{line}");
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn sighup_reloads_when_file_watching_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&file, pipeline("4.0", "", &out)).unwrap();
    let tg = start(&[file.to_str().unwrap(), "--no-watch"], &[]);
    std::fs::write(&file, pipeline("6.0", "", &out)).unwrap();
    tg.signal(libc::SIGHUP);
    let err = tg.wait_stderr(|s| s.contains("tidegauge: reloaded"));
    assert!(err.contains("(SIGHUP)"), "{err}");
    assert_eq!(tg.param("spikes", "threshold")["value"], json!(6.0));
    let (code, _) = tg.stop();
    assert_eq!(code, Some(0));
}

/// A sink whose new settings pass `check` but fail to build once the old instance has
/// ended (its file cannot be created) is rolled back: the previous settings run again,
/// the error says so, and the pipeline goes on (it used to stop). Fixing the file then
/// applies as usual.
#[test]
fn a_rebuilt_sink_that_fails_to_build_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let out = dir.path().join("out.jsonl");
    let fixed = dir.path().join("fixed.jsonl");
    // A path under a regular file: valid text, no file can be created there.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let broken = blocker.join("out.jsonl");
    std::fs::write(&file, pipeline("4.0", "", &out)).unwrap();
    let tg = start(&[file.to_str().unwrap(), "--no-watch"], &[]);
    wait_until("events", || lines(&out).len() >= 100);

    std::fs::write(&file, pipeline("4.0", "", &broken)).unwrap();
    tg.signal(libc::SIGHUP);
    let err = tg.wait_stderr(|s| s.contains("reload rolled back for sink `out`"));
    assert!(err.contains("it runs with its previous settings"), "{err}");
    let before = lines(&out).len();
    wait_until("events on the previous sink after the rollback", || {
        lines(&out).len() > before + 100
    });
    assert!(!broken.exists());
    assert!(tg.metric("tidegauge_component_errors_total{component_id=\"out\",component_kind=\"sink\",component_type=\"jsonl\",error_kind=\"component\"}") >= 1.0);

    // A working change afterwards is applied.
    std::fs::write(&file, pipeline("4.0", "", &fixed)).unwrap();
    tg.signal(libc::SIGHUP);
    wait_until("events on the fixed sink", || lines(&fixed).len() >= 50);
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn logs_are_queryable_by_level_component_time_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!(
            "{{\"sensor_id\":\"s-1\",\"ts\":{i},\"value\":{i}}}\n"
        ));
    }
    text.push_str("{broken\n");
    std::fs::write(&input, text).unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[sources.src]\ntype = \"file\"\npaths = [\"{}\"]\n\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"src\"]\npath = \"{}\"\n",
            input.display(),
            dir.path().join("out.jsonl").display()
        ),
    )
    .unwrap();
    let done = run(&["run", "--quiet", file.to_str().unwrap()]);
    assert!(done.status.success(), "{}", stderr(&done));

    let logs = |args: &[&str]| {
        let mut all = vec!["logs", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = run(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let warn = logs(&["--level", "warn", "--component", "src"]);
    assert!(warn.contains("WARN [src] record dead-lettered"), "{warn}");
    assert!(warn.contains("location="), "{warn}");
    let recent = logs(&["--since", "10m", "--grep", "dead-lettered", "--json"]);
    let parsed: Vec<Value> = recent
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 1, "{recent}");
    assert_eq!(parsed[0]["component_id"], "src");
    assert_eq!(parsed[0]["level"], "WARN");
    assert_eq!(logs(&["--level", "error"]), "");
    assert_eq!(logs(&["--component", "nobody"]), "");
    // Info lines: the run's start and end.
    let info = logs(&["--level", "info", "--grep", "pipeline"]);
    assert!(info.contains("INFO pipeline started"), "{info}");
    assert!(info.contains("INFO pipeline finished"), "{info}");
}

#[test]
fn profile_reports_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w1.jsonl");
    w1_events(20_000, 7, &input);
    let out = dir.path().join("out.jsonl");
    let o = tidegauge()
        .args(["run", "--profile", "--quiet"])
        .arg(root().join("examples/w1.toml"))
        .env("W1_INPUT", &input)
        .env("W1_OUTPUT", &out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let table: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("profile"))
        .skip(2)
        .collect();
    let ids: Vec<&str> = table
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["w1", "zscore", "anomalies", "out"], "{err}");
    let shares: f64 = table
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.ends_with('%'))
                .unwrap()
                .trim_end_matches('%')
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    assert!((99.0..=101.0).contains(&shares), "{err}");
    let zscore = table
        .iter()
        .find(|l| l.trim_start().starts_with("zscore"))
        .unwrap();
    assert!(zscore.contains("20,000"), "{zscore}");
    // Not a terminal: no progress bar.
    assert!(!err.contains("eta"), "{err}");
}

#[test]
fn top_shows_components_and_anomalies_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start_observed(dir.path());
    let top = Tmux::start(
        dir.path(),
        &format!(
            "{} top --address {} --interval 300ms",
            env!("CARGO_BIN_EXE_tidegauge"),
            tg.address
        ),
    );
    let screen = top.wait_screen("rates and anomalies", |screen| {
        let rate_shown = screen
            .lines()
            .any(|l| l.contains("spikes") && l.contains("zscore") && !l.contains('…'));
        rate_shown && screen.contains("s-0")
    });
    for needle in [
        "tidegauge top",
        "components",
        "in/s",
        "latency",
        "queue",
        "fleet",
        "spikes",
        "anomalies",
        "alerts",
        "recent anomalies",
        "|z|",
    ] {
        assert!(screen.contains(needle), "{needle} not on screen:\n{screen}");
    }
    // The spikes row shows a rate and a queue fill of its 4-batch queue.
    let row = screen
        .lines()
        .find(|l| l.contains("spikes") && l.contains("zscore"))
        .unwrap();
    assert!(row.contains("/4"), "{row}");
    top.send_keys("q");
    top.wait_closed("top did not quit on q");
    let (code, _) = tg.stop();
    assert_eq!(code, Some(0));
}

/// Lines in a file, without parsing them.
fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn checkpointed_pipeline(input: &Path, out: &Path, state: &Path, edit: &str) -> String {
    let text = format!(
        r#"
[admin]
address = "127.0.0.1:0"
token_env = "TIDEGAUGE_TOKEN"

[checkpoint]
dir = "{}"
interval_ms = 40
commit_interval_ms = 10

[sources.in]
type = "file"
paths = ["{}"]
follow = true
poll_interval_ms = 10
batch = {{ rows = 200 }}

[transforms.spikes]
type = "zscore"
inputs = ["in"]
window = 20

[sinks.out]
type = "jsonl"
inputs = ["spikes"]
path = "{}"
flush_interval_ms = 20
"#,
        state.display(),
        input.display(),
        out.display()
    );
    match edit {
        "" => text,
        "sink" => text.replace("flush_interval_ms = 20", "flush_interval_ms = 30"),
        "source" => text
            .replace("flush_interval_ms = 20", "flush_interval_ms = 30")
            .replace("rows = 200", "rows = 150"),
        _ => text
            .replace("flush_interval_ms = 20", "flush_interval_ms = 30")
            .replace("rows = 200", "rows = 150")
            .replace("window = 20", "window = 20\nvalue_field = \"value\""),
    }
}

#[test]
fn reloads_under_checkpoints_lose_no_acknowledged_event() {
    // Events keep arriving while the sink, then the source, then the detector are
    // replaced; then the process is killed. Every event the source had committed as
    // acknowledged must be in the output, and replacing the source reads nothing twice.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("p.toml");
    let input = d.join("live.jsonl");
    let out = d.join("out.jsonl");
    let state = d.join("state");
    std::fs::write(&input, "").unwrap();
    std::fs::write(&file, checkpointed_pipeline(&input, &out, &state, "")).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, written, input) = (stop.clone(), written.clone(), input.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&input)
                .unwrap();
            let mut seq = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut text = String::new();
                for _ in 0..100 {
                    let value = 20.0 + (seq * 7919 % 1000) as f64 / 100.0;
                    text.push_str(&format!(
                        "{{\"sensor_id\":\"s-{}\",\"ts\":{seq},\"value\":{value}}}\n",
                        seq % 7
                    ));
                    seq += 1;
                }
                f.write_all(text.as_bytes()).unwrap();
                f.flush().unwrap();
                written.store(seq, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let tg = start(&[file.to_str().unwrap()], &[]);
    for (n, (edit, rebuilt)) in [("sink", "out"), ("source", "in"), ("detector", "spikes")]
        .into_iter()
        .enumerate()
    {
        let before = count_lines(&out);
        wait_until("output to grow", || count_lines(&out) > before + 500);
        std::fs::write(&file, checkpointed_pipeline(&input, &out, &state, edit)).unwrap();
        let err = tg.wait_stderr(|s| s.matches("tidegauge: reloaded").count() > n);
        let line = err
            .lines()
            .filter(|l| l.contains("reloaded"))
            .nth(n)
            .unwrap();
        assert!(line.contains(&format!("rebuilt: {rebuilt}")), "{line}");
    }
    let before = count_lines(&out);
    wait_until("output after the last reload", || {
        count_lines(&out) > before + 500
    });
    drop(tg); // SIGKILL
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    let acked: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("acked/in.json")).unwrap())
            .unwrap();
    let consumed = acked["position"]["files"][0]["lines"].as_u64().unwrap() as usize;
    assert!(consumed > 1500, "acknowledged: {acked}");
    assert!(consumed <= written.load(std::sync::atomic::Ordering::Relaxed));
    // The kill may cut the output's last line: count whole lines only.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut seen = vec![0u32; consumed];
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let ts = v["ts"].as_u64().unwrap() as usize;
        if ts < consumed {
            seen[ts] += 1;
        }
    }
    let lost: Vec<usize> = (0..consumed).filter(|&i| seen[i] == 0).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let twice = seen.iter().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "events written twice across the reloads");
}

#[test]
fn checkpoint_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("state");
    let extra = format!(
        "\n[checkpoint]\ndir = \"{}\"\ninterval_ms = 50\n",
        state.display()
    );
    std::fs::write(&file, pipeline("4.0", &extra, &out)).unwrap();
    let tg = start(&[file.to_str().unwrap()], &[]);
    wait_until("three checkpoints", || {
        tg.metric("tidegauge_checkpoints_total") >= 3.0
    });
    let metrics = tg.metrics();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse::<f64>()
            .unwrap()
    };
    assert!(value("tidegauge_checkpoint_last_id") >= 3.0);
    let age = value("tidegauge_checkpoint_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert!(value("tidegauge_checkpoint_duration_seconds") > 0.0);
    // The detector's state is in every checkpoint.
    assert!(value("tidegauge_checkpoint_size_bytes") > 100.0);
    assert_eq!(value("tidegauge_checkpoint_failures_total"), 0.0);
    assert_eq!(value("tidegauge_checkpoint_restore_fallbacks_total"), 0.0);
    let (code, _) = tg.stop();
    assert_eq!(code, Some(0));

    // Restarted on a damaged newest checkpoint: the fallback is counted.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(state.join("checkpoint.json")).unwrap()).unwrap();
    let state_file = state
        .join("state")
        .join(manifest["transforms"]["spikes"]["file"].as_str().unwrap());
    std::fs::write(&state_file, b"damaged").unwrap();
    let tg = start(&[file.to_str().unwrap()], &[]);
    assert_eq!(
        tg.metric("tidegauge_checkpoint_restore_fallbacks_total"),
        1.0
    );
    assert!(
        tg.stderr().contains("falling back to checkpoint"),
        "{}",
        tg.stderr()
    );
}

#[test]
fn the_dashboard_and_its_data_are_served_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start_observed(dir.path());

    let page = tg.request(None, "GET", "/ui", None);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("src=\"/ui/app.js\""),
        "{}",
        page.text()
    );
    assert_eq!(tg.request(None, "GET", "/ui/app.js", None).status, 200);
    assert_eq!(
        tg.request(None, "GET", "/ui/../Cargo.toml", None).status,
        404
    );

    // Every detector's verdicts are kept per sensor, open like /alerts.
    let mut listed = Value::Null;
    wait_until("sensors in the history", || {
        let r = tg.request(None, "GET", "/sensors?limit=5", None);
        listed = r.json().unwrap();
        r.status == 200 && listed["history"]["tracked"].as_u64() > Some(0)
    });
    assert_eq!(listed["history"]["max_sensors"], 2000);
    assert_eq!(listed["history"]["points_per_sensor"], 180);
    let sensor = listed["sensors"][0]["sensor"].as_str().unwrap().to_string();
    assert_eq!(listed["sensors"][0]["component"], "spikes");
    let points = |after: &str| {
        let r = tg.request(
            None,
            "GET",
            &format!("/sensors/points?sensor={sensor}&component=spikes{after}"),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()
    };
    let all = points("");
    assert_eq!(all["statistic"], "z");
    let kept = all["points"].as_array().unwrap();
    assert!(!kept.is_empty() && kept.len() <= 180, "{all}");
    assert!(
        kept.iter()
            .all(|p| p["value"].is_number() && p["score"].is_number())
    );
    // Only what came after a count already read.
    let total = all["total"].as_u64().unwrap();
    let later = points(&format!("&after={total}"));
    let new = later["total"].as_u64().unwrap() - total;
    assert_eq!(
        later["points"].as_array().unwrap().len() as u64,
        new.min(180)
    );
    let missing = tg.request(None, "GET", "/sensors/points?sensor=no-such", None);
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(tg.request(None, "GET", "/sensors/top", None).status, 200);

    // The logs search needs the token, like the history of changes.
    assert_eq!(tg.request(None, "GET", "/logs", None).status, 401);
    // Log lines reach the file from a writer thread: wait for the line.
    let mut found = Value::Null;
    wait_until("the start logged", || {
        found = tg.get("/logs?level=info&text=pipeline%20started&since=10m");
        !found["lines"].as_array().unwrap().is_empty()
    });
    let lines = found["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{found}");
    assert_eq!(lines[0]["level"], "INFO");
    let bad = tg.request(Some(TOKEN), "GET", "/logs?since=soon", None);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("since"), "{}", bad.text());
}
