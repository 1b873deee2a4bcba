//! Attacks on a running pipeline from the same host, one test per way in: the admin API's
//! connections and token, requests that could crash the process, secrets that could
//! leak, keys that could grow memory without bound.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// Writes `text` to `dir/pipeline.toml`, runs it and waits for the admin API.
fn start(dir: &Path, text: &str, env: &[(&str, &str)]) -> Running {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    Running::start(&[&path], env)
}

/// The admin API on a free port of loopback, its token from `TIDEGAUGE_TOKEN`, its state
/// (logs, parameter history) in `state`.
fn admin_table(state: &Path) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token_env = "TIDEGAUGE_TOKEN"
state_dir = "{}"
"#,
        state.display()
    )
}

/// A small simulated fleet through a z-score and a filter into a file, admin API on.
fn observed(dir: &Path) -> String {
    format!(
        r#"
{admin}
[sources.fleet]
type = "simulate"
sensors = 5
rate = 200

[transforms.spikes]
type = "zscore"
inputs = ["fleet"]
window = 20

[transforms.anomalies]
type = "filter"
inputs = ["spikes"]
condition = "is_anomaly"

[sinks.out]
type = "jsonl"
inputs = ["anomalies"]
path = "{out}"
"#,
        admin = admin_table(&dir.join("state")),
        out = dir.join("out.jsonl").display()
    )
}

// ---- The admin API's connections -------------------------------------------------

/// 200 connections sending headers one byte at a time, never finished: the server hangs
/// up on every one by itself.
#[test]
fn slow_headers_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start(dir.path(), &observed(dir.path()), &[]);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&tg.address).unwrap())
        .collect();
    let request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while !slow.is_empty() {
        assert!(Instant::now() < deadline, "slow connections kept open");
        let byte = [request[i % request.len()]];
        i += 1;
        slow.retain_mut(|s| s.write_all(&byte).is_ok() && s.flush().is_ok());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tg.get("/health")["status"], "ok");
}

/// 200 connections each holding 400 KiB of an unfinished header: each is answered 431
/// and closed once it passes the header limit.
#[test]
fn huge_unfinished_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start(dir.path(), &observed(dir.path()), &[]);
    let mut refused = 0;
    for _ in 0..200 {
        let mut s = TcpStream::connect(&tg.address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ");
        let chunk = [b'a'; 4096];
        for _ in 0..100 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        if answer.starts_with(b"HTTP/1.1 431") {
            refused += 1;
        }
    }
    assert_eq!(refused, 200);
    assert_eq!(tg.get("/health")["status"], "ok");
}

/// Far more idle, half-sent requests than the API keeps: it keeps at most its cap open,
/// still answers a whole request at once, and a hot reload asked for meanwhile is done
/// while the flood is still held.
#[test]
fn an_idle_connection_flood_leaves_health_answering() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start(dir.path(), &observed(dir.path()), &[]);
    let mut flood = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(&tg.address).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost");
        flood.push(s);
    }
    assert_eq!(tg.get("/health")["status"], "ok");
    let open = tg.metric("tidegauge_admin_connections");
    assert!(open <= 64.0, "{open} connections open");
    assert!(
        tg.metric("tidegauge_admin_connections_total{outcome=\"evicted_idle_for_room\"}") > 900.0
    );
    tg.signal(libc::SIGHUP);
    tg.wait_stderr(|s| s.contains("reloaded"));
    assert_eq!(tg.get("/health")["status"], "ok");
    drop(flood);
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
}

// ---- The token ---------------------------------------------------------------------

