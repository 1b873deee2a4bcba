//! The traits a component author implements, and the contexts the runtime hands them.
//!
//! Authors write a config struct (serde + `JsonSchema`, `deny_unknown_fields`, doc comments
//! as user documentation) and implement one of the typed traits [`SourceConfig`],
//! [`TransformConfig`], [`SinkConfig`] for it; `validate` is pure and returns every problem,
//! `build` does the I/O. The object-safe runtime traits [`Source`], [`Transform`] and
//! [`Sink`] are what the topology stores and runs. Registration is one line:
//! `tidegauge_core::register_transform!(ZScoreConfig);`.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::BoxFuture;
use crate::ack::{AckSender, Finalizers};
use crate::batch::Batch;
use crate::checkpoint::{Report, ReportPort, SourceCheckpoint};
use crate::dead_letter::DeadLetter;
use crate::error::{BuildError, ComponentError, ConfigError};
use crate::telemetry::{
    BatchProcessed, ComponentTelemetry, EventsReceived, EventsSent, InternalEvent,
    RecordDeadLettered, Waited,
};

/// What every component gets at build time.
#[derive(Clone)]
pub struct BuildContext {
    /// The component's handle on telemetry and the dead-letter output.
    pub component: ComponentContext,
    /// The runtime the pipeline runs on.
    pub runtime: tokio::runtime::Handle,
}

/// A component's identity, counters and dead-letter output.
#[derive(Clone)]
pub struct ComponentContext {
    telemetry: Arc<ComponentTelemetry>,
    dead_letter: DeadLetter,
}

impl ComponentContext {
    /// A context for a component with these counters, writing dead letters to `dead_letter`.
    pub fn new(telemetry: Arc<ComponentTelemetry>, dead_letter: DeadLetter) -> Self {
        ComponentContext {
            telemetry,
            dead_letter,
        }
    }

    /// The component id as written in the pipeline file.
    pub fn id(&self) -> &str {
        &self.telemetry.id
    }

    /// The component's counters.
    pub fn telemetry(&self) -> &Arc<ComponentTelemetry> {
        &self.telemetry
    }

    /// Records an internal event.
    pub fn emit(&self, event: impl InternalEvent) {
        self.telemetry.emit(event);
    }

    /// Sends a record that cannot be processed to the dead-letter output and counts it.
    /// `location` says where it came from (`file.jsonl:12`), `raw` is the offending input.
    pub fn dead_letter(&self, location: &str, reason: &str, raw: &[u8]) {
        self.telemetry.emit(RecordDeadLettered { location, reason });
        self.dead_letter
            .write(&self.telemetry.id, location, reason, raw);
    }
}

/// Why a batch could not be sent downstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Every downstream component has stopped (after failing); stop producing.
    #[error("all downstream components have stopped")]
    Closed,
    /// The batch's schema is not the one declared for this output: a bug in the component.
    #[error("contract violation: {0}")]
    Contract(String),
}

impl From<SendError> for ComponentError {
    fn from(e: SendError) -> Self {
        ComponentError::new(e.to_string())
    }
}

/// What travels along an edge: batches, and the checkpoint barriers between them.
#[derive(Debug)]
pub enum Message {
    /// Events.
    Batch(Batch),
    /// Checkpoint barrier `n`: everything sent before it belongs to checkpoint `n`.
    Barrier(u64),
}

/// Barrier requests a source's output serves, and where it reports them.
pub(crate) struct BarrierPort {
    requests: mpsc::UnboundedReceiver<u64>,
    reports: ReportPort,
    position: Option<serde_json::Value>,
}

impl BarrierPort {
    pub(crate) fn new(requests: mpsc::UnboundedReceiver<u64>, reports: ReportPort) -> Self {
        BarrierPort {
            requests,
            reports,
            position: None,
        }
    }
}

/// The downstream edges of a component's output. Shared between the running component
/// and the runner, so a running pipeline can be rewired (hot reload): the runner swaps
/// the list, and an edge nobody lists any more closes once the sends in flight are done.
#[derive(Clone, Default)]
pub struct Fanout(Arc<Mutex<FanoutInner>>);

