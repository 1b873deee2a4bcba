//! A transform's or sink's incoming edges: [`SinkInput`] reads them in turn, aligns
//! checkpoint barriers across them and counts what it hands out. One poll function is the
//! core; the async methods await it and the `blocking_` ones run them to completion on the
//! calling thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_executor::block_on;
use tokio::sync::mpsc;

use super::Message;
use crate::ack::{AckSender, Finalizers};
use crate::batch::Batch;
use crate::telemetry::{BatchProcessed, ComponentTelemetry, EventsReceived, Waited};

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

/// What [`SinkInput::next_event`] gave.
#[derive(Debug)]
pub enum Event {
    /// A batch arrived.
    Batch(Batch),
    /// Checkpoint barrier `n` has arrived on every open input (aligned): everything
    /// before it on every input has been handed out, nothing after it.
    Barrier(u64),
    /// Nothing arrived in time; the input is still open.
    Idle,
    /// Every upstream component has finished.
    Closed,
}

struct Port {
    rx: mpsc::Receiver<Message>,
    /// Delivered the barrier being aligned; not read until the others have too.
    blocked: bool,
    closed: bool,
}

/// Tags the batches a sink receives with the token of the current epoch (between two
/// barriers), so the coordinator learns when a sink has released all of them.
struct Epochs {
    acks: AckSender,
    current: Finalizers,
}

/// The incoming edges of a transform or sink (one channel per upstream component, read
/// in turn). Counts what it hands out; aligns checkpoint barriers.
///
/// When asked, measures the time from handing out a batch to the next request as the
/// batch's processing time, and (when profiling) the time spent waiting for input.
pub struct SinkInput {
    ports: Vec<Port>,
    cursor: usize,
    aligning: Option<u64>,
    epochs: Option<Epochs>,
    telemetry: Arc<ComponentTelemetry>,
    measure_latency: bool,
    handed_out: Option<Instant>,
    wait_started: Option<Instant>,
    /// Set once every input has closed and all it carried was handed out.
    read_to_end: Arc<AtomicBool>,
}

impl SinkInput {
    /// An input reading `rx`, counting into `telemetry`.
    pub fn new(rx: mpsc::Receiver<Message>, telemetry: Arc<ComponentTelemetry>) -> Self {
        SinkInput::from_edges(vec![rx], telemetry)
    }

