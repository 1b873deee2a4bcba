//! The coordinator that takes checkpoints while a pipeline runs, and the reports
//! components send it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::ack::Finalizers;
use crate::kind::ComponentKind;

use super::CheckpointTelemetry;
use super::store::*;

/// What components tell the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// A source sent barrier `id`, having reached `position`.
    SourceBarrier {
        node: usize,
        id: u64,
        position: Option<Value>,
    },
    /// A source stopped sending; `position` covers everything it sent.
    SourceFinal {
        node: usize,
        position: Option<Value>,
    },
    /// A transform's state at barrier `id`, and the acknowledgement tokens it held for
    /// events that state covers (released once checkpoint `id` is written or abandoned).
    TransformBarrier {
        node: usize,
        id: u64,
        state: Result<Option<Vec<u8>>, String>,
        covered: Finalizers,
    },
    /// A transform's state after its last batch.
    TransformFinal {
        node: usize,
        state: Result<Option<Vec<u8>>, String>,
    },
    /// A sink released every batch it received before barrier `id`.
    SinkEpoch {
        node: usize,
        id: u64,
        delivered: bool,
    },
    /// A component's task ended.
    Finished { node: usize, ok: bool },
    /// Every component has ended; write the final checkpoint if `clean`.
    End { clean: bool },
    /// The graph is about to change (reload): start no checkpoint, and answer with the
    /// id the next barrier will have once none is in flight.
    Pause { reply: oneshot::Sender<u64> },
    /// The graph now has these nodes (slot, id, kind); `requests` reach the sources that
    /// are new. Reports of slots not listed are ignored from now on.
    Regraph {
        nodes: Vec<(usize, String, ComponentKind)>,
        requests: HashMap<usize, mpsc::Sender<u64>>,
    },
    /// The replaced components have drained: checkpoints go on.
    Resume,
}

/// Where a component sends its reports.
///
/// The channel is unbounded because components report from blocking threads and from
/// the runtime alike, and must never wait on the coordinator. It cannot grow without
/// bound: a component sends one report per barrier that reaches it (a position, a state
/// or an epoch), one final report and one `Finished`; barriers are requested one at a
/// time per source (a request channel holds one) and travel the bounded edges between
/// batches, so the barriers in the graph, and the reports still to come from them, are
/// bounded by the edges' capacity; the runner adds a few control messages per reload.
#[derive(Clone, Debug)]
pub(crate) struct ReportPort {
    pub(crate) node: usize,
    pub(crate) tx: mpsc::UnboundedSender<Report>,
}

impl ReportPort {
    pub(crate) fn send(&self, report: Report) {
        // The coordinator outlives every component; if it is gone the run is over.
        let _ = self.tx.send(report);
    }
}

#[derive(Debug)]
pub(super) enum Final {
    Position(Option<Value>),
    State(Option<Vec<u8>>),
    SinkDone,
    Failed,
}

#[derive(Debug)]
pub(super) struct InFlight {
    id: u64,
    positions: HashMap<usize, Option<Value>>,
    states: HashMap<usize, Option<Vec<u8>>>,
    failed: Option<String>,
    /// When its barriers were requested.
    started: Instant,
    /// Tokens transforms held for events their states in this checkpoint cover: dropped
    /// (the events count as delivered) with the checkpoint, once written or abandoned.
    covered: Vec<Finalizers>,
}

impl InFlight {
    /// Checkpoint `id`, its barriers requested now, nothing reported yet.
    fn new(id: u64) -> Self {
        InFlight {
            id,
            positions: HashMap::new(),
            states: HashMap::new(),
            failed: None,
            started: Instant::now(),
            covered: Vec::new(),
        }
    }
}

