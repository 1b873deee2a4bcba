//! The runner: the graph of running instances, its edges, its tasks and its checkpoints.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::handle::{ComponentView, LiveHandle};
use super::plan::Shape;
use super::{ReloadRequest, RunOptions};
use crate::checkpoint::{
    CheckpointStore, CheckpointSummary, Coordinator, Report, ReportPort, SourceCheckpoint,
};
use crate::component::{BarrierPort, Fanout, Message};
use crate::control::TransformControl;
use crate::dead_letter::DeadLetter;
use crate::disk_buffer::DiskBuffer;
use crate::error::ComponentError;
use crate::kind::ComponentKind;
use crate::telemetry::{ComponentStopped, ComponentTelemetry};
use crate::topology::{BuiltPipeline, Node, RunReport};

/// A component instance in the running graph.
pub(super) struct Running {
    pub(super) id: String,
    pub(super) kind: ComponentKind,
    pub(super) type_name: &'static str,
    pub(super) inputs: Vec<String>,
    pub(super) input_schema: Option<SchemaRef>,
    pub(super) output_schema: Option<SchemaRef>,
    /// Settings as written in the file it was loaded from.
    pub(super) file_settings: Value,
    pub(super) telemetry: Arc<ComponentTelemetry>,
    /// Its input edges, by upstream id (transforms and sinks); weak, so an edge closes
    /// when the last output feeding it goes.
    pub(super) edges: Vec<(String, mpsc::WeakSender<Message>)>,
    /// Its output (sources and transforms).
    pub(super) fanout: Option<Fanout>,
    /// Stops it (sources).
    pub(super) stop: Option<CancellationToken>,
    pub(super) control: Option<TransformControl>,
    /// The task running this instance.
    pub(super) task: u64,
    /// Its slot at the checkpoint coordinator.
    pub(super) slot: usize,
    /// Cancelled once the instance's task has ended.
    pub(super) ended: CancellationToken,
    /// A sink's definition as it runs: what a reload falls back to when the sink's new
    /// settings fail to build (updated by the sink's task if it rolled back itself).
    pub(super) definition: Option<Definition>,
}

/// A sink's running definition, shared with its task.
pub(super) type Definition = Arc<std::sync::Mutex<Arc<Node>>>;

impl Running {
    /// What a reload compares with the new pipeline.
    pub(super) fn shape(&self) -> Shape<'_> {
        Shape {
            id: &self.id,
            kind: self.kind,
            type_name: self.type_name,
            inputs: &self.inputs,
            input_schema: self.input_schema.as_ref(),
            output_schema: self.output_schema.as_ref(),
            settings: &self.file_settings,
        }
    }
}

/// Checkpointing of the running pipeline (a `[checkpoint]` table).
pub(super) struct Checkpoints {
    pub(super) reports: mpsc::UnboundedSender<Report>,
    pub(super) store: Arc<std::sync::Mutex<CheckpointStore>>,
    pub(super) coordinator: tokio::task::JoinHandle<CheckpointSummary>,
    /// Paused by a reload; resumed once the replaced instances have drained.
    pub(super) paused: bool,
}

/// An input edge as its consumer gets it.
pub(super) struct InEdge {
    pub(super) from: String,
    pub(super) weak: mpsc::WeakSender<Message>,
    pub(super) rx: mpsc::Receiver<Message>,
}

/// How a component instance starts.
#[derive(Default)]
pub(super) struct Start {
    /// Its slot at the checkpoint coordinator.
    pub(super) slot: usize,
    /// Id of the first barrier it will see (a sink numbers its epochs from it).
    pub(super) first_barrier: u64,
    /// A source's barrier requests (with checkpoints).
    pub(super) barriers: Option<BarrierPort>,
    /// Where a source resumes, when known now.
    pub(super) source_checkpoint: Option<SourceCheckpoint>,
    /// A sink's disk buffer, when opened already.
    pub(super) buffer: Option<Arc<DiskBuffer>>,
    /// The instance this one replaces, to wait for: a source then resumes at the
    /// position that one committed, a sink reopens the disk buffer that one closed.
    pub(super) after: Option<CancellationToken>,
    /// For a sink that replaces a running one: that one's definition, built instead
    /// when the new settings fail to build (the reload is rolled back for this sink).
    pub(super) fallback: Option<Arc<Node>>,
}

