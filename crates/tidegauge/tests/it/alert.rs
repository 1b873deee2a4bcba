//! The `alert` transform through the real binary: an incident opened before a SIGKILL is
//! still open after the restart (restored from the checkpoint) and resolves once, with
//! the start and the anomalies counted before the kill.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn pipeline(input: &Path, out: &Path, state: &Path) -> String {
    format!(
        r#"
[sources.in]
type = "file"
paths = ["{}"]
follow = true
{}
[sinks.out]
type = "jsonl"
inputs = ["alert"]
path = "{}"

[checkpoint]
dir = "{}"
interval_ms = 30
commit_interval_ms = 10
"#,
        input.display(),
        detect_and_alert(3),
        out.display(),
        state.display()
    )
}

/// The middle every pipeline here shares: readings above 100 are anomalies, and `for_events`
/// of them in a row open an incident that resolves after a second without one.
fn detect_and_alert(for_events: u32) -> String {
    format!(
        r#"
[transforms.detect]
type = "threshold"
inputs = ["in"]
high = 100.0

[transforms.alert]
type = "alert"
inputs = ["detect"]
for_events = {for_events}
resolve_after_ms = 1000
"#
    )
}

fn readings(sensor: &str, ts: std::ops::Range<i64>, value: f64) -> String {
    ts.map(|t| format!("{{\"sensor_id\":\"{sensor}\",\"ts\":{t},\"value\":{value}}}\n"))
        .collect()
}

/// Appends quiet readings of `s-1` (20.0, under the threshold) at ts 5 to 2999: time
/// moves on without anomalies, so an open incident resolves.
fn quiet_from_5(input: &Path) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(input)
        .unwrap()
        .write_all(readings("s-1", 5..3000, 20.0).as_bytes())
        .unwrap();
}

fn alerts(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
        .collect()
}

/// Polls `cond` until it holds (or fails the test after a generous bound).
fn wait_for(what: &str, child: &mut Child, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tidegauge ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "no {what} within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ids of the checkpoints that hold the alert transform's state.
fn alert_checkpoints(state: &Path) -> Vec<u64> {
    std::fs::read_dir(state.join("state"))
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("alert-")?
                    .strip_suffix(".bin")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default()
}

fn start(path: &Path) -> Child {
    tidegauge()
        .arg("run")
        .arg("--quiet")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Input, alerts output, state directory and pipeline file of a test under `d`.
fn places(d: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        d.join("in.jsonl"),
        d.join("alerts.jsonl"),
        d.join("state"),
        d.join("p.toml"),
    )
}

#[test]
fn an_open_incident_survives_sigkill_and_resolves_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, state, path) = places(dir.path());
    std::fs::write(&path, pipeline(&input, &out, &state)).unwrap();
    // s-1 misbehaves for 5 readings; s-2 is fine.
    let mut first = readings("s-2", 0..5, 20.0);
    first.push_str(&readings("s-1", 0..5, 500.0));
    std::fs::write(&input, first).unwrap();

    let mut child = start(&path);
    wait_for("firing alert", &mut child, || {
        alerts(&out).iter().any(|a| a["status"] == "firing")
    });
    // A checkpoint begun after the alert was written holds the open incident.
    let seen = alert_checkpoints(&state).into_iter().max().unwrap_or(0);
    wait_for("checkpoint after the alert", &mut child, || {
        alert_checkpoints(&state).iter().any(|&id| id > seen + 1)
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // After the restart, time moves on without anomalies: the incident resolves.
    quiet_from_5(&input);
    let got = until_resolved(&path, &out);
    let firing: Vec<_> = got.iter().filter(|a| a["status"] == "firing").collect();
    let resolved: Vec<_> = got.iter().filter(|a| a["status"] == "resolved").collect();
    assert_eq!(firing.len(), 1, "one firing event: {got:?}");
    assert_eq!(resolved.len(), 1, "one resolved event: {got:?}");
    let r = resolved[0];
    assert_eq!(r["sensor_id"], "s-1");
    assert_eq!(r["starts_at"], 0, "the start from before the kill");
    assert_eq!(r["anomalies"], 5, "anomalies counted before the kill");
    assert_eq!(r["ends_at"], 4 + 1000);
    assert_eq!(r["incident_id"], firing[0]["incident_id"]);
    assert_eq!(r["detector"], "threshold");
}

/// Runs the pipeline at `path` until a resolved alert is out, then kills it; returns the
/// alerts written.
fn until_resolved(path: &Path, out: &Path) -> Vec<serde_json::Value> {
    let mut child = start(path);
    wait_for("resolved alert", &mut child, || {
        alerts(out).iter().any(|a| a["status"] == "resolved")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    alerts(out)
}

#[test]
fn an_incident_resolves_when_the_stream_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, state, path) = places(dir.path());
    // Event time only would keep this incident open for ever: nothing comes after the
    // anomalies. With `idle_after_ms`, event time follows the wall clock once the input
    // has been silent that long.
    let text = pipeline(&input, &out, &state).replace(
        "resolve_after_ms = 1000",
        "resolve_after_ms = 1000\nidle_after_ms = 200",
    );
    std::fs::write(&path, text).unwrap();
    std::fs::write(&input, readings("s-1", 0..5, 500.0)).unwrap();

    let got = until_resolved(&path, &out);
    let resolved: Vec<_> = got.iter().filter(|a| a["status"] == "resolved").collect();
    assert_eq!(resolved.len(), 1, "{got:?}");
    assert_eq!(
        resolved[0]["ends_at"],
        4 + 1000,
        "quiet time after the last anomaly"
    );
    assert_eq!(resolved[0]["anomalies"], 5);
}

/// A receiver on loopback that checks each request body against the shape of
/// Alertmanager's `POST /api/v2/alerts` (a list of `postableAlert`): 200 and the alerts
/// kept when it fits, 400 with the reason when it does not.
struct Receiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Result<serde_json::Value, String>>>>,
}

fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why `body` is not a list of Alertmanager alerts, if it is not.
fn alertmanager_shape(body: &serde_json::Value) -> Result<(), String> {
    let alerts = body.as_array().ok_or("body is not a JSON array")?;
    if alerts.is_empty() {
        return Err("no alerts".into());
    }
    for a in alerts {
        let a = a.as_object().ok_or("alert is not an object")?;
        for k in a.keys() {
            if ![
                "labels",
                "annotations",
                "startsAt",
                "endsAt",
                "generatorURL",
            ]
            .contains(&k.as_str())
            {
                return Err(format!("unknown field `{k}`"));
            }
        }
        let labels = a["labels"]
            .as_object()
            .ok_or("labels missing or not an object")?;
        if !labels.contains_key("alertname") {
            return Err("no alertname label".into());
        }
        for (k, v) in labels {
            if !label_name_ok(k) || !v.is_string() {
                return Err(format!("label `{k}` = {v} is not a name and a string"));
            }
        }
        if let Some(ann) = a.get("annotations") {
            let ann = ann.as_object().ok_or("annotations not an object")?;
            if let Some((k, v)) = ann.iter().find(|(_, v)| !v.is_string()) {
                return Err(format!("annotation `{k}` = {v} is not a string"));
            }
        }
        for t in ["startsAt", "endsAt"] {
            if let Some(v) = a.get(t) {
                let s = v.as_str().ok_or(format!("{t} is not a string"))?;
                humantime::parse_rfc3339(s).map_err(|e| format!("{t} `{s}`: {e}"))?;
            }
        }
    }
    Ok(())
}

impl Receiver {
    /// `check` decides whether a body is accepted.
    fn start(check: fn(&serde_json::Value) -> Result<(), String>) -> Receiver {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            line.clear();
                            reader.read_line(&mut line).unwrap();
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = l.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).unwrap();
                        let verdict = serde_json::from_slice::<serde_json::Value>(&body)
                            .map_err(|e| e.to_string())
                            .and_then(|v| check(&v).map(|()| v));
                        let status = if verdict.is_ok() {
                            "200 OK"
                        } else {
                            "400 Bad Request"
                        };
                        seen.lock().unwrap().push(verdict);
                        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                        std::io::Write::write_all(&mut stream, reply.as_bytes()).unwrap();
                    }
                });
            }
        });
        Receiver { url, bodies }
    }
}

fn alert_pipeline(input: &Path, sink: &str) -> String {
    format!(
        r#"
[sources.in]
type = "file"
paths = ["{}"]
{}
[sinks.out]
type = "http"
inputs = ["alert"]
{sink}
"#,
        input.display(),
        detect_and_alert(2)
    )
}

fn incident_input(d: &Path) -> std::path::PathBuf {
    let input = d.join("in.jsonl");
    let mut text = readings("pump-7", 0..5, 500.0);
    text.push_str(&readings("pump-7", 5..3000, 20.0));
    std::fs::write(&input, text).unwrap();
    input
}