#[derive(Default)]
struct FanoutInner {
    targets: Arc<Vec<mpsc::Sender<Message>>>,
    /// Set when the output is dropped: its component has finished, nothing more is sent.
    closed: bool,
}

impl Fanout {
    /// A fan-out to `targets`.
    pub fn new(targets: Vec<mpsc::Sender<Message>>) -> Self {
        Fanout(Arc::new(Mutex::new(FanoutInner {
            targets: Arc::new(targets),
            closed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FanoutInner> {
        // The list is replaced in one assignment: a panicking holder cannot leave it torn.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The edges batches go to now.
    pub fn current(&self) -> Arc<Vec<mpsc::Sender<Message>>> {
        self.lock().targets.clone()
    }

    /// Replaces the list of edges; `false` (and nothing kept) once the output is gone.
    pub fn replace(&self, targets: Vec<mpsc::Sender<Message>>) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.targets = Arc::new(targets);
        true
    }

    fn remove(&self, gone: &[mpsc::Sender<Message>]) -> usize {
        let mut inner = self.lock();
        let kept: Vec<_> = inner
            .targets
            .iter()
            .filter(|t| !gone.iter().any(|g| g.same_channel(t)))
            .cloned()
            .collect();
        let n = kept.len();
        inner.targets = Arc::new(kept);
        n
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.targets = Arc::new(Vec::new());
    }
}

/// The outgoing edges of a component: every batch goes to each downstream component.
pub struct Output {
    schema: SchemaRef,
    fanout: Fanout,
    telemetry: Arc<ComponentTelemetry>,
    barriers: Option<BarrierPort>,
}

impl Output {
    /// An output with the declared `schema`, sending to `targets`.
    pub fn new(
        schema: SchemaRef,
        targets: Vec<mpsc::Sender<Message>>,
        telemetry: Arc<ComponentTelemetry>,
    ) -> Self {
        Self::with_fanout(schema, Fanout::new(targets), telemetry)
    }

    /// An output sending to the edges of `fanout`, which the runner may rewire.
    pub fn with_fanout(
        schema: SchemaRef,
        fanout: Fanout,
        telemetry: Arc<ComponentTelemetry>,
    ) -> Self {
        Output {
            schema,
            fanout,
            telemetry,
            barriers: None,
        }
    }

    /// A source's output that sends checkpoint barriers when asked.
    pub(crate) fn with_barriers(mut self, port: BarrierPort) -> Self {
        self.barriers = Some(port);
        self
    }

    /// The schema every batch sent here must have.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn check(&self, batch: &Batch) -> Result<(), SendError> {
        let got = batch.data.schema_ref();
        if Arc::ptr_eq(got, &self.schema) || got.fields() == self.schema.fields() {
            Ok(())
        } else {
            Err(SendError::Contract(format!(
                "component `{}` emitted a batch with schema {} but declared {}",
                self.telemetry.id,
                crate::schema::describe(got),
                crate::schema::describe(&self.schema)
            )))
        }
    }

    /// Barriers asked for since the last call, reported with the position reached.
    fn take_barriers(&mut self) -> Vec<u64> {
        let Some(port) = &mut self.barriers else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        while let Ok(id) = port.requests.try_recv() {
            port.reports.send(Report::SourceBarrier {
                node: port.reports.node,
                id,
                position: port.position.clone(),
            });
            ids.push(id);
        }
        ids
    }

    /// Sends a batch to every downstream component, waiting while any of them is full
    /// (backpressure). Empty batches are not sent (their finalizers are released).
    pub async fn send(&mut self, batch: Batch) -> Result<(), SendError> {
        self.serve_barriers().await?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.check(&batch)?;
        let rows = batch.num_rows() as u64;
        let targets = self.fanout.current();
        let started = self.telemetry.profiling().then(Instant::now);
        let last = targets.len().saturating_sub(1);
        let mut closed = Vec::new();
        let mut batch = Some(batch);
        for (i, tx) in targets.iter().enumerate() {
            let b = if i == last {
                batch.take().ok_or(SendError::Closed)?
            } else {
                batch.clone().ok_or(SendError::Closed)?
            };
            if tx.send(Message::Batch(b)).await.is_err() {
                closed.push(tx.clone());
            }
        }
        self.finish_send(rows, started, closed)
    }

    /// Like [`Output::send`], then records `position` as where the source stands once
    /// this batch is sent: a checkpoint barrier sent after it reports that position, and
    /// a restart from that checkpoint resumes there.
    pub async fn send_at(
        &mut self,
        batch: Batch,
        position: serde_json::Value,
    ) -> Result<(), SendError> {
        self.send(batch).await?;
        self.set_position(position);
        Ok(())
    }

    /// Records where the source stands when nothing more is sent (e.g. after lines that
    /// were all dead-lettered).
    pub fn set_position(&mut self, position: serde_json::Value) {
        if let Some(port) = &mut self.barriers {
            port.position = Some(position);
        }
    }

    /// Sends any checkpoint barrier asked for. Sources call this while idle (waiting for
    /// input) so checkpoints complete; sending a batch does it too.
    pub async fn serve_barriers(&mut self) -> Result<(), SendError> {
        for id in self.take_barriers() {
            self.send_barrier(id).await?;
        }
        Ok(())
    }

    /// Like [`Output::serve_barriers`], from a thread outside the async runtime.
    pub fn blocking_serve_barriers(&mut self) -> Result<(), SendError> {
        for id in self.take_barriers() {
            self.blocking_send_barrier(id)?;
        }
        Ok(())
    }

    /// Sends barrier `id` downstream (a transform forwarding it).
    pub(crate) async fn send_barrier(&mut self, id: u64) -> Result<(), SendError> {
        let mut closed = Vec::new();
        for tx in self.fanout.current().iter() {
            if tx.send(Message::Barrier(id)).await.is_err() {
                closed.push(tx.clone());
            }
        }
        self.drop_closed(closed)
    }

    /// Sends barrier `id` downstream from a thread outside the async runtime.
    pub(crate) fn blocking_send_barrier(&mut self, id: u64) -> Result<(), SendError> {
        let mut closed = Vec::new();
        for tx in self.fanout.current().iter() {
            if tx.blocking_send(Message::Barrier(id)).is_err() {
                closed.push(tx.clone());
            }
        }
        self.drop_closed(closed)
    }

    /// Like [`Output::send`], for components running on their own thread.
    pub fn blocking_send(&mut self, batch: Batch) -> Result<(), SendError> {
        self.blocking_serve_barriers()?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.check(&batch)?;
        let rows = batch.num_rows() as u64;
        let targets = self.fanout.current();
        let started = self.telemetry.profiling().then(Instant::now);
        let last = targets.len().saturating_sub(1);
        let mut closed = Vec::new();
        let mut batch = Some(batch);
        for (i, tx) in targets.iter().enumerate() {
            let b = if i == last {
                batch.take().ok_or(SendError::Closed)?
            } else {
                batch.clone().ok_or(SendError::Closed)?
            };
            if tx.blocking_send(Message::Batch(b)).is_err() {
                closed.push(tx.clone());
            }
        }
        self.finish_send(rows, started, closed)
    }

    /// Like [`Output::send_at`], for components running on their own thread.
    pub fn blocking_send_at(
        &mut self,
        batch: Batch,
        position: serde_json::Value,
    ) -> Result<(), SendError> {
        self.blocking_send(batch)?;
        self.set_position(position);
        Ok(())
    }

    fn drop_closed(&mut self, closed: Vec<mpsc::Sender<Message>>) -> Result<(), SendError> {
        let remaining = if closed.is_empty() {
            self.fanout.current().len()
        } else {
            self.fanout.remove(&closed)
        };
        if remaining == 0 {
            return Err(SendError::Closed);
        }
        Ok(())
    }

    fn finish_send(
        &mut self,
        rows: u64,
        started: Option<Instant>,
        closed: Vec<mpsc::Sender<Message>>,
    ) -> Result<(), SendError> {
        if let Some(t) = started {
            self.telemetry.emit(Waited {
                elapsed: t.elapsed(),
            });
        }
        self.drop_closed(closed)?;
        self.telemetry.emit(EventsSent { count: rows });
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Downstream edges close once every output feeding them is gone.
        self.fanout.close();
        // A source's output going away: everything it will ever send has been sent.
        if let Some(port) = self.barriers.take() {
            port.reports.send(Report::SourceFinal {
                node: port.reports.node,
                position: port.position,
            });
        }
    }
}

/// What waiting for the next batch with a deadline gave.
#[derive(Debug)]
pub enum Recv {
    /// A batch arrived.
    Batch(Batch),
    /// Nothing arrived in time; the input is still open.
    Idle,
    /// Every upstream component has finished: no more batches will come.
    Closed,
}

/// What [`SinkInput::next_event`] gave.
#[derive(Debug)]
pub enum Event {
    /// A batch arrived.
    Batch(Batch),
    /// Checkpoint barrier `n` has arrived on every open input (aligned): everything
    /// before it on every input has been handed out, nothing after it.
    Barrier(u64),
    /// Nothing arrived in time; the input is still open.
    Idle,
    /// Every upstream component has finished.
    Closed,
}

struct Port {
    rx: mpsc::Receiver<Message>,
    /// Delivered the barrier being aligned; not read until the others have too.
    blocked: bool,
    closed: bool,
}

/// Tags the batches a sink receives with the token of the current epoch (between two
/// barriers), so the coordinator learns when a sink has released all of them.
struct Epochs {
    acks: AckSender,
    current: Finalizers,
}

/// The incoming edges of a transform or sink (one channel per upstream component, read
/// in turn). Counts what it hands out; aligns checkpoint barriers.
///
/// When asked, measures the time from handing out a batch to the next request as the
/// batch's processing time, and (when profiling) the time spent waiting for input.
pub struct SinkInput {
    ports: Vec<Port>,
    cursor: usize,
    aligning: Option<u64>,
    epochs: Option<Epochs>,
    telemetry: Arc<ComponentTelemetry>,
    measure_latency: bool,
    handed_out: Option<Instant>,
    wait_started: Option<Instant>,
}

impl SinkInput {
    /// An input reading `rx`, counting into `telemetry`.
    pub fn new(rx: mpsc::Receiver<Message>, telemetry: Arc<ComponentTelemetry>) -> Self {
        SinkInput::from_edges(vec![rx], telemetry)
    }

    /// An input reading several edges.
    pub fn from_edges(
        edges: Vec<mpsc::Receiver<Message>>,
        telemetry: Arc<ComponentTelemetry>,
    ) -> Self {
        SinkInput {
            ports: edges
                .into_iter()
                .map(|rx| Port {
                    rx,
                    blocked: false,
                    closed: false,
                })
                .collect(),
            cursor: 0,
            aligning: None,
            epochs: None,
            telemetry,
            measure_latency: false,
            handed_out: None,
            wait_started: None,
        }
    }

    /// Records, for each batch, the time until the next one is asked for (what a sink
    /// spends writing it) as [`BatchProcessed`].
    pub fn measuring_latency(mut self) -> Self {
        self.measure_latency = true;
        self
    }

    fn before_wait(&mut self) {
        if !self.measure_latency && !self.telemetry.profiling() {
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.handed_out.take() {
            self.telemetry.emit(BatchProcessed {
                elapsed: now.saturating_duration_since(t),
            });
        }
        if self.telemetry.profiling() {
            self.wait_started = Some(now);
        }
    }

    /// A sink's input that tracks epochs for checkpoints: acknowledgements with the
    /// barrier id go to `acks`; the first epoch ends at barrier `first_id`.
    pub(crate) fn with_epochs(mut self, acks: AckSender, first_id: u64) -> Self {
        self.epochs = Some(Epochs {
            current: Finalizers::one(acks.token(first_id)),
            acks,
        });
        self
    }

    fn aligned(&self) -> bool {
        self.ports.iter().all(|p| p.closed || p.blocked)
    }

    fn release_alignment(&mut self) -> Option<u64> {
        let id = self.aligning.take()?;
        for p in &mut self.ports {
            p.blocked = false;
        }
        Some(id)
    }

    fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Event> {
        use std::task::Poll;
        let n = self.ports.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let port = &mut self.ports[i];
            if port.closed || port.blocked {
                continue;
            }
            match port.rx.poll_recv(cx) {
                Poll::Ready(Some(Message::Batch(b))) => {
                    self.cursor = (i + 1) % n;
                    return Poll::Ready(Event::Batch(b));
                }
                Poll::Ready(Some(Message::Barrier(id))) => {
                    port.blocked = true;
                    if self.aligning.is_some_and(|a| a != id) {
                        tracing::warn!(
                            component_id = %self.telemetry.id,
                            "barrier {id} arrived while aligning another"
                        );
                    }
                    self.aligning = Some(id);
                    if self.aligned()
                        && let Some(id) = self.release_alignment()
                    {
                        return Poll::Ready(Event::Barrier(id));
                    }
                }
                Poll::Ready(None) => {
                    port.closed = true;
                    if self.aligned()
                        && let Some(id) = self.release_alignment()
                    {
                        return Poll::Ready(Event::Barrier(id));
                    }
                }
                Poll::Pending => {}
            }
        }
        if self.ports.iter().all(|p| p.closed) {
            Poll::Ready(Event::Closed)
        } else {
            Poll::Pending
        }
    }

    /// Counts a batch; for sinks, tags it with the epoch token.
    fn hand_out(&mut self, event: Event) -> Event {
        let now = (self.measure_latency || self.wait_started.is_some()).then(Instant::now);
        if let (Some(start), Some(now)) = (self.wait_started.take(), now) {
            self.telemetry.emit(Waited {
                elapsed: now.saturating_duration_since(start),
            });
        }
        match event {
            Event::Batch(mut b) => {
                self.telemetry.emit(EventsReceived {
                    count: b.num_rows() as u64,
                });
                if self.measure_latency {
                    self.handed_out = now;
                }
                if let Some(e) = &self.epochs {
                    b.finalizers.merge(e.current.clone());
                }
                Event::Batch(b)
            }
            Event::Barrier(id) => {
                if let Some(e) = &mut self.epochs {
                    // Dropping the old epoch's token: once every batch of the epoch is
                    // released too, the coordinator hears `id`.
                    e.current = Finalizers::one(e.acks.token(id + 1));
                }
                Event::Barrier(id)
            }
            other => other,
        }
    }

    /// The next batch, barrier or the end of input.
    pub async fn next_event(&mut self) -> Event {
        self.before_wait();
        let e = std::future::poll_fn(|cx| self.poll_event(cx)).await;
        self.hand_out(e)
    }

    /// The next batch, barrier, the end of input, or [`Event::Idle`] after `wait`.
    pub async fn next_event_timeout(&mut self, wait: Duration) -> Event {
        self.before_wait();
        let e = match tokio::time::timeout(wait, std::future::poll_fn(|cx| self.poll_event(cx)))
            .await
        {
            Ok(e) => e,
            Err(_) => Event::Idle,
        };
        self.hand_out(e)
    }

    /// Like [`SinkInput::next_event`], from a thread outside the async runtime.
    pub fn blocking_next_event(&mut self) -> Event {
        self.before_wait();
        let e = block_on(std::future::poll_fn(|cx| self.poll_event(cx)));
        self.hand_out(e)
    }

    /// Like [`SinkInput::next_event_timeout`], from a thread outside the runtime.
    pub fn blocking_next_event_timeout(
        &mut self,
        runtime: &tokio::runtime::Handle,
        wait: Duration,
    ) -> Event {
        runtime.block_on(self.next_event_timeout(wait))
    }

    /// The next batch, or `None` once every upstream component has finished. Barriers
    /// are handled here (a sink need not know of them).
    pub async fn recv(&mut self) -> Option<Batch> {
        loop {
            match self.next_event().await {
                Event::Batch(b) => return Some(b),
                Event::Closed => return None,
                Event::Barrier(_) | Event::Idle => {}
            }
        }
    }

    /// The next batch, from a thread outside the async runtime.
    pub fn blocking_recv(&mut self) -> Option<Batch> {
        loop {
            match self.blocking_next_event() {
                Event::Batch(b) => return Some(b),
                Event::Closed => return None,
                Event::Barrier(_) | Event::Idle => {}
            }
        }
    }

    /// The next batch or [`Recv::Idle`] after `wait`, from a thread outside the runtime.
    pub fn blocking_recv_timeout(
        &mut self,
        runtime: &tokio::runtime::Handle,
        wait: Duration,
    ) -> Recv {
        runtime.block_on(self.recv_timeout(wait))
    }

    /// The next batch or [`Recv::Idle`] after `wait`.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event_timeout(left).await {
                Event::Batch(b) => return Recv::Batch(b),
                Event::Closed => return Recv::Closed,
                Event::Idle => return Recv::Idle,
                Event::Barrier(_) => {}
            }
        }
    }
}

/// Runs a future to completion on this thread (parking between wake-ups).
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => return v,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

/// What a running source gets.
pub struct SourceContext {
    /// Identity, counters, dead letters.
    pub component: ComponentContext,
    /// Where the source sends its batches.
    pub out: Output,
    /// Cancelled when the pipeline shuts down: stop reading, flush what is batched, return.
    pub shutdown: CancellationToken,
    /// The runtime, for sources that read on their own thread.
    pub runtime: tokio::runtime::Handle,
    /// Where to resume, and where to commit acknowledged positions.
    pub checkpoint: SourceCheckpoint,
}

/// A running source: produces batches until its input ends or shutdown is requested.
pub trait Source: Send + 'static {
    /// Runs to completion. Returning `Ok` at the end of finite input ends the pipeline
    /// once everything downstream has drained.
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>>;
}

