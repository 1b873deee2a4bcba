//! The `file` source's acknowledgements: which batches are in flight, and the position
//! to commit once every batch before it is acknowledged.

use std::collections::VecDeque;

use tidegauge_core::ComponentContext;
use tidegauge_core::ack::{Ack, AckReceiver, AckSender, Finalizers, ack_channel};
use tidegauge_core::checkpoint::SourceCheckpoint;
use tidegauge_core::telemetry::ComponentErrorOccurred;

/// Batches in flight, and the position to commit once each is acknowledged.
pub(super) struct Acks {
    checkpoint: SourceCheckpoint,
    tx: Option<AckSender>,
    rx: AckReceiver,
    next_seq: u64,
    /// (sequence number, position after the batch, acknowledged), oldest first; no
    /// position for a batch that ends amid a chunk (the next batch's covers it).
    outstanding: VecDeque<(u64, Option<serde_json::Value>, bool)>,
    /// Position to commit once nothing is outstanding (lines without events).
    idle_position: Option<serde_json::Value>,
    failed: bool,
}

impl Acks {
    pub(super) fn new(checkpoint: SourceCheckpoint) -> Self {
        let (tx, rx) = ack_channel();
        Acks {
            checkpoint,
            tx: Some(tx),
            rx,
            next_seq: 0,
            outstanding: VecDeque::new(),
            idle_position: None,
            failed: false,
        }
    }

    pub(super) fn token(&mut self, position: Option<serde_json::Value>) -> Finalizers {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding.push_back((seq, position, false));
        match &self.tx {
            Some(tx) => Finalizers::one(tx.token(seq)),
            None => Finalizers::none(),
        }
    }

    /// The position moved past lines that produced no event.
    pub(super) fn advance(&mut self, position: serde_json::Value) {
        match self.outstanding.back_mut() {
            Some(last) => last.1 = Some(position),
            None => self.idle_position = Some(position),
        }
    }

    fn on_ack(&mut self, ack: Ack, component: &ComponentContext) {
        if !ack.delivered {
            if !self.failed {
                component.emit(ComponentErrorOccurred {
                    error: &format!(
                        "batch {} was not delivered by every sink; its position is not committed",
                        ack.id
                    ),
                });
            }
            self.failed = true;
        }
        if let Some(front) = self.outstanding.front().map(|o| o.0)
            && let Some(entry) = ack
                .id
                .checked_sub(front)
                .and_then(|i| self.outstanding.get_mut(i as usize))
        {
            entry.2 = true;
        }
    }

    /// Commits the position up to which every batch is acknowledged.
    fn commit(&mut self, component: &ComponentContext) {
        if self.failed {
            return;
        }
        let mut latest = self.idle_position.take();
        while self.outstanding.front().is_some_and(|o| o.2) {
            if let Some(p) = self.outstanding.pop_front().and_then(|o| o.1) {
                latest = Some(p);
            }
        }
        let result = match latest {
            Some(p) => self.checkpoint.commit(p),
            None => self.checkpoint.tick(),
        };
        if let Err(e) = result {
            component.emit(ComponentErrorOccurred {
                error: &format!("cannot commit the acknowledged position: {e}"),
            });
        }
    }

    /// Takes the acknowledgements that have arrived, commits.
    pub(super) fn poll(&mut self, component: &ComponentContext) {
        while let Ok(ack) = self.rx.try_recv() {
            self.on_ack(ack, component);
        }
        self.commit(component);
    }

    /// After the last batch: waits for every acknowledgement, commits `last` if nothing
    /// failed.
    pub(super) fn finish(mut self, last: serde_json::Value, component: &ComponentContext) {
        self.tx = None;
        while let Some(ack) = self.rx.blocking_recv() {
            self.on_ack(ack, component);
            self.commit(component);
        }
        self.advance(last);
        self.commit(component);
        if let Err(e) = self.checkpoint.flush() {
            component.emit(ComponentErrorOccurred {
                error: &format!("cannot commit the acknowledged position: {e}"),
            });
        }
    }
}
