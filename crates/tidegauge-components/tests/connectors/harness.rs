#![allow(dead_code)]
//! One compliance harness for every connector. A source or sink is built from pipeline

//! TOML through the registry and validation, exactly as `tidegauge run` builds it, then
//! driven here directly so the test controls its input, output and acknowledgements.
//!
//! Sinks ([`check_sink`]): events counted in and out; a batch is acknowledged only once
//! it can be read back from the server; everything fed before the input closes is there
//! after the sink returns (flush on shutdown). Sources ([`check_source`]): events counted;
//! a bad payload is dead-lettered with its reason and origin; what was decoded but not
//! yet sent goes out on shutdown; messages whose batches were not acknowledged are
//! delivered again by the next run, acknowledged ones are not.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use tidegauge_core::ack::{Ack, AckReceiver, Finalizers, ack_channel};
use tidegauge_core::checkpoint::{CheckpointConfig, CheckpointStore, SourceCheckpoint};
use tidegauge_core::component::{Message, SinkContext, SourceContext};
use tidegauge_core::dead_letter::{DeadLetter, DeadLetterConfig};
use tidegauge_core::registry::{AnyConfig, ComponentKind};
use tidegauge_core::telemetry::{ComponentTelemetry, TelemetrySnapshot};
use tidegauge_core::{Batch, BuildContext, ComponentContext, Output, SinkInput};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One event as the tests see it: (sensor_id, ts, value).
pub type Event = (String, i64, f64);

/// How long a test waits for something that should happen promptly before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The address of a test server from the environment or `target/services/env` (written
/// by `scripts/services start`). Without it the test fails, naming the command to run;
/// with `TIDEGAUGE_TEST_SERVERS=optional` it is skipped with a message instead.
pub fn server(var: &str) -> Option<String> {
    if let Ok(v) = std::env::var(var) {
        return Some(v);
    }
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/services/env");
    if let Ok(text) = std::fs::read_to_string(&file) {
        for line in text.lines() {
            let line = line.trim_start_matches("export ");
            if let Some((k, v)) = line.split_once('=')
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
    panic!(
        "{var} is not set: start the test servers with `scripts/services start` (or run \
         `scripts/test`, which does), or set TIDEGAUGE_TEST_SERVERS=optional to skip"
    );
}

/// A unique name for topics, tables, groups, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Test events `from..to`: sensor `s-{i % 7}`, ts `1_700_000_000_000 + i`, value `i / 4`.
pub fn events(from: usize, to: usize) -> Vec<Event> {
    (from..to)
        .map(|i| {
            (
                format!("s-{}", i % 7),
                1_700_000_000_000 + i as i64,
                i as f64 / 4.0,
            )
        })
        .collect()
}

/// Each sensor's timestamps in the order of `events`: equal for two lists when both hold
/// the same events with each sensor's in the same order.
pub fn per_sensor(events: &[Event]) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut m: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for e in events {
        m.entry(e.0.clone()).or_default().push(e.1);
    }
    m
}

/// An event as the JSON payload a source reads.
pub fn json(e: &Event) -> String {
    format!(
        "{{\"sensor_id\":\"{}\",\"ts\":{},\"value\":{}}}",
        e.0, e.1, e.2
    )
}

/// The schema of the default fields (`sensor_id`, `ts`, `value`).
pub fn schema() -> SchemaRef {
    tidegauge_components::codec::schema_for(&tidegauge_components::codec::default_fields(), &[])
}

/// `events` as one record batch of [`schema`].
pub fn batch_of(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| &e.0))),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.1))),
            Arc::new(Float64Array::from_iter_values(events.iter().map(|e| e.2))),
        ],
    )
    .expect("columns match the schema")
}

/// The events of batches with the default fields.
pub fn rows(batches: &[RecordBatch]) -> Vec<Event> {
    let mut out = Vec::new();
    for b in batches {
        let s = b.column_by_name("sensor_id").unwrap().as_string::<i32>();
        let t = b.column_by_name("ts").unwrap().as_primitive::<Int64Type>();
        let v = b
            .column_by_name("value")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push((s.value(i).to_string(), t.value(i), v.value(i)));
        }
    }
    out
}

/// Sorted by timestamp (events are unique by it).
pub fn sorted(mut e: Vec<Event>) -> Vec<Event> {
    e.sort_by_key(|e| e.1);
    e
}

