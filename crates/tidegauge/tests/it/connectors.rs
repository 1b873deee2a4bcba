//! Connectors through the real binary: secrets never reach output, logs or errors.
#![cfg(all(feature = "mqtt", feature = "postgres", feature = "http"))]

use crate::common::*;

/// A test server's address (see scripts/services); panics with the command to run
/// when it is missing, unless TIDEGAUGE_TEST_SERVERS=optional.
fn server(var: &str) -> Option<String> {
    if let Ok(v) = std::env::var(var) {
        return Some(v);
    }
    let file = root().join("target/services/env");
    if let Ok(text) = std::fs::read_to_string(&file) {
        for line in text.lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=')
                && k == var
            {
                return Some(v.trim_matches('\'').to_string());
            }
        }
    }
    if std::env::var("TIDEGAUGE_TEST_SERVERS").as_deref() == Ok("optional") {
        eprintln!("SKIPPED: {var} is not set and TIDEGAUGE_TEST_SERVERS=optional");
        return None;
    }
    panic!("{var} is not set: run `scripts/services start` first (scripts/test does)");
}

const SECRET: &str = "s3cr3t-never-shown-81723";

fn assert_hidden(o: &std::process::Output) {
    let all = format!("{}{}", stdout(o), stderr(o));
    assert!(!all.contains(SECRET), "the secret leaked:\n{all}");
}

#[test]
fn describe_shows_no_secret_and_marks_secret_settings() {
    for name in ["mqtt", "postgres", "http", "nats"] {
        let o = run(&["describe", name]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.contains("never logged or printed"), "{name}: {text}");
        let o = run(&["describe", name, "--json"]);
        assert!(stdout(&o).contains("\"writeOnly\": true"), "{name}");
    }
}

#[test]
fn secrets_stay_out_of_errors_and_debug_logs() {
    let Some(pg) = server("TIDEGAUGE_TEST_POSTGRES") else {
        return;
    };
    let Some(mqtt_tls) = server("TIDEGAUGE_TEST_MQTT_TLS") else {
        return;
    };
    let ca = server("TIDEGAUGE_TEST_MQTT_CA").unwrap();
    let user = server("TIDEGAUGE_TEST_MQTT_USER").unwrap();
    let (mqtt_host, mqtt_port) = mqtt_tls.rsplit_once(':').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [("TG_SECRET", SECRET), ("TIDEGAUGE_LOG", "trace")];

    // Wrong database password, given through the environment: refused at build.
    let o = run_pipeline(
        dir.path(),
        &format!(
            "[sources.s]\ntype = \"simulate\"\nevents = 10\nrealtime = false\n\n[sinks.pg]\ntype = \"postgres\"\ninputs = [\"s\"]\nconnection = \"{pg}\"\npassword = \"${{TG_SECRET}}\"\ntable = \"t\"\n"
        ),
        &env,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("password authentication failed"),
        "{}",
        stderr(&o)
    );
    assert_hidden(&o);

    // Wrong broker password: the sink keeps being refused, then gives up.
    let o = run_pipeline(
        dir.path(),
        &format!(
            "[sources.s]\ntype = \"simulate\"\nevents = 10\nrealtime = false\n\n[sinks.m]\ntype = \"mqtt\"\ninputs = [\"s\"]\nhost = \"{mqtt_host}\"\nport = {mqtt_port}\nusername = \"{user}\"\npassword = \"{SECRET}\"\ntls = {{ ca_file = \"{ca}\" }}\ntopic = \"x\"\ndrain_timeout_ms = 1500\n"
        ),
        &env,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    assert_hidden(&o);

    // An endpoint that is not there: events dead-lettered (to standard error here).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = run_pipeline(
        dir.path(),
        &format!(
            "[sources.s]\ntype = \"simulate\"\nevents = 3\nrealtime = false\n\n[sinks.h]\ntype = \"http\"\ninputs = [\"s\"]\nurl = \"http://127.0.0.1:{port}/hook\"\nauth_header_value = \"Bearer ${{TG_SECRET}}\"\nretry = {{ max_attempts = 2, initial_backoff_ms = 1 }}\n"
        ),
        &env,
    );
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    assert_hidden(&o);

    // `check` on a file with a secret and a mistake next to it.
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[sources.s]\ntype = \"simulate\"\n\n[sinks.h]\ntype = \"http\"\ninputs = [\"s\"]\nurl = \"ftp://x\"\nauth_header_value = \"{SECRET}\"\nmax_events = 0\n"
        ),
    )
    .unwrap();
    let o = tidegauge()
        .arg("check")
        .arg(&path)
        .env("TIDEGAUGE_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("max_events"), "{}", stderr(&o));
    assert_hidden(&o);
}

/// The README's connector example is a pipeline that `check` accepts as written, with
/// the feature names and settings the README gives.
#[test]
fn readme_connector_example_passes_check() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("### Connectors")
        .expect("README has a Connectors section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n### ").map_or(section.len(), |i| i + 4)];
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").expect("closed code block")])
        .collect();
    assert!(
        !blocks.is_empty(),
        "the Connectors section shows a pipeline"
    );
    let dir = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let path = dir.path().join(format!("connectors-{i}.toml"));
        std::fs::write(&path, block).unwrap();
        let o = tidegauge()
            .arg("check")
            .arg(&path)
            .env("MQTT_PASSWORD", SECRET)
            .env("ALERT_TOKEN", SECRET)
            .env("PG_PASSWORD", SECRET)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "README connector example {i} fails check:\n{}{}\n{block}",
            stdout(&o),
            stderr(&o)
        );
        assert_hidden(&o);
    }
    // The features the README names are the binary's.
    let manifest = std::fs::read_to_string(root().join("crates/tidegauge/Cargo.toml")).unwrap();
    for feature in ["mqtt", "nats", "postgres", "parquet", "http", "kafka"] {
        assert!(
            section.contains(&format!("`{feature}`"))
                && manifest.contains(&format!("\n{feature} = [")),
            "feature `{feature}` in README and Cargo.toml"
        );
    }
}

/// Broker sources that receive nothing still pass checkpoint barriers: checkpoints of a
/// pipeline reading idle MQTT and NATS sources complete, one after another.
#[test]
fn idle_broker_sources_let_checkpoints_complete() {
    let Some(mqtt) = server("TIDEGAUGE_TEST_MQTT") else {
        return;
    };
    let Some(nats) = server("TIDEGAUGE_TEST_NATS") else {
        return;
    };
    let (host, port) = mqtt.rsplit_once(':').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = format!(
        "idle{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let state = dir.path().join("state");
    let text = format!(
        "[checkpoint]\ndir = \"{}\"\ninterval_ms = 100\n\n\
         [sources.m]\ntype = \"mqtt\"\nhost = \"{host}\"\nport = {port}\ntopics = [\"{name}/#\"]\n\n\
         [sources.n]\ntype = \"nats\"\nservers = [\"nats://{nats}\"]\nstream = \"{name}\"\nsubjects = [\"{name}.>\"]\n\n\
         [sinks.out]\ntype = \"jsonl\"\ninputs = [\"m\", \"n\"]\npath = \"{}\"\n",
        state.display(),
        dir.path().join("out.jsonl").display()
    );
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = tidegauge()
        .arg("run")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = state.join("checkpoint.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last_id = 0;
    while last_id < 3 && std::time::Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&manifest)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            last_id = v["id"].as_u64().unwrap_or(0);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the pipeline stopped early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: `child.id()` is the pid of a child this test spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        last_id >= 3,
        "checkpoints stalled at {last_id} with idle broker sources:\n{}",
        stderr(&out)
    );
}
