//! A running pipeline that can be watched, tuned and rewired while it runs. This is the
//! one runner: [`BuiltPipeline::run`] is [`start`] without a handle.
//!
//! [`start`] spawns every component of a built pipeline (sources and sinks as tasks,
//! transforms on threads of their own) joined by one bounded channel per edge, and
//! returns a [`LiveHandle`] and the future that drives the run to its end.
//!
//! - Each component's output is a [`Fanout`] shared with the runner, so the graph can be
//!   rewired without stopping anything: an edge nobody lists any more closes once the
//!   sends in flight are done, and its consumer drains, flushes and ends.
//! - Each transform answers [`ControlRequest`]s between batches (its tunable parameters),
//!   and at a checkpoint barrier snapshots its state and forwards the barrier (see
//!   [`crate::checkpoint`]: barriers are aligned across a component's input edges, sinks
//!   close an epoch per barrier and release its acknowledgements once durable).
//! - A reload ([`ReloadRequest`]) compares the new pipeline with the running one: unchanged
//!   components keep running with their state and their input edges; components whose
//!   only changes are tunable parameters are changed in place (state kept); the rest are
//!   built anew (first, so a failing build leaves the running pipeline untouched) and
//!   swapped in, the old instances draining into their old edges.
//!
//! # Reload and checkpoints
//!
//! With a `[checkpoint]` table, the graph changes only between two checkpoints: a reload
//! that replaces, adds or removes components first waits for the checkpoint in flight to
//! complete (giving up, with nothing changed, after 30 s), and no checkpoint starts again
//! until every replaced instance has drained and ended. A checkpoint therefore never
//! mixes old and new instances, and every barrier crosses one graph. A replaced source
//! stops, waits for every batch it sent to be acknowledged and commits that position;
//! its successor starts only then, from that position, so nothing acknowledged is lost
//! and nothing is read twice by the transforms that kept running. Without checkpoints a
//! rebuilt source starts as a freshly built one does.
//!
//! A sink that replaces a running one (with or without checkpoints) is built only once
//! that one has drained, flushed and ended: both may write the same file, and a disk
//! buffer has one owner. Meanwhile its input edges fill and backpressure holds upstream.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arrow_schema::SchemaRef;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ack::{Finalizers, ack_channel};
use crate::batch::Batch;
use crate::checkpoint::SourceCheckpoint;
use crate::checkpoint::{CheckpointStore, CheckpointSummary, Coordinator, Report, ReportPort};
use crate::component::{
    BarrierPort, BuildContext, ComponentContext, Event, Fanout, Message, Output, SendError,
    SinkContext, SinkInput, SourceContext, Transform, TransformContext,
};
use crate::control::{self, ControlError, ControlRequest, TransformControl};
use crate::dead_letter::DeadLetter;
use crate::disk_buffer::DiskBuffer;
use crate::error::{ComponentError, ConfigError};
use crate::registry::{self, AnyConfig, ComponentKind};
use crate::telemetry::{
    BatchProcessed, ComponentStarted, ComponentStopped, ComponentTelemetry, QueueFill,
    TelemetrySnapshot,
};
use crate::topology::{BuiltPipeline, Node, Pipeline, RunReport, Runtime, build_node, open_buffer};

/// How to run.
#[derive(Default)]
pub struct RunOptions {
    /// Measure waits per stage (the profiler).
    pub profile: bool,
    /// Where reload requests arrive; `None` for a pipeline that is never reloaded.
    pub reloads: Option<mpsc::Receiver<ReloadRequest>>,
}

/// A request to replace the running pipeline with `pipeline` (already validated).
pub struct ReloadRequest {
    /// The new pipeline.
    pub pipeline: Pipeline,
    /// What was done, or why nothing was.
    pub reply: oneshot::Sender<Result<ReloadSummary, String>>,
}

/// What a reload did, by component id.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReloadSummary {
    /// Running on, untouched.
    pub kept: Vec<String>,
    /// Running on with parameters changed in place (state kept).
    pub retuned: Vec<String>,
    /// Built anew and swapped in.
    pub rebuilt: Vec<String>,
    /// New components.
    pub added: Vec<String>,
    /// Components no longer in the pipeline (drained and stopped).
    pub removed: Vec<String>,
    /// The parameters changed in place, old and new values.
    pub changes: Vec<ParamChange>,
}

impl ReloadSummary {
    /// Whether the reload changed nothing.
    pub fn is_noop(&self) -> bool {
        self.retuned.is_empty()
            && self.rebuilt.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
    }
}

/// One parameter changed while running.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParamChange {
    /// Component id.
    pub component: String,
    /// Parameter name.
    pub parameter: String,
    /// Value before.
    pub old: Value,
    /// Value after.
    pub new: Value,
}

/// Why a parameter change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// No component has this id.
    #[error("no component `{0}`")]
    UnknownComponent(String),
    /// The parameter cannot be changed while running.
    #[error("{0}")]
    NotTunable(String),
    /// The new value does not pass validation.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ConfigError>),
    /// The component is not running (any more).
    #[error("component `{0}` is not running")]
    Stopped(String),
    /// The component refused the value.
    #[error("{0}")]
    Rejected(String),
}

/// A component of the running pipeline, as others see it.
#[derive(Clone)]
pub struct ComponentView {
    /// Id as written in the file.
    pub id: String,
    /// Kind.
    pub kind: ComponentKind,
    /// Registered type.
    pub type_name: &'static str,
    /// Ids it reads from.
    pub inputs: Vec<String>,
    /// Schema of its input (transforms and sinks).
    pub input_schema: Option<SchemaRef>,
    /// Schema of its output (sources and transforms).
    pub output_schema: Option<SchemaRef>,
    /// Settings now in force: as written, with parameters changed since applied.
    pub settings: Value,
    /// Its counters.
    pub telemetry: Arc<ComponentTelemetry>,
    /// Requests to it (transforms).
    pub control: Option<TransformControl>,
}

struct LiveState {
    components: RwLock<Vec<ComponentView>>,
    started: Instant,
    profiling: bool,
    /// Serializes changes (parameter changes and reloads).
    changing: tokio::sync::Mutex<()>,
}

/// A shared view of a running pipeline: what runs, its counters, and the way to change
/// its parameters. Clone freely.
#[derive(Clone)]
pub struct LiveHandle(Arc<LiveState>);