/// The world a component runs in: counters and a dead-letter file.
pub struct Harness {
    pub dir: tempfile::TempDir,
    dead_letter_path: PathBuf,
    dead_letter: DeadLetter,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dead_letter_path = dir.path().join("dead.jsonl");
        let dead_letter = DeadLetter::open(&DeadLetterConfig {
            path: Some(dead_letter_path.clone()),
            max_raw_bytes: 1024,
        })
        .unwrap();
        Harness {
            dir,
            dead_letter_path,
            dead_letter,
        }
    }

    fn context(&self, id: &str, kind: ComponentKind, type_name: &'static str) -> ComponentContext {
        ComponentContext::new(
            Arc::new(ComponentTelemetry::new(id, kind, type_name)),
            self.dead_letter.clone(),
        )
    }

    /// Every dead-lettered record so far.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        self.dead_letter.flush().unwrap();
        std::fs::read_to_string(&self.dead_letter_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// As [`Harness::source`], for a source that keeps its own position (a file): each
    /// [`SourceUnderTest::start`] resumes from what the previous instance committed as
    /// acknowledged, as a reload of a running pipeline does (one checkpoint store, its
    /// positions committed at once).
    pub fn source_with_positions(&self, body: &str) -> SourceUnderTest {
        let store = CheckpointStore::open(&CheckpointConfig {
            dir: self.dir.path().join("positions"),
            interval_ms: 60_000,
            commit_interval_ms: 1,
        })
        .expect("checkpoint store");
        SourceUnderTest {
            positions: Some(std::sync::Mutex::new(store)),
            ..self.source(body)
        }
    }

    /// A source from the body of its `[sources.under_test]` table, validated as part of a
    /// pipeline.
    pub fn source(&self, body: &str) -> SourceUnderTest {
        let text = format!(
            "[sources.under_test]\n{body}\n\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"under_test\"]\n"
        );
        let pipeline = tidegauge_core::topology::load(&text, &|_| None)
            .unwrap_or_else(|e| panic!("invalid source config: {e:?}"));
        let node = pipeline
            .nodes
            .into_iter()
            .find(|n| n.id == "under_test")
            .unwrap();
        let AnyConfig::Source(config) = node.config else {
            panic!("not a source")
        };
        SourceUnderTest {
            config: Arc::from(config),
            schema: node.output_schema.unwrap(),
            type_name: node.type_name,
            component: self.context("under_test", ComponentKind::Source, node.type_name),
            positions: None,
        }
    }

    /// A sink from the body of its `[sinks.under_test]` table, fed events with the default
    /// fields.
    pub fn sink(&self, body: &str) -> SinkUnderTest {
        let text = format!(
            "[sources.in]\ntype = \"stdin\"\n\n[sinks.under_test]\ninputs = [\"in\"]\n{body}\n"
        );
        let pipeline = tidegauge_core::topology::load(&text, &|_| None)
            .unwrap_or_else(|e| panic!("invalid sink config: {e:?}"));
        let node = pipeline
            .nodes
            .into_iter()
            .find(|n| n.id == "under_test")
            .unwrap();
        let AnyConfig::Sink(config) = node.config else {
            panic!("not a sink")
        };
        SinkUnderTest {
            config,
            schema: node.input_schema.unwrap(),
            component: self.context("under_test", ComponentKind::Sink, node.type_name),
        }
    }
}

/// A built-from-config source; each [`SourceUnderTest::start`] runs a fresh instance with
/// the same settings (a restart).
pub struct SourceUnderTest {
    config: Arc<dyn tidegauge_core::registry::ErasedSourceConfig>,
    schema: SchemaRef,
    #[allow(dead_code)]
    type_name: &'static str,
    pub component: ComponentContext,
    /// Where a source that keeps its own position commits it (see
    /// [`Harness::source_with_positions`]).
    positions: Option<std::sync::Mutex<CheckpointStore>>,
}

impl SourceUnderTest {
    pub fn telemetry(&self) -> TelemetrySnapshot {
        self.component.telemetry().snapshot()
    }