    /// An input reading several edges.
    pub fn from_edges(
        edges: Vec<mpsc::Receiver<Message>>,
        telemetry: Arc<ComponentTelemetry>,
    ) -> Self {
        SinkInput {
            ports: edges
                .into_iter()
                .map(|rx| Port {
                    rx,
                    blocked: false,
                    closed: false,
                })
                .collect(),
            cursor: 0,
            aligning: None,
            epochs: None,
            telemetry,
            measure_latency: false,
            handed_out: None,
            wait_started: None,
            read_to_end: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True, once set, when the component read this input to its end (every upstream
    /// finished and everything was handed out); false while it has not, and for ever if
    /// the component stopped before. Whoever runs the component keeps this to learn,
    /// after it ended, whether it saw all its input.
    pub(crate) fn read_to_end(&self) -> Arc<AtomicBool> {
        self.read_to_end.clone()
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

    /// A sink's input that tracks epochs for checkpoints: acknowledgements with the
    /// barrier id go to `acks`; the first epoch ends at barrier `first_id`.
    pub(crate) fn with_epochs(mut self, acks: AckSender, first_id: u64) -> Self {
        self.epochs = Some(Epochs {
            current: Finalizers::one(acks.token(first_id)),
            acks,
        });
        self
    }

    fn aligned(&self) -> bool {
        self.ports.iter().all(|p| p.closed || p.blocked)
    }

    fn release_alignment(&mut self) -> Option<u64> {
        let id = self.aligning.take()?;
        for p in &mut self.ports {
            p.blocked = false;
        }
        Some(id)
    }

    fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Event> {
        use std::task::Poll;
        let n = self.ports.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let port = &mut self.ports[i];
            if port.closed || port.blocked {
                continue;
            }
            match port.rx.poll_recv(cx) {
                Poll::Ready(Some(Message::Batch(b))) => {
                    self.cursor = (i + 1) % n;
                    return Poll::Ready(Event::Batch(b));
                }
                Poll::Ready(Some(Message::Barrier(id))) => {
                    port.blocked = true;
                    if self.aligning.is_some_and(|a| a != id) {
                        tracing::warn!(
                            component_id = %self.telemetry.id,
                            "barrier {id} arrived while aligning another"
                        );
                    }
                    self.aligning = Some(id);
                    if self.aligned()
                        && let Some(id) = self.release_alignment()
                    {
                        return Poll::Ready(Event::Barrier(id));
                    }
                }
                Poll::Ready(None) => {
                    port.closed = true;
                    if self.aligned()
                        && let Some(id) = self.release_alignment()
                    {
                        return Poll::Ready(Event::Barrier(id));
                    }
                }
                Poll::Pending => {}
            }
        }
        if self.ports.iter().all(|p| p.closed) {
            self.read_to_end.store(true, Ordering::Release);
            Poll::Ready(Event::Closed)
        } else {
            Poll::Pending
        }
    }

    /// Counts a batch; for sinks, tags it with the epoch token.
    fn hand_out(&mut self, event: Event) -> Event {
        let now = (self.measure_latency || self.wait_started.is_some()).then(Instant::now);
        if let (Some(start), Some(now)) = (self.wait_started.take(), now) {
            self.telemetry.emit(Waited {
                elapsed: now.saturating_duration_since(start),
            });
        }
        match event {
            Event::Batch(mut b) => {
                self.telemetry.emit(EventsReceived {
                    count: b.num_rows() as u64,
                });
                if self.measure_latency {
                    self.handed_out = now;
                }
                if let Some(e) = &self.epochs {
                    b.finalizers.merge(e.current.clone());
                }
                Event::Batch(b)
            }
            Event::Barrier(id) => {
                if let Some(e) = &mut self.epochs {
                    // Dropping the old epoch's token: once every batch of the epoch is
                    // released too, the coordinator hears `id`.
                    e.current = Finalizers::one(e.acks.token(id + 1));
                }
                Event::Barrier(id)
            }
            other => other,
        }
    }

    /// The next batch, barrier or the end of input.
    pub async fn next_event(&mut self) -> Event {
        self.before_wait();
        let e = std::future::poll_fn(|cx| self.poll_event(cx)).await;
        self.hand_out(e)
    }

    /// The next batch, barrier, the end of input, or [`Event::Idle`] after `wait`.
    pub async fn next_event_timeout(&mut self, wait: Duration) -> Event {
        self.before_wait();
        let e = if wait.is_zero() {
            // Only what is there now: no timer, whose firing would cost the waiting
            // thread a sleep and a wake-up from the runtime (a sink asks this after
            // every batch to learn whether its input is idle).
            std::future::poll_fn(|cx| match self.poll_event(cx) {
                std::task::Poll::Ready(e) => std::task::Poll::Ready(e),
                std::task::Poll::Pending => std::task::Poll::Ready(Event::Idle),
            })
            .await
        } else {
            match tokio::time::timeout(wait, std::future::poll_fn(|cx| self.poll_event(cx))).await {
                Ok(e) => e,
                Err(_) => Event::Idle,
            }
        };
        self.hand_out(e)
    }

    /// Like [`SinkInput::next_event`], from a thread outside the async runtime.
    pub fn blocking_next_event(&mut self) -> Event {
        block_on(self.next_event())
    }

    /// Like [`SinkInput::next_event_timeout`], from a thread outside the runtime.
    pub fn blocking_next_event_timeout(
        &mut self,
        runtime: &tokio::runtime::Handle,
        wait: Duration,
    ) -> Event {
        runtime.block_on(self.next_event_timeout(wait))
    }

    /// The next batch, or `None` once every upstream component has finished. Barriers
    /// are handled here (a sink need not know of them).
    pub async fn recv(&mut self) -> Option<Batch> {
        loop {
            match self.next_event().await {
                Event::Batch(b) => return Some(b),
                Event::Closed => return None,
                Event::Barrier(_) | Event::Idle => {}
            }
        }
    }

    /// The next batch, from a thread outside the async runtime.
    pub fn blocking_recv(&mut self) -> Option<Batch> {
        block_on(self.recv())
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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event_timeout(left).await {
                Event::Batch(b) => return Recv::Batch(b),
                Event::Closed => return Recv::Closed,
                Event::Idle => return Recv::Idle,
                Event::Barrier(_) => {}
            }
        }
    }
}

/// A component that stops before reading all its input (it failed, or was stopped) has
/// not delivered what it left unread: those batches are failed, so their sources do not
/// count them as delivered (a dropped token otherwise counts as released), and neither
/// is its current epoch (what comes after was never read).
impl Drop for SinkInput {
    fn drop(&mut self) {
        let mut unread = false;
        for port in &mut self.ports {
            port.rx.close();
            while let Ok(m) = port.rx.try_recv() {
                if let Message::Batch(b) = m {
                    b.finalizers.fail();
                    unread = true;
                }
            }
        }
        if (unread || !self.read_to_end.load(Ordering::Acquire))
            && let Some(e) = &self.epochs
        {
            e.current.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ComponentKind;
    use arrow_array::Int64Array;
    use arrow_array::RecordBatch;
    use arrow_schema::{DataType, Field, Schema};

    fn batch(v: i64) -> Batch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        Batch::new(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap())
    }

    fn value(e: &Event) -> String {
        match e {
            Event::Batch(b) => {
                let v = b
                    .data
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                format!("{}", v.value(0))
            }
            Event::Barrier(id) => format!("barrier {id}"),
            Event::Idle => "idle".into(),
            Event::Closed => "closed".into(),
        }
    }

    fn telemetry() -> Arc<ComponentTelemetry> {
        Arc::new(ComponentTelemetry::new(
            "t",
            ComponentKind::Transform,
            "test",
        ))
    }

    #[tokio::test]
    async fn a_barrier_is_aligned_over_every_input() {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let mut input = SinkInput::from_edges(vec![a_rx, b_rx], telemetry());
        a_tx.send(Message::Batch(batch(1))).await.unwrap();
        a_tx.send(Message::Barrier(7)).await.unwrap();
        a_tx.send(Message::Batch(batch(2))).await.unwrap();
        b_tx.send(Message::Batch(batch(10))).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(value(&input.next_event().await));
        }
        seen.sort();
        assert_eq!(seen, vec!["1", "10"]);
        // Input a is blocked behind its barrier: `2` must not come before b's barrier.
        assert_eq!(
            value(&input.next_event_timeout(Duration::from_millis(20)).await),
            "idle"
        );
        b_tx.send(Message::Barrier(7)).await.unwrap();
        assert_eq!(value(&input.next_event().await), "barrier 7");
        assert_eq!(value(&input.next_event().await), "2");
        drop(a_tx);
        drop(b_tx);
        assert_eq!(value(&input.next_event().await), "closed");
    }

    #[tokio::test]
    async fn a_closed_input_counts_as_aligned() {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let mut input = SinkInput::from_edges(vec![a_rx, b_rx], telemetry());
        a_tx.send(Message::Barrier(3)).await.unwrap();
        b_tx.send(Message::Batch(batch(5))).await.unwrap();
        drop(b_tx);
        assert_eq!(value(&input.next_event().await), "5");
        assert_eq!(value(&input.next_event().await), "barrier 3");
        drop(a_tx);
        assert_eq!(value(&input.next_event().await), "closed");
    }

    #[tokio::test]
    async fn batches_left_unread_are_not_delivered() {
        let (tx, rx) = mpsc::channel(8);
        let (acks, mut ack_rx) = crate::ack::ack_channel();
        let mut input = SinkInput::new(rx, telemetry());
        let mut read = batch(1);
        read.finalizers = Finalizers::one(acks.token(1));
        let mut unread = batch(2);
        unread.finalizers = Finalizers::one(acks.token(2));
        tx.send(Message::Batch(read)).await.unwrap();
        tx.send(Message::Batch(unread)).await.unwrap();
        drop(input.recv().await.unwrap());
        let ack = ack_rx.recv().await.unwrap();
        assert_eq!((ack.id, ack.delivered), (1, true));
        drop(input);
        let ack = ack_rx.recv().await.unwrap();
        assert_eq!((ack.id, ack.delivered), (2, false));
        let late = batch(3);
        assert!(tx.send(Message::Batch(late)).await.is_err(), "input closed");
    }

    #[tokio::test]
    async fn sinks_learn_when_an_epoch_is_released() {
        let (tx, rx) = mpsc::channel(8);
        let (acks, mut ack_rx) = crate::ack::ack_channel();
        let mut input = SinkInput::new(rx, telemetry()).with_epochs(acks, 1);
        tx.send(Message::Batch(batch(1))).await.unwrap();
        tx.send(Message::Barrier(1)).await.unwrap();
        tx.send(Message::Batch(batch(2))).await.unwrap();
        let first = input.recv().await.unwrap();
        let second = input.recv().await.unwrap(); // past barrier 1
        assert!(ack_rx.try_recv().is_err(), "batch 1 is not released yet");
        drop(first);
        let ack = ack_rx.recv().await.unwrap();
        assert_eq!((ack.id, ack.delivered), (1, true));
        drop(second);
        drop(input);
        assert_eq!(ack_rx.recv().await.unwrap().id, 2);
    }
}
