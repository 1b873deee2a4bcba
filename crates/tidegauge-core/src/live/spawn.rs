//! Starting one component instance: a source or sink as a task, a transform on a thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::runner::{Definition, InEdge, Runner, Running, Start};
use super::transform_loop::{TransformIo, run_transform};
use crate::ack::ack_channel;
use crate::checkpoint::{Report, ReportPort, SourceCheckpoint};
use crate::component::{
    BuildContext, ComponentContext, Fanout, Message, Output, Sink, SinkContext, SinkInput, Source,
    SourceContext, Transform,
};
use crate::control;
use crate::disk_buffer::DiskBuffer;
use crate::error::ComponentError;
use crate::kind::ComponentKind;
use crate::telemetry::{
    ComponentErrorOccurred, ComponentStarted, ComponentTelemetry, QueueFill, QueueProbe,
};
use crate::topology::{Node, Runtime, build_node, open_buffer};

/// What every instance's task gets: its counters and dead letters, the runtime, and what
/// to do when it ends.
struct Launch {
    component: ComponentContext,
    runtime: tokio::runtime::Handle,
    end: End,
}

/// Runs when an instance's task ends, whatever the outcome: tells the checkpoint
/// coordinator, and wakes whoever waits for the instance to end.
struct End {
    task: u64,
    reports: Option<ReportPort>,
    ended: CancellationToken,
}

impl End {
    fn with(self, r: Result<(), ComponentError>) -> (u64, Result<(), ComponentError>) {
        let ok = r.is_ok();
        self.report(r, ok)
    }

    /// A sink's end: it counts as done for the final checkpoint only if it also read
    /// its input to the end. One that stopped early without an error (e.g. the Python
    /// iterator closed) left events behind that the sources' final positions cover, so
    /// no final checkpoint may be written past them.
    fn with_sink(
        self,
        r: Result<(), ComponentError>,
        read_to_end: &AtomicBool,
    ) -> (u64, Result<(), ComponentError>) {
        let read_all = read_to_end.load(Ordering::Acquire);
        if r.is_ok() && !read_all {
            tracing::warn!(
                "a sink stopped before its input ended: no final checkpoint; the next run resumes from the last one and the acknowledged positions"
            );
        }
        let ok = r.is_ok() && read_all;
        self.report(r, ok)
    }

    fn report(self, r: Result<(), ComponentError>, ok: bool) -> (u64, Result<(), ComponentError>) {
        if let Some(port) = &self.reports {
            port.send(Report::Finished {
                node: port.node,
                ok,
            });
        }
        self.ended.cancel();
        (self.task, r)
    }
}

