//! A pipeline's life: validate (pure, every error) -> build (I/O) -> run (bounded
//! channels, backpressure to the sources, orderly drain on shutdown).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::SchemaRef;

use crate::checkpoint::{CheckpointConfig, CheckpointStore, CheckpointSummary};
use crate::component::{BuildContext, ComponentContext, Sink, Source, Transform};
use crate::config::{ComponentEntry, LineIndex, PipelineConfig};
use crate::dead_letter::{DeadLetter, DeadLetterConfig};
use crate::disk_buffer::{DiskBuffer, DiskBufferConfig};
use crate::error::{BuildError, ConfigError};
use crate::kind::ComponentKind;
use crate::registry::AnyConfig;
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
    /// The settings as written, as JSON.
    pub settings: serde_json::Value,
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
    /// The admin API settings, when `[admin]` is present.
    pub admin: Option<crate::admin::AdminConfig>,
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
        admin,
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
                    let mut known: Vec<&str> = components
                        .iter()
                        .filter(|o| o.kind != ComponentKind::Sink && o.id != c.id)
                        .map(|o| o.id.as_str())
                        .take(21)
                        .collect();
                    if known.len() > 20 {
                        // Bounded, however large the pipeline.
                        known.truncate(20);
                        known.push("...");
                    }
                    let hint = crate::suggest::hint(
                        input,
                        components
                            .iter()
                            .filter(|o| o.kind != ComponentKind::Sink && o.id != c.id)
                            .map(|o| o.id.as_str()),
                    );
                    errors.push(ConfigError::new(
                        path.clone(),
                        format!(
                            "unknown input `{input}` (known sources and transforms: {}){hint}",
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
                    // Inputs are few per component: a scan is cheaper than a set.
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
        let mut ordered = vec![false; components.len()];
        for &i in &order {
            ordered[i] = true;
        }
        let rest: Vec<usize> = (0..components.len()).filter(|&i| !ordered[i]).collect();
        // What is left is on a cycle or downstream of one; each cycle (a strongly
        // connected group) is reported once, at its first member in the file, its
        // members listed once and at most `SHOWN` of them: the output stays small
        // whatever the size of the pipeline.
        const SHOWN: usize = 10;
        for group in cycles(&rest, &edges) {
            let first = group[0];
            let c = &components[first];
            let mut names: Vec<&str> = group
                .iter()
                .take(SHOWN)
                .map(|&i| components[i].id.as_str())
                .collect();
            let more = if group.len() > SHOWN {
                names.push("...");
                format!(" ({} in all)", group.len())
            } else {
                String::new()
            };
            errors.push(ConfigError::new(
                format!("{}.{}.inputs", c.kind.table(), c.id),
                format!(
                    "`{}` is part of a cycle among: {}{more}",
                    c.id,
                    names.join(", ")
                ),
            ));
        }
        // Still check what can be checked.
        order.extend(rest);
    }

    // Schemas, in order. A component whose input could not be typed is skipped, so one
    // mistake is reported once, not once per downstream component; its own settings'
    // ranges, which need no input, are still checked.
    let mut outputs: Vec<Option<SchemaRef>> = vec![None; components.len()];
    let mut inputs_of: Vec<Option<SchemaRef>> = vec![None; components.len()];
    for &i in &order {
        let c = &components[i];
        let prefix = format!("{}.{}", c.kind.table(), c.id);
        let input = if c.kind == ComponentKind::Source {
            None
        } else {
            let ranges = |errors: &mut Vec<ConfigError>| {
                if let Some(cfg) = &c.config {
                    errors.extend(cfg.range_errors().into_iter().map(|e| e.prefixed(&prefix)));
                }
            };
            match merged_input(c, &edges[i], &components, &outputs) {
                Ok(Some(s)) => Some(s),
                Ok(None) => {
                    ranges(&mut errors);
                    continue;
                }
                Err(e) => {
                    errors.push(e.prefixed(&prefix));
                    ranges(&mut errors);
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
                settings: c.settings,
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
        admin,
        lines,
    })
}

/// The cycles among `nodes` (those a topological sort could not place): each strongly
/// connected group of more than one node, its members in file order, the groups in the
/// order of their first member. Iterative Tarjan, linear in nodes and edges.
fn cycles(nodes: &[usize], edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let mut member = vec![false; n];
    for &i in nodes {
        member[i] = true;
    }
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut groups = Vec::new();
    // (node, position in its edge list)
    let mut work: Vec<(usize, usize)> = Vec::new();
    for &root in nodes {
        if index[root] != UNSEEN {
            continue;
        }
        work.push((root, 0));
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(top) = work.last_mut() {
            let v = top.0;
            if let Some(&w) = edges[v].get(top.1) {
                top.1 += 1;
                if !member[w] {
                    continue;
                }
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut group = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    group.push(w);
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort_unstable();
                    groups.push(group);
                }
            }
        }
    }
    groups.sort_by_key(|g| g[0]);
    groups
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

pub(crate) enum Runtime {
    Source(Box<dyn Source>),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

/// A built pipeline, ready to run: components constructed, resources open.
pub struct BuiltPipeline {
    pub(crate) nodes: Vec<(Node, Runtime)>,
    pub(crate) telemetry: Vec<Arc<ComponentTelemetry>>,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) edge_capacity: usize,
    pub(crate) checkpoints: Option<CheckpointStore>,
    pub(crate) buffers: HashMap<String, Arc<DiskBuffer>>,
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

/// What `tidegauge check` adds to validation: every source looks at the input it would
/// read. Returns the inputs that cannot be read (directories, no permission) and those
/// missing, each with its place and line. Does I/O; [`build`] finds the same problems by
/// failing.
pub fn check_inputs(pipeline: &Pipeline) -> (Vec<ConfigError>, Vec<ConfigError>) {
    use crate::component::InputProblem;
    let (mut unreadable, mut missing) = (Vec::new(), Vec::new());
    for n in &pipeline.nodes {
        let AnyConfig::Source(c) = &n.config else {
            continue;
        };
        let place = format!("{}.{}", n.kind.table(), n.id);
        for p in c.check_inputs() {
            match p {
                InputProblem::Unreadable(e) => unreadable.push(e.prefixed(&place)),
                InputProblem::Missing(e) => missing.push(e.prefixed(&place)),
            }
        }
    }
    pipeline.lines.locate(&mut unreadable);
    pipeline.lines.locate(&mut missing);
    (unreadable, missing)
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
    if let Some(store) = &mut checkpoints {
        store.set_dead_letter(dead_letter.clone());
    }
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
        let built = build_node(&node, cx).await?;
        let built = restore(built, &node, &place, checkpoints.as_ref())?;
        if let (Some(cfg), Some(input)) = (&node.buffer, &node.input_schema) {
            let cx = ComponentContext::new(t.clone(), dead_letter.clone());
            buffers.insert(node.id.clone(), open_buffer(&node.id, cfg, input, &cx)?);
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
        let inputs = nodes
            .iter()
            .filter_map(|(n, _)| match &n.config {
                AnyConfig::Source(c) => Some((
                    n.id.clone(),
                    crate::checkpoint::InputIdentity {
                        type_name: n.type_name.to_string(),
                        input: c.input_identity(),
                    },
                )),
                _ => None,
            })
            .collect();
        store
            .begin(inputs)
            .map_err(|e| BuildError::new(format!("checkpoint: {e}")))?;
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

/// Builds one component of a validated pipeline.
pub(crate) async fn build_node(node: &Node, cx: BuildContext) -> Result<Runtime, BuildError> {
    let place = format!("{}.{}", node.kind.table(), node.id);
    match &node.config {
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
    .map_err(|e| BuildError::new(format!("{place}: {}", e.message)))
}

/// Opens a sink's disk buffer, when it has one; damaged records found in it are
/// dead-lettered.
pub(crate) fn open_buffer(
    id: &str,
    cfg: &DiskBufferConfig,
    input: &SchemaRef,
    cx: &ComponentContext,
) -> Result<Arc<DiskBuffer>, BuildError> {
    let place = format!("{}.{id}", ComponentKind::Sink.table());
    let (buffer, recovery) = DiskBuffer::open(cfg, input.clone()).map_err(|e| {
        BuildError::new(format!(
            "{place}.buffer: cannot open {}: {e}",
            cfg.path.display()
        ))
    })?;
    for (file, d) in &recovery.damage {
        cx.dead_letter(
            &format!("{}:{}", file.display(), d.offset),
            &format!("disk buffer: {} ({} bytes)", d.reason, d.bytes),
            b"",
        );
    }
    if recovery.records > 0 {
        tracing::info!(
            component_id = %id,
            "disk buffer {}: {} batch(es) from an earlier run to deliver",
            cfg.path.display(),
            recovery.records
        );
    }
    Ok(buffer)
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
}