/// Takes checkpoints while a pipeline runs. See the module documentation.
pub(crate) struct Coordinator {
    store: Arc<Mutex<CheckpointStore>>,
    /// The running graph's components by slot (a slot is one component instance).
    nodes: BTreeMap<usize, (String, ComponentKind)>,
    /// While the graph changes: no checkpoint starts; these wait for the one in flight.
    paused: bool,
    pause_waiters: Vec<oneshot::Sender<u64>>,
    /// Barrier requests, per source node.
    requests: HashMap<usize, mpsc::Sender<u64>>,
    next_id: u64,
    first_id: u64,
    finals: HashMap<usize, Final>,
    /// Per sink: epochs completed, and the highest id up to which all are.
    sink_epochs: HashMap<usize, (std::collections::BTreeSet<u64>, u64)>,
    in_flight: Option<InFlight>,
    completed: u64,
    telemetry: Arc<CheckpointTelemetry>,
}

/// What [`Coordinator::run`] reports at the end.
#[derive(Debug, Default, Clone)]
pub struct CheckpointSummary {
    /// Checkpoints completed during the run (the final one included).
    pub completed: u64,
    /// Id of the last complete checkpoint.
    pub last_id: u64,
    /// Problems (a checkpoint that could not be written or was abandoned).
    pub errors: Vec<String>,
}

impl Coordinator {
    pub(crate) fn new(
        store: CheckpointStore,
        nodes: Vec<(String, ComponentKind)>,
        requests: HashMap<usize, mpsc::Sender<u64>>,
    ) -> Self {
        let first_id = store.last_id() + 1;
        let nodes: BTreeMap<usize, (String, ComponentKind)> =
            nodes.into_iter().enumerate().collect();
        let sink_epochs = nodes
            .iter()
            .filter(|(_, (_, k))| *k == ComponentKind::Sink)
            .map(|(&i, _)| (i, (Default::default(), first_id - 1)))
            .collect();
        Coordinator {
            telemetry: store.telemetry(),
            store: Arc::new(Mutex::new(store)),
            nodes,
            paused: false,
            pause_waiters: Vec::new(),
            requests,
            next_id: first_id,
            first_id,
            finals: HashMap::new(),
            sink_epochs,
            in_flight: None,
            completed: 0,
        }
    }

    /// The id the first barrier of this run will have (sinks number their epochs from it).
    pub(crate) fn first_id(&self) -> u64 {
        self.first_id
    }

    /// The checkpoint directory, shared with the runner (sources taking over on reload).
    pub(crate) fn store(&self) -> Arc<Mutex<CheckpointStore>> {
        self.store.clone()
    }