/// Beyond loopback the API starts only with a token that resolves, and is long enough.
#[test]
fn beyond_loopback_an_unset_or_short_token_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |token: &str| {
        format!(
            "[admin]\naddress = \"0.0.0.0:0\"\n{token}\nstate_dir = \"{}\"\n\n\
             [sources.fleet]\ntype = \"simulate\"\nsensors = 1\nrate = 10\n\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"fleet\"]\npath = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("out.jsonl").display()
        )
    };
    let unset = run_pipeline(
        dir.path(),
        &pipeline("token_env = \"TG_SECURITY_TEST_UNSET\""),
        &[],
    );
    assert_eq!(unset.status.code(), Some(2), "{}", stderr(&unset));
    assert!(
        stderr(&unset).contains("`TG_SECURITY_TEST_UNSET` is not set"),
        "{}",
        stderr(&unset)
    );
    assert!(
        !stderr(&unset).contains("admin API on"),
        "{}",
        stderr(&unset)
    );
    let short = run_pipeline(
        dir.path(),
        &pipeline("token_env = \"TG_SHORT\""),
        &[("TG_SHORT", "hunter2")],
    );
    assert_eq!(short.status.code(), Some(2), "{}", stderr(&short));
    assert!(stderr(&short).contains("at least 16"), "{}", stderr(&short));
    assert!(!stderr(&short).contains("hunter2"), "{}", stderr(&short));
    let check = run(&["check", dir.path().join("pipeline.toml").to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    std::fs::write(
        dir.path().join("literal.toml"),
        pipeline("token = \"short\""),
    )
    .unwrap();
    let check = run(&["check", dir.path().join("literal.toml").to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(2));
    assert!(stderr(&check).contains("admin.token"), "{}", stderr(&check));
}

/// Parameters and the change history need the token; health and metrics do not.
#[test]
fn parameters_and_changes_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start(dir.path(), &observed(dir.path()), &[]);
    for path in ["/components/out/params", "/changes"] {
        assert_eq!(tg.request(None, "GET", path, None).status, 401, "{path}");
        assert_eq!(
            tg.request(Some("wrong-token-wrong-token"), "GET", path, None)
                .status,
            403,
            "{path}"
        );
        assert_eq!(tg.request(Some(TOKEN), "GET", path, None).status, 200);
    }
    for path in ["/health", "/metrics"] {
        assert_eq!(tg.request(None, "GET", path, None).status, 200, "{path}");
    }
    wait_until("events", || {
        tg.get("/components")[0]["events_out"].as_u64() > Some(0)
    });
}

// ---- Requests that could crash the process -----------------------------------------

/// `a = 1 OR a = 2 OR ...` as long as the text limit allows, or far longer.
fn or_chain(bytes: usize) -> String {
    let mut text = String::from("ts=0");
    let mut i = 1;
    while text.len() < bytes {
        text.push_str(&format!(" OR ts={i}"));
        i += 1;
    }
    text
}

/// A 3,000-item `IN` list (6 KB) is accepted and evaluated without recursion; a
/// 7,000-term OR chain (56 KB) is refused without being echoed back; the process and
/// its filter go on.
#[test]
fn long_conditions_through_the_api_cannot_crash_it() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start(dir.path(), &observed(dir.path()), &[]);
    let path = "/components/anomalies/params";
    let items: Vec<String> = (0..3000).map(|i| i.to_string()).collect();
    let in_list = format!("NOT is_anomaly OR ts IN ({})", items.join(","));
    let body = serde_json::json!({ "condition": in_list }).to_string();
    let reply = tg.request(Some(TOKEN), "PATCH", path, Some(&body));
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Events now pass the filter (most are not anomalies): it evaluates the list.
    let out = dir.path().join("out.jsonl");
    wait_until("events through the IN filter", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            > 20
    });

    let chain = or_chain(56_000);
    assert!(chain.matches(" OR ").count() >= 5000);
    let body = serde_json::json!({ "condition": chain }).to_string();
    let reply = tg.request(Some(TOKEN), "PATCH", path, Some(&body));
    assert_eq!(reply.status, 422, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains("at most 16384"), "{text}");
    assert!(text.len() < 1000, "{} bytes answered", text.len());
    // Nothing was recorded for the refused change; the accepted one is there.
    let changes = tg.get("/changes");
    assert_eq!(changes.as_array().unwrap().len(), 1, "{changes}");
    assert_eq!(tg.get("/health")["status"], "ok");
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("overflowed"), "{err}");
}