    pub async fn start(&self) -> RunningSource {
        let cx = BuildContext {
            component: self.component.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let source = self
            .config
            .build(self.schema.clone(), cx)
            .await
            .unwrap_or_else(|e| panic!("source build failed: {e}"));
        let (tx, rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let cx = SourceContext {
            component: self.component.clone(),
            out: Output::new(
                self.schema.clone(),
                vec![tx],
                self.component.telemetry().clone(),
            ),
            shutdown: shutdown.clone(),
            runtime: tokio::runtime::Handle::current(),
            checkpoint: match &self.positions {
                Some(store) => store
                    .lock()
                    .unwrap()
                    .takeover_handle("under_test")
                    .expect("committed position readable"),
                None => SourceCheckpoint::disabled(),
            },
        };
        let handle = tokio::spawn(source.run(cx));
        RunningSource {
            rx,
            shutdown,
            handle: Some(handle),
            held: Vec::new(),
        }
    }
}

/// The next batch on an edge (checkpoint barriers are passed over), `None` once closed.
async fn next_batch(rx: &mut mpsc::Receiver<Message>) -> Option<Batch> {
    loop {
        match rx.recv().await? {
            Message::Batch(b) => return Some(b),
            Message::Barrier(_) => {}
        }
    }
}

pub struct RunningSource {
    rx: mpsc::Receiver<Message>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), tidegauge_core::ComponentError>>>,
    /// Finalizers of received batches not yet acknowledged.
    pub held: Vec<Finalizers>,
}

impl RunningSource {
    /// Receives batches until `n` events have arrived; keeps their finalizers in `held`.
    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut got = Vec::new();
        while got.len() < n {
            let b = tokio::time::timeout(PATIENCE, next_batch(&mut self.rx))
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} events arrived", got.len()))
                .expect("source stopped early");
            got.extend(rows(&[b.data]));
            self.held.push(b.finalizers);
        }
        got
    }

    /// Receives batches until every event of `want` has arrived (at-least-once: some
    /// may come twice); returns the distinct events received.
    pub async fn take_covering(&mut self, want: &[Event]) -> Vec<Event> {
        let mut got: Vec<Event> = Vec::new();
        let missing = |got: &[Event]| want.iter().filter(|e| !got.contains(e)).count();
        while missing(&got) > 0 {
            let b = tokio::time::timeout(PATIENCE, next_batch(&mut self.rx))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {} events never arrived again",
                        missing(&got),
                        want.len()
                    )
                })
                .expect("source stopped early");
            for e in rows(&[b.data]) {
                if !got.contains(&e) {
                    got.push(e);
                }
            }
            self.held.push(b.finalizers);
        }
        got
    }

    /// Polls until the source delivers what is published from now on (its subscription
    /// is in place), instead of sleeping for it: each attempt publishes one probe with
    /// `probe(i)` (an event with `ts` = i, where the source reads it) and waits briefly
    /// for a batch. Once a probe has arrived, the later ones (published after it, so
    /// after the subscription, and bound to arrive) are taken too, so that none mixes
    /// with what the test publishes next. The probes are acknowledged.
    pub async fn until_flowing<F: std::future::Future<Output = ()>>(
        &mut self,
        mut probe: impl FnMut(i64) -> F,
    ) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut published = 0i64;
        let mut newest: Option<i64> = None;
        while newest != Some(published - 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the source never delivered a probe ({published} published)"
            );
            if newest.is_none() {
                probe(published).await;
                published += 1;
            }
            let wait = Duration::from_millis(100);
            if let Ok(b) = tokio::time::timeout(wait, next_batch(&mut self.rx)).await {
                let b = b.expect("source stopped early");
                newest = rows(std::slice::from_ref(&b.data))
                    .iter()
                    .map(|e| e.1)
                    .chain(newest)
                    .max();
                b.finalizers.release();
            }
        }
    }

    /// Acknowledges (as delivered) every batch received so far.
    pub fn ack_all(&mut self) {
        self.held.drain(..).for_each(Finalizers::release);
    }

    /// Reports every batch received so far as not delivered (a sink failed).
    pub fn fail_all(&mut self) {
        for f in self.held.drain(..) {
            f.fail();
        }
    }

    /// Requests shutdown and waits for the source to return; returns what it sent while
    /// shutting down, acknowledging those batches as they arrive (`ack`) or failing them.
    pub async fn stop(&mut self, ack: bool) -> Vec<Event> {
        self.shutdown.cancel();
        let mut tail = Vec::new();
        let handle = self.handle.take().expect("running");
        // Batches sent during shutdown must be taken, or the source would wait on a full
        // channel.
        let mut handle = std::pin::pin!(handle);
        loop {
            tokio::select! {
                r = &mut handle => {
                    r.expect("source task").expect("source returned an error");
                    break;
                }
                Some(b) = next_batch(&mut self.rx) => {
                    tail.extend(rows(&[b.data]));
                    if !ack {
                        b.finalizers.fail();
                    }
                }
            }
        }
        while let Ok(m) = self.rx.try_recv() {
            let Message::Batch(b) = m else { continue };
            tail.extend(rows(&[b.data]));
            if !ack {
                b.finalizers.fail();
            }
        }
        tail
    }
}

