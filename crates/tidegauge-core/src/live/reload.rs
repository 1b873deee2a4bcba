//! Carrying out a reload: gather what the plan needs from the running graph, plan (a pure
//! function, see [`super::plan`]), then build, rewire, retire and start.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ReloadSummary;
use super::handle::ParamChange;
use super::plan::{Action, Plan, RunningShape, Shape, plan};
use super::runner::{InEdge, Runner, Start, targets_of};
use crate::checkpoint::Report;
use crate::component::{BarrierPort, BuildContext, ComponentContext, Message};
use crate::disk_buffer::DiskBuffer;
use crate::kind::ComponentKind;
use crate::telemetry::ComponentTelemetry;
use crate::topology::{Node, Pipeline, Runtime, build_node, open_buffer};

type Edges = HashMap<(String, String), mpsc::Sender<Message>>;

/// A new instance built ahead of the swap: its runtime (`None` for a sink built once the
/// one it replaces has ended) and its counters.
type Built = Option<(Option<Runtime>, Arc<ComponentTelemetry>)>;

fn shape(n: &Node) -> Shape<'_> {
    Shape {
        id: &n.id,
        kind: n.kind,
        type_name: n.type_name,
        inputs: &n.inputs,
        input_schema: n.input_schema.as_ref(),
        output_schema: n.output_schema.as_ref(),
        settings: &n.settings,
    }
}

