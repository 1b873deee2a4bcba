//! A component's outgoing edges: [`Output`] sends each batch to every downstream edge
//! (the [`Fanout`], which the runner may rewire) and serves a source's checkpoint
//! barriers. The async methods are the one implementation; the `blocking_` ones run them
//! to completion on the calling thread, for components on threads of their own.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_executor::block_on;
use tokio::sync::mpsc;

use arrow_schema::SchemaRef;

use crate::batch::Batch;
use crate::checkpoint::{Report, ReportPort};
use crate::error::ComponentError;
use crate::telemetry::{ComponentTelemetry, EventsSent, Waited};

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
    requests: mpsc::Receiver<u64>,
    reports: ReportPort,
    position: Option<serde_json::Value>,
}

impl BarrierPort {
    pub(crate) fn new(requests: mpsc::Receiver<u64>, reports: ReportPort) -> Self {
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
            // A batch a closed edge refused is not delivered there.
            if let Err(refused) = tx.send(Message::Batch(b)).await {
                if let Message::Batch(b) = refused.0 {
                    b.finalizers.fail();
                }
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
        block_on(self.serve_barriers())
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
        block_on(self.send_barrier(id))
    }

    /// Like [`Output::send`], for components running on their own thread.
    pub fn blocking_send(&mut self, batch: Batch) -> Result<(), SendError> {
        block_on(self.send(batch))
    }

    /// Like [`Output::send_at`], for components running on their own thread.
    pub fn blocking_send_at(
        &mut self,
        batch: Batch,
        position: serde_json::Value,
    ) -> Result<(), SendError> {
        block_on(self.send_at(batch, position))
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