/// The running graph, and all it takes to run it to its end or change it.
pub(super) struct Runner {
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) dead_letter: DeadLetter,
    pub(super) edge_capacity: usize,
    pub(super) profile: bool,
    pub(super) history: Option<Arc<super::SensorHistory>>,
    pub(super) source_stop: CancellationToken,
    pub(super) nodes: Vec<Running>,
    pub(super) tasks: JoinSet<(u64, Result<(), ComponentError>)>,
    /// Task id -> component id and counters, for every task ever started.
    pub(super) owners: HashMap<u64, (String, Arc<ComponentTelemetry>)>,
    pub(super) next_task: u64,
    pub(super) next_slot: usize,
    /// Every component's counters in the order they first ran, for the report.
    pub(super) report_order: Vec<Arc<ComponentTelemetry>>,
    pub(super) handle: LiveHandle,
    pub(super) checkpoints: Option<Checkpoints>,
    /// Tasks of instances a reload replaced that have not ended yet.
    pub(super) draining: HashSet<u64>,
}

/// Starts every component of `built`; returns the handle on the running pipeline and the
/// future that runs it to its end (end of input, failure, or `shutdown`). Must be called
/// inside a tokio runtime.
pub(super) fn start(
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
    let handle = LiveHandle::new(options.profile);

    // Checkpoint coordinator: barrier requests to sources, reports from everyone. The
    // slot of each first instance is its place in the pipeline.
    let mut starts: Vec<Start> = (0..nodes.len())
        .map(|slot| Start {
            slot,
            ..Start::default()
        })
        .collect();
    let checkpoints = checkpoints.map(|store| {
        // Unbounded, yet bounded by the barriers: see `ReportPort`.
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let mut requests = HashMap::new();
        for (i, (n, _)) in nodes.iter().enumerate() {
            if n.kind == ComponentKind::Source {
                // One barrier request at a time: the coordinator starts a checkpoint
                // only when every source has room for it.
                let (tx, rx) = mpsc::channel(1);
                requests.insert(i, tx);
                let port = ReportPort {
                    node: i,
                    tx: report_tx.clone(),
                };
                starts[i].barriers = Some(BarrierPort::new(rx, port));
                starts[i].source_checkpoint = Some(store.source_handle(&n.id));
            }
        }
        handle.set_checkpoint_telemetry(store.telemetry());
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
        history: options.history.clone(),
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
pub(super) fn targets_of(
    id: &str,
    metas: &[(String, Vec<String>)],
    senders: &HashMap<(String, String), mpsc::Sender<Message>>,
) -> Vec<mpsc::Sender<Message>> {
    consumers_of(id, metas)
        .filter_map(|c| senders.get(&(id.to_string(), c.clone())).cloned())
        .collect()
}

/// Longest a reload waits for a checkpoint in flight to complete before giving up.
const RELOAD_CHECKPOINT_WAIT: Duration = Duration::from_secs(30);

impl Runner {
    /// New channels for each distinct input of `id`; their senders go to `senders`.
    pub(super) fn new_edges(
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

    pub(super) fn report_port(&self, slot: usize) -> Option<ReportPort> {
        self.checkpoints.as_ref().map(|c| ReportPort {
            node: slot,
            tx: c.reports.clone(),
        })
    }

    /// Starts one component instance; records it as the current one for its id. `rt` is
    /// `None` for a sink that replaces a running one: it is built once that one has ended
    /// (it may write the same files).
    /// components that kept running.
    pub(super) fn publish(&self) {
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
    pub(super) fn resume_checkpoints(&mut self) {
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
    pub(super) async fn pause_checkpoints(&mut self) -> Result<u64, String> {
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
}

/// Whether two views hold the same control channel (the same running instance).
fn same_control(a: &Option<TransformControl>, b: &Option<TransformControl>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.same(b),
        (None, None) => true,
        _ => false,
    }
}