impl Runner {
    /// Swaps in `new`: see the module documentation of [`crate::live`].
    pub(super) async fn reload(&mut self, new: Pipeline) -> Result<ReloadSummary, String> {
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
        // Edges into running components, held open while the reload awaits so none can
        // close under it (those into instances that keep running stay held).
        let (plan, mut summary, mut held) = self.plan(&new).await;
        let kept: Vec<&str> = new
            .nodes
            .iter()
            .zip(&plan.actions)
            .filter(|(_, a)| !a.builds())
            .map(|(n, _)| n.id.as_str())
            .collect();
        held.retain(|(_, to), _| kept.contains(&to.as_str()));

        // Build everything new before touching the running graph.
        let (built, mut buffers) = self.build(&new.nodes, &plan).await?;

        // With checkpoints, the graph changes between two checkpoints: none in flight,
        // none started until the replaced instances have drained.
        let changes_graph = plan.changes_graph();
        let next_barrier = if changes_graph {
            self.pause_checkpoints().await?
        } else {
            0
        };
        match self.retune(&new.nodes, &plan).await {
            Ok(changes) => summary.changes = changes,
            Err(e) => {
                if changes_graph {
                    self.resume_checkpoints();
                }
                return Err(e);
            }
        }

        // New edges into new instances; the edges into kept ones stay.
        let mut senders = held;
        let mut in_edges: HashMap<String, Vec<InEdge>> = HashMap::new();
        for (n, action) in new.nodes.iter().zip(&plan.actions) {
            if n.kind != ComponentKind::Source && action.builds() {
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
        for (n, action) in new.nodes.iter().zip(&plan.actions) {
            if let Action::Keep(o) | Action::Retune(o, _) = action
                && let Some(f) = &self.nodes[*o].fanout
            {
                f.replace(targets_of(&n.id, &metas, &senders));
            }
        }

        let predecessors = self.retire(&plan);
        let mut starts = self.slots(&new.nodes, &plan, next_barrier, &mut buffers, &predecessors);

        // Start the new instances, in topological order.
        let mut old_nodes: Vec<Option<_>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        for ((n, action), b) in new.nodes.into_iter().zip(plan.actions).zip(built) {
            match (action, b) {
                (Action::Keep(o) | Action::Retune(o, _), _) => {
                    if let Some(mut r) = old_nodes[o].take() {
                        r.file_settings = n.settings;
                        self.nodes.push(r);
                    }
                }
                (Action::Rebuild(_) | Action::Add, Some((rt, t))) => {
                    let targets = targets_of(&n.id, &metas, &senders);
                    let edges = in_edges.remove(&n.id).unwrap_or_default();
                    let start = starts.remove(&n.id).unwrap_or_default();
                    self.spawn(n, rt, t, edges, targets, start);
                }
                (Action::Rebuild(_) | Action::Add, None) => {}
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

    /// Plans the reload to `new`; returns the plan, its summary, and the edges into
    /// running instances that were open (held open now).
    async fn plan(&self, new: &Pipeline) -> (Plan, ReloadSummary, Edges) {
        let mut held: Edges = HashMap::new();
        let mut closed: Vec<Vec<String>> = Vec::new();
        let mut tunables: Vec<Option<Vec<String>>> = Vec::new();
        for r in &self.nodes {
            let mut shut = Vec::new();
            for (from, weak) in &r.edges {
                match weak.upgrade() {
                    Some(tx) => {
                        held.insert((from.clone(), r.id.clone()), tx);
                    }
                    None => shut.push(from.clone()),
                }
            }
            closed.push(shut);
            // Asked only of a transform whose settings changed: it answers between
            // batches.
            let changed = new
                .nodes
                .iter()
                .any(|n| n.id == r.id && n.settings != r.file_settings);
            tunables.push(match (&r.control, changed) {
                (Some(control), true) => control
                    .tunables()
                    .await
                    .ok()
                    .map(|t| t.into_iter().map(|t| t.name).collect()),
                _ => None,
            });
        }
        let running: Vec<RunningShape> = self
            .nodes
            .iter()
            .zip(closed.iter().zip(tunables))
            .map(|(r, (closed, tunables))| RunningShape {
                shape: r.shape(),
                alive: self.owners.contains_key(&r.task),
                closed_inputs: closed.iter().map(String::as_str).collect(),
                tunables,
            })
            .collect();
        let shapes: Vec<Shape> = new.nodes.iter().map(shape).collect();
        let plan = plan(&running, &shapes);
        let summary = plan.summary(&running, &shapes);
        (plan, summary, held)
    }

    /// Builds the new instances (and opens their disk buffers), one per component the
    /// plan builds; a failure leaves the running pipeline untouched.
    async fn build(
        &self,
        nodes: &[Node],
        plan: &Plan,
    ) -> Result<(Vec<Built>, HashMap<String, Arc<DiskBuffer>>), String> {
        let mut built: Vec<Built> = Vec::new();
        let mut buffers = HashMap::new();
        for (n, action) in nodes.iter().zip(&plan.actions) {
            if !action.builds() {
                built.push(None);
                continue;
            }
            let old = action.old().map(|o| &self.nodes[o]);
            // A replacement of the same type goes on counting where the old one stopped.
            let t = old
                .filter(|o| o.kind == n.kind && o.type_name == n.type_name)
                .map(|o| o.telemetry.clone())
                .unwrap_or_else(|| {
                    Arc::new(ComponentTelemetry::new(n.id.as_str(), n.kind, n.type_name))
                });
            let component = ComponentContext::new(t.clone(), self.dead_letter.clone());
            // A sink that replaces a running one is built once that one has ended: they
            // may write the same files (and a disk buffer has one owner).
            if n.kind == ComponentKind::Sink && old.is_some() {
                built.push(Some((None, t)));
                continue;
            }
            let cx = BuildContext {
                component: component.clone(),
                runtime: self.runtime.clone(),
            };
            let rt = build_node(n, cx).await.map_err(|e| e.message)?;
            if let (crate::registry::AnyConfig::Source(c), Some(cp)) =
                (&n.config, &self.checkpoints)
            {
                // Checkpoints from now on record what the new source reads.
                cp.store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_input(
                        &n.id,
                        crate::checkpoint::InputIdentity {
                            type_name: n.type_name.to_string(),
                            input: c.input_identity(),
                        },
                    );
            }
            if let (Some(cfg), Some(input)) = (&n.buffer, &n.input_schema) {
                let b = open_buffer(&n.id, cfg, input, &component).map_err(|e| e.message)?;
                buffers.insert(n.id.clone(), b);
            }
            built.push(Some((Some(rt), t)));
        }
        Ok((built, buffers))
    }

    /// Changes parameters in place; returns what changed.
    async fn retune(&self, nodes: &[Node], plan: &Plan) -> Result<Vec<ParamChange>, String> {
        let mut changes = Vec::new();
        for (n, action) in nodes.iter().zip(&plan.actions) {
            let Action::Retune(o, diff) = action else {
                continue;
            };
            let Some(control) = self.nodes[*o].control.clone() else {
                continue;
            };
            let before = control.tunables().await.unwrap_or_default();
            for (name, value) in diff {
                if let Err(e) = control.set(name, value.clone()).await {
                    return Err(format!("transforms.{}.{name}: {e}", n.id));
                }
                self.handle.update_setting(&n.id, name, value);
                changes.push(ParamChange {
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
        Ok(changes)
    }

    /// Retires what is replaced or gone: sources are stopped; transforms and sinks drain
    /// once nothing feeds their edges. Returns, by id, what each successor waits for.
    fn retire(&mut self, plan: &Plan) -> HashMap<String, CancellationToken> {
        let retired = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Rebuild(o) => Some(*o),
                _ => None,
            })
            .chain(plan.removed.iter().copied());
        let mut predecessors = HashMap::new();
        for i in retired {
            let old = &self.nodes[i];
            if let Some(stop) = &old.stop {
                stop.cancel();
            }
            if self.owners.contains_key(&old.task) {
                self.draining.insert(old.task);
            }
            predecessors.insert(old.id.clone(), old.ended.clone());
        }
        predecessors
    }

    /// Slots at the checkpoint coordinator for the new instances, and how each starts;
    /// the coordinator learns the new graph before they run.
    fn slots(
        &mut self,
        nodes: &[Node],
        plan: &Plan,
        next_barrier: u64,
        buffers: &mut HashMap<String, Arc<DiskBuffer>>,
        predecessors: &HashMap<String, CancellationToken>,
    ) -> HashMap<String, Start> {
        let mut starts: HashMap<String, Start> = HashMap::new();
        let mut requests = HashMap::new();
        let mut graph = Vec::new();
        for (n, action) in nodes.iter().zip(&plan.actions) {
            let slot = match action {
                Action::Keep(o) | Action::Retune(o, _) => self.nodes[*o].slot,
                Action::Rebuild(_) | Action::Add => {
                    let slot = self.next_slot;
                    self.next_slot += 1;
                    let mut start = Start {
                        slot,
                        first_barrier: next_barrier,
                        buffer: buffers.remove(&n.id),
                        ..Start::default()
                    };
                    let replaces = matches!(action, Action::Rebuild(_));
                    if let Some(reports) = self.report_port(slot)
                        && n.kind == ComponentKind::Source
                    {
                        // One barrier request at a time (see the coordinator).
                        let (tx, rx) = mpsc::channel(1);
                        requests.insert(slot, tx);
                        start.barriers = Some(BarrierPort::new(rx, reports));
                        // A source resumes where the instance it replaces stopped.
                        if replaces {
                            start.after = predecessors.get(&n.id).cloned();
                        }
                    }
                    if n.kind == ComponentKind::Sink
                        && let Action::Rebuild(o) = action
                    {
                        start.after = predecessors.get(&n.id).cloned();
                        start.fallback = self.nodes[*o]
                            .definition
                            .as_ref()
                            .map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).clone());
                    }
                    starts.insert(n.id.clone(), start);
                    slot
                }
            };
            graph.push((slot, n.id.clone(), n.kind));
        }
        if let Some(c) = &self.checkpoints
            && plan.changes_graph()
        {
            let _ = c.reports.send(Report::Regraph {
                nodes: graph,
                requests,
            });
        }
        starts
    }
}