impl LiveHandle {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<ComponentView>> {
        // The list is replaced whole: a panicking writer cannot leave it torn.
        self.0.components.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<ComponentView>> {
        self.0.components.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every component, in topological order.
    pub fn components(&self) -> Vec<ComponentView> {
        self.read().clone()
    }

    /// The component called `id`.
    pub fn component(&self, id: &str) -> Option<ComponentView> {
        self.read().iter().find(|c| c.id == id).cloned()
    }

    /// Current counters of every component.
    pub fn snapshot(&self) -> Vec<TelemetrySnapshot> {
        self.read().iter().map(|c| c.telemetry.snapshot()).collect()
    }

    /// Time since the run started.
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }

    /// Whether the run measures waits per stage.
    pub fn profiling(&self) -> bool {
        self.0.profiling
    }

    /// Changes parameters of a running transform: each must be tunable; the settings
    /// with the new values must pass the component's validation against its input, and
    /// must not change its output schema. Returns what changed.
    pub async fn set_params(
        &self,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Vec<ParamChange>, ParamError> {
        let _serial = self.0.changing.lock().await;
        let view = self
            .component(id)
            .ok_or_else(|| ParamError::UnknownComponent(id.to_string()))?;
        let Some(control) = view.control.clone() else {
            return Err(ParamError::NotTunable(format!(
                "{} `{id}` has no parameters that can be changed while running",
                view.kind
            )));
        };
        let stopped = |_| ParamError::Stopped(id.to_string());
        let tunables = control.tunables().await.map_err(stopped)?;
        let names: Vec<&str> = tunables.iter().map(|t| t.name.as_str()).collect();
        for name in patch.keys() {
            if !names.contains(&name.as_str()) {
                return Err(ParamError::NotTunable(format!(
                    "`{name}` of `{id}` cannot be changed while running (can be: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        let mut settings = match &view.settings {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        for (k, v) in patch {
            settings.insert(k.clone(), v.clone());
        }
        check_settings(&view, Value::Object(settings.clone()))?;

        let mut changes = Vec::new();
        for (name, value) in patch {
            let old = tunables
                .iter()
                .find(|t| &t.name == name)
                .map(|t| t.value.clone())
                .unwrap_or(Value::Null);
            if let Err(e) = control.set(name, value.clone()).await {
                // All or nothing: what this request already changed goes back, so the
                // history (written only for a success) matches what runs.
                for c in changes.iter().rev() {
                    let c: &ParamChange = c;
                    if control.set(&c.parameter, c.old.clone()).await.is_ok() {
                        self.update_setting(id, &c.parameter, &c.old);
                    }
                }
                return Err(match e {
                    ControlError::Stopped => ParamError::Stopped(id.to_string()),
                    ControlError::Rejected(m) => ParamError::Rejected(m),
                });
            }
            self.update_setting(id, name, value);
            changes.push(ParamChange {
                component: id.to_string(),
                parameter: name.clone(),
                old,
                new: value.clone(),
            });
        }
        Ok(changes)
    }

    fn update_setting(&self, id: &str, name: &str, value: &Value) {
        let mut list = self.write();
        if let Some(c) = list.iter_mut().find(|c| c.id == id) {
            if !c.settings.is_object() {
                c.settings = Value::Object(Map::new());
            }
            if let Value::Object(m) = &mut c.settings {
                m.insert(name.to_string(), value.clone());
            }
        }
    }
}

/// Parses `settings` as the component's config and validates it against the component's
/// input; the output schema must stay as it is.
fn check_settings(view: &ComponentView, settings: Value) -> Result<(), ParamError> {
    let descriptor = registry::find(view.kind, view.type_name)
        .ok_or_else(|| ParamError::UnknownComponent(view.id.clone()))?;
    let config = descriptor
        .parse_json(settings)
        .map_err(|e| ParamError::Invalid(vec![ConfigError::new(e.path, e.message)]))?;
    let AnyConfig::Transform(config) = config else {
        return Err(ParamError::NotTunable(format!(
            "`{}` is not a transform",
            view.id
        )));
    };
    let (Some(input), Some(output)) = (&view.input_schema, &view.output_schema) else {
        return Err(ParamError::Stopped(view.id.clone()));
    };
    let new_output = config.validate(input).map_err(ParamError::Invalid)?;
    if new_output.fields() != output.fields() {
        return Err(ParamError::Invalid(vec![ConfigError::new(
            "",
            format!(
                "the change would alter the events `{}` emits ({} instead of {}); change it in the pipeline file and reload",
                view.id,
                crate::schema::describe(&new_output),
                crate::schema::describe(output)
            ),
        )]));
    }
    Ok(())
}

/// A component in the running graph.
/// A component instance in the running graph.
struct Running {
    id: String,
    kind: ComponentKind,
    type_name: &'static str,
    inputs: Vec<String>,
    input_schema: Option<SchemaRef>,
    output_schema: Option<SchemaRef>,
    /// Settings as written in the file it was loaded from.
    file_settings: Value,
    telemetry: Arc<ComponentTelemetry>,
    /// Its input edges, by upstream id (transforms and sinks); weak, so an edge closes
    /// when the last output feeding it goes.
    edges: Vec<(String, mpsc::WeakSender<Message>)>,
    /// Its output (sources and transforms).
    fanout: Option<Fanout>,
    /// Stops it (sources).
    stop: Option<CancellationToken>,
    control: Option<TransformControl>,
    /// The task running this instance.
    task: u64,
    /// Its slot at the checkpoint coordinator.
    slot: usize,
    /// Cancelled once the instance's task has ended.
    ended: CancellationToken,
}

/// Checkpointing of the running pipeline (a `[checkpoint]` table).
struct Checkpoints {
    reports: mpsc::UnboundedSender<Report>,
    store: Arc<std::sync::Mutex<CheckpointStore>>,
    coordinator: tokio::task::JoinHandle<CheckpointSummary>,
    /// Paused by a reload; resumed once the replaced instances have drained.
    paused: bool,
}

/// An input edge as its consumer gets it.
struct InEdge {
    from: String,
    weak: mpsc::WeakSender<Message>,
    rx: mpsc::Receiver<Message>,
}

/// How a component instance starts.
#[derive(Default)]
struct Start {
    /// Its slot at the checkpoint coordinator.
    slot: usize,
    /// Id of the first barrier it will see (a sink numbers its epochs from it).
    first_barrier: u64,
    /// A source's barrier requests (with checkpoints).
    barriers: Option<BarrierPort>,
    /// Where a source resumes, when known now.
    source_checkpoint: Option<SourceCheckpoint>,
    /// A sink's disk buffer, when opened already.
    buffer: Option<Arc<DiskBuffer>>,
    /// The instance this one replaces, to wait for: a source then resumes at the
    /// position that one committed, a sink reopens the disk buffer that one closed.
    after: Option<CancellationToken>,
}

struct Runner {
    runtime: tokio::runtime::Handle,
    dead_letter: DeadLetter,
    edge_capacity: usize,
    profile: bool,
    source_stop: CancellationToken,
    nodes: Vec<Running>,
    tasks: JoinSet<(u64, Result<(), ComponentError>)>,
    /// Task id -> component id and counters, for every task ever started.
    owners: HashMap<u64, (String, Arc<ComponentTelemetry>)>,
    next_task: u64,
    next_slot: usize,
    /// Every component's counters in the order they first ran, for the report.
    report_order: Vec<Arc<ComponentTelemetry>>,
    handle: LiveHandle,
    checkpoints: Option<Checkpoints>,
    /// Tasks of instances a reload replaced that have not ended yet.
    draining: HashSet<u64>,
}

/// Starts every component of `built`; returns the handle on the running pipeline and the
/// future that runs it to its end (end of input, failure, or `shutdown`). Must be called
/// inside a tokio runtime.
pub fn start(
    built: BuiltPipeline,
    shutdown: CancellationToken,
    options: RunOptions,
) -> (LiveHandle, impl Future<Output = RunReport> + Send + 'static) {
    let runtime = tokio::runtime::Handle::current();
    let BuiltPipeline {
        nodes,
        telemetry,
        dead_letter,
        edge_capacity,
        checkpoints,
        mut buffers,
    } = built;
    let handle = LiveHandle(Arc::new(LiveState {
        components: RwLock::new(Vec::new()),
        started: Instant::now(),
        profiling: options.profile,
        changing: tokio::sync::Mutex::new(()),
    }));

    // Checkpoint coordinator: barrier requests to sources, reports from everyone. The
    // slot of each first instance is its place in the pipeline.
    let mut starts: Vec<Start> = (0..nodes.len())
        .map(|slot| Start {
            slot,
            ..Start::default()
        })
        .collect();
    let checkpoints = checkpoints.map(|store| {
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let mut requests = HashMap::new();
        for (i, (n, _)) in nodes.iter().enumerate() {
            if n.kind == ComponentKind::Source {
                let (tx, rx) = mpsc::unbounded_channel();
                requests.insert(i, tx);
                let port = ReportPort {
                    node: i,
                    tx: report_tx.clone(),
                };
                starts[i].barriers = Some(BarrierPort::new(rx, port));
                starts[i].source_checkpoint = Some(store.source_handle(&n.id));
            }
        }
        let kinds = nodes.iter().map(|(n, _)| (n.id.clone(), n.kind)).collect();
        let c = Coordinator::new(store, kinds, requests);
        for s in &mut starts {
            s.first_barrier = c.first_id();
        }
        Checkpoints {
            reports: report_tx,
            store: c.store(),
            coordinator: tokio::spawn(c.run(report_rx)),
            paused: false,
        }
    });

    let mut runner = Runner {
        runtime,
        dead_letter,
        edge_capacity,
        profile: options.profile,
        source_stop: shutdown.child_token(),
        nodes: Vec::new(),
        tasks: JoinSet::new(),
        owners: HashMap::new(),
        next_task: 0,
        next_slot: nodes.len(),
        report_order: telemetry.clone(),
        handle: handle.clone(),
        checkpoints,
        draining: HashSet::new(),
    };

    // One bounded channel per edge (a consumer can stop reading one input while it
    // aligns a checkpoint barrier), all made before anything runs.
    let metas: Vec<(String, Vec<String>)> = nodes
        .iter()
        .map(|(n, _)| (n.id.clone(), n.inputs.clone()))
        .collect();
    let mut senders: HashMap<(String, String), mpsc::Sender<Message>> = HashMap::new();
    let mut in_edges: Vec<Vec<InEdge>> = Vec::new();
    for (n, _) in &nodes {
        in_edges.push(runner.new_edges(&n.id, &n.inputs, &mut senders));
    }
    for ((((node, rt), t), edges), mut start) in
        nodes.into_iter().zip(telemetry).zip(in_edges).zip(starts)
    {
        start.buffer = buffers.remove(&node.id);
        let targets = targets_of(&node.id, &metas, &senders);
        runner.spawn(node, Some(rt), t, edges, targets, start);
    }
    drop(senders);
    runner.publish();

    let run = runner.run(shutdown, options.reloads);
    (handle, run)
}

/// Ids of the components that read from `id`.
fn consumers_of<'a>(
    id: &'a str,
    metas: &'a [(String, Vec<String>)],
) -> impl Iterator<Item = &'a String> + 'a {
    metas
        .iter()
        .filter(move |(_, inputs)| inputs.iter().any(|i| i == id))
        .map(|(c, _)| c)
}

/// The edges out of `id`, one per consumer.
fn targets_of(
    id: &str,
    metas: &[(String, Vec<String>)],
    senders: &HashMap<(String, String), mpsc::Sender<Message>>,
) -> Vec<mpsc::Sender<Message>> {
    consumers_of(id, metas)
        .filter_map(|c| senders.get(&(id.to_string(), c.clone())).cloned())
        .collect()
}

/// Reads how full a component's input edges are, together.
fn queue_probe(edges: Vec<mpsc::WeakSender<Message>>) -> crate::telemetry::QueueProbe {
    Box::new(move || {
        let mut fill: Option<QueueFill> = None;
        for tx in edges.iter().filter_map(|e| e.upgrade()) {
            let f = fill.get_or_insert_with(QueueFill::default);
            f.queued += tx.max_capacity() - tx.capacity();
            f.capacity += tx.max_capacity();
        }
        fill
    })
}

fn same_fields(a: &Option<SchemaRef>, b: &Option<SchemaRef>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.fields() == b.fields(),
        (None, None) => true,
        _ => false,
    }
}

enum Plan {
    Keep(usize),
    Retune(usize, Vec<(String, Value)>),
    Build(Option<usize>),
}

/// Longest a reload waits for a checkpoint in flight to complete before giving up.
const RELOAD_CHECKPOINT_WAIT: Duration = Duration::from_secs(30);

impl Runner {
    /// New channels for each distinct input of `id`; their senders go to `senders`.
    fn new_edges(
        &self,
        id: &str,
        inputs: &[String],
        senders: &mut HashMap<(String, String), mpsc::Sender<Message>>,
    ) -> Vec<InEdge> {
        let mut edges: Vec<InEdge> = Vec::new();
        for from in inputs {
            if edges.iter().any(|e| &e.from == from) {
                continue;
            }
            let (tx, rx) = mpsc::channel(self.edge_capacity);
            edges.push(InEdge {
                from: from.clone(),
                weak: tx.downgrade(),
                rx,
            });
            senders.insert((from.clone(), id.to_string()), tx);
        }
        edges
    }

    fn report_port(&self, slot: usize) -> Option<ReportPort> {
        self.checkpoints.as_ref().map(|c| ReportPort {
            node: slot,
            tx: c.reports.clone(),
        })
    }

    /// Starts one component instance; records it as the current one for its id. `rt` is
    /// `None` for a sink that replaces a running one: it is built once that one has ended
    /// (it may write the same files).
    fn spawn(
        &mut self,
        node: Node,
        rt: Option<Runtime>,
        t: Arc<ComponentTelemetry>,
        inputs: Vec<InEdge>,
        targets: Vec<mpsc::Sender<Message>>,
        start: Start,
    ) {
        let task = self.next_task;
        self.next_task += 1;
        self.owners.insert(task, (node.id.clone(), t.clone()));
        if !self.report_order.iter().any(|r| Arc::ptr_eq(r, &t)) {
            self.report_order.push(t.clone());
        }
        t.set_profiling(self.profile);
        t.emit(ComponentStarted);
        let edges: Vec<(String, mpsc::WeakSender<Message>)> = inputs
            .iter()
            .map(|e| (e.from.clone(), e.weak.clone()))
            .collect();
        if node.kind != ComponentKind::Source {
            t.set_queue_probe(Some(queue_probe(
                edges.iter().map(|(_, w)| w.clone()).collect(),
            )));
        }
        let receivers: Vec<mpsc::Receiver<Message>> = inputs.into_iter().map(|e| e.rx).collect();
        let component = ComponentContext::new(t.clone(), self.dead_letter.clone());
        let reports = self.report_port(start.slot);
        let fanout = node.output_schema.as_ref().map(|_| Fanout::new(targets));
        let Start {
            slot,
            first_barrier,
            barriers,
            source_checkpoint,
            buffer,
            after,
        } = start;
        let out = node
            .output_schema
            .clone()
            .zip(fanout.clone())
            .map(|(s, f)| {
                let out = Output::with_fanout(s, f, t.clone());
                match barriers {
                    Some(port) => out.with_barriers(port),
                    None => out,
                }
            });
        let ended = CancellationToken::new();
        // Runs when the instance's task ends, whatever the outcome.
        let finish = {
            let reports = reports.clone();
            let ended = ended.clone();
            move |r: &Result<(), ComponentError>| {
                if let Some(port) = &reports {
                    port.send(Report::Finished {
                        node: port.node,
                        ok: r.is_ok(),
                    });
                }
                ended.cancel();
            }
        };
        let mut stop = None;
        let mut control = None;
        let runtime = self.runtime.clone();
        match (rt, out, node.kind) {
            (Some(Runtime::Source(src)), Some(out), ComponentKind::Source) => {
                let token = self.source_stop.child_token();
                stop = Some(token.clone());
                let store = self.checkpoints.as_ref().map(|c| c.store.clone());
                let id = node.id.clone();
                self.tasks.spawn(async move {
                    let checkpoint = match (after, store) {
                        (Some(previous), Some(store)) => {
                            previous.cancelled().await;
                            let handle = store
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .takeover_handle(&id);
                            match handle {
                                Ok(h) => h,
                                Err(e) => {
                                    let r = Err(ComponentError::new(format!(
                                        "cannot read where to resume: {e}"
                                    )));
                                    finish(&r);
                                    return (task, r);
                                }
                            }
                        }
                        _ => source_checkpoint.unwrap_or_default(),
                    };
                    // A barrier served before the first batch stands where the source
                    // resumes, not at "nowhere" (which a restart would read as the start,
                    // with state restored that has seen everything before it).
                    let mut out = out;
                    if let Some(p) = checkpoint.restored() {
                        out.set_position(p.clone());
                    }
                    let cx = SourceContext {
                        component,
                        out,
                        shutdown: token,
                        runtime,
                        checkpoint,
                    };
                    let r = src.run(cx).await;
                    finish(&r);
                    (task, r)
                });
            }
            (Some(Runtime::Transform(tr)), Some(out), ComponentKind::Transform) => {
                let (handle, requests) = control::channel();
                control = Some(handle);
                let input = SinkInput::from_edges(receivers, t.clone());
                let (done_tx, done_rx) = oneshot::channel();
                let input_schema = node.input_schema.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("tg-{}", node.id))
                    .spawn(move || {
                        let r = run_transform(
                            tr,
                            TransformIo {
                                input,
                                out,
                                requests,
                                reports,
                            },
                            component,
                            &runtime,
                            input_schema,
                        );
                        let _ = done_tx.send(r);
                    });
                self.tasks.spawn(async move {
                    let r = match spawned {
                        Err(e) => Err(ComponentError::new(format!("cannot start thread: {e}"))),
                        Ok(_) => done_rx.await.unwrap_or_else(|_| {
                            Err(ComponentError::new("transform thread panicked"))
                        }),
                    };
                    finish(&r);
                    (task, r)
                });
            }
            (rt @ (None | Some(Runtime::Sink(_))), None, ComponentKind::Sink) => {
                let ready = match rt {
                    Some(Runtime::Sink(sink)) => Some(sink),
                    _ => None,
                };
                let input = SinkInput::from_edges(receivers, t.clone()).measuring_latency();
                let input = match &reports {
                    Some(port) => {
                        let (acks, mut rx) = ack_channel();
                        let port = port.clone();
                        tokio::spawn(async move {
                            while let Some(ack) = rx.recv().await {
                                port.send(Report::SinkEpoch {
                                    node: port.node,
                                    id: ack.id,
                                    delivered: ack.delivered,
                                });
                            }
                        });
                        input.with_epochs(acks, first_barrier)
                    }
                    None => input,
                };
                let cx = SinkContext {
                    component: component.clone(),
                    runtime: runtime.clone(),
                };
                // A sink built later needs its settings then.
                let later = ready.is_none().then(|| Node {
                    id: node.id.clone(),
                    kind: node.kind,
                    type_name: node.type_name,
                    inputs: node.inputs.clone(),
                    config: node.config,
                    settings: Value::Null,
                    input_schema: node.input_schema.clone(),
                    output_schema: None,
                    buffer: node.buffer.clone(),
                });
                let edge_capacity = self.edge_capacity;
                let id = node.id.clone();
                let type_name = node.type_name;
                self.tasks.spawn(async move {
                    let fail = |message: String| {
                        let r = Err(ComponentError::new(message));
                        finish(&r);
                        (task, r)
                    };
                    let (sink, buffer) = match (ready, later) {
                        (Some(sink), _) => (sink, buffer),
                        (None, Some(later)) => {
                            // The instance this one replaces holds the files.
                            if let Some(previous) = &after {
                                previous.cancelled().await;
                            }
                            let bcx = BuildContext {
                                component: component.clone(),
                                runtime,
                            };
                            let sink = match build_node(&later, bcx).await {
                                Ok(Runtime::Sink(sink)) => sink,
                                Ok(_) => {
                                    return fail("component wiring does not match its kind".into());
                                }
                                Err(e) => return fail(e.message),
                            };
                            let buffer = match (&later.buffer, &later.input_schema) {
                                (Some(cfg), Some(schema)) => {
                                    match open_buffer(&id, cfg, schema, &component) {
                                        Ok(b) => Some(b),
                                        Err(e) => return fail(e.message),
                                    }
                                }
                                _ => None,
                            };
                            (sink, buffer)
                        }
                        (None, None) => return fail("sink was not built".into()),
                    };
                    let r = match buffer {
                        None => sink.run(input, cx).await,
                        Some(buffer) => {
                            // input -> disk buffer -> sink. The sink's own input is not
                            // counted again.
                            let (tx, rx) = mpsc::channel(edge_capacity);
                            let scratch = Arc::new(ComponentTelemetry::new(
                                id.as_str(),
                                ComponentKind::Sink,
                                type_name,
                            ));
                            let inner = SinkInput::new(rx, scratch);
                            let (sunk, buffered) =
                                tokio::join!(sink.run(inner, cx), buffer.run(input, tx, component));
                            sunk.and(buffered)
                        }
                    };
                    finish(&r);
                    (task, r)
                });
            }
            _ => {
                let r = Err(ComponentError::new(
                    "component wiring does not match its kind",
                ));
                finish(&r);
                self.tasks.spawn(async move { (task, r) });
            }
        }
        let running = Running {
            id: node.id,
            kind: node.kind,
            type_name: node.type_name,
            inputs: node.inputs,
            input_schema: node.input_schema,
            output_schema: node.output_schema,
            file_settings: node.settings,
            telemetry: t,
            edges,
            fanout,
            stop,
            control,
            task,
            slot,
            ended,
        };
        match self.nodes.iter_mut().find(|n| n.id == running.id) {
            Some(current) => *current = running,
            None => self.nodes.push(running),
        }
    }

    /// Publishes the current graph to the handle, keeping parameters changed live on
    /// components that kept running.
    fn publish(&self) {
        let old = self.handle.components();
        let views = self
            .nodes
            .iter()
            .map(|n| {
                let settings = old
                    .iter()
                    .find(|o| o.id == n.id && same_control(&o.control, &n.control))
                    .map(|o| o.settings.clone())
                    .unwrap_or_else(|| n.file_settings.clone());
                ComponentView {
                    id: n.id.clone(),
                    kind: n.kind,
                    type_name: n.type_name,
                    inputs: n.inputs.clone(),
                    input_schema: n.input_schema.clone(),
                    output_schema: n.output_schema.clone(),
                    settings,
                    telemetry: n.telemetry.clone(),
                    control: n.control.clone(),
                }
            })
            .collect();
        *self.handle.write() = views;
    }

    async fn run(
        mut self,
        shutdown: CancellationToken,
        mut reloads: Option<mpsc::Receiver<ReloadRequest>>,
    ) -> RunReport {
        let start = Instant::now();
        let mut failures = Vec::new();
        loop {
            let reload = async {
                match reloads.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Ok((task, result))) => self.finished(task, result, &mut failures),
                    Some(Err(e)) => {
                        failures.push(("?".to_string(), format!("component task died: {e}")));
                        self.source_stop.cancel();
                    }
                },
                request = reload => match request {
                    None => reloads = None,
                    Some(ReloadRequest { pipeline, reply }) => {
                        let outcome = if self.source_stop.is_cancelled() {
                            Err("the pipeline is shutting down".to_string())
                        } else {
                            self.reload(pipeline).await
                        };
                        let _ = reply.send(outcome);
                    }
                },
            }
        }
        if let Err(e) = self.dead_letter.flush() {
            failures.push(("dead_letter".into(), format!("cannot flush: {e}")));
        }
        let checkpoints = match self.checkpoints.take() {
            None => None,
            Some(c) => {
                let _ = c.reports.send(Report::End {
                    clean: failures.is_empty(),
                });
                drop(c.reports);
                Some(c.coordinator.await.unwrap_or_else(|e| CheckpointSummary {
                    errors: vec![format!("checkpoint coordinator stopped: {e}")],
                    ..Default::default()
                }))
            }
        };
        RunReport {
            elapsed: start.elapsed(),
            components: self.report_order.iter().map(|t| t.snapshot()).collect(),
            failures,
            interrupted: shutdown.is_cancelled(),
            checkpoints,
        }
    }

