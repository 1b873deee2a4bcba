//! `http` sink against a real HTTP server started by the test on loopback.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures_util::FutureExt;

use crate::harness::{self, Event, Harness, check_sink};

/// What the test server saw and how it answers.
#[derive(Default)]
struct Server {
    /// Bodies of accepted requests.
    accepted: Vec<Vec<u8>>,
    /// Every request's auth header.
    auth: Vec<Option<String>>,
    /// Requests answered so far.
    requests: usize,
    /// Answer this many requests with 503 first.
    fail_first: usize,
    /// Answer every request with this status, if set.
    always: Option<u16>,
    /// Refuse (400) any body containing this text.
    refuse_containing: Option<String>,
}

type Shared = Arc<Mutex<Server>>;

async fn handle(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let mut s = s.lock().unwrap();
    s.requests += 1;
    s.auth.push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
    );
    if let Some(code) = s.always {
        return (StatusCode::from_u16(code).unwrap(), "always".into());
    }
    if s.requests <= s.fail_first {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later".into());
    }
    if let Some(bad) = &s.refuse_containing
        && String::from_utf8_lossy(&body).contains(bad.as_str())
    {
        return (StatusCode::BAD_REQUEST, "bad event".into());
    }
    s.accepted.push(body.to_vec());
    (StatusCode::OK, "ok".into())
}

/// Starts the server on a free loopback port; returns its URL.
async fn start(state: Shared) -> String {
    let app = axum::Router::new()
        .route("/hook/{secret_path}", axum::routing::post(handle))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook/path-token-123")
}

fn accepted_events(s: &Shared) -> Vec<Event> {
    let s = s.lock().unwrap();
    s.accepted
        .iter()
        .flat_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(b).unwrap())
        .map(|v| {
            (
                v["sensor_id"].as_str().unwrap().to_string(),
                v["ts"].as_i64().unwrap(),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

const TOKEN: &str = "Bearer sekrit-token-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_compliance() {
    let state = Shared::default();
    let url = start(state.clone()).await;
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"http\"\nurl = \"{url}\"\nauth_header_value = \"{TOKEN}\"\nmax_events = 300\nflush_interval_ms = 20"
    ));
    let read_back = |_expect: usize| {
        let state = state.clone();
        async move { accepted_events(&state) }.boxed()
    };
    check_sink(&sink, &read_back).await;
    let s = state.lock().unwrap();
    assert!(
        s.accepted.len() >= 4,
        "batched into requests of at most 300 events"
    );
    assert!(
        s.auth.iter().all(|a| a.as_deref() == Some(TOKEN)),
        "auth header sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_retries_refusals_and_breaker() {
    // Two 503s, then success: retried, delivered once.
    let state = Shared::default();
    state.lock().unwrap().fail_first = 2;
    let url = start(state.clone()).await;
    let h = Harness::new();
    let retry = "retry = { initial_backoff_ms = 5, max_backoff_ms = 20, max_attempts = 5 }";
    let sink = h.sink(&format!("type = \"http\"\nurl = \"{url}\"\n{retry}"));
    let mut running = sink.start().await;
    let sent = harness::events(0, 10);
    running.send(&sent).await;
    let (r, acks) = running.finish().await;
    r.unwrap();
    assert!(acks[0].delivered);
    assert_eq!(harness::sorted(accepted_events(&state)), sent);
    assert_eq!(state.lock().unwrap().requests, 3);
    assert_eq!(sink.telemetry().errors, 2, "each failed attempt counted");

    // A 400 is not retried: the events are dead-lettered with the answer.
    let state = Shared::default();
    state.lock().unwrap().refuse_containing = Some("s-3".into());
    let url = start(state.clone()).await;
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"http\"\nurl = \"{url}\"\nmax_events = 1\n{retry}"
    ));
    let mut running = sink.start().await;
    running.send(&harness::events(0, 7)).await;
    running.finish().await.0.unwrap();
    assert_eq!(state.lock().unwrap().requests, 7, "no retry of a refusal");
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("400"),
        "{dead:?}"
    );
    assert!(dead[0]["raw"].as_str().unwrap().contains("s-3"));
    let location = dead[0]["location"].as_str().unwrap();
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    assert!(
        !location.contains("path-token"),
        "the URL path may hold a token: {location}"
    );

    // An endpoint that keeps failing opens the breaker: calls stop, events are
    // dead-lettered as not sent.
    let state = Shared::default();
    state.lock().unwrap().always = Some(500);
    let url = start(state.clone()).await;
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"http\"\nurl = \"{url}\"\nmax_events = 1\nretry = {{ max_attempts = 1 }}\nbreaker = {{ failure_threshold = 3, cool_down_ms = 600000 }}"
    ));
    let mut running = sink.start().await;
    running.send(&harness::events(0, 10)).await;
    running.finish().await.0.unwrap();
    assert_eq!(
        state.lock().unwrap().requests,
        3,
        "the breaker stopped the calls"
    );
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 10);
    assert_eq!(
        dead.iter()
            .filter(|d| d["reason"]
                .as_str()
                .unwrap()
                .contains("circuit breaker open"))
            .count(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_never_shows_its_secret() {
    let state = Shared::default();
    state.lock().unwrap().always = Some(401);
    let url = start(state.clone()).await;
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"http\"\nurl = \"{url}\"\nauth_header_value = \"{TOKEN}\"\nretry = {{ max_attempts = 1 }}"
    ));
    let mut running = sink.start().await;
    running.send(&harness::events(0, 2)).await;
    running.finish().await.0.unwrap();
    assert_eq!(state.lock().unwrap().auth[0].as_deref(), Some(TOKEN));
    let dead = serde_json::to_string(&h.dead_letters()).unwrap();
    assert!(dead.contains("401") && !dead.contains("sekrit"), "{dead}");
}