/// The same conditions in a pipeline file: `check` and `run` agree, refusing the
/// oversized one with the same error and running the long one that fits.
#[test]
fn check_and_run_agree_on_long_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |condition: &str| {
        format!(
            "[sources.fleet]\ntype = \"simulate\"\nsensors = 3\nevents = 300\nrealtime = false\n\n\
             [transforms.pick]\ntype = \"filter\"\ninputs = [\"fleet\"]\ncondition = \"{condition}\"\n\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"pick\"]\npath = \"{}\"\n",
            dir.path().join("out.jsonl").display()
        )
    };
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, pipeline(&or_chain(56_000))).unwrap();
    let check = run(&["check", path.to_str().unwrap()]);
    let ran = run(&["run", path.to_str().unwrap()]);
    for out in [&check, &ran] {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
        assert!(stderr(out).contains("at most 16384"), "{}", stderr(out));
        assert!(stderr(out).len() < 2000, "{}", stderr(out).len());
    }
    // 2,000 ORs fit: checked and run the same way, every event kept.
    let fits = or_chain(16_000).replace("ts=0", "value = value");
    std::fs::write(&path, pipeline(&fits)).unwrap();
    let check = run(&["check", path.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    let ran = run(&["run", path.to_str().unwrap()]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    let kept = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(kept.lines().count() > 250, "{}", kept.lines().count());
}

// ---- Secrets -------------------------------------------------------------------------

/// A loopback HTTP server for the secrets test: `/reading...` answers a reading,
/// `/fail...` answers 500, `/hook...` (a webhook receiver that echoes) answers 400 with
/// the whole request head it got, which holds the URL's path and query and the headers.
fn test_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read_exact(&mut byte).is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = conn.read_exact(&mut body);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                let (status, reply) = if path.starts_with("/reading") {
                    (
                        "200 OK",
                        format!(r#"{{"sensor_id":"s-1","ts":{now},"value":1.5}}"#),
                    )
                } else if path.starts_with("/hook") {
                    ("400 Bad Request", head.clone())
                } else {
                    ("500 Internal Server Error", "no".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            });
        }
    });
    port
}