/// A [`Source`] that is one async function: what most sources' `build` returns,
/// `Ok(source_fn(move |cx| source.run(cx)))`.
pub fn source_fn<F, Fut>(run: F) -> Box<dyn Source>
where
    F: FnOnce(SourceContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), ComponentError>> + Send + 'static,
{
    struct SourceFn<F>(F);
    impl<F, Fut> Source for SourceFn<F>
    where
        F: FnOnce(SourceContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ComponentError>> + Send + 'static,
    {
        fn run(
            self: Box<Self>,
            cx: SourceContext,
        ) -> BoxFuture<'static, Result<(), ComponentError>> {
            Box::pin((self.0)(cx))
        }
    }
    Box::new(SourceFn(run))
}

/// A [`Source`] that reads with blocking calls (files, the terminal, a generator), on a
/// thread of the runtime's blocking pool; `what` names it if that thread panics.
pub fn blocking_source_fn<F>(what: &'static str, run: F) -> Box<dyn Source>
where
    F: FnOnce(SourceContext) -> Result<(), ComponentError> + Send + 'static,
{
    source_fn(move |cx| async move {
        tokio::task::spawn_blocking(move || run(cx))
            .await
            .map_err(|e| ComponentError::new(format!("{what} stopped: {e}")))?
    })
}

/// What a transform gets while processing: where outputs go, and its component context.
pub struct TransformContext {
    component: ComponentContext,
    current: Finalizers,
    pending: Vec<(RecordBatch, Finalizers)>,
}

impl TransformContext {
    /// A context for the component.
    pub fn new(component: ComponentContext) -> Self {
        TransformContext {
            component,
            current: Finalizers::none(),
            pending: Vec::new(),
        }
    }

    /// Emits an output batch (with the transform's declared output schema). It carries the
    /// acknowledgement tokens of the input batch being processed.
    pub fn emit(&mut self, batch: RecordBatch) {
        let f = self.current.clone();
        self.pending.push((batch, f));
    }

    /// Emits a batch with explicit tokens: for transforms that hold data back (windows,
    /// pipelined workers) and emit it while processing a later batch.
    pub fn emit_with(&mut self, batch: RecordBatch, finalizers: Finalizers) {
        self.pending.push((batch, finalizers));
    }

    /// Takes the tokens of the input batch being processed, so they can travel with data
    /// emitted later through [`TransformContext::emit_with`]. Outputs emitted afterwards
    /// with [`TransformContext::emit`] for this batch carry none.
    pub fn take_finalizers(&mut self) -> Finalizers {
        std::mem::take(&mut self.current)
    }

    /// Sets the tokens of the input batch about to be processed (the runtime does this).
    pub fn set_finalizers(&mut self, finalizers: Finalizers) {
        self.current = finalizers;
    }

    /// The component's identity, counters and dead-letter output.
    pub fn component(&self) -> &ComponentContext {
        &self.component
    }

    /// Takes the batches emitted so far, each with its tokens.
    pub fn take_emitted(&mut self) -> std::vec::Drain<'_, (RecordBatch, Finalizers)> {
        self.pending.drain(..)
    }
}

