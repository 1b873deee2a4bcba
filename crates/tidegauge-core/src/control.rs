//! Talking to a running transform: its thread answers requests between batches.
//!
//! Every transform runs on a thread of its own with its state in `self`; the only way to
//! reach that state while it runs is to ask the thread. The topology gives each transform
//! a bounded request queue, polled alongside its input, and hands a [`TransformControl`]
//! to whoever may ask (the admin API, hot reload). Anything implementing
//! [`Transform::tunables`] / [`Transform::set_tunable`] is reachable this way, with no
//! code of its own.

use tokio::sync::{mpsc, oneshot};

use crate::component::{Transform, Tunable};

/// A request to a running transform.
#[derive(Debug)]
pub enum ControlRequest {
    /// Its tunable parameters, with their current values.
    Tunables(oneshot::Sender<Vec<Tunable>>),
    /// Changes one parameter; the reply says why not, when not.
    SetTunable {
        /// Setting name, as in the config.
        name: String,
        /// New value, as JSON.
        value: serde_json::Value,
        /// The outcome.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Requests a transform has not yet taken; more wait for room.
pub const CONTROL_QUEUE: usize = 8;

/// The asking side of a transform's request queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TransformControl(mpsc::Sender<ControlRequest>);

/// Why a running transform could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The transform has stopped (end of input, failure, or replaced by a reload).
    #[error("the component is not running")]
    Stopped,
    /// The transform refused the change.
    #[error("{0}")]
    Rejected(String),
}

/// A new request queue: the control handle and the receiving end for the transform loop.
pub fn channel() -> (TransformControl, mpsc::Receiver<ControlRequest>) {
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    (TransformControl(tx), rx)
}

impl TransformControl {
    /// Whether both ask the same transform instance.
    pub fn same(&self, other: &TransformControl) -> bool {
        self.0.same_channel(&other.0)
    }

    /// The transform's tunable parameters and their current values.
    pub async fn tunables(&self) -> Result<Vec<Tunable>, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(ControlRequest::Tunables(reply))
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)
    }

    /// Changes parameter `name` to `value`.
    pub async fn set(&self, name: &str, value: serde_json::Value) -> Result<(), ControlError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(ControlRequest::SetTunable {
                name: name.to_string(),
                value,
                reply,
            })
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer
            .await
            .map_err(|_| ControlError::Stopped)?
            .map_err(ControlError::Rejected)
    }
}

/// Answers one request on the transform's own thread.
pub fn answer(id: &str, transform: &mut dyn Transform, request: ControlRequest) {
    match request {
        ControlRequest::Tunables(reply) => {
            let _ = reply.send(transform.tunables());
        }
        ControlRequest::SetTunable { name, value, reply } => {
            let outcome = transform.set_tunable(&name, &value);
            match &outcome {
                Ok(()) => {
                    tracing::info!(component_id = id, parameter = %name, value = %value, "parameter changed")
                }
                Err(e) => {
                    tracing::warn!(component_id = id, parameter = %name, "parameter change refused: {e}")
                }
            }
            let _ = reply.send(outcome);
        }
    }
}
