//! What the broker sinks (Kafka, NATS) share: settling a batch once the broker has
//! answered for each of its messages, sending again through the shared retry layer what
//! it did not take, then counting and acknowledging the batch.

use std::collections::VecDeque;
use std::time::Duration;

use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::Recv;
use tidegauge_core::resilience::Resilience;
use tidegauge_core::telemetry::{BytesSent, ComponentErrorOccurred, EventsSent};
use tidegauge_core::{Batch, ComponentContext, ComponentError, SinkInput};

/// A broker sink as the shared loop drives it: batches whose messages are on their way
/// (`Pending`), settled once the broker has answered for each message.
pub(crate) trait BrokerSink: Sync {
    /// A message, kept to send again.
    type Msg: Send;
    /// A batch whose messages are on their way.
    type Pending: Send;

    /// Waits for the broker's answer on every message of `p`, then settles the batch
    /// (with [`settle`]).
    fn settle(
        &self,
        component: &ComponentContext,
        origin: &str,
        p: Self::Pending,
    ) -> impl Future<Output = Result<(), ComponentError>> + Send;

    /// Sends `left` again and waits for each; keeps in it those that did not arrive.
    /// Returns the messages and bytes that arrived when all did, the first error otherwise.
    fn send_again(
        &self,
        component: &ComponentContext,
        origin: &str,
        left: &mut Vec<Self::Msg>,
    ) -> impl Future<Output = Result<(u64, u64), String>> + Send;
}

/// The next batch for `sink`, whose batches on their way wait in `pending` (oldest
/// first). With nothing pending it waits for input; otherwise it takes what is ready
/// and, as soon as the input is quiet, settles every pending batch before waiting again.
/// `None` once the input is closed.
pub(crate) async fn next_batch<S: BrokerSink>(
    sink: &S,
    component: &ComponentContext,
    origin: &str,
    input: &mut SinkInput,
    pending: &mut VecDeque<S::Pending>,
) -> Result<Option<Batch>, ComponentError> {
    loop {
        let wait = if pending.is_empty() {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        };
        match input.recv_timeout(wait).await {
            Recv::Batch(b) => return Ok(Some(b)),
            Recv::Idle => settle_all(sink, component, origin, pending).await?,
            Recv::Closed => return Ok(None),
        }
    }
}

/// Settles every batch of `pending`, oldest first.
pub(crate) async fn settle_all<S: BrokerSink>(
    sink: &S,
    component: &ComponentContext,
    origin: &str,
    pending: &mut VecDeque<S::Pending>,
) -> Result<(), ComponentError> {
    while let Some(p) = pending.pop_front() {
        sink.settle(component, origin, p).await?;
    }
    Ok(())
}

/// What became of the messages of a batch: delivered (counted, with their payload bytes),
/// or kept to send again.
pub(crate) struct Tally<M> {
    /// Events in the messages the broker took.
    pub delivered: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Messages the broker did not take (or the client refused), to send again.
    pub failed: Vec<M>,
    /// Why the first of them was not taken.
    pub first_error: Option<String>,
}

impl<M> Default for Tally<M> {
    fn default() -> Self {
        Tally {
            delivered: 0,
            bytes: 0,
            failed: Vec::new(),
            first_error: None,
        }
    }
}

impl<M> Tally<M> {
    /// One message of `events` events and `bytes` payload bytes arrived.
    pub fn delivered(&mut self, events: u64, bytes: usize) {
        self.delivered += events;
        self.bytes += bytes as u64;
    }

    /// One message did not arrive, for `error`: it is kept to send again.
    pub fn failed(&mut self, msg: M, error: String) {
        self.first_error.get_or_insert(error);
        self.failed.push(msg);
    }

    /// The outcome of sending a list again: the events and bytes delivered when all
    /// were, else the first error; `left` keeps those that were not.
    pub fn into_retry_result(self, left: &mut Vec<M>) -> Result<(u64, u64), String> {
        *left = self.failed;
        match self.first_error {
            None => Ok((self.delivered, self.bytes)),
            Some(e) => Err(format!("{e} ({} message(s) left)", left.len())),
        }
    }
}

/// How a sink words what it does: `[taken, sending]` as in "not stored; publishing again".
pub(crate) type Wording = [&'static str; 2];

/// Settles a batch of `sink` whose messages are all answered for (`tally`): sends again,
/// through `resilience`, those that did not arrive ([`BrokerSink::send_again`]), then
/// counts what arrived and releases the batch's finalizers; fails them when the attempts
/// are spent.
pub(crate) async fn settle<S: BrokerSink>(
    sink: &S,
    component: &ComponentContext,
    origin: &str,
    resilience: &Resilience,
    finalizers: Finalizers,
    tally: Tally<S::Msg>,
    [taken, sending]: Wording,
) -> Result<(), ComponentError> {
    let Tally {
        mut delivered,
        mut bytes,
        failed,
        first_error,
    } = tally;
    if !failed.is_empty() {
        component.emit(ComponentErrorOccurred {
            error: &format!(
                "{origin}: {} message(s) not {taken}: {}; {sending} again",
                failed.len(),
                first_error.as_deref().unwrap_or("unknown error")
            ),
        });
        let left = tokio::sync::Mutex::new(failed);
        let left = &left;
        let result = resilience
            .call(
                None,
                move |_| async move {
                    let mut left = left.lock().await;
                    sink.send_again(component, origin, &mut left).await
                },
                |_| true,
                |_| {},
            )
            .await;
        match result {
            Ok((n, b)) => {
                delivered += n;
                bytes += b;
            }
            Err(e) => {
                finalizers.fail();
                return Err(ComponentError::new(format!(
                    "{origin}: messages not {taken}: {e}"
                )));
            }
        }
    }
    component.emit(EventsSent { count: delivered });
    component.emit(BytesSent { bytes });
    finalizers.release();
    Ok(())
}