impl Runner {
    /// Starts one component instance; records it as the current one for its id. `rt` is
    /// `None` for a sink that replaces a running one: it is built once that one has ended
    /// (it may write the same files).
    pub(super) fn spawn(
        &mut self,
        mut node: Node,
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
        let reports = self.report_port(start.slot);
        let fanout = node.output_schema.as_ref().map(|_| Fanout::new(targets));
        let out = node
            .output_schema
            .clone()
            .zip(fanout.clone())
            .map(|(s, f)| Output::with_fanout(s, f, t.clone()));
        let ended = CancellationToken::new();
        let launch = Launch {
            component: ComponentContext::new(t.clone(), self.dead_letter.clone()),
            runtime: self.runtime.clone(),
            end: End {
                task,
                reports: reports.clone(),
                ended: ended.clone(),
            },
        };
        let mut running = Running {
            id: node.id.clone(),
            kind: node.kind,
            type_name: node.type_name,
            inputs: node.inputs.clone(),
            input_schema: node.input_schema.clone(),
            output_schema: node.output_schema.clone(),
            // A sink built later needs no settings: its config is parsed already.
            file_settings: std::mem::take(&mut node.settings),
            telemetry: t.clone(),
            edges,
            fanout,
            stop: None,
            control: None,
            task,
            slot: start.slot,
            ended,
            definition: None,
        };
        match (rt, out, node.kind) {
            (Some(Runtime::Source(src)), Some(out), ComponentKind::Source) => {
                let token = self.source_stop.child_token();
                running.stop = Some(token.clone());
                self.spawn_source(&node.id, src, out, token, start, launch);
            }
            (Some(Runtime::Transform(tr)), Some(out), ComponentKind::Transform) => {
                let (handle, requests) = control::channel();
                running.control = Some(handle);
                let io = TransformIo {
                    input: SinkInput::from_edges(receivers, t),
                    out,
                    requests,
                    reports,
                };
                self.spawn_transform(&node, tr, io, launch);
            }
            (rt @ (None | Some(Runtime::Sink(_))), None, ComponentKind::Sink) => {
                let input = SinkInput::from_edges(receivers, t).measuring_latency();
                let ready = match rt {
                    Some(Runtime::Sink(sink)) => Some(sink),
                    _ => None,
                };
                let node = Arc::new(node);
                let definition = Arc::new(std::sync::Mutex::new(node.clone()));
                running.definition = Some(definition.clone());
                self.spawn_sink(node, definition, ready, input, start, launch);
            }
            _ => {
                let r = launch.end.with(Err(ComponentError::new(
                    "component wiring does not match its kind",
                )));
                self.tasks.spawn(async move { r });
            }
        }
        match self.nodes.iter_mut().find(|n| n.id == running.id) {
            Some(current) => *current = running,
            None => self.nodes.push(running),
        }
    }

    /// A source resumes where its checkpoint says; one that replaces a running instance
    /// waits for that one to end and commit its position first.
    fn spawn_source(
        &mut self,
        id: &str,
        src: Box<dyn Source>,
        out: Output,
        shutdown: CancellationToken,
        start: Start,
        Launch {
            component,
            runtime,
            end,
        }: Launch,
    ) {
        let mut out = match start.barriers {
            Some(port) => out.with_barriers(port),
            None => out,
        };
        let store = self.checkpoints.as_ref().map(|c| c.store.clone());
        let (after, initial) = (start.after, start.source_checkpoint);
        let id = id.to_string();
        self.tasks.spawn(async move {
            let checkpoint: SourceCheckpoint = match (after, store) {
                (Some(previous), Some(store)) => {
                    previous.cancelled().await;
                    let handle = store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .takeover_handle(&id);
                    match handle {
                        Ok(h) => h,
                        Err(e) => {
                            return end.with(Err(ComponentError::new(format!(
                                "cannot read where to resume: {e}"
                            ))));
                        }
                    }
                }
                _ => initial.unwrap_or_default(),
            };
            // A barrier served before the first batch stands where the source resumes,
            // not at "nowhere" (which a restart would read as the start, with state
            // restored that has seen everything before it).
            if let Some(p) = checkpoint.restored() {
                out.set_position(p.clone());
            }
            let cx = SourceContext {
                component,
                out,
                shutdown,
                runtime,
                checkpoint,
            };
            let r = src.run(cx).await;
            end.with(r)
        });
    }

    /// A transform runs on a thread of its own; its task waits for the thread's result.
    fn spawn_transform(
        &mut self,
        node: &Node,
        tr: Box<dyn Transform>,
        io: TransformIo,
        Launch {
            component,
            runtime,
            end,
        }: Launch,
    ) {
        let (done_tx, done_rx) = oneshot::channel();
        let history = self.history.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tg-{}", node.id))
            .spawn(move || {
                let r = run_transform(tr, io, component, &runtime, history);
                let _ = done_tx.send(r);
            });
        self.tasks.spawn(async move {
            let r = match spawned {
                Err(e) => Err(ComponentError::new(format!("cannot start thread: {e}"))),
                Ok(_) => done_rx
                    .await
                    .unwrap_or_else(|_| Err(ComponentError::new("transform thread panicked"))),
            };
            end.with(r)
        });
    }