/// Runs one incident (open, then resolved) into an `http` sink posting to `receiver` with
/// the given encoding settings; returns what the receiver got.
fn post_an_incident(receiver: &Receiver, settings: &str) -> Vec<Result<serde_json::Value, String>> {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("url = \"{}\"\n{settings}", receiver.url);
    let o = run_pipeline(
        dir.path(),
        &alert_pipeline(&incident_input(dir.path()), &sink),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    receiver.bodies.lock().unwrap().clone()
}

#[test]
fn alertmanager_bodies_are_accepted_by_a_receiver_that_checks_their_shape() {
    let receiver = Receiver::start(alertmanager_shape);
    let bodies = post_an_incident(
        &receiver,
        "encoding = \"alertmanager\"\nalertname = \"SensorAnomaly\"",
    );
    let refused: Vec<_> = bodies.iter().filter_map(|b| b.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let alerts: Vec<serde_json::Value> = bodies
        .into_iter()
        .flat_map(|b| b.unwrap().as_array().unwrap().clone())
        .collect();
    assert_eq!(alerts.len(), 2, "firing, then resolved: {alerts:?}");
    for a in &alerts {
        assert_eq!(a["labels"]["alertname"], "SensorAnomaly");
        assert_eq!(a["labels"]["sensor_id"], "pump-7");
        assert_eq!(a["labels"]["detector"], "threshold");
        assert_eq!(a["startsAt"], "1970-01-01T00:00:00.000Z");
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
    assert!(alerts[0].get("endsAt").is_none(), "firing: no end yet");
    assert_eq!(alerts[1]["endsAt"], "1970-01-01T00:00:01.004Z");
    assert_eq!(alerts[1]["annotations"]["anomalies"], "5");
}

#[test]
fn a_slack_style_template_posts_one_message_per_alert() {
    let receiver = Receiver::start(|v| match v["text"].as_str() {
        Some(_) if v.as_object().is_some_and(|o| o.len() == 1) => Ok(()),
        _ => Err(format!("not a {{\"text\": ...}} message: {v}")),
    });
    let bodies = post_an_incident(
        &receiver,
        "encoding = \"template\"\ntemplate = '{{\"text\": \"{sensor_id} is {status}: {reason}\"}}'",
    );
    let texts: Vec<String> = bodies
        .iter()
        .map(|b| {
            b.as_ref().expect("accepted")["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[0].starts_with("pump-7 is firing: "), "{texts:?}");
    assert!(texts[1].starts_with("pump-7 is resolved: "), "{texts:?}");
}

/// What an operator watching the pipeline sees of an incident: `GET /alerts` (no token
/// needed) and `tidegauge top` list it while it is open, and drop it once it resolves.
#[test]
fn open_incidents_show_in_the_admin_api_and_in_top_until_they_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.jsonl");
    let out = d.join("alerts.jsonl");
    let path = d.join("p.toml");
    let text = pipeline(&input, &out, &d.join("state")).replace(
        "[sources.in]",
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken_env = \"TIDEGAUGE_TOKEN\"\n\n[sources.in]",
    );
    std::fs::write(&path, text).unwrap();
    let mut first = readings("s-2", 0..5, 20.0);
    first.push_str(&readings("s-1", 0..5, 500.0));
    std::fs::write(&input, first).unwrap();

    let tg = Running::start(&[&path], &[]);
    let open = |tg: &Running| -> Vec<serde_json::Value> {
        let reply = tg.request(None, "GET", "/alerts", None);
        assert_eq!(reply.status, 200, "GET /alerts: {}", reply.text());
        reply.json().unwrap()["open"].as_array().unwrap().clone()
    };
    wait_until("an open incident in GET /alerts", || !open(&tg).is_empty());
    let incidents = open(&tg);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(i["component_id"], "alert");
    assert_eq!(i["key"], "s-1");
    assert_eq!(i["starts_at_ms"], 0);
    assert_eq!(i["detector"], "threshold");
    wait_until("all five anomalies counted", || {
        open(&tg)[0]["anomalies"] == 5
    });
    let firing: Vec<_> = alerts(&out)
        .into_iter()
        .filter(|a| a["status"] == "firing")
        .collect();
    assert_eq!(firing.len(), 1);
    assert_eq!(open(&tg)[0]["incident_id"], firing[0]["incident_id"]);

    let top = Tmux::start(
        d,
        &format!(
            "{} top --address {} --interval 300ms",
            env!("CARGO_BIN_EXE_tidegauge"),
            tg.address
        ),
    );
    let screen = top.wait_screen("the open incident", |s| s.contains("open alerts: 1"));
    let row = screen
        .lines()
        .find(|l| l.contains("since 1970-01-01T00:00:00Z"))
        .unwrap_or_else(|| panic!("no incident row:\n{screen}"));
    for needle in ["alert", "s-1", "5 anomalies"] {
        assert!(row.contains(needle), "{needle} not in {row:?}");
    }

    // Time moves on without anomalies: the incident resolves and leaves both views.
    quiet_from_5(&input);
    wait_until("the incident gone from GET /alerts", || {
        open(&tg).is_empty()
    });
    top.wait_screen("no open incident", |s| s.contains("open alerts: 0"));
    assert!(alerts(&out).iter().any(|a| a["status"] == "resolved"));
    top.send_keys("q");
    top.wait_closed("top did not quit on q");
    let (code, _) = tg.stop();
    assert_eq!(code, Some(0));
}
