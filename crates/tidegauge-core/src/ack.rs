//! End-to-end acknowledgements.
//!
//! A source that wants to know when its data has been made durable attaches an
//! [`AckToken`] to each batch it emits. Tokens travel with the batch and with everything
//! derived from it (a transform's outputs carry the tokens of their input); a sink drops
//! them once it has made the data durable, or marks them failed first. When the last copy
//! of a token is dropped, the source receives one [`Ack`] saying whether every sink that
//! got the data delivered it. A filter that drops all rows releases the token at once: there
//! is nothing left to deliver.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

/// The outcome of one acknowledged batch, as seen by the source that emitted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The id the source gave the token (e.g. a sequence number or offset).
    pub id: u64,
    /// True when every sink that received data derived from the batch delivered it.
    pub delivered: bool,
}

struct TokenInner {
    id: u64,
    failed: AtomicBool,
    tx: mpsc::UnboundedSender<Ack>,
}

impl Drop for TokenInner {
    fn drop(&mut self) {
        // The source may have stopped listening (shutdown); nothing to do then.
        let _ = self.tx.send(Ack {
            id: self.id,
            delivered: !self.failed.load(Ordering::Acquire),
        });
    }
}

/// A handle on one emitted batch; the source is told when the last copy is dropped.
#[derive(Clone)]
pub struct AckToken(Arc<TokenInner>);

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckToken({})", self.0.id)
    }
}

impl AckToken {
    /// Marks the batch as not delivered (a sink failed to make it durable).
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

/// Where a source makes tokens; pair of [`AckReceiver`].
#[derive(Clone)]
pub struct AckSender(mpsc::UnboundedSender<Ack>);

impl AckSender {
    /// A token with `id`, reported back once all its copies are gone.
    pub fn token(&self, id: u64) -> AckToken {
        AckToken(Arc::new(TokenInner {
            id,
            failed: AtomicBool::new(false),
            tx: self.0.clone(),
        }))
    }
}

/// Where a source hears about its batches. Unbounded, but never holds more entries than
/// the source has batches in flight, which the bounded channels limit.
pub type AckReceiver = mpsc::UnboundedReceiver<Ack>;

/// A new acknowledgement channel for one source.
pub fn ack_channel() -> (AckSender, AckReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (AckSender(tx), rx)
}

/// The tokens attached to a batch (usually none or one).
#[derive(Clone, Debug, Default)]
pub struct Finalizers(Vec<AckToken>);

impl Finalizers {
    /// No tokens: nobody waits for this batch.
    pub fn none() -> Self {
        Finalizers(Vec::new())
    }

    /// Exactly one token.
    pub fn one(token: AckToken) -> Self {
        Finalizers(vec![token])
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every token of `other` (a batch now stands for both).
    pub fn merge(&mut self, other: Finalizers) {
        self.0.extend(other.0);
    }

    /// Marks every token failed; the source will not count the data as delivered.
    pub fn fail(&self) {
        for t in &self.0 {
            t.fail();
        }
    }

    /// Releases the tokens: the data is delivered (unless marked failed before).
    pub fn release(self) {
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_arrives_when_last_copy_drops() {
        let (tx, mut rx) = ack_channel();
        let f = Finalizers::one(tx.token(7));
        let copy = f.clone();
        f.release();
        assert!(rx.try_recv().is_err(), "a copy is still alive");
        copy.release();
        assert_eq!(
            rx.try_recv().unwrap(),
            Ack {
                id: 7,
                delivered: true
            }
        );
    }

    #[test]
    fn failure_in_any_copy_fails_the_batch() {
        let (tx, mut rx) = ack_channel();
        let f = Finalizers::one(tx.token(1));
        let copy = f.clone();
        copy.fail();
        drop(copy);
        drop(f);
        assert!(!rx.try_recv().unwrap().delivered);
    }
}
