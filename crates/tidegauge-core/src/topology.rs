//! A pipeline's life: validate (pure, every error) -> build (I/O) -> run (bounded
//! channels, backpressure to the sources, orderly drain on shutdown).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow_schema::SchemaRef;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ack::{Finalizers, ack_channel};
use crate::batch::Batch;
use crate::checkpoint::{
    CheckpointConfig, CheckpointStore, CheckpointSummary, Coordinator, Report, ReportPort,
    SourceCheckpoint,
};
use crate::component::{
    BarrierPort, BuildContext, ComponentContext, Event, Message, Output, SendError, Sink,
    SinkContext, SinkInput, Source, SourceContext, Transform, TransformContext,
};
use crate::config::{ComponentEntry, LineIndex, PipelineConfig};
use crate::dead_letter::{DeadLetter, DeadLetterConfig};
use crate::disk_buffer::DiskBuffer;
use crate::error::{BuildError, ComponentError, ConfigError};
use crate::registry::{AnyConfig, ComponentKind};
use crate::schema;
use crate::telemetry::{ComponentTelemetry, TelemetrySnapshot};

/// Batches buffered on each edge. With batches of a few thousand rows this bounds memory
/// while keeping every stage busy.
pub const DEFAULT_EDGE_CAPACITY: usize = 4;

/// A component in a validated pipeline.
#[derive(Debug)]
pub struct Node {
    /// Id as written in the file.
    pub id: String,
    /// Kind.
    pub kind: ComponentKind,
    /// Registered type.
    pub type_name: &'static str,
    /// Ids of the components it reads from.
    pub inputs: Vec<String>,
    /// Typed settings.
    pub config: AnyConfig,
    /// Schema of its input (transforms and sinks).
    pub input_schema: Option<SchemaRef>,
    /// Schema of its output (sources and transforms).
    pub output_schema: Option<SchemaRef>,
    /// A sink's disk buffer, when configured.
    pub buffer: Option<crate::disk_buffer::DiskBufferConfig>,
}

/// A pipeline whose every component config and every edge has been checked.
#[derive(Debug)]
pub struct Pipeline {
    /// Components in topological order (every component after its inputs).
    pub nodes: Vec<Node>,
    /// Where records that cannot be processed go.
    pub dead_letter: DeadLetterConfig,
    /// Checkpoints, when configured.
    pub checkpoint: Option<CheckpointConfig>,
    /// Where settings sit in the file.
    pub lines: LineIndex,
}

impl Pipeline {
    /// Number of components of `kind`.
    pub fn count(&self, kind: ComponentKind) -> usize {
        self.nodes.iter().filter(|n| n.kind == kind).count()
    }

    /// A human description of the graph: each component, its inputs and output schema.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let inputs = if n.inputs.is_empty() {
                String::new()
            } else {
                format!(" <- {}", n.inputs.join(", "))
            };
            out.push_str(&format!(
                "  {} {} ({}){inputs}\n",
                n.kind, n.id, n.type_name
            ));
            if let Some(s) = &n.output_schema {
                out.push_str(&format!("      emits {}\n", schema::describe(s)));
            }
        }
        out
    }
}

