//! The traits a component author implements, and the contexts the runtime hands them.
//!
//! Authors write a config struct (serde + `JsonSchema`, `deny_unknown_fields`, doc comments
//! as user documentation) and implement one of the typed traits [`SourceConfig`],
//! [`TransformConfig`], [`SinkConfig`] for it; `validate` is pure and returns every problem,
//! `build` does the I/O. The object-safe runtime traits [`Source`], [`Transform`] and
//! [`Sink`] are what the topology stores and runs. Registration is one line:
//! `tidegauge_core::register_transform!(ZScoreConfig);`.

mod input;
mod output;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::BoxFuture;
use crate::ack::Finalizers;
use crate::checkpoint::SourceCheckpoint;
use crate::dead_letter::DeadLetter;
use crate::error::{BuildError, ComponentError, ConfigError};
use crate::telemetry::{ComponentTelemetry, InternalEvent, MetricDesc, RecordDeadLettered};

pub use input::{Event, Recv, SinkInput};
pub(crate) use output::BarrierPort;
pub use output::{Fanout, Message, Output, SendError};

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

    /// Called right after [`Transform::checkpoint`]: gives up the acknowledgement tokens
    /// the transform holds for events the state just snapshotted covers (a window's open
    /// windows). The runtime releases them once that checkpoint is written (or abandoned),
    /// instead of when the transform would emit the events' results: a restart restores
    /// the state and resumes sources from the checkpoint's positions, so those events no
    /// longer depend on the sources' acknowledged positions. Transforms that emit the
    /// results of each batch at once hold no tokens and keep the default.
    fn checkpoint_tokens(&mut self) -> Finalizers {
        Finalizers::none()
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

    /// For a detector: the output columns holding its verdicts, which the runtime's live
    /// views (recent anomalies, the dashboard's sensor history) read. `None` (the
    /// default) for transforms that judge nothing, including those passing on another
    /// detector's verdicts.
    fn verdict_columns(&self) -> Option<VerdictColumns> {
        None
    }
}

/// Where a detector writes its verdicts in its output: column names, each of the type
/// said (a column missing or of another type is read as absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerdictColumns {
    /// What is judged, a sensor (Utf8).
    pub key: Option<String>,
    /// The value judged (Float64).
    pub value: Option<String>,
    /// The detector's own statistic (`z`, `statistic`, ...; Float64).
    pub statistic: Option<String>,
    /// The score, 0..1, 0.5 at the threshold (Float64).
    pub score: String,
    /// Whether the row is an anomaly (Boolean).
    pub flag: String,
    /// Why it is one (Utf8).
    pub reason: Option<String>,
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

    /// The metrics this component keeps besides those every component has (declared
    /// before `build`, so `/metrics` shows them at 0 from the start). None by default.
    const METRICS: &'static [&'static MetricDesc] = &[];

    /// Checks the config (pure, no I/O) and returns the schema of the events it will emit,
    /// or every problem found (paths relative to the component).
    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>>;

    /// Builds the runtime source (opening files and connections).
    fn build(
        &self,
        schema: SchemaRef,
        cx: BuildContext,
    ) -> impl Future<Output = Result<Box<dyn Source>, BuildError>> + Send;

    /// What identifies the input this source reads (e.g. file paths and first bytes),
    /// recorded with every checkpoint: a restart whose source reads other input does
    /// not resume at the positions of the old one. Null (the default) when positions
    /// do not depend on more than the settings' source id and type. Called after
    /// `build`, so it may look at the input.
    fn input_identity(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Looks at the input the source would read (files: exist, are files, can be
    /// read) for `tidegauge check`, which otherwise does no I/O; every problem, paths
    /// relative to the component. None by default.
    fn check_inputs(&self) -> Vec<InputProblem> {
        Vec::new()
    }
}

/// A problem `tidegauge check` finds with the input a source would read.
#[derive(Debug)]
pub enum InputProblem {
    /// It is not there (yet): `run` fails unless it appears by then.
    Missing(ConfigError),
    /// It is there but cannot be read as input (a directory, no permission).
    Unreadable(ConfigError),
}

/// Typed configuration of a transform.
pub trait TransformConfig: DeserializeOwned + JsonSchema + Debug + Send + Sync + 'static {
    /// The `type = "..."` name in pipeline files.
    const TYPE: &'static str;

    /// The metrics this component keeps besides those every component has (declared
    /// before `build`, so `/metrics` shows them at 0 from the start). None by default.
    const METRICS: &'static [&'static MetricDesc] = &[];

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

    /// The metrics this component keeps besides those every component has (declared
    /// before `build`, so `/metrics` shows them at 0 from the start). None by default.
    const METRICS: &'static [&'static MetricDesc] = &[];

    /// Checks the config against the schema of its input (pure).
    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>>;

    /// Builds the runtime sink (creating files, connecting).
    fn build(
        &self,
        input: SchemaRef,
        cx: BuildContext,
    ) -> impl Future<Output = Result<Box<dyn Sink>, BuildError>> + Send;
}