/// A built-from-config sink.
pub struct SinkUnderTest {
    config: Box<dyn tidegauge_core::registry::ErasedSinkConfig>,
    schema: SchemaRef,
    pub component: ComponentContext,
}

impl SinkUnderTest {
    pub fn telemetry(&self) -> TelemetrySnapshot {
        self.component.telemetry().snapshot()
    }

    /// Builds and starts the sink; feed it through the returned handle.
    pub async fn start(&self) -> RunningSink {
        let cx = BuildContext {
            component: self.component.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let sink = self
            .config
            .build(self.schema.clone(), cx)
            .await
            .unwrap_or_else(|e| panic!("sink build failed: {e}"));
        let (tx, rx) = mpsc::channel(4);
        let input = SinkInput::new(rx, self.component.telemetry().clone());
        let cx = SinkContext {
            component: self.component.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let handle = tokio::spawn(sink.run(input, cx));
        let (ack_tx, acks) = ack_channel();
        RunningSink {
            tx: Some(tx),
            handle,
            ack_tx,
            acks,
            next_id: 0,
        }
    }
}

pub struct RunningSink {
    tx: Option<mpsc::Sender<Message>>,
    handle: JoinHandle<Result<(), tidegauge_core::ComponentError>>,
    ack_tx: tidegauge_core::ack::AckSender,
    pub acks: AckReceiver,
    next_id: u64,
}

impl RunningSink {
    /// Sends `events` as one batch with an acknowledgement token; returns its id.
    pub async fn send(&mut self, events: &[Event]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let batch =
            Batch::with_finalizers(batch_of(events), Finalizers::one(self.ack_tx.token(id)));
        self.tx
            .as_ref()
            .expect("input open")
            .send(Message::Batch(batch))
            .await
            .expect("sink is running");
        id
    }

    /// Waits for the next acknowledgement.
    pub async fn next_ack(&mut self) -> Ack {
        tokio::time::timeout(PATIENCE, self.acks.recv())
            .await
            .expect("an acknowledgement in time")
            .expect("ack channel open")
    }

    /// Closes the input and waits for the sink to flush and return.
    pub async fn finish(mut self) -> (Result<(), tidegauge_core::ComponentError>, Vec<Ack>) {
        self.tx = None;
        let r = tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("sink finished in time")
            .expect("sink task");
        drop(self.ack_tx);
        let mut acks = Vec::new();
        while let Ok(a) = self.acks.try_recv() {
            acks.push(a);
        }
        (r, acks)
    }
}

/// Reads back, from the server, every event a sink wrote so far. The argument is how many
/// events are expected: servers that pass messages on asynchronously (a broker to its
/// subscribers) may wait for that many; stores read at once.
pub type ReadBack<'a> = &'a dyn Fn(usize) -> futures_util::future::BoxFuture<'a, Vec<Event>>;

/// Runs `sink` over `events` in two batches (600 first, then the rest) and checks that
/// it ended without error, acknowledged both as delivered and counted every event out.
pub async fn deliver_in_two_batches(sink: &SinkUnderTest, events: &[Event]) {
    let mut running = sink.start().await;
    running.send(&events[..600]).await;
    running.send(&events[600..]).await;
    let (result, acks) = running.finish().await;
    result.expect("sink finished without error");
    assert!(acks.iter().all(|a| a.delivered), "{acks:?}");
    assert_eq!(sink.telemetry().events_out, events.len() as u64);
}

/// The sink compliance checks. `read_back` returns what the server holds.
pub async fn check_sink(sink: &SinkUnderTest, read_back: ReadBack<'_>) {
    let first = events(0, 50);
    let rest: Vec<Vec<Event>> = vec![events(50, 300), events(300, 301), events(301, 1000)];
    let mut running = sink.start().await;

    // Acknowledged means durable: once the first batch's ack arrives, it can be read back.
    let id = running.send(&first).await;
    let ack = running.next_ack().await;
    assert_eq!(
        ack,
        Ack {
            id,
            delivered: true
        }
    );
    let stored: BTreeSet<i64> = read_back(first.len()).await.iter().map(|e| e.1).collect();
    for e in &first {
        assert!(
            stored.contains(&e.1),
            "batch acknowledged before event {e:?} was durable"
        );
    }

    // Flush on shutdown: everything fed before the input closes is delivered.
    for b in &rest {
        running.send(b).await;
    }
    let (result, acks) = running.finish().await;
    result.expect("sink finished without error");
    assert_eq!(acks.len(), rest.len(), "every batch acknowledged: {acks:?}");
    assert!(acks.iter().all(|a| a.delivered), "{acks:?}");
    let all = events(0, 1000);
    let stored = sorted(read_back(1000).await);
    let mut dedup = stored.clone();
    dedup.dedup();
    assert_eq!(dedup, all, "the server holds exactly the events sent");

    // Telemetry: events in and out counted.
    let t = sink.telemetry();
    assert_eq!(t.events_in, 1000, "{t:?}");
    assert_eq!(t.events_out, 1000, "{t:?}");
    assert!(t.bytes_out > 0, "{t:?}");
}

/// Publishes raw payloads to the source's server.
pub type Publish<'a> = &'a dyn Fn(Vec<Vec<u8>>) -> futures_util::future::BoxFuture<'a, ()>;

/// The source compliance checks. `publish` sends payloads where the source reads;
/// `origin` is a text every dead letter's location must contain (topic, subject).
pub async fn check_source(
    h: &Harness,
    source: &SourceUnderTest,
    publish: Publish<'_>,
    origin: &str,
) {
    let mut run = source.start().await;
    // Good events, with one bad payload in the middle.
    let first = events(0, 20);
    let mut payloads: Vec<Vec<u8>> = first.iter().map(|e| json(e).into_bytes()).collect();
    payloads.insert(
        10,
        b"{\"sensor_id\": \"s-x\", \"ts\": \"not a time\", \"value\": 1}".to_vec(),
    );
    payloads.insert(11, b"not json at all".to_vec());
    publish(payloads).await;
    let got = run.take(first.len()).await;
    assert_eq!(sorted(got), first);

    // Bad payloads: dead-lettered with reason and origin.
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d["component"], "under_test");
        let loc = d["location"].as_str().unwrap();
        assert!(loc.contains(origin), "location {loc} names {origin}");
        assert!(!d["reason"].as_str().unwrap().is_empty());
    }
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("ts"),
        "{dead:?}"
    );
    assert_eq!(dead[1]["raw"], "not json at all");

    // Telemetry: decoded events in, sent events out, dead letters counted. A source
    // counts a batch out once its send returns, which may be just after the batch was
    // received here: give the counter a moment.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut t = source.telemetry();
    while t.events_out < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        t = source.telemetry();
    }
    assert_eq!(
        (t.events_in, t.events_out, t.dead_lettered),
        (20, 20, 2),
        "{t:?}"
    );

    // Acks: the sinks report these batches as not delivered, so the broker must not
    // consider them consumed: a restart delivers the same events again.
    run.fail_all();
    run.stop(false).await;
    let mut run = source.start().await;
    // At least once: a broker may redeliver one of them twice (JetStream does when its
    // ack wait runs out during the restart), so wait until each has come again.
    let again = run.take_covering(&first).await;
    assert_eq!(
        sorted(again),
        first,
        "unacknowledged events are delivered again"
    );
    run.ack_all();

    // Flush on shutdown: events decoded but still lingering in an open batch are sent
    // when shutdown is requested.
    let lingering = events(20, 25);
    let bytes_before = source.telemetry().bytes_in;
    publish(lingering.iter().map(|e| json(e).into_bytes()).collect()).await;
    let want: u64 = lingering.iter().map(|e| json(e).len() as u64).sum();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while source.telemetry().bytes_in < bytes_before + want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lingering events never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tail = run.stop(true).await;
    // Batches may also have left before shutdown if the linger time passed.
    tail.retain(|e| e.1 >= lingering[0].1);
    assert_eq!(sorted(tail), lingering, "lingering events sent on shutdown");
    run.ack_all();

    // Acknowledged events are not delivered again: after a restart, only a new event
    // arrives.
    let mut run = source.start().await;
    let sentinel = events(25, 26);
    let bytes_before = source.telemetry().bytes_in;
    publish(vec![json(&sentinel[0]).into_bytes()]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while source.telemetry().bytes_in < bytes_before + json(&sentinel[0]).len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sentinel never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tail = run.stop(true).await;
    assert_eq!(tail, sentinel, "acknowledged events were delivered again");
}

/// Batch settings for sources under [`check_source`]: 20 rows fill a batch; a partial
/// batch leaves only at shutdown.
pub const SOURCE_BATCH: &str = "batch = { rows = 20, linger_ms = 600000 }";
