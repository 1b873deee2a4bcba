//! Feeds arbitrary bodies to the admin API's parameter changes on a running pipeline
//! (simulated fleet -> zscore -> mad -> filter -> file): raw bytes, and JSON objects whose
//! keys are the tunable parameters (and others) with values of every JSON type,
//! including huge and negative numbers, long and nested ones. Every answer must be a
//! client error or a success, never a server error; after each, every component must
//! still run (a change that cannot be applied must be refused, not crash a stage or the
//! process); reading the parameters back must work.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tidegauge_api::{AdminState, ChangeLog, ProcessCounters};
use tidegauge_core::live::{self, LiveHandle, RunOptions};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token-0123456789abcdef";

struct Harness {
    runtime: tokio::runtime::Runtime,
    live: LiveHandle,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let _ = tidegauge_components::registered_types();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let text = format!(
            r#"
[sources.fleet]
type = "simulate"
sensors = 20
rate = 200

[transforms.spikes]
type = "zscore"
inputs = ["fleet"]
window = 20

[transforms.robust]
type = "mad"
inputs = ["spikes"]
window = 20

[transforms.anomalies]
type = "filter"
inputs = ["robust"]
condition = "is_anomaly"

[sinks.out]
type = "jsonl"
inputs = ["anomalies"]
path = "{}"
"#,
            dir.path().join("out.jsonl").display()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (live, router) = runtime.block_on(async {
            let pipeline = tidegauge_core::topology::load(&text, &|_| None)
                .unwrap_or_else(|e| panic!("the fuzz pipeline is invalid: {e:?}"));
            let built = tidegauge_core::topology::build(pipeline)
                .await
                .unwrap_or_else(|e| panic!("the fuzz pipeline cannot be built: {e}"));
            let shutdown = tokio_util::sync::CancellationToken::new();
            let (live, run) = live::start(
                built,
                shutdown,
                RunOptions {
                    profile: false,
                    reloads: None,
                },
            );
            tokio::spawn(run);
            let changes = std::sync::Arc::new(ChangeLog::open(dir.path()).expect("a change log"));
            let state = AdminState::new(
                live.clone(),
                Some(TOKEN.into()),
                changes,
                std::sync::Arc::new(ProcessCounters::default()),
            );
            (live, tidegauge_api::router(state))
        });
        Harness {
            runtime,
            live,
            router,
            _dir: dir,
        }
    })
}

/// A JSON value of any type, nested at most `depth` deep.
fn json_value(u: &mut Unstructured, depth: usize) -> arbitrary::Result<Value> {
    let choice: u8 = if depth == 0 {
        u.int_in_range(0..=6)?
    } else {
        u.int_in_range(0..=8)?
    };
    Ok(match choice {
        0 => Value::Null,
        1 => json!(bool::arbitrary(u)?),
        2 => json!(i64::arbitrary(u)?),
        3 => json!(u64::arbitrary(u)?),
        4 => json!(f64::arbitrary(u)?),
        5 => json!(String::arbitrary(u)?),
        6 => json!(*u.choose(&[0u64, 1, 2, 3, 100, 4294967295, 4294967296, u64::MAX, 10_000_000, 16_777_217])?),
        7 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| json_value(u, depth - 1)).collect::<Result<_, _>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(String::arbitrary(u)?, json_value(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

/// A body: raw bytes, or an object of (mostly tunable) parameters.
fn body(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    if u.ratio(1, 4)? {
        return Ok(u.bytes(u.len())?.to_vec());
    }
    let n = u.int_in_range(0..=3)?;
    let mut m = Map::new();
    for _ in 0..n {
        let key = match u.int_in_range(0..=6)? {
            0 => "window".to_string(),
            1 => "threshold".to_string(),
            2 => "condition".to_string(),
            3 => "key_field".to_string(),
            4 => "workers".to_string(),
            5 => "max_keys".to_string(),
            _ => String::arbitrary(u)?,
        };
        let value = if key == "condition" && u.ratio(3, 4)? {
            json!(String::arbitrary(u)?)
        } else {
            json_value(u, 3)?
        };
        m.insert(key, value);
    }
    Ok(serde_json::to_vec(&Value::Object(m)).unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let mut u = Unstructured::new(data);
    let Ok(target) = u.choose(&["spikes", "robust", "anomalies", "fleet", "out", "nope"]) else {
        return;
    };
    let Ok(body) = body(&mut u) else { return };
    h.runtime.block_on(async {
        let request = Request::builder()
            .method(Method::PATCH)
            .uri(format!("/components/{target}/params"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("a request");
        let answer = h.router.clone().oneshot(request).await.expect("an answer");
        let status = answer.status();
        assert!(
            status.is_success() || status.is_client_error(),
            "PATCH {target}: {status}"
        );
        let read = Request::builder()
            .uri(format!("/components/{target}/params"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("a request");
        let answer = h.router.clone().oneshot(read).await.expect("an answer");
        assert!(
            answer.status() == StatusCode::OK || answer.status() == StatusCode::NOT_FOUND,
            "GET {target}: {}",
            answer.status()
        );
    });
    let stopped: Vec<String> = h
        .live
        .snapshot()
        .into_iter()
        .filter(|c| !c.running)
        .map(|c| c.id)
        .collect();
    assert!(stopped.is_empty(), "components stopped: {stopped:?}");
});