    fn finished(
        &mut self,
        task: u64,
        result: Result<(), ComponentError>,
        failures: &mut Vec<(String, String)>,
    ) {
        let Some((id, t)) = self.owners.remove(&task) else {
            return;
        };
        if self.nodes.iter().any(|n| n.task == task) {
            t.emit(ComponentStopped);
        }
        match result {
            Ok(()) => {}
            // Nobody reads the output any more: stop in order, as at the end of input.
            Err(e) if e.reader_gone => {
                tracing::info!(component_id = %id, "{e}; stopping the pipeline");
                self.source_stop.cancel();
            }
            Err(e) => {
                tracing::error!(component_id = %id, "component failed: {e}");
                failures.push((id, e.message));
                self.source_stop.cancel();
            }
        }
        if self.draining.remove(&task) {
            self.resume_checkpoints();
        }
    }

    /// Lets checkpoints go on once no replaced instance is left draining.
    fn resume_checkpoints(&mut self) {
        if !self.draining.is_empty() {
            return;
        }
        if let Some(c) = self.checkpoints.as_mut().filter(|c| c.paused) {
            c.paused = false;
            let _ = c.reports.send(Report::Resume);
            tracing::debug!("replaced components drained; checkpoints go on");
        }
    }

    /// Stops checkpoints from starting and waits until none is in flight; returns the
    /// id the next barrier will have (`0` without checkpoints).
    async fn pause_checkpoints(&mut self) -> Result<u64, String> {
        let Some(c) = self.checkpoints.as_mut() else {
            return Ok(0);
        };
        let (reply, answer) = oneshot::channel();
        let _ = c.reports.send(Report::Pause { reply });
        c.paused = true;
        match tokio::time::timeout(RELOAD_CHECKPOINT_WAIT, answer).await {
            Ok(Ok(next)) => Ok(next),
            Ok(Err(_)) => Err("the pipeline is shutting down".to_string()),
            Err(_) => {
                self.resume_checkpoints();
                Err(format!(
                    "a checkpoint in progress did not complete within {} s (is a sink \
                     failing to deliver?); nothing was changed, try again",
                    RELOAD_CHECKPOINT_WAIT.as_secs()
                ))
            }
        }
    }