    pub(crate) async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) -> CheckpointSummary {
        let interval = Duration::from_millis(self.lock_store().config.interval_ms);
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut summary = CheckpointSummary {
            last_id: self.first_id - 1,
            ..Default::default()
        };
        loop {
            tokio::select! {
                _ = timer.tick() => self.start(),
                r = reports.recv() => match r {
                    None => break,
                    Some(Report::End { clean }) => {
                        if clean {
                            self.in_flight = None;
                            let id = self.next_id;
                            self.next_id += 1;
                            let mut cp = InFlight::new(id);
                            if self.fill_from_finals(&mut cp) {
                                self.in_flight = Some(cp);
                                self.try_complete(&mut summary).await;
                            } else {
                                summary.errors.push("final checkpoint: not every component reported its final state".into());
                            }
                        }
                        break;
                    }
                    Some(r) => {
                        self.handle(r);
                        self.try_complete(&mut summary).await;
                        if self.in_flight.is_none() {
                            for w in self.pause_waiters.drain(..) {
                                let _ = w.send(self.next_id);
                            }
                        }
                    }
                },
            }
        }
        summary.completed = self.completed;
        summary
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, CheckpointStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&mut self) {
        if self.in_flight.is_some() || self.paused {
            return;
        }
        let mut live = self
            .requests
            .iter()
            .filter(|(node, _)| !self.finals.contains_key(node))
            .peekable();
        if live.peek().is_none() {
            return;
        }
        // A source that has not yet taken the request of an abandoned checkpoint still
        // holds it (its channel has room for one): the next checkpoint waits for the
        // next tick, so requests never pile up behind a busy source.
        if live.any(|(_, tx)| tx.capacity() == 0) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for (node, tx) in &self.requests {
            if !self.finals.contains_key(node) {
                // Room checked above; a closed channel is a source that has ended.
                let _ = tx.try_send(id);
            }
        }
        self.in_flight = Some(InFlight::new(id));
    }

    /// Fills what finished components contribute; false if one of them failed.
    fn fill_from_finals(&self, cp: &mut InFlight) -> bool {
        let mut ok = true;
        for (i, (_, kind)) in &self.nodes {
            match (kind, self.finals.get(i)) {
                (ComponentKind::Source, Some(Final::Position(p))) => {
                    cp.positions.entry(*i).or_insert_with(|| p.clone());
                }
                (ComponentKind::Transform, Some(Final::State(s))) => {
                    cp.states.entry(*i).or_insert_with(|| s.clone());
                }
                (ComponentKind::Sink, Some(Final::SinkDone)) => {}
                (_, Some(Final::Failed)) | (_, None) => ok = false,
                _ => {}
            }
        }
        ok
    }

    fn name(&self, node: usize) -> &str {
        self.nodes.get(&node).map_or("?", |n| n.0.as_str())
    }

    fn handle(&mut self, report: Report) {
        let slot = match &report {
            Report::SourceBarrier { node, .. }
            | Report::SourceFinal { node, .. }
            | Report::TransformBarrier { node, .. }
            | Report::TransformFinal { node, .. }
            | Report::SinkEpoch { node, .. }
            | Report::Finished { node, .. } => Some(*node),
            _ => None,
        };
        if slot.is_some_and(|s| !self.nodes.contains_key(&s)) {
            // An instance a reload replaced: it drains, it is no longer part of
            // checkpoints.
            return;
        }
        match report {
            Report::SourceBarrier { node, id, position } => {
                if let Some(cp) = self.in_flight.as_mut().filter(|c| c.id == id) {
                    cp.positions.insert(node, position);
                }
            }
            Report::SourceFinal { node, position } => {
                self.finals.insert(node, Final::Position(position));
            }
            Report::TransformBarrier {
                node,
                id,
                state,
                covered,
            } => {
                let name = self.name(node).to_string();
                // Tokens of a checkpoint no longer in flight (abandoned) are released
                // here, when `covered` drops.
                if let Some(cp) = self.in_flight.as_mut().filter(|c| c.id == id) {
                    cp.covered.push(covered);
                    match state {
                        Ok(s) => {
                            cp.states.insert(node, s);
                        }
                        Err(e) => {
                            cp.failed = Some(format!(
                                "checkpoint {id}: transform `{name}` could not snapshot its state: {e}"
                            ))
                        }
                    }
                }
            }
            Report::TransformFinal { node, state } => {
                let f = match state {
                    Ok(s) => Final::State(s),
                    Err(e) => {
                        tracing::error!(component_id = %self.name(node), "cannot snapshot final state: {e}");
                        Final::Failed
                    }
                };
                self.finals.insert(node, f);
            }
            Report::SinkEpoch {
                node,
                id,
                delivered,
            } => {
                if !delivered {
                    let name = self.name(node).to_string();
                    if let Some(cp) = self.in_flight.as_mut() {
                        cp.failed = Some(format!(
                            "checkpoint {}: sink `{name}` did not deliver",
                            cp.id
                        ));
                    }
                    return;
                }
                if let Some((done, upto)) = self.sink_epochs.get_mut(&node) {
                    done.insert(id);
                    while done.remove(&(*upto + 1)) {
                        *upto += 1;
                    }
                }
            }
            Report::Finished { node, ok } => {
                let Some(kind) = self.nodes.get(&node).map(|n| n.1) else {
                    return;
                };
                match (kind, ok) {
                    (ComponentKind::Sink, true) => {
                        self.finals.insert(node, Final::SinkDone);
                    }
                    (_, false) => {
                        self.finals.insert(node, Final::Failed);
                    }
                    // Sources and transforms report their final value themselves.
                    _ => {}
                }
            }
            Report::End { .. } => {}
            Report::Pause { reply } => {
                self.paused = true;
                if self.in_flight.is_none() {
                    let _ = reply.send(self.next_id);
                } else {
                    self.pause_waiters.push(reply);
                }
            }
            Report::Regraph { nodes, requests } => {
                let nodes: BTreeMap<usize, (String, ComponentKind)> = nodes
                    .into_iter()
                    .map(|(slot, id, kind)| (slot, (id, kind)))
                    .collect();
                self.requests.retain(|slot, _| nodes.contains_key(slot));
                self.requests.extend(requests);
                self.finals.retain(|slot, _| nodes.contains_key(slot));
                self.sink_epochs.retain(|slot, _| nodes.contains_key(slot));
                for (slot, (_, kind)) in &nodes {
                    if *kind == ComponentKind::Sink {
                        // A new sink numbers its epochs from the next barrier.
                        self.sink_epochs
                            .entry(*slot)
                            .or_insert_with(|| (Default::default(), self.next_id - 1));
                    }
                }
                self.nodes = nodes;
            }
            Report::Resume => self.paused = false,
        }
    }

    async fn try_complete(&mut self, summary: &mut CheckpointSummary) {
        let Some(mut cp) = self.in_flight.take() else {
            return;
        };
        if let Some(reason) = cp.failed.take() {
            self.fail();
            tracing::warn!("{reason}; abandoned, the next one follows");
            summary.errors.push(reason);
            return;
        }
        let mut ready = true;
        for (i, (_, kind)) in &self.nodes {
            let have = match kind {
                ComponentKind::Source => {
                    cp.positions.contains_key(i)
                        || matches!(self.finals.get(i), Some(Final::Position(_)))
                }
                ComponentKind::Transform => {
                    cp.states.contains_key(i) || matches!(self.finals.get(i), Some(Final::State(_)))
                }
                ComponentKind::Sink => {
                    matches!(self.finals.get(i), Some(Final::SinkDone))
                        || self
                            .sink_epochs
                            .get(i)
                            .is_some_and(|(_, upto)| *upto >= cp.id)
                }
            };
            if !have {
                ready = false;
                break;
            }
        }
        if !ready {
            self.in_flight = Some(cp);
            return;
        }
        self.fill_from_finals(&mut cp);
        let mut sources = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (i, (id, kind)) in &self.nodes {
            match kind {
                ComponentKind::Source => {
                    let p = cp.positions.remove(i).flatten();
                    sources.insert(id.clone(), p.unwrap_or(Value::Null));
                }
                ComponentKind::Transform => {
                    if let Some(Some(s)) = cp.states.remove(i) {
                        states.insert(id.clone(), s);
                    }
                }
                ComponentKind::Sink => {}
            }
        }
        let store = self.store.clone();
        let id = cp.id;
        let started = cp.started;
        let written = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(id, sources, states)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                // From the barrier request to the manifest on disk.
                self.telemetry.last_duration_ns.store(
                    started.elapsed().as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.completed += 1;
                summary.last_id = id;
                tracing::debug!(checkpoint = id, "checkpoint complete");
            }
            Ok(Err(e)) => {
                self.fail();
                tracing::error!("checkpoint {id} could not be written: {e}");
                summary
                    .errors
                    .push(format!("checkpoint {id} could not be written: {e}"));
            }
            Err(e) => {
                self.fail();
                summary
                    .errors
                    .push(format!("checkpoint {id}: writer stopped: {e}"))
            }
        }
    }

    fn fail(&self) {
        self.telemetry
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