/// Secrets planted in every secret-typed setting the test can run (auth header, request
/// headers, the admin token), in URLs (user information, query values named like keys
/// and tokens, token-like path segments) and passed through `${VAR}` with quotes and
/// backslashes in them; then every API answer, log file and line, event, dead letter and
/// error is searched for them.
#[test]
fn planted_secrets_never_leave_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = test_server();
    let auth = r#"Pl4nted"Auth\Value-5"#;
    let planted = [
        "Pl4ntedUrlPassw0rd-1",
        "Pl4ntedQueryKey-2",
        "Xq7Vw2Lp9Rt4Ks8Mz3Bn6",
        "Pl4ntedQueryToken-3",
        "Hw5Kj8Qm2Zp7Tx4Ly9Rc3",
        "Pl4ntedHookQuery-4",
        auth,
        "Pl4ntedHeaderValue-6",
        "Pl4ntedAdminToken-7-0123456789",
    ];
    let (events, dead, state) = (
        dir.path().join("events.jsonl"),
        dir.path().join("dead.jsonl"),
        dir.path().join("state"),
    );
    let pipeline = format!(
        r#"
[admin]
address = "127.0.0.1:0"
token_env = "ADMIN_TOKEN"
state_dir = "{state}"

[dead_letter]
path = "{dead}"

[sources.poll]
type = "http_poll"
endpoints = [
    "http://reader:Pl4ntedUrlPassw0rd-1@127.0.0.1:{port}/reading?api_key=Pl4ntedQueryKey-2&sensor=a",
    "http://127.0.0.1:{port}/fail/Xq7Vw2Lp9Rt4Ks8Mz3Bn6?token=Pl4ntedQueryToken-3",
]
interval_ms = 50
retry = {{ max_attempts = 1 }}
breaker = {{ failure_threshold = 1 }}

[sinks.events]
type = "jsonl"
inputs = ["poll"]
path = "{events}"

[sinks.hook]
type = "http"
inputs = ["poll"]
url = "http://127.0.0.1:{port}/hook/Hw5Kj8Qm2Zp7Tx4Ly9Rc3?token=Pl4ntedHookQuery-4"
auth_header_value = "Bearer ${{HOOK_AUTH}}"
headers = {{ X-Api-Key = "${{HOOK_KEY}}" }}
max_events = 5
flush_interval_ms = 50
retry = {{ max_attempts = 1 }}
"#,
        state = state.display(),
        dead = dead.display(),
        events = events.display(),
    );
    let env = [
        ("ADMIN_TOKEN", planted[8]),
        ("HOOK_AUTH", auth),
        ("HOOK_KEY", planted[7]),
    ];
    let tg = start(dir.path(), &pipeline, &env);
    let token = Some(planted[8]);
    wait_until("events, refused webhook calls and an open breaker", || {
        let dead = std::fs::read_to_string(&dead).unwrap_or_default();
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
            && dead.contains("HTTP 400")
            && tg.stderr().contains("circuit breaker opened")
    });

    // Every route, with and without the token, and error answers.
    let mut seen = String::new();
    for path in [
        "/health",
        "/components",
        "/topology",
        "/components/poll/params",
        "/components/events/params",
        "/components/hook/params",
        "/changes",
        "/metrics",
        "/profile",
        "/openapi.json",
        "/components/nope/params",
    ] {
        for t in [None, token] {
            seen.push_str(&tg.request(t, "GET", path, None).text());
        }
    }
    let refused = tg.request(
        token,
        "PATCH",
        "/components/hook/params",
        Some(r#"{"url": "x"}"#),
    );
    assert_eq!(refused.status, 409);
    seen.push_str(&refused.text());
    let params = tg
        .request(token, "GET", "/components/hook/params", None)
        .json()
        .unwrap();
    let value = |name: &str| {
        params["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["value"].clone())
            .unwrap()
    };
    assert_eq!(value("auth_header_value"), "***");
    assert_eq!(value("headers"), serde_json::json!({ "X-Api-Key": "***" }));
    assert_eq!(value("url"), format!("http://127.0.0.1:{port}/***?***"));

    let (code, stderr_text) = tg.stop();
    assert_eq!(code, Some(0), "{stderr_text}");
    seen.push_str(&stderr_text);

    // The events name the endpoint by its URL with the secrets masked.
    let events_text = std::fs::read_to_string(&events).unwrap();
    let first: Value = serde_json::from_str(events_text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["endpoint"],
        format!("http://reader:***@127.0.0.1:{port}/reading?api_key=***&sensor=a")
    );
    seen.push_str(&events_text);
    // The echoing receiver's replies are in the dead letters, masked.
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    assert!(dead_text.contains("POST /***?*** HTTP/1.1"), "{dead_text}");
    seen.push_str(&dead_text);
    // Log files and what `tidegauge logs` shows.
    for entry in std::fs::read_dir(state.join("logs")).unwrap() {
        seen.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let pipeline_path = dir.path().join("pipeline.toml");
    let pipeline_arg = pipeline_path.to_str().unwrap();
    let state_arg = state.to_str().unwrap();
    for args in [
        vec!["logs", pipeline_arg, "--state-dir", state_arg],
        vec!["logs", pipeline_arg, "--state-dir", state_arg, "--json"],
    ] {
        let mut c = tidegauge();
        c.args(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        seen.push_str(&stdout(&out));
        seen.push_str(&stderr(&out));
    }
    assert!(seen.contains("circuit breaker"), "the logs were searched");
    // `check` of the file, `describe` of the components.
    let mut c = tidegauge();
    c.args(["check", pipeline_arg]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    seen.push_str(&stdout(&out));
    seen.push_str(&stderr(&out));
    for component in ["http", "http_poll"] {
        let out = run(&["describe", component]);
        seen.push_str(&stdout(&out));
    }

    let json_escaped = serde_json::to_string(auth).unwrap();
    for secret in planted
        .iter()
        .copied()
        .chain([&json_escaped[1..json_escaped.len() - 1]])
    {
        if let Some(at) = seen.find(secret) {
            let from = seen[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            panic!(
                "{secret} leaked: …{}…",
                &seen[from..(at + 100).min(seen.len())]
            );
        }
    }
}

/// `${VAR}` values cannot change the file: quotes and backslashes are kept as they are,
/// a value cannot add tables, and errors keep their lines.
#[test]
fn interpolated_values_cannot_change_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(r#"o"ut\n.jsonl"#);
    let pipeline = "[sources.fleet]\ntype = \"simulate\"\nsensors = ${SENSORS}\nevents = 10\nrealtime = false\n\n\
                    [sinks.out]\ntype = \"jsonl\"\ninputs = [\"fleet\"]\npath = \"${OUT}\"\n";
    let ran = run_pipeline(
        dir.path(),
        pipeline,
        &[("SENSORS", "2"), ("OUT", odd.to_str().unwrap())],
    );
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert_eq!(std::fs::read_to_string(&odd).unwrap().lines().count(), 10);
    // A value trying to add a sink stays inside its string.
    let injected = format!(
        "{}\"\n[sinks.evil]\ntype = \"stdout\"\ninputs = [\"fleet\"]\n#",
        odd.display()
    );
    let ran = run_pipeline(
        dir.path(),
        pipeline,
        &[("SENSORS", "2"), ("OUT", &injected)],
    );
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert_eq!(stdout(&ran), "", "an injected stdout sink ran");
    assert!(std::path::Path::new(&injected).exists());
    // Outside quotes only a number, boolean or date goes in; the error has its line.
    let ran = run_pipeline(
        dir.path(),
        pipeline,
        &[("SENSORS", "2\n[sinks.evil]"), ("OUT", "x.jsonl")],
    );
    assert_eq!(ran.status.code(), Some(2));
    assert!(
        stderr(&ran).contains("pipeline.toml:3:") && stderr(&ran).contains("`SENSORS`"),
        "{}",
        stderr(&ran)
    );
    assert!(!stderr(&ran).contains("[sinks.evil]"), "{}", stderr(&ran));
}

// ---- Memory -------------------------------------------------------------------------

/// A window that would need gigabytes is refused before anything is recorded or
/// allocated; one within the budget is applied; the process goes on either way.
#[test]
fn a_window_beyond_memory_is_refused_before_it_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let tg = start(dir.path(), &observed(dir.path()), &[]);
    let path = "/components/spikes/params";
    for window in ["4294967295", "10000000", "1000000"] {
        let body = format!(r#"{{"window": {window}}}"#);
        let reply = tg.request(Some(TOKEN), "PATCH", path, Some(&body));
        assert_eq!(reply.status, 422, "window {window}: {}", reply.text());
    }
    // Both parameters at once: the bad one refuses the whole change.
    let reply = tg.request(
        Some(TOKEN),
        "PATCH",
        path,
        Some(r#"{"threshold": 9, "window": 4294967295}"#),
    );
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(tg.get("/changes"), serde_json::json!([]));
    let params = tg.get(path);
    let threshold = params["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "threshold")
        .unwrap()["value"]
        .clone();
    assert_eq!(threshold, serde_json::json!(3.0));
    // Within the budget (5,000 values × 100,000 keys): applied, memory grows as values
    // arrive.
    let reply = tg.request(Some(TOKEN), "PATCH", path, Some(r#"{"window": 5000}"#));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(tg.get("/changes").as_array().unwrap().len(), 1);
    let before = tg.get("/components")[1]["events_in"].as_u64().unwrap();
    wait_until("events after the change", || {
        tg.get("/components")[1]["events_in"].as_u64().unwrap() > before + 100
    });
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// Keys invented by a sender (2,000 sensors against a cap of 100), in every kind of keyed
/// stage (a detector, `heartbeat`, `hotelling`): state is kept for at most 100, silent
/// ones are evicted to make room, the rest get no verdict; counted in `/metrics`, with a
/// warning.
#[test]
fn invented_keys_are_capped_and_idle_ones_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!(
        r#"
{admin}
[sources.fleet]
type = "simulate"
sensors = 2000
rate = 2000

[transforms.spikes]
type = "zscore"
inputs = ["fleet"]
window = 10
max_keys = 100
key_idle_ms = 1000

[transforms.beat]
type = "heartbeat"
inputs = ["fleet"]
expected_interval_ms = 100
tolerance = 2.0
max_keys = 100
key_idle_ms = 1000

[transforms.machines]
type = "hotelling"
inputs = ["fleet"]
key_field = "sensor_id"
value_fields = ["value"]
max_keys = 100
key_idle_ms = 1000

[sinks.out]
type = "jsonl"
inputs = ["spikes"]
path = "{out}"

[sinks.beats]
type = "jsonl"
inputs = ["beat"]
path = "{beats}"

[sinks.machine_out]
type = "jsonl"
inputs = ["machines"]
path = "{machine_out}"
"#,
        admin = admin_table(&dir.path().join("state")),
        out = dir.path().join("out.jsonl").display(),
        beats = dir.path().join("beats.jsonl").display(),
        machine_out = dir.path().join("machines.jsonl").display()
    );
    let tg = start(dir.path(), &pipeline, &[]);
    for (id, kind) in [
        ("spikes", "zscore"),
        ("beat", "heartbeat"),
        ("machines", "hotelling"),
    ] {
        let labels = format!(
            r#"{{component_id="{id}",component_kind="transform",component_type="{kind}"}}"#
        );
        wait_until(
            &format!("evictions and events without state in {id}"),
            || {
                tg.metric(&format!("tidegauge_component_keys_evicted_total{labels}")) > 0.0
                    && tg.metric(&format!(
                        "tidegauge_component_events_without_state_total{labels}"
                    )) > 0.0
            },
        );
        let keys = tg.metric(&format!("tidegauge_component_keys{labels}"));
        assert!((1.0..=100.0).contains(&keys), "{id}: {keys} keys");
        tg.wait_stderr(|s| {
            s.lines()
                .any(|l| l.contains("key limit reached") && l.contains(id))
        });
    }
    let stderr_text = tg.wait_stderr(|s| s.contains("key limit reached"));
    assert!(stderr_text.contains("max_keys = 100"), "{stderr_text}");
    let (code, err) = tg.stop();
    assert_eq!(code, Some(0), "{err}");
}