/// A running transform. Runs on a thread of its own (CPU work never blocks the async
/// runtime); state lives in `self`.
pub trait Transform: Send + 'static {
    /// Handles one input batch, emitting zero or more output batches through `cx`.
    /// Row-level problems are dead-lettered through `cx`; an `Err` stops the pipeline.
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError>;

    /// Called once when the input has ended: emit whatever is held (open windows).
    fn flush(&mut self, _cx: &mut TransformContext) -> Result<(), ComponentError> {
        Ok(())
    }

    /// How often [`Transform::tick`] should run when no input arrives; `None` for never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Wall-clock timer, for transforms that act on silence (missing data, window timeouts).
    fn tick(&mut self, _now: SystemTime, _cx: &mut TransformContext) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Called at a checkpoint barrier, before [`Transform::checkpoint`]: finish work still
    /// in flight (a batch handed to worker threads) and emit its outputs, so that state
    /// and outputs reflect exactly the events received so far. Unlike `flush`, open
    /// windows stay open.
    fn before_checkpoint(&mut self, _cx: &mut TransformContext) -> Result<(), ComponentError> {
        Ok(())
    }

    /// The state to checkpoint: everything needed to resume where this instance stands
    /// (per-key detector state, open windows). `None` for stateless transforms.
    fn checkpoint(&self) -> Result<Option<Vec<u8>>, ComponentError> {
        Ok(None)
    }

    /// Restores what [`Transform::checkpoint`] produced; called before the first batch.
    fn restore(&mut self, _state: &[u8]) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Parameters that may be changed while running, with their current values.
    fn tunables(&self) -> Vec<Tunable> {
        Vec::new()
    }

    /// Changes a tunable parameter while running. The value is checked like config; on
    /// error nothing changes and the message says why.
    fn set_tunable(&mut self, name: &str, _value: &serde_json::Value) -> Result<(), String> {
        Err(format!("`{name}` cannot be changed while running"))
    }
}