    /// Swaps in `new`: see the module documentation.
    async fn reload(&mut self, new: Pipeline) -> Result<ReloadSummary, String> {
        let running = self.checkpoints.as_ref().map(|c| {
            c.store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .config()
                .clone()
        });
        if new.checkpoint != running {
            tracing::warn!(
                "the [checkpoint] table changed; it takes effect when the pipeline next starts"
            );
        }
        let old_index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        // Edges into components that may keep running, held open while the reload
        // awaits so none can close under it.
        let mut held: HashMap<(String, String), mpsc::Sender<Message>> = HashMap::new();
        let mut plans: Vec<Plan> = Vec::with_capacity(new.nodes.len());
        let mut plan_of: HashMap<&str, usize> = HashMap::new();
        for n in &new.nodes {
            let plan = match old_index.get(n.id.as_str()) {
                None => Plan::Build(None),
                Some(&o) => {
                    let old = &self.nodes[o];
                    let same_inputs = old.inputs.iter().collect::<HashSet<_>>()
                        == n.inputs.iter().collect::<HashSet<_>>();
                    let alive = self.owners.contains_key(&old.task);
                    // A new upstream instance needs the edge into this one open.
                    let edges: Vec<(String, Option<mpsc::Sender<Message>>)> = old
                        .edges
                        .iter()
                        .map(|(from, w)| (from.clone(), w.upgrade()))
                        .collect();
                    let fed = edges.iter().all(|(from, tx)| {
                        tx.is_some()
                            || !plan_of
                                .get(from.as_str())
                                .is_some_and(|&p| matches!(plans[p], Plan::Build(_)))
                    });
                    let plan = if old.kind != n.kind
                        || old.type_name != n.type_name
                        || !same_inputs
                        || !same_fields(&old.input_schema, &n.input_schema)
                        || !same_fields(&old.output_schema, &n.output_schema)
                        || !alive
                        || !fed
                    {
                        Plan::Build(Some(o))
                    } else if old.file_settings == n.settings {
                        Plan::Keep(o)
                    } else {
                        match self.tunable_diff(old, &n.settings).await {
                            Some(diff) => Plan::Retune(o, diff),
                            None => Plan::Build(Some(o)),
                        }
                    };
                    if !matches!(plan, Plan::Build(_)) {
                        for (from, tx) in edges {
                            if let Some(tx) = tx {
                                held.insert((from, n.id.clone()), tx);
                            }
                        }
                    }
                    plan
                }
            };
            plan_of.insert(n.id.as_str(), plans.len());
            plans.push(plan);
        }

        // Build everything new before touching the running graph.
        let mut built: Vec<Option<(Option<Runtime>, Arc<ComponentTelemetry>)>> = Vec::new();
        let mut buffers: HashMap<String, Arc<DiskBuffer>> = HashMap::new();
        for (n, plan) in new.nodes.iter().zip(&plans) {
            let Plan::Build(old) = plan else {
                built.push(None);
                continue;
            };
            let t = old
                .map(|o| &self.nodes[o])
                .filter(|o| o.kind == n.kind && o.type_name == n.type_name)
                .map(|o| o.telemetry.clone())
                .unwrap_or_else(|| {
                    Arc::new(ComponentTelemetry::new(n.id.as_str(), n.kind, n.type_name))
                });
            let component = ComponentContext::new(t.clone(), self.dead_letter.clone());
            let cx = BuildContext {
                component: component.clone(),
                runtime: self.runtime.clone(),
            };
            // A sink that replaces a running one is built once that one has ended: they
            // may write the same files (and a disk buffer has one owner).
            if n.kind == ComponentKind::Sink && old.is_some() {
                built.push(Some((None, t)));
                continue;
            }
            let rt = build_node(n, cx).await.map_err(|e| e.message)?;
            if let (Some(cfg), Some(input)) = (&n.buffer, &n.input_schema) {
                let b = open_buffer(&n.id, cfg, input, &component).map_err(|e| e.message)?;
                buffers.insert(n.id.clone(), b);
            }
            built.push(Some((Some(rt), t)));
        }

        let mut summary = ReloadSummary::default();
        let changes_graph = plans.iter().any(|p| matches!(p, Plan::Build(_)))
            || self
                .nodes
                .iter()
                .any(|o| !new.nodes.iter().any(|n| n.id == o.id));
        // With checkpoints, the graph changes between two checkpoints: none in flight,
        // none started until the replaced instances have drained.
        let next_barrier = if changes_graph {
            self.pause_checkpoints().await?
        } else {
            0
        };

        // Parameters changed in place.
        for (n, plan) in new.nodes.iter().zip(&plans) {
            let Plan::Retune(o, diff) = plan else {
                continue;
            };
            let old = &self.nodes[*o];
            let Some(control) = old.control.clone() else {
                continue;
            };
            let before = control.tunables().await.unwrap_or_default();
            for (name, value) in diff {
                if let Err(e) = control.set(name, value.clone()).await {
                    if changes_graph {
                        self.resume_checkpoints();
                    }
                    return Err(format!("transforms.{}.{name}: {e}", n.id));
                }
                self.handle.update_setting(&n.id, name, value);
                summary.changes.push(ParamChange {
                    component: n.id.clone(),
                    parameter: name.clone(),
                    old: before
                        .iter()
                        .find(|t| &t.name == name)
                        .map(|t| t.value.clone())
                        .unwrap_or(Value::Null),
                    new: value.clone(),
                });
            }
        }

        // New edges into new instances; the edges into kept ones stay.
        let mut senders = held;
        let mut in_edges: HashMap<String, Vec<InEdge>> = HashMap::new();
        for (n, plan) in new.nodes.iter().zip(&plans) {
            if n.kind != ComponentKind::Source && matches!(plan, Plan::Build(_)) {
                let edges = self.new_edges(&n.id, &n.inputs, &mut senders);
                in_edges.insert(n.id.clone(), edges);
            }
        }
        let metas: Vec<(String, Vec<String>)> = new
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.inputs.clone()))
            .collect();