    /// A sink closes an epoch per checkpoint barrier (with checkpoints); one that
    /// replaces a running instance is built once that one has ended. With a disk buffer
    /// in front, the buffer reads the input and the sink reads the buffer.
    fn spawn_sink(
        &mut self,
        node: Arc<Node>,
        definition: Definition,
        ready: Option<Box<dyn Sink>>,
        input: SinkInput,
        start: Start,
        Launch {
            component,
            runtime,
            end,
        }: Launch,
    ) {
        let input = match &end.reports {
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
                input.with_epochs(acks, start.first_barrier)
            }
            None => input,
        };
        let read_to_end = input.read_to_end();
        let later = ready.is_none().then_some(node);
        let edge_capacity = self.edge_capacity;
        let (buffer, after, fallback) = (start.buffer, start.after, start.fallback);
        self.tasks.spawn(async move {
            let cx = SinkContext {
                component: component.clone(),
                runtime: runtime.clone(),
            };
            let (sink, buffer) = match (ready, later) {
                (Some(sink), _) => (sink, buffer),
                (None, Some(later)) => {
                    // The instance this one replaces holds the files.
                    if let Some(previous) = &after {
                        previous.cancelled().await;
                    }
                    match build_later(&later, &component, runtime.clone()).await {
                        Ok(built) => built,
                        Err(message) => match fallback {
                            // Roll this sink back: its previous settings built and ran.
                            Some(previous) => {
                                let error = format!(
                                    "reload rolled back for sink `{}`: its new settings failed to build ({message}); it runs with its previous settings",
                                    later.id
                                );
                                tracing::error!(component_id = %later.id, "{error}");
                                component.emit(ComponentErrorOccurred { error: &error });
                                match build_later(&previous, &component, runtime).await {
                                    Ok(built) => {
                                        *definition.lock().unwrap_or_else(|p| p.into_inner()) =
                                            previous;
                                        built
                                    }
                                    Err(again) => {
                                        return end.with(Err(ComponentError::new(format!(
                                            "{message}; its previous settings failed to build too: {again}"
                                        ))));
                                    }
                                }
                            }
                            None => return end.with(Err(ComponentError::new(message))),
                        },
                    }
                }
                (None, None) => return end.with(Err(ComponentError::new("sink was not built"))),
            };
            let r = match buffer {
                None => sink.run(input, cx).await,
                Some(buffer) => {
                    // input -> disk buffer -> sink. The sink's own input is not counted
                    // again.
                    let (tx, rx) = mpsc::channel(edge_capacity);
                    let t = component.telemetry();
                    let scratch = Arc::new(ComponentTelemetry::new(
                        &*t.id,
                        ComponentKind::Sink,
                        t.type_name,
                    ));
                    let inner = SinkInput::new(rx, scratch);
                    let (sunk, buffered) =
                        tokio::join!(sink.run(inner, cx), buffer.run(input, tx, component));
                    sunk.and(buffered)
                }
            };
            end.with_sink(r, &read_to_end)
        });
    }
}

/// Builds a sink that replaced a running one, and opens its disk buffer.
async fn build_later(
    node: &Node,
    component: &ComponentContext,
    runtime: tokio::runtime::Handle,
) -> Result<(Box<dyn Sink>, Option<Arc<DiskBuffer>>), String> {
    let bcx = BuildContext {
        component: component.clone(),
        runtime,
    };
    let sink = match build_node(node, bcx).await {
        Ok(Runtime::Sink(sink)) => sink,
        Ok(_) => return Err("component wiring does not match its kind".into()),
        Err(e) => return Err(e.message),
    };
    let buffer = match (&node.buffer, &node.input_schema) {
        (Some(cfg), Some(schema)) => {
            Some(open_buffer(&node.id, cfg, schema, component).map_err(|e| e.message)?)
        }
        _ => None,
    };
    Ok((sink, buffer))
}

/// Reads how full a component's input edges are, together.
fn queue_probe(edges: Vec<mpsc::WeakSender<Message>>) -> QueueProbe {
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