/// Checks a parsed pipeline as a graph and propagates schemas along its edges. Returns
/// every problem found, each with its place.
pub fn validate(config: PipelineConfig) -> Result<Pipeline, Vec<ConfigError>> {
    let PipelineConfig {
        components,
        dead_letter,
        checkpoint,
        lines,
        errors: parse_errors,
    } = config;
    let mut errors = parse_errors;
    let index: HashMap<&str, usize> = components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();

    if !components.iter().any(|c| c.kind == ComponentKind::Source) {
        errors.push(ConfigError::new(
            "sources",
            "the pipeline has no source (add a `[sources.<id>]` table)",
        ));
    }
    if !components.iter().any(|c| c.kind == ComponentKind::Sink) {
        errors.push(ConfigError::new(
            "sinks",
            "the pipeline has no sink (add a `[sinks.<id>]` table)",
        ));
    }

    // Edges, checked.
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); components.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); components.len()];
    for (i, c) in components.iter().enumerate() {
        let path = format!("{}.{}.inputs", c.kind.table(), c.id);
        for input in &c.inputs {
            match index.get(input.as_str()) {
                None => {
                    let known: Vec<&str> = components
                        .iter()
                        .filter(|o| o.kind != ComponentKind::Sink && o.id != c.id)
                        .map(|o| o.id.as_str())
                        .collect();
                    errors.push(ConfigError::new(
                        path.clone(),
                        format!(
                            "unknown input `{input}` (known sources and transforms: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                Some(&j) if components[j].kind == ComponentKind::Sink => {
                    errors.push(ConfigError::new(
                        path.clone(),
                        format!("`{input}` is a sink; sinks have no output to read"),
                    ))
                }
                Some(&j) if j == i => errors.push(ConfigError::new(
                    path.clone(),
                    "a component cannot read its own output",
                )),
                Some(&j) => {
                    if !edges[i].contains(&j) {
                        edges[i].push(j);
                        consumers[j].push(i);
                    }
                }
            }
        }
    }

    for (i, c) in components.iter().enumerate() {
        if c.kind != ComponentKind::Sink && consumers[i].is_empty() {
            errors.push(ConfigError::new(
                format!("{}.{}", c.kind.table(), c.id),
                format!(
                    "{} `{}` is not used: no transform or sink lists it in `inputs`",
                    c.kind, c.id
                ),
            ));
        }
    }

    // Topological order (Kahn); what is left over sits on a cycle.
    let mut indegree: Vec<usize> = edges.iter().map(|e| e.len()).collect();
    let mut queue: VecDeque<usize> = (0..components.len())
        .filter(|&i| indegree[i] == 0)
        .collect();
    let mut order = Vec::with_capacity(components.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &k in &consumers[i] {
            indegree[k] -= 1;
            if indegree[k] == 0 {
                queue.push_back(k);
            }
        }
    }
    if order.len() < components.len() {
        let on_cycle: BTreeSet<&str> = (0..components.len())
            .filter(|i| !order.contains(i))
            .map(|i| components[i].id.as_str())
            .collect();
        for i in (0..components.len()).filter(|i| !order.contains(i)) {
            let c = &components[i];
            errors.push(ConfigError::new(
                format!("{}.{}.inputs", c.kind.table(), c.id),
                format!(
                    "`{}` is part of a cycle among: {}",
                    c.id,
                    on_cycle.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        // Still check what can be checked.
        let rest: Vec<usize> = (0..components.len())
            .filter(|i| !order.contains(i))
            .collect();
        order.extend(rest);
    }

    // Schemas, in order. A component whose input could not be typed is skipped, so one
    // mistake is reported once, not once per downstream component.
    let mut outputs: Vec<Option<SchemaRef>> = vec![None; components.len()];
    let mut inputs_of: Vec<Option<SchemaRef>> = vec![None; components.len()];
    for &i in &order {
        let c = &components[i];
        let prefix = format!("{}.{}", c.kind.table(), c.id);
        let input = if c.kind == ComponentKind::Source {
            None
        } else {
            match merged_input(c, &edges[i], &components, &outputs) {
                Ok(Some(s)) => Some(s),
                Ok(None) => continue,
                Err(e) => {
                    errors.push(e.prefixed(&prefix));
                    continue;
                }
            }
        };
        let result = match (&c.config, &input) {
            (Some(AnyConfig::Source(cfg)), _) => cfg.validate().map(Some),
            (Some(AnyConfig::Transform(cfg)), Some(input)) => cfg.validate(input).map(Some),
            (Some(AnyConfig::Sink(cfg)), Some(input)) => cfg.validate(input).map(|_| None),
            _ => Ok(None),
        };
        match result {
            Ok(out) => outputs[i] = out,
            Err(errs) => errors.extend(errs.into_iter().map(|e| e.prefixed(&prefix))),
        }
        inputs_of[i] = input;
    }

    if !errors.is_empty() {
        lines.locate(&mut errors);
        return Err(errors);
    }

    let mut slots: Vec<Option<ComponentEntry>> = components.into_iter().map(Some).collect();
    let nodes = order
        .into_iter()
        .filter_map(|i| {
            let c = slots[i].take()?;
            Some(Node {
                id: c.id,
                kind: c.kind,
                type_name: c.type_name,
                inputs: c.inputs,
                config: c.config?,
                input_schema: inputs_of[i].take(),
                output_schema: outputs[i].take(),
                buffer: c.buffer,
            })
        })
        .collect();
    Ok(Pipeline {
        nodes,
        dead_letter,
        checkpoint,
        lines,
    })
}

/// The schema a component sees on its input: that of its inputs, which must agree.
fn merged_input(
    c: &ComponentEntry,
    edges: &[usize],
    components: &[ComponentEntry],
    outputs: &[Option<SchemaRef>],
) -> Result<Option<SchemaRef>, ConfigError> {
    let mut first: Option<(usize, &SchemaRef)> = None;
    for &j in edges {
        let Some(s) = outputs[j].as_ref() else {
            return Ok(None);
        };
        match first {
            None => first = Some((j, s)),
            Some((k, f)) if f.fields() != s.fields() => {
                return Err(ConfigError::new(
                    "inputs",
                    format!(
                        "inputs of `{}` disagree: `{}` emits {} but `{}` emits {}",
                        c.id,
                        components[k].id,
                        schema::describe(f),
                        components[j].id,
                        schema::describe(s)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(first.map(|(_, s)| s.clone()))
}

/// Loads and validates a pipeline from its text.
pub fn load(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, Vec<ConfigError>> {
    validate(crate::config::load(text, env)?)
}

enum Runtime {
    Source(Box<dyn Source>),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

/// A built pipeline, ready to run: components constructed, resources open.
pub struct BuiltPipeline {
    nodes: Vec<(Node, Runtime)>,
    telemetry: Vec<Arc<ComponentTelemetry>>,
    dead_letter: DeadLetter,
    edge_capacity: usize,
    checkpoints: Option<CheckpointStore>,
    buffers: HashMap<String, Arc<DiskBuffer>>,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// Wall time from start to the last component finishing.
    pub elapsed: Duration,
    /// Final counters of every component, in topological order.
    pub components: Vec<TelemetrySnapshot>,
    /// Components that failed, with their error.
    pub failures: Vec<(String, String)>,
    /// Whether the run ended because shutdown was requested (rather than end of input).
    pub interrupted: bool,
    /// Checkpoints taken, when the pipeline has a `[checkpoint]` table.
    pub checkpoints: Option<CheckpointSummary>,
}

impl RunReport {
    /// Total events emitted by sources.
    pub fn source_events(&self) -> u64 {
        self.components
            .iter()
            .filter(|c| c.kind == ComponentKind::Source)
            .map(|c| c.events_out)
            .sum()
    }

    /// Total anomalies flagged by detectors.
    pub fn anomalies(&self) -> u64 {
        self.components.iter().map(|c| c.anomalies).sum()
    }

    /// Total records dead-lettered.
    pub fn dead_lettered(&self) -> u64 {
        self.components.iter().map(|c| c.dead_lettered).sum()
    }
}

/// Shared handle on the counters of a running pipeline.
#[derive(Clone)]
pub struct TelemetryHandle(Vec<Arc<ComponentTelemetry>>);

impl TelemetryHandle {
    /// Current counters of every component.
    pub fn snapshot(&self) -> Vec<TelemetrySnapshot> {
        self.0.iter().map(|t| t.snapshot()).collect()
    }
}

/// Builds every component (opening files, connecting), in topological order.
pub async fn build(pipeline: Pipeline) -> Result<BuiltPipeline, BuildError> {
    let dead_letter = DeadLetter::open(&pipeline.dead_letter).map_err(|e| {
        BuildError::new(format!(
            "dead_letter.path: cannot open {}: {e}",
            pipeline
                .dead_letter
                .path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    let mut checkpoints = match &pipeline.checkpoint {
        None => None,
        Some(c) => Some(
            CheckpointStore::open(c)
                .map_err(|e| BuildError::new(format!("checkpoint: cannot open: {e}")))?,
        ),
    };
    let runtime = tokio::runtime::Handle::current();
    let mut buffers = HashMap::new();
    let mut nodes = Vec::with_capacity(pipeline.nodes.len());
    let mut telemetry = Vec::with_capacity(pipeline.nodes.len());
    for node in pipeline.nodes {
        let t = Arc::new(ComponentTelemetry::new(
            node.id.as_str(),
            node.kind,
            node.type_name,
        ));
        let cx = BuildContext {
            component: ComponentContext::new(t.clone(), dead_letter.clone()),
            runtime: runtime.clone(),
        };
        let place = format!("{}.{}", node.kind.table(), node.id);
        let built = match &node.config {
            AnyConfig::Source(c) => {
                let schema = node.output_schema.clone().ok_or_else(|| missing(&place))?;
                c.build(schema, cx).await.map(Runtime::Source)
            }
            AnyConfig::Transform(c) => {
                let input = node.input_schema.clone().ok_or_else(|| missing(&place))?;
                let output = node.output_schema.clone().ok_or_else(|| missing(&place))?;
                c.build(input, output, cx).map(Runtime::Transform)
            }
            AnyConfig::Sink(c) => {
                let input = node.input_schema.clone().ok_or_else(|| missing(&place))?;
                c.build(input, cx).await.map(Runtime::Sink)
            }
        }
        .map_err(|e| BuildError::new(format!("{place}: {}", e.message)))?;
        let built = restore(built, &node, &place, checkpoints.as_ref())?;
        if let (Some(cfg), Some(input)) = (&node.buffer, &node.input_schema) {
            let (buffer, recovery) = DiskBuffer::open(cfg, input.clone()).map_err(|e| {
                BuildError::new(format!(
                    "{place}.buffer: cannot open {}: {e}",
                    cfg.path.display()
                ))
            })?;
            let cx = ComponentContext::new(t.clone(), dead_letter.clone());
            for (file, d) in &recovery.damage {
                cx.dead_letter(
                    &format!("{}:{}", file.display(), d.offset),
                    &format!("disk buffer: {} ({} bytes)", d.reason, d.bytes),
                    b"",
                );
            }
            if recovery.records > 0 {
                tracing::info!(
                    component_id = %node.id,
                    "disk buffer {}: {} batch(es) from an earlier run to deliver",
                    cfg.path.display(),
                    recovery.records
                );
            }
            buffers.insert(node.id.clone(), buffer);
        }
        telemetry.push(t);
        nodes.push((node, built));
    }
    if let Some(store) = &mut checkpoints {
        // A transform that has something to checkpoint when just built keeps state
        // (asked only when the checkpoint does not already say so).
        let stateful = store.has_transform_state()
            || nodes.iter().any(|(_, rt)| {
                matches!(rt, Runtime::Transform(t) if matches!(t.checkpoint(), Ok(Some(_))))
            });
        store.set_stateful(stateful);
        for id in store.transforms_with_state() {
            if !nodes
                .iter()
                .any(|(n, _)| n.id == id && n.kind == ComponentKind::Transform)
            {
                tracing::warn!(
                    "checkpoint {} holds state of transform `{id}`, which the pipeline no longer has; ignored",
                    store.last_id()
                );
            }
        }
    }
    Ok(BuiltPipeline {
        nodes,
        telemetry,
        dead_letter,
        edge_capacity: DEFAULT_EDGE_CAPACITY,
        checkpoints,
        buffers,
    })
}

/// Gives a transform the state it had at the last checkpoint.
fn restore(
    built: Runtime,
    node: &Node,
    place: &str,
    store: Option<&CheckpointStore>,
) -> Result<Runtime, BuildError> {
    let (mut t, store) = match (built, store) {
        (Runtime::Transform(t), Some(store)) => (t, store),
        (other, _) => return Ok(other),
    };
    let state = store
        .transform_state(&node.id)
        .map_err(|e| BuildError::new(format!("{place}: cannot read its checkpoint: {e}")))?;
    if let Some(state) = state {
        t.restore(&state).map_err(|e| {
            BuildError::new(format!(
                "{place}: cannot restore checkpoint {}: {}",
                store.last_id(),
                e.message
            ))
        })?;
        tracing::info!(
            component_id = %node.id,
            "restored state of checkpoint {} ({} bytes)",
            store.last_id(),
            state.len()
        );
    }
    Ok(Runtime::Transform(t))
}

fn missing(place: &str) -> BuildError {
    BuildError::new(format!(
        "{place}: schema missing (pipeline was not validated)"
    ))
}

impl BuiltPipeline {
    /// A handle to watch the counters while the pipeline runs.
    pub fn telemetry(&self) -> TelemetryHandle {
        TelemetryHandle(self.telemetry.clone())
    }

    /// Sets how many batches each edge buffers (at least 1).
    pub fn with_edge_capacity(mut self, capacity: usize) -> Self {
        self.edge_capacity = capacity.max(1);
        self
    }

    /// Runs until every source has finished (end of input) or `shutdown` is cancelled,
    /// then drains: transforms flush, sinks flush and close. With checkpoints configured,
    /// takes them while running and a final one after a clean end.
    pub async fn run(self, shutdown: CancellationToken) -> RunReport {
        let start = Instant::now();
        let runtime = tokio::runtime::Handle::current();
        let BuiltPipeline {
            nodes,
            telemetry,
            dead_letter,
            edge_capacity,
            checkpoints,
            mut buffers,
        } = self;

        let ids: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.id.clone(), i))
            .collect();
        // One bounded channel per edge: a consumer can stop reading one input while it
        // aligns a checkpoint barrier.
        let mut targets: Vec<Vec<mpsc::Sender<Message>>> = vec![Vec::new(); nodes.len()];
        let mut edges: Vec<Vec<mpsc::Receiver<Message>>> =
            (0..nodes.len()).map(|_| Vec::new()).collect();
        for (i, (n, _)) in nodes.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for input in &n.inputs {
                if let Some(&j) = ids.get(input)
                    && seen.insert(j)
                {
                    let (tx, rx) = mpsc::channel(edge_capacity);
                    targets[j].push(tx);
                    edges[i].push(rx);
                }
            }
        }

        // Checkpoint coordinator: barrier requests to sources, reports from everyone.
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let mut barrier_ports: HashMap<usize, BarrierPort> = HashMap::new();
        let mut source_checkpoints: HashMap<usize, SourceCheckpoint> = HashMap::new();
        let mut coordinator = None;
        let mut first_barrier = 0;
        if let Some(store) = checkpoints {
            let mut requests = HashMap::new();
            for (i, (n, _)) in nodes.iter().enumerate() {
                if n.kind == ComponentKind::Source {
                    let (tx, rx) = mpsc::unbounded_channel();
                    requests.insert(i, tx);
                    let port = ReportPort {
                        node: i,
                        tx: report_tx.clone(),
                    };
                    barrier_ports.insert(i, BarrierPort::new(rx, port));
                    source_checkpoints.insert(i, store.source_handle(&n.id));
                }
            }
            let kinds = nodes.iter().map(|(n, _)| (n.id.clone(), n.kind)).collect();
            let c = Coordinator::new(store, kinds, requests);
            first_barrier = c.first_id();
            coordinator = Some(tokio::spawn(c.run(report_rx)));
        }
        let reports_for = |i: usize| {
            coordinator.as_ref().map(|_| ReportPort {
                node: i,
                tx: report_tx.clone(),
            })
        };

        let source_stop = shutdown.child_token();
        let mut tasks: JoinSet<(usize, Result<(), ComponentError>)> = JoinSet::new();
        let mut names = Vec::with_capacity(nodes.len());
        for (i, ((node, rt), t)) in nodes.into_iter().zip(telemetry.iter()).enumerate() {
            names.push(node.id.clone());
            let component = ComponentContext::new(t.clone(), dead_letter.clone());
            let reports = reports_for(i);
            let out = node.output_schema.clone().map(|s| {
                let out = Output::new(s, std::mem::take(&mut targets[i]), t.clone());
                match barrier_ports.remove(&i) {
                    Some(port) => out.with_barriers(port),
                    None => out,
                }
            });
            let input = (node.kind != ComponentKind::Source).then(|| {
                let input = SinkInput::from_edges(std::mem::take(&mut edges[i]), t.clone());
                match (&reports, node.kind) {
                    (Some(port), ComponentKind::Sink) => {
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
                    _ => input,
                }
            });
            match (rt, out, input) {
                (Runtime::Source(src), Some(out), None) => {
                    let cx = SourceContext {
                        component,
                        out,
                        shutdown: source_stop.clone(),
                        runtime: runtime.clone(),
                        checkpoint: source_checkpoints.remove(&i).unwrap_or_default(),
                    };
                    tasks.spawn(async move { (i, src.run(cx).await) });
                }
                (Runtime::Transform(tr), Some(out), Some(input)) => {
                    let (done_tx, done_rx) = oneshot::channel();
                    let rt = runtime.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("tg-{}", node.id))
                        .spawn(move || {
                            let r = run_transform(tr, input, out, component, &rt, reports);
                            let _ = done_tx.send(r);
                        });
                    tasks.spawn(async move {
                        let r = match spawned {
                            Err(e) => Err(ComponentError::new(format!("cannot start thread: {e}"))),
                            Ok(_) => done_rx.await.unwrap_or_else(|_| {
                                Err(ComponentError::new("transform thread panicked"))
                            }),
                        };
                        (i, r)
                    });
                }
                (Runtime::Sink(sink), None, Some(input)) => {
                    let cx = SinkContext {
                        component: component.clone(),
                        runtime: runtime.clone(),
                    };
                    match buffers.remove(&node.id) {
                        None => {
                            tasks.spawn(async move { (i, sink.run(input, cx).await) });
                        }
                        Some(buffer) => {
                            // input -> disk buffer -> sink. The sink's own input is not
                            // counted again.
                            let (tx, rx) = mpsc::channel(edge_capacity);
                            let scratch = Arc::new(ComponentTelemetry::new(
                                node.id.as_str(),
                                ComponentKind::Sink,
                                node.type_name,
                            ));
                            let inner = SinkInput::new(rx, scratch);
                            tasks.spawn(async move {
                                let (sunk, buffered) = tokio::join!(
                                    sink.run(inner, cx),
                                    buffer.run(input, tx, component)
                                );
                                (i, sunk.and(buffered))
                            });
                        }
                    }
                }
                _ => {
                    tasks.spawn(async move {
                        (
                            i,
                            Err(ComponentError::new(
                                "component wiring does not match its kind",
                            )),
                        )
                    });
                }
            }
        }
        drop(targets);

        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, r)) => {
                    if let Some(port) = reports_for(i) {
                        port.send(Report::Finished {
                            node: i,
                            ok: r.is_ok(),
                        });
                    }
                    if let Err(e) = r {
                        tracing::error!(component_id = %names[i], "component failed: {e}");
                        failures.push((names[i].clone(), e.message));
                        source_stop.cancel();
                    }
                }
                Err(e) => {
                    failures.push(("?".to_string(), format!("component task died: {e}")));
                    source_stop.cancel();
                }
            }
        }
        if let Err(e) = dead_letter.flush() {
            failures.push(("dead_letter".into(), format!("cannot flush: {e}")));
        }
        let _ = report_tx.send(Report::End {
            clean: failures.is_empty(),
        });
        drop(report_tx);
        let checkpoints = match coordinator {
            Some(c) => Some(c.await.unwrap_or_else(|e| CheckpointSummary {
                errors: vec![format!("checkpoint coordinator stopped: {e}")],
                ..Default::default()
            })),
            None => None,
        };
        RunReport {
            elapsed: start.elapsed(),
            components: telemetry.iter().map(|t| t.snapshot()).collect(),
            failures,
            interrupted: shutdown.is_cancelled(),
            checkpoints,
        }
    }
}

/// The loop of a transform's thread: process each batch, send its outputs with the
/// input's finalizers, snapshot state at checkpoint barriers, tick on silence, flush at
/// the end.
fn run_transform(
    mut transform: Box<dyn Transform>,
    mut input: SinkInput,
    mut out: Output,
    component: ComponentContext,
    runtime: &tokio::runtime::Handle,
    reports: Option<ReportPort>,
) -> Result<(), ComponentError> {
    let mut cx = TransformContext::new(component);
    let mut last_tick = Instant::now();
    loop {
        let next = match transform.tick_interval() {
            Some(every) => {
                let wait = every.saturating_sub(last_tick.elapsed());
                input.blocking_next_event_timeout(runtime, wait.max(Duration::from_millis(1)))
            }
            None => input.blocking_next_event(),
        };
        match next {
            Event::Batch(b) => {
                cx.set_finalizers(b.finalizers);
                transform.process(b.data, &mut cx)?;
                cx.set_finalizers(Finalizers::none());
            }
            Event::Barrier(id) => {
                // Work still in flight inside the transform is finished and its outputs
                // sent before the barrier: state and outputs are then exactly those of
                // the events before it.
                transform.before_checkpoint(&mut cx)?;
                if !forward(&mut cx, &mut out)? {
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
                forward(&mut cx, &mut out)?;
                return Ok(());
            }
        }
        if let Some(every) = transform.tick_interval()
            && last_tick.elapsed() >= every
        {
            last_tick = Instant::now();
            transform.tick(SystemTime::now(), &mut cx)?;
        }
        if !forward(&mut cx, &mut out)? {
            return Ok(());
        }
    }
}

/// Sends what the transform emitted, each batch with its tokens. `Ok(false)` when
/// downstream has gone away.
fn forward(cx: &mut TransformContext, out: &mut Output) -> Result<bool, ComponentError> {
    for (data, finalizers) in cx.take_emitted() {
        match out.blocking_send(Batch::with_finalizers(data, finalizers)) {
            Ok(()) => {}
            Err(SendError::Closed) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}