/// A parameter that may be changed while a pipeline runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Tunable {
    /// Setting name, as in the config (`threshold`).
    pub name: String,
    /// Current value.
    pub value: serde_json::Value,
}

/// A running sink: consumes its input until it ends, then flushes and closes. It releases
/// each batch's finalizers only once the batch is durable (or marks them failed).
pub trait Sink: Send + 'static {
    /// Runs to completion.
    fn run(
        self: Box<Self>,
        input: SinkInput,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), ComponentError>>;
}

/// A [`Sink`] that is one async function: what most sinks' `build` returns,
/// `Ok(sink_fn(move |input, cx| sink.run(input, cx)))`.
pub fn sink_fn<F, Fut>(run: F) -> Box<dyn Sink>
where
    F: FnOnce(SinkInput, SinkContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), ComponentError>> + Send + 'static,
{
    struct SinkFn<F>(F);
    impl<F, Fut> Sink for SinkFn<F>
    where
        F: FnOnce(SinkInput, SinkContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ComponentError>> + Send + 'static,
    {
        fn run(
            self: Box<Self>,
            input: SinkInput,
            cx: SinkContext,
        ) -> BoxFuture<'static, Result<(), ComponentError>> {
            Box::pin((self.0)(input, cx))
        }
    }
    Box::new(SinkFn(run))
}

