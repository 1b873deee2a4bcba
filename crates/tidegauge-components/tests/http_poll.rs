//! `http_poll` against a fault-injecting HTTP server started on loopback: delays, 500s,
//! connection resets, truncated and malformed bodies, hangs. Checks the rows (fresh,
//! stale with their age, none once missing), the breaker states and the missing-data
//! signal. Waits are for events (rows, telemetry), never for fixed times.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use bytes::Bytes;
use http_body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tidegauge_components::connectors::http::source::HttpPollConfig;
use tidegauge_core::checkpoint::SourceCheckpoint;
use tidegauge_core::dead_letter::{DeadLetter, DeadLetterConfig};
use tidegauge_core::registry::ComponentKind;
use tidegauge_core::resilience::BreakerState;
use tidegauge_core::telemetry::ComponentTelemetry;
use tidegauge_core::{
    BuildContext, ComponentContext, Message, Output, SourceConfig, SourceContext,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the server does for one endpoint.
#[derive(Clone, Debug)]
enum Mode {
    /// 200 with `{"ts":..,"value":v}`.
    Ok(f64),
    /// 500.
    Fail,
    /// Waits, then answers like `Ok`.
    Delay(Duration, f64),
    /// Never answers.
    Hang,
    /// 200 announcing 200 bytes, sending 10, then closing.
    Truncated,
    /// 200 with a body that is not JSON.
    Malformed,
    /// Closes the connection without an answer (RST).
    Reset,
    /// The first `n` requests get 500, then `Ok(v)`.
    FailFirst(u32, f64),
}

#[derive(Default)]
struct Script {
    modes: HashMap<String, Mode>,
    requests: HashMap<String, u32>,
}

type Shared = Arc<Mutex<Script>>;

/// A body that sends some bytes, then fails (the connection is cut mid-body).
struct CutBody(Option<Bytes>);

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(match self.0.take() {
            Some(b) => Ok(Frame::data(b)),
            None => Err(std::io::Error::other("cut")),
        }))
    }
}

/// Either a whole body or a cut one.
enum Body {
    Whole(Option<Bytes>),
    Cut(CutBody),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Cut(c) => Pin::new(c).poll_frame(cx),
        }
    }
}

fn reading(v: f64) -> Body {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Body::Whole(Some(Bytes::from(format!("{{\"ts\":{ts},\"value\":{v}}}"))))
}

async fn handle(
    script: Shared,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let id = req.uri().path().trim_start_matches('/').to_string();
    let mode = {
        let mut s = script.lock().unwrap();
        let n = s.requests.entry(id.clone()).or_default();
        *n += 1;
        let n = *n;
        match s.modes.get(&id).cloned().unwrap_or(Mode::Fail) {
            Mode::FailFirst(k, v) if n > k => Mode::Ok(v),
            Mode::FailFirst(..) => Mode::Fail,
            m => m,
        }
    };
    let ok = |body| Ok(Response::new(body));
    match mode {
        Mode::Ok(v) => ok(reading(v)),
        Mode::Delay(d, v) => {
            tokio::time::sleep(d).await;
            ok(reading(v))
        }
        Mode::Fail => Ok(Response::builder()
            .status(500)
            .body(Body::Whole(Some(Bytes::from("boom"))))
            .unwrap()),
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::Truncated => Ok(Response::builder()
            .header("content-length", "200")
            .body(Body::Cut(CutBody(Some(Bytes::from("{\"ts\":1,\"va")))))
            .unwrap()),
        Mode::Malformed => ok(Body::Whole(Some(Bytes::from("{\"ts\":1,\"value\":nope}")))),
        // An error from the service makes the server drop the connection; with linger 0
        // that is a reset.
        Mode::Reset => Err(std::io::Error::other("reset")),
        Mode::FailFirst(..) => unreachable!(),
    }
}