        // Rewire the components that keep running.
        for (n, plan) in new.nodes.iter().zip(&plans) {
            if let Plan::Keep(o) | Plan::Retune(o, _) = plan
                && let Some(f) = &self.nodes[*o].fanout
            {
                f.replace(targets_of(&n.id, &metas, &senders));
            }
        }

        // Retire what is replaced or gone: sources are stopped; transforms and sinks
        // drain once nothing feeds their edges.
        let new_ids: HashSet<&str> = new.nodes.iter().map(|n| n.id.as_str()).collect();
        let mut retired = Vec::new();
        for (n, plan) in new.nodes.iter().zip(&plans) {
            if let Plan::Build(Some(o)) = plan {
                retired.push(*o);
                summary.rebuilt.push(n.id.clone());
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !new_ids.contains(n.id.as_str()) {
                retired.push(i);
                summary.removed.push(n.id.clone());
            }
        }
        let mut predecessors: HashMap<String, CancellationToken> = HashMap::new();
        for &i in &retired {
            let old = &self.nodes[i];
            if let Some(stop) = &old.stop {
                stop.cancel();
            }
            if self.owners.contains_key(&old.task) {
                self.draining.insert(old.task);
            }
            predecessors.insert(old.id.clone(), old.ended.clone());
        }

        // Slots for the new instances; the coordinator learns the graph before they run.
        let mut starts: HashMap<String, Start> = HashMap::new();
        let mut requests = HashMap::new();
        let mut graph = Vec::new();
        for (n, plan) in new.nodes.iter().zip(&plans) {
            let slot = match plan {
                Plan::Keep(o) | Plan::Retune(o, _) => self.nodes[*o].slot,
                Plan::Build(old) => {
                    let slot = self.next_slot;
                    self.next_slot += 1;
                    let mut start = Start {
                        slot,
                        first_barrier: next_barrier,
                        buffer: buffers.remove(&n.id),
                        ..Start::default()
                    };
                    if let Some(reports) = self.report_port(slot) {
                        if n.kind == ComponentKind::Source {
                            let (tx, rx) = mpsc::unbounded_channel();
                            requests.insert(slot, tx);
                            start.barriers = Some(BarrierPort::new(rx, reports));
                        }
                        // A source resumes where the instance it replaces stopped.
                        if n.kind == ComponentKind::Source && old.is_some() {
                            start.after = predecessors.get(&n.id).cloned();
                        }
                    }
                    if n.kind == ComponentKind::Sink && old.is_some() {
                        start.after = predecessors.get(&n.id).cloned();
                    }
                    starts.insert(n.id.clone(), start);
                    slot
                }
            };
            graph.push((slot, n.id.clone(), n.kind));
        }
        if let Some(c) = &self.checkpoints
            && changes_graph
        {
            let _ = c.reports.send(Report::Regraph {
                nodes: graph,
                requests,
            });
        }

        // Start the new instances, in topological order.
        let mut old_nodes: Vec<Option<Running>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        for ((n, plan), b) in new.nodes.into_iter().zip(plans).zip(built) {
            match (plan, b) {
                (Plan::Keep(o), _) => {
                    summary.kept.push(n.id.clone());
                    if let Some(mut r) = old_nodes[o].take() {
                        r.file_settings = n.settings;
                        self.nodes.push(r);
                    }
                }
                (Plan::Retune(o, _), _) => {
                    summary.retuned.push(n.id.clone());
                    if let Some(mut r) = old_nodes[o].take() {
                        r.file_settings = n.settings;
                        self.nodes.push(r);
                    }
                }
                (Plan::Build(old), Some((rt, t))) => {
                    if old.is_none() {
                        summary.added.push(n.id.clone());
                    }
                    let targets = targets_of(&n.id, &metas, &senders);
                    let edges = in_edges.remove(&n.id).unwrap_or_default();
                    let start = starts.remove(&n.id).unwrap_or_default();
                    self.spawn(n, rt, t, edges, targets, start);
                }
                (Plan::Build(_), None) => {}
            }
        }
        drop(senders);
        if changes_graph {
            self.resume_checkpoints();
        }
        self.publish();
        tracing::info!(
            kept = summary.kept.len(),
            retuned = summary.retuned.len(),
            rebuilt = summary.rebuilt.len(),
            added = summary.added.len(),
            removed = summary.removed.len(),
            "pipeline reloaded"
        );
        Ok(summary)
    }