/// What a running sink gets.
pub struct SinkContext {
    /// Identity, counters, dead letters.
    pub component: ComponentContext,
    /// The runtime, for sinks that write on their own thread.
    pub runtime: tokio::runtime::Handle,
}

/// Typed configuration of a source. Implemented by the config struct.
pub trait SourceConfig: DeserializeOwned + JsonSchema + Debug + Send + Sync + 'static {
    /// The `type = "..."` name in pipeline files.
    const TYPE: &'static str;

    /// Checks the config (pure, no I/O) and returns the schema of the events it will emit,
    /// or every problem found (paths relative to the component).
    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>>;

    /// Builds the runtime source (opening files and connections).
    fn build(
        &self,
        schema: SchemaRef,
        cx: BuildContext,
    ) -> impl Future<Output = Result<Box<dyn Source>, BuildError>> + Send;
}

/// Typed configuration of a transform.
pub trait TransformConfig: DeserializeOwned + JsonSchema + Debug + Send + Sync + 'static {
    /// The `type = "..."` name in pipeline files.
    const TYPE: &'static str;

    /// Checks the config against the schema of its input (pure) and returns the schema of
    /// its output, or every problem found.
    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>>;

    /// Builds the runtime transform.
    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError>;
}

/// Typed configuration of a sink.
pub trait SinkConfig: DeserializeOwned + JsonSchema + Debug + Send + Sync + 'static {
    /// The `type = "..."` name in pipeline files.
    const TYPE: &'static str;

    /// Checks the config against the schema of its input (pure).
    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>>;

    /// Builds the runtime sink (creating files, connecting).
    fn build(
        &self,
        input: SchemaRef,
        cx: BuildContext,
    ) -> impl Future<Output = Result<Box<dyn Sink>, BuildError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ComponentKind;
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};

    fn batch(v: i64) -> Batch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        Batch::new(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap())
    }

    fn value(e: &Event) -> String {
        match e {
            Event::Batch(b) => {
                let v = b
                    .data
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                format!("{}", v.value(0))
            }
            Event::Barrier(id) => format!("barrier {id}"),
            Event::Idle => "idle".into(),
            Event::Closed => "closed".into(),
        }
    }

    fn telemetry() -> Arc<ComponentTelemetry> {
        Arc::new(ComponentTelemetry::new(
            "t",
            ComponentKind::Transform,
            "test",
        ))
    }

    #[tokio::test]
    async fn a_barrier_is_aligned_over_every_input() {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let mut input = SinkInput::from_edges(vec![a_rx, b_rx], telemetry());
        a_tx.send(Message::Batch(batch(1))).await.unwrap();
        a_tx.send(Message::Barrier(7)).await.unwrap();
        a_tx.send(Message::Batch(batch(2))).await.unwrap();
        b_tx.send(Message::Batch(batch(10))).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(value(&input.next_event().await));
        }
        seen.sort();
        assert_eq!(seen, vec!["1", "10"]);
        // Input a is blocked behind its barrier: `2` must not come before b's barrier.
        assert_eq!(
            value(&input.next_event_timeout(Duration::from_millis(20)).await),
            "idle"
        );
        b_tx.send(Message::Barrier(7)).await.unwrap();
        assert_eq!(value(&input.next_event().await), "barrier 7");
        assert_eq!(value(&input.next_event().await), "2");
        drop(a_tx);
        drop(b_tx);
        assert_eq!(value(&input.next_event().await), "closed");
    }

    #[tokio::test]
    async fn a_closed_input_counts_as_aligned() {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let mut input = SinkInput::from_edges(vec![a_rx, b_rx], telemetry());
        a_tx.send(Message::Barrier(3)).await.unwrap();
        b_tx.send(Message::Batch(batch(5))).await.unwrap();
        drop(b_tx);
        assert_eq!(value(&input.next_event().await), "5");
        assert_eq!(value(&input.next_event().await), "barrier 3");
        drop(a_tx);
        assert_eq!(value(&input.next_event().await), "closed");
    }

    #[tokio::test]
    async fn sinks_learn_when_an_epoch_is_released() {
        let (tx, rx) = mpsc::channel(8);
        let (acks, mut ack_rx) = crate::ack::ack_channel();
        let mut input = SinkInput::new(rx, telemetry()).with_epochs(acks, 1);
        tx.send(Message::Batch(batch(1))).await.unwrap();
        tx.send(Message::Barrier(1)).await.unwrap();
        tx.send(Message::Batch(batch(2))).await.unwrap();
        let first = input.recv().await.unwrap();
        let second = input.recv().await.unwrap(); // past barrier 1
        assert!(ack_rx.try_recv().is_err(), "batch 1 is not released yet");
        drop(first);
        let ack = ack_rx.recv().await.unwrap();
        assert_eq!((ack.id, ack.delivered), (1, true));
        drop(second);
        drop(input);
        assert_eq!(ack_rx.recv().await.unwrap().id, 2);
    }
}
