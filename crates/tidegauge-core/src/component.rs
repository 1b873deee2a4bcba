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
use crate::ack::Finalizers;
use crate::batch::Batch;
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

/// The downstream queues of a component's output. Shared between the running component
/// and the topology, so a running pipeline can be rewired (hot reload): the topology
/// swaps the list, and a queue nobody lists any more closes once in-flight sends are done.
#[derive(Clone, Default)]
pub struct Fanout(Arc<Mutex<FanoutInner>>);

#[derive(Default)]
struct FanoutInner {
    targets: Arc<Vec<mpsc::Sender<Batch>>>,
    /// Set when the output is dropped: its component has finished, nothing more is sent.
    closed: bool,
}

impl Fanout {
    /// A fan-out to `targets`.
    pub fn new(targets: Vec<mpsc::Sender<Batch>>) -> Self {
        Fanout(Arc::new(Mutex::new(FanoutInner {
            targets: Arc::new(targets),
            closed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FanoutInner> {
        // The list is replaced in one assignment: a panicking holder cannot leave it torn.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queues batches go to now.
    pub fn current(&self) -> Arc<Vec<mpsc::Sender<Batch>>> {
        self.lock().targets.clone()
    }

    /// Replaces the list of queues; `false` (and nothing kept) once the output is gone.
    pub fn replace(&self, targets: Vec<mpsc::Sender<Batch>>) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.targets = Arc::new(targets);
        true
    }

    fn remove(&self, gone: &[mpsc::Sender<Batch>]) -> usize {
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
}

impl Drop for Output {
    fn drop(&mut self) {
        // Downstream queues close once every output feeding them is gone.
        self.fanout.close();
    }
}

impl Output {
    /// An output with the declared `schema`, sending to `targets`.
    pub fn new(
        schema: SchemaRef,
        targets: Vec<mpsc::Sender<Batch>>,
        telemetry: Arc<ComponentTelemetry>,
    ) -> Self {
        Self::with_fanout(schema, Fanout::new(targets), telemetry)
    }

    /// An output sending to the queues of `fanout`, which the topology may rewire.
    pub fn with_fanout(
        schema: SchemaRef,
        fanout: Fanout,
        telemetry: Arc<ComponentTelemetry>,
    ) -> Self {
        Output {
            schema,
            fanout,
            telemetry,
        }
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

    /// Sends a batch to every downstream component, waiting while any of them is full
    /// (backpressure). Empty batches are not sent (their finalizers are released).
    pub async fn send(&mut self, batch: Batch) -> Result<(), SendError> {
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
            if tx.send(b).await.is_err() {
                closed.push(tx.clone());
            }
        }
        self.finish_send(rows, started, closed)
    }

    /// Like [`Output::send`], for components running on their own thread.
    pub fn blocking_send(&mut self, batch: Batch) -> Result<(), SendError> {
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
            if tx.blocking_send(b).is_err() {
                closed.push(tx.clone());
            }
        }
        self.finish_send(rows, started, closed)
    }

    fn finish_send(
        &mut self,
        rows: u64,
        started: Option<Instant>,
        closed: Vec<mpsc::Sender<Batch>>,
    ) -> Result<(), SendError> {
        if let Some(t) = started {
            self.telemetry.emit(Waited {
                elapsed: t.elapsed(),
            });
        }
        let remaining = if closed.is_empty() {
            self.fanout.current().len()
        } else {
            self.fanout.remove(&closed)
        };
        if remaining == 0 {
            return Err(SendError::Closed);
        }
        self.telemetry.emit(EventsSent { count: rows });
        Ok(())
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

/// The incoming edge of a transform or sink (all its inputs merged). Counts what it hands
/// out; when asked, measures the time from handing out a batch to the next request as the
/// batch's processing time, and (when profiling) the time spent waiting for input.
pub struct SinkInput {
    rx: mpsc::Receiver<Batch>,
    telemetry: Arc<ComponentTelemetry>,
    measure_latency: bool,
    handed_out: Option<Instant>,
    wait_started: Option<Instant>,
}

impl SinkInput {
    /// An input reading `rx`, counting into `telemetry`.
    pub fn new(rx: mpsc::Receiver<Batch>, telemetry: Arc<ComponentTelemetry>) -> Self {
        SinkInput {
            rx,
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

    fn count(&mut self, b: Option<Batch>) -> Option<Batch> {
        let now = (self.measure_latency || self.wait_started.is_some()).then(Instant::now);
        if let (Some(start), Some(now)) = (self.wait_started.take(), now) {
            self.telemetry.emit(Waited {
                elapsed: now.saturating_duration_since(start),
            });
        }
        if let Some(b) = &b {
            self.telemetry.emit(EventsReceived {
                count: b.num_rows() as u64,
            });
            if self.measure_latency {
                self.handed_out = now;
            }
        }
        b
    }

    /// The next batch, or `None` once every upstream component has finished.
    pub async fn recv(&mut self) -> Option<Batch> {
        self.before_wait();
        let b = self.rx.recv().await;
        self.count(b)
    }

    /// The next batch, from a thread outside the async runtime.
    pub fn blocking_recv(&mut self) -> Option<Batch> {
        self.before_wait();
        let b = self.rx.blocking_recv();
        self.count(b)
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
        self.before_wait();
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(b)) => match self.count(Some(b)) {
                Some(b) => Recv::Batch(b),
                None => Recv::Closed,
            },
            Ok(None) => {
                self.count(None);
                Recv::Closed
            }
            Err(_) => {
                self.count(None);
                Recv::Idle
            }
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
}

/// A running source: produces batches until its input ends or shutdown is requested.
pub trait Source: Send + 'static {
    /// Runs to completion. Returning `Ok` at the end of finite input ends the pipeline
    /// once everything downstream has drained.
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>>;
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