    /// The settings that differ between `old` (as loaded) and `new`, when every one of
    /// them is a tunable parameter of the running transform.
    async fn tunable_diff(&self, old: &Running, new: &Value) -> Option<Vec<(String, Value)>> {
        let control = old.control.as_ref()?;
        let (Value::Object(before), Value::Object(after)) = (&old.file_settings, new) else {
            return None;
        };
        // A setting removed falls back to its default: rebuild rather than guess it.
        if before.keys().any(|k| !after.contains_key(k)) {
            return None;
        }
        let diff: Vec<(String, Value)> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let tunables = control.tunables().await.ok()?;
        diff.iter()
            .all(|(k, _)| tunables.iter().any(|t| &t.name == k))
            .then_some(diff)
    }
}

fn same_control(a: &Option<TransformControl>, b: &Option<TransformControl>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.same(b),
        (None, None) => true,
        _ => false,
    }
}

enum Step {
    Control(ControlRequest),
    Input(Event),
}

/// What a transform's thread reads from and writes to.
struct TransformIo {
    input: SinkInput,
    out: Output,
    requests: mpsc::Receiver<ControlRequest>,
    reports: Option<ReportPort>,
}

/// The loop of a transform's thread: process each batch, send its outputs with the
/// input's finalizers, snapshot state at checkpoint barriers, answer control requests
/// between batches, tick on silence, flush at the end.
fn run_transform(
    mut transform: Box<dyn Transform>,
    io: TransformIo,
    component: ComponentContext,
    runtime: &tokio::runtime::Handle,
    input_schema: Option<SchemaRef>,
) -> Result<(), ComponentError> {
    let TransformIo {
        mut input,
        mut out,
        mut requests,
        reports,
    } = io;
    let telemetry = component.telemetry().clone();
    let tap = AnomalyTap::new(out.schema(), input_schema.as_ref());
    telemetry.set_detector(tap.is_some());
    let mut cx = TransformContext::new(component);
    let mut last_tick = Instant::now();
    loop {
        let tick = transform.tick_interval();
        let since_tick = last_tick.elapsed();
        let step = runtime.block_on(async {
            tokio::select! {
                biased;
                Some(request) = requests.recv() => Step::Control(request),
                next = async {
                    match tick {
                        Some(every) => {
                            let wait = every.saturating_sub(since_tick);
                            input.next_event_timeout(wait.max(Duration::from_millis(1))).await
                        }
                        None => input.next_event().await,
                    }
                } => Step::Input(next),
            }
        });
        let next = match step {
            Step::Control(request) => {
                control::answer(&telemetry.id, transform.as_mut(), request);
                continue;
            }
            Step::Input(next) => next,
        };
        match next {
            Event::Batch(b) => {
                let started = Instant::now();
                cx.set_finalizers(b.finalizers);
                transform.process(b.data, &mut cx)?;
                cx.set_finalizers(Finalizers::none());
                telemetry.emit(BatchProcessed {
                    elapsed: started.elapsed(),
                });
            }
            Event::Barrier(id) => {
                // Work still in flight inside the transform is finished and its outputs
                // sent before the barrier: state and outputs are then exactly those of
                // the events before it.
                transform.before_checkpoint(&mut cx)?;
                if !forward(&mut cx, &mut out, tap.as_ref())? {
                    return Ok(());
                }
                if let Some(port) = &reports {
                    port.send(Report::TransformBarrier {
                        node: port.node,
                        id,
                        state: transform.checkpoint().map_err(|e| e.message),
                    });
                }
                match out.blocking_send_barrier(id) {
                    Ok(()) => {}
                    Err(SendError::Closed) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            Event::Idle => {}
            Event::Closed => {
                if let Some(port) = &reports {
                    transform.before_checkpoint(&mut cx)?;
                    port.send(Report::TransformFinal {
                        node: port.node,
                        state: transform.checkpoint().map_err(|e| e.message),
                    });
                }
                transform.flush(&mut cx)?;
                forward(&mut cx, &mut out, tap.as_ref())?;
                return Ok(());
            }
        }
        if let Some(every) = transform.tick_interval()
            && last_tick.elapsed() >= every
        {
            last_tick = Instant::now();
            transform.tick(SystemTime::now(), &mut cx)?;
        }
        if !forward(&mut cx, &mut out, tap.as_ref())? {
            return Ok(());
        }
    }
}

/// Picks the latest flagged rows out of a detector's output, for live views. Only for
/// transforms that add `is_anomaly` (a filter passing it on is no detector).
struct AnomalyTap {
    flag: usize,
    key: Option<usize>,
    reason: Option<usize>,
}

impl AnomalyTap {
    fn new(output: &SchemaRef, input: Option<&SchemaRef>) -> Option<AnomalyTap> {
        use arrow_schema::DataType;
        if input.is_some_and(|i| i.index_of("is_anomaly").is_ok()) {
            return None;
        }
        let typed = |name: &str, ty: DataType| {
            output
                .index_of(name)
                .ok()
                .filter(|&i| output.field(i).data_type() == &ty)
        };
        Some(AnomalyTap {
            flag: typed("is_anomaly", DataType::Boolean)?,
            key: typed("sensor_id", DataType::Utf8),
            reason: typed("reason", DataType::Utf8),
        })
    }

    fn scan(&self, batch: &arrow_array::RecordBatch, telemetry: &ComponentTelemetry) {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        let Some(flags) = batch.column(self.flag).as_boolean_opt() else {
            return;
        };
        if flags.true_count() == 0 {
            return;
        }
        let rows: Vec<usize> = flags.values().set_indices().collect();
        let from = rows
            .len()
            .saturating_sub(crate::telemetry::RECENT_ANOMALIES);
        let time_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let text = |col: Option<usize>, row: usize| {
            let c = batch.column(col?).as_string_opt::<i32>()?;
            (!c.is_null(row)).then(|| c.value(row).to_string())
        };
        let records = rows[from..]
            .iter()
            .filter(|&&r| flags.is_valid(r))
            .map(|&r| crate::telemetry::AnomalyRecord {
                time_ms,
                key: text(self.key, r),
                reason: text(self.reason, r),
            })
            .collect();
        telemetry.emit(crate::telemetry::AnomaliesSeen { records });
    }
}

/// Sends what the transform emitted, each batch with its tokens. `Ok(false)` when
/// downstream has gone away.
fn forward(
    cx: &mut TransformContext,
    out: &mut Output,
    tap: Option<&AnomalyTap>,
) -> Result<bool, ComponentError> {
    let telemetry = cx.component().telemetry().clone();
    for (data, finalizers) in cx.take_emitted() {
        if let Some(tap) = tap {
            tap.scan(&data, &telemetry);
        }
        match out.blocking_send(Batch::with_finalizers(data, finalizers)) {
            Ok(()) => {}
            Err(SendError::Closed) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}