async fn start_server(script: Shared) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_zero_linger();
            let script = script.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(script.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[derive(Debug, Clone)]
struct Row {
    endpoint: String,
    value: f64,
    ts: i64,
    stale: bool,
    stale_age_ms: i64,
}

fn rows_of(batch: &RecordBatch) -> Vec<Row> {
    let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
    let endpoint = col("endpoint");
    let endpoint = endpoint.as_string::<i32>();
    let value = col("value");
    let value = value.as_primitive::<Float64Type>();
    let ts = col("ts");
    let ts = ts.as_primitive::<Int64Type>();
    let stale = col("stale");
    let stale = stale.as_boolean();
    let age = col("stale_age_ms");
    let age = age.as_primitive::<Int64Type>();
    (0..batch.num_rows())
        .map(|i| Row {
            endpoint: endpoint.value(i).to_string(),
            value: value.value(i),
            ts: ts.value(i),
            stale: stale.value(i),
            stale_age_ms: age.value(i),
        })
        .collect()
}

struct Harness {
    rows: Arc<Mutex<Vec<Row>>>,
    telemetry: Arc<ComponentTelemetry>,
}

impl Harness {
    fn rows(&self, endpoint: &str) -> Vec<Row> {
        self.rows
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .cloned()
            .collect()
    }

    fn health(&self, endpoint: &str) -> Option<(BreakerState, bool)> {
        self.telemetry
            .endpoints()
            .into_iter()
            .find(|(e, _)| e == endpoint)
            .map(|(_, h)| (h.breaker, h.missing))
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; endpoints {:?}",
                self.telemetry.endpoints()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_give_retries_breakers_stale_rows_and_missing_data() {
    let script: Shared = Arc::default();
    {
        let mut s = script.lock().unwrap();
        let modes = [
            ("healthy", Mode::Ok(1.0)),
            ("flaky", Mode::Ok(10.0)),
            ("hang", Mode::Hang),
            ("malformed", Mode::Malformed),
            ("truncated", Mode::Truncated),
            ("reset", Mode::Reset),
            ("slow", Mode::Delay(Duration::from_millis(30), 6.0)),
            ("transient", Mode::FailFirst(1, 7.0)),
            ("five-hundred", Mode::Fail),
        ];
        for (id, m) in modes {
            s.modes.insert(id.to_string(), m);
        }
    }
    let addr = start_server(script.clone()).await;
    let ids = [
        "healthy",
        "flaky",
        "hang",
        "malformed",
        "truncated",
        "reset",
        "slow",
        "transient",
        "five-hundred",
    ];
    let endpoints: Vec<String> = ids
        .iter()
        .map(|id| format!("{{ url = \"http://{addr}/{id}\", id = \"{id}\" }}"))
        .collect();
    let text = format!(
        r#"
endpoints = [{}]
interval_ms = 50
timeout_ms = 400
max_stale_ms = 500
fields = {{ ts = "timestamp", value = "float64" }}
retry = {{ max_attempts = 2, initial_backoff_ms = 5, max_backoff_ms = 20, budget_min_per_sec = 1000 }}
breaker = {{ failure_threshold = 3, cool_down_ms = 200 }}
batch = {{ rows = 64, linger_ms = 20 }}
"#,
        endpoints.join(", ")
    );
    let config: HttpPollConfig = toml::from_str(&text).unwrap();
    let schema = config.validate().unwrap();
    let telemetry = Arc::new(ComponentTelemetry::new(
        "poll",
        ComponentKind::Source,
        "http_poll",
    ));
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadLetter::open(&DeadLetterConfig {
        path: Some(dir.path().join("dead.jsonl")),
        ..DeadLetterConfig::default()
    })
    .unwrap();
    let component = ComponentContext::new(telemetry.clone(), dead.clone());
    let runtime = tokio::runtime::Handle::current();
    let source = config
        .build(
            schema.clone(),
            BuildContext {
                component: component.clone(),
                runtime: runtime.clone(),
            },
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let cx = SourceContext {
        component,
        out: Output::new(schema, vec![tx], telemetry.clone()),
        shutdown: shutdown.clone(),
        runtime,
        checkpoint: SourceCheckpoint::disabled(),
    };
    let running = tokio::spawn(source.run(cx));
    let rows: Arc<Mutex<Vec<Row>>> = Arc::default();
    let collector = {
        let rows = rows.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if let Message::Batch(b) = m {
                    rows.lock().unwrap().extend(rows_of(&b.data));
                }
            }
        })
    };
    let h = Harness { rows, telemetry };

    // Phase 1: `flaky` answers once, then fails with 500s.
    h.wait_for("a fresh reading from flaky", |h| {
        !h.rows("flaky").is_empty()
    })
    .await;
    script
        .lock()
        .unwrap()
        .modes
        .insert("flaky".into(), Mode::Fail);
    h.wait_for("flaky's breaker to open", |h| {
        matches!(
            h.health("flaky"),
            Some((BreakerState::Open | BreakerState::HalfOpen, _))
        )
    })
    .await;
    h.wait_for("stale readings of flaky", |h| {
        h.rows("flaky").iter().any(|r| r.stale)
    })
    .await;
    h.wait_for("flaky's data to be reported missing", |h| {
        h.health("flaky").is_some_and(|(_, missing)| missing)
    })
    .await;
    // Once missing, nothing more is emitted for it: while `healthy` gives ten more
    // readings, flaky gives none.
    let flaky_rows = h.rows("flaky").len();
    let healthy_rows = h.rows("healthy").len();
    h.wait_for("ten more healthy readings", |h| {
        h.rows("healthy").len() >= healthy_rows + 10
    })
    .await;
    assert_eq!(h.rows("flaky").len(), flaky_rows, "no rows while missing");

    let flaky = h.rows("flaky");
    let first = &flaky[0];
    assert!(!first.stale && first.stale_age_ms == 0 && first.value == 10.0);
    // Flaky may answer more than once before the script makes it fail (polls go on
    // while the test looks): stale rows repeat the last good one.
    let last_good = flaky.iter().rfind(|r| !r.stale).unwrap_or(first);
    for r in flaky.iter().filter(|r| r.stale) {
        assert_eq!(r.value, 10.0, "a stale row repeats the last good reading");
        assert_eq!(r.ts, last_good.ts, "with its own timestamp");
        assert!(
            r.stale_age_ms > 0 && r.stale_age_ms <= 500,
            "age within max_stale_ms: {r:?}"
        );
    }
    let ages: Vec<i64> = flaky
        .iter()
        .filter(|r| r.stale)
        .map(|r| r.stale_age_ms)
        .collect();
    assert!(ages.windows(2).all(|w| w[0] <= w[1]), "ages grow: {ages:?}");

    // Endpoints that never gave a good reading: no rows at all, data missing, breaker
    // not closed.
    for id in ["hang", "malformed", "truncated", "reset", "five-hundred"] {
        h.wait_for("the missing signal and an open breaker", |h| {
            h.health(id)
                .is_some_and(|(state, missing)| missing && state != BreakerState::Closed)
        })
        .await;
        assert!(h.rows(id).is_empty(), "{id} emitted rows");
    }
    // Healthy, slow-but-in-time, and recovered-by-retry endpoints: fresh rows only.
    h.wait_for("slow and transient readings", |h| {
        !h.rows("slow").is_empty() && !h.rows("transient").is_empty()
    })
    .await;
    for (id, v) in [("healthy", 1.0), ("slow", 6.0), ("transient", 7.0)] {
        let rows = h.rows(id);
        assert!(
            rows.iter()
                .all(|r| !r.stale && r.stale_age_ms == 0 && r.value == v),
            "{id}"
        );
        assert_eq!(
            h.health(id),
            None,
            "{id} never changed breaker state nor went missing"
        );
    }
    // The breaker spares a hanging endpoint: it gets far fewer requests than a healthy
    // one polled at the same interval.
    {
        let s = script.lock().unwrap();
        let (hang, healthy) = (s.requests["hang"], s.requests["healthy"]);
        assert!(
            hang * 3 < healthy,
            "hang {hang} requests, healthy {healthy}"
        );
    }
    // The malformed body went to the dead-letter output, with the reason.
    assert!(h.telemetry.snapshot().dead_lettered > 0);
    dead.flush().unwrap();
    let dead_text = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    assert!(
        dead_text.contains("/malformed") && dead_text.contains("nope"),
        "{dead_text}"
    );

    // Phase 2: flaky recovers; a probe closes the breaker; fresh rows again.
    script
        .lock()
        .unwrap()
        .modes
        .insert("flaky".into(), Mode::Ok(11.0));
    h.wait_for("a fresh reading of flaky after recovery", |h| {
        h.rows("flaky").iter().any(|r| r.value == 11.0)
    })
    .await;
    assert_eq!(h.health("flaky"), Some((BreakerState::Closed, false)));
    let after: Vec<Row> = h
        .rows("flaky")
        .into_iter()
        .skip_while(|r| r.value != 11.0)
        .collect();
    assert!(
        after.iter().all(|r| !r.stale),
        "fresh rows are never flagged stale"
    );

    let snap = h.telemetry.snapshot();
    let count = |m: &tidegauge_core::telemetry::MetricDesc| snap.metric(m.name).unwrap_or(0);
    assert!(count(&tidegauge_components::telemetry::STALE_EVENTS) >= 1);
    assert!(count(&tidegauge_components::telemetry::MISSING_READINGS) >= 1);
    // flaky went closed -> open -> half-open (-> open -> half-open ...) -> closed.
    assert!(snap.breaker_transitions >= 3, "{snap:?}");

    shutdown.cancel();
    running.await.unwrap().unwrap();
    collector.await.unwrap();
}
