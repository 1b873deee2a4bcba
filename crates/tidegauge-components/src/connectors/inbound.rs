//! What message-broker sources (MQTT, Kafka, NATS) share: decoding a message payload into
//! rows of the declared fields, knowing which broker positions may be committed once
//! the sinks have acknowledged the batches that carried them, and the loop that runs
//! them ([`run`]): each broker only says how to get its next message and how to settle
//! positions with its broker ([`BrokerSource`]).

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::{AckSender, Finalizers, ack_channel};
use tidegauge_core::component::SendError;
use tidegauge_core::telemetry::{BytesReceived, ComponentErrorOccurred};
use tidegauge_core::{Batch, ComponentContext, ComponentError, ConfigError, SourceContext};

use crate::codec::json::JsonDecoder;
use crate::codec::{Columns, FieldMap, FieldType, Row};
use crate::sources::BatchConfig;
use crate::sources::linger::Linger;

/// The default of a broker source's `drain_timeout_ms`: how long it waits at shutdown
/// for the sinks' acknowledgements.
pub(crate) fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Where a field's value comes from instead of the payload: a level of the message's
/// subject (MQTT topic, NATS subject) or its key (Kafka).
#[derive(Clone, Debug, Deserialize, JsonSchema, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyFromTopic {
    /// Declared string field that receives the value (e.g. `sensor_id`).
    pub field: String,
    /// 0-based level of the topic (`plant/3/pump-7/temp` has levels 0..3; level 2 is
    /// `pump-7`). Negative counts from the end (-1 is the last level).
    pub level: i32,
}

impl KeyFromTopic {
    /// Checks that the field is declared and a string.
    pub fn validate(&self, prefix: &str, fields: &FieldMap, errors: &mut Vec<ConfigError>) {
        match fields.get(&self.field) {
            None => errors.push(ConfigError::new(
                format!("{prefix}.field"),
                format!("`{}` is not one of the declared fields", self.field),
            )),
            Some(FieldType::String) => {}
            Some(_) => errors.push(ConfigError::new(
                format!("{prefix}.field"),
                format!("`{}` must be declared as a string field", self.field),
            )),
        }
    }

    /// The topic level this mapping picks, if the topic has it. `separator` is `/` for
    /// MQTT and `.` for NATS.
    pub fn pick<'t>(&self, topic: &'t str, separator: char) -> Option<&'t str> {
        if self.level >= 0 {
            topic.split(separator).nth(self.level as usize)
        } else {
            let back = (-(self.level as i64) - 1) as usize;
            topic.rsplit(separator).nth(back)
        }
    }
}

/// Decodes message payloads (one JSON object, or several as JSON Lines) into batches.
/// Records that cannot be decoded are dead-lettered with their origin.
pub struct MessageDecoder {
    json: JsonDecoder,
    row: Row,
    columns: Columns,
    key_index: Option<usize>,
    batch_rows: usize,
    batch_bytes: usize,
    /// The declared fields filled with the message's partition and offset, and the
    /// values for the message being decoded.
    position_fields: Option<(usize, usize)>,
    position: (i64, i64),
}

impl MessageDecoder {
    /// A decoder for `fields` (with `schema` from [`crate::codec::schema_for`]); `key_field`
    /// is the declared field that the message key or topic level fills, if any.
    pub fn new(
        fields: &FieldMap,
        schema: SchemaRef,
        key_field: Option<&str>,
        batch: &BatchConfig,
    ) -> Self {
        let names: Vec<String> = fields.keys().cloned().collect();
        let key_index = key_field.and_then(|k| names.iter().position(|n| n == k));
        MessageDecoder {
            json: JsonDecoder::new(names),
            row: Row::new(fields.len()),
            columns: Columns::new(schema, fields, batch.rows),
            key_index,
            batch_rows: batch.rows,
            batch_bytes: batch.max_bytes,
            position_fields: None,
            position: (0, 0),
        }
    }

    /// Fills the declared fields `partition` and `offset` of every record with its
    /// message's partition and offset (see [`MessageDecoder::decode_at`]).
    pub fn with_position_fields(
        mut self,
        fields: &FieldMap,
        partition: &str,
        offset: &str,
    ) -> Self {
        let index = |name: &str| fields.keys().position(|n| n == name);
        self.position_fields = index(partition).zip(index(offset));
        self
    }

    /// [`MessageDecoder::decode`] of a message at `(partition, offset)`.
    pub fn decode_at(
        &mut self,
        cx: &ComponentContext,
        origin: &dyn Fn() -> String,
        key: Option<&str>,
        payload: &[u8],
        position: (i64, i64),
    ) -> usize {
        self.position = position;
        self.decode(cx, origin, key, payload)
    }

    /// Decodes one message. `key` fills the key field (when one is configured); a payload
    /// may hold several records as JSON Lines. `origin` names the message for dead letters
    /// (broker, topic, partition, offset); for multi-record payloads the line is appended.
    /// Returns the number of rows added.
    pub fn decode(
        &mut self,
        cx: &ComponentContext,
        origin: &dyn Fn() -> String,
        key: Option<&str>,
        payload: &[u8],
    ) -> usize {
        cx.emit(BytesReceived {
            bytes: payload.len() as u64,
        });
        let mut added = 0;
        let multi = memchr::memchr(b'\n', payload.trim_ascii_end()).is_some();
        for (i, line) in payload.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let result = self.json.decode(line, &mut self.row).and_then(|()| {
                if let Some(k) = self.key_index {
                    match key {
                        Some(key) => self.row.set_text(k, key, true),
                        None => return Err("message has no key to fill the key field".into()),
                    }
                }
                if let Some((p, o)) = self.position_fields {
                    self.row.slots[p] = crate::codec::Slot::I64(self.position.0);
                    self.row.slots[o] = crate::codec::Slot::I64(self.position.1);
                }
                self.columns.push(&mut self.row)
            });
            match result {
                Ok(()) => added += 1,
                Err(reason) => {
                    let place = if multi {
                        format!("{}:{}", origin(), i + 1)
                    } else {
                        origin()
                    };
                    cx.dead_letter(&place, &reason, line);
                }
            }
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            cx.dead_letter(&origin(), "empty message", payload);
        }
        added
    }

    /// Decodes one message whose key is picked from its topic or subject
    /// ([`KeyFromTopic::pick`]): `key` is `None` when no key is configured, `Some(None)`
    /// when the topic lacks the level, and then the message is dead-lettered with the
    /// reason `missing`.
    pub fn decode_picked(
        &mut self,
        cx: &ComponentContext,
        origin: &dyn Fn() -> String,
        key: Option<Option<&str>>,
        missing: &str,
        payload: &[u8],
    ) {
        match key {
            Some(None) => cx.dead_letter(&origin(), missing, payload),
            key => {
                self.decode(cx, origin, key.flatten(), payload);
            }
        }
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether no row waits.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Whether a full batch is ready.
    pub fn is_full(&self) -> bool {
        self.columns.len() >= self.batch_rows || self.columns.bytes() >= self.batch_bytes
    }

    /// The rows decoded so far as a batch (none if there are none); counts them in.
    pub fn take(&mut self, cx: &ComponentContext) -> Option<RecordBatch> {
        self.columns.take(cx)
    }
}

/// What a broker source's [`BrokerSource::next`] got.
pub(crate) enum Next<P> {
    /// A message, decoded into the decoder (bad records dead-lettered); its position, to
    /// settle once the sinks have its events (`None`: nothing to acknowledge).
    Message(Option<P>),
    /// A connection problem; the client is retrying. Reported, then reading goes on.
    Error(String),
    /// The connection is lost for good: the source fails with this.
    Fatal(String),
    /// No more messages.
    End,
}

/// A message-broker source as [`run`] drives it.
pub(crate) trait BrokerSource: Send {
    /// A message's place at the broker (what is committed or acknowledged).
    type Position: Send;
    /// Waits for the next message and decodes it into `decoder`. Dropped unfinished when
    /// an acknowledgement or a timer comes first: it must not lose a message it has
    /// received (decode after the last `.await`).
    fn next(
        &mut self,
        decoder: &mut MessageDecoder,
        cx: &ComponentContext,
    ) -> impl Future<Output = Next<Self::Position>> + Send;
    /// Tells the broker what the sinks delivered (commit, acknowledge) and asks it for
    /// what they did not (redeliver). `draining`: the source is stopping, make it stick.
    fn settle(
        &mut self,
        cx: &ComponentContext,
        released: Released<Self::Position>,
        draining: bool,
    ) -> impl Future<Output = ()> + Send;
    /// Stopping: the last batch is sent and the stages downstream still run (they see
    /// the input end next). What the source must tell them before they stop.
    fn finishing(&mut self, _cx: &ComponentContext) {}
    /// After the last acknowledgement: final commit, flush, disconnect.
    fn close(self, cx: &ComponentContext) -> impl Future<Output = ()> + Send;
}

/// Runs a broker source: decodes messages into batches of at most `batch_rows` and sends
/// a batch by the rule of [`Linger`]: when it is full, as soon as no further message is
/// ready (caught up), or when its first event has waited `linger` however fast messages
/// keep coming. Serves checkpoint barriers while idle, and settles positions as the
/// sinks acknowledge the batches that carried them. On shutdown it sends what is decoded
/// and waits up to `drain_timeout` for the last acknowledgements before closing.
pub(crate) async fn run<B: BrokerSource>(
    mut broker: B,
    cx: SourceContext,
    mut decoder: MessageDecoder,
    batch: &BatchConfig,
    drain_timeout_ms: u64,
) -> Result<(), ComponentError> {
    let mut linger = Linger::new(batch);
    let drain_timeout = Duration::from_millis(drain_timeout_ms);
    let SourceContext {
        component,
        mut out,
        shutdown,
        ..
    } = cx;
    let (ack_tx, mut acks) = ack_channel();
    let mut pending = Pending {
        tracker: AckTracker::default(),
        held: Vec::new(),
        ack_tx,
    };
    let mut barriers = barrier_ticker();

    /// What woke the loop.
    enum Wake<P> {
        Stop,
        Ack(tidegauge_core::ack::Ack),
        Next(Next<P>),
        CaughtUp,
        Barriers,
    }

    let mut caught_up = false;
    let result: Result<(), ComponentError> = loop {
        if linger.due(decoder.is_full(), caught_up, Instant::now()) {
            linger.sent();
            if let Some(batch) = pending.take(&mut broker, &mut decoder, &component).await {
                match out.send(batch).await {
                    Ok(()) => {}
                    Err(SendError::Closed) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            }
        }
        caught_up = false;
        let holding = linger.holding();
        let wake = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Wake::Stop,
            Some(ack) = acks.recv() => Wake::Ack(ack),
            next = broker.next(&mut decoder, &component) => Wake::Next(next),
            // Polled only after the broker had no message ready: caught up.
            () = std::future::ready(()), if holding => Wake::CaughtUp,
            _ = barriers.tick() => Wake::Barriers,
        };
        match wake {
            Wake::Stop => break Ok(()),
            Wake::Ack(ack) => {
                let released = pending.tracker.ack(ack.id, ack.delivered);
                broker.settle(&component, released, false).await;
            }
            Wake::Next(Next::Message(position)) => {
                linger.took_in(Instant::now());
                pending.held.extend(position);
            }
            Wake::Next(Next::Error(e)) => {
                component.emit(ComponentErrorOccurred { error: &e });
            }
            Wake::Next(Next::Fatal(e)) => break Err(ComponentError::new(e)),
            Wake::Next(Next::End) => break Ok(()),
            Wake::CaughtUp => caught_up = true,
            Wake::Barriers => match out.serve_barriers().await {
                Ok(()) => {}
                Err(SendError::Closed) => break Ok(()),
                Err(e) => break Err(e.into()),
            },
        }
    };

    // Shutdown: send what is decoded, let downstream drain, settle what the sinks
    // acknowledged, then close.
    if let Some(batch) = pending.take(&mut broker, &mut decoder, &component).await {
        let _ = out.send(batch).await;
    }
    broker.finishing(&component);
    drop(out);
    let deadline = tokio::time::Instant::now() + drain_timeout;
    while pending.tracker.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, acks.recv()).await {
            Ok(Some(ack)) => {
                let released = pending.tracker.ack(ack.id, ack.delivered);
                broker.settle(&component, released, true).await;
            }
            _ => break,
        }
    }
    broker.close(&component).await;
    result
}

/// Positions of messages decoded since the last batch, and of batches in flight.
struct Pending<P> {
    tracker: AckTracker<P>,
    held: Vec<P>,
    ack_tx: AckSender,
}

impl<P: Send> Pending<P> {
    /// The decoded rows as a batch whose acknowledgement stands for the held positions.
    /// Positions whose messages gave no row (all dead-lettered) are settled as delivered,
    /// in their turn.
    async fn take<B: BrokerSource<Position = P>>(
        &mut self,
        broker: &mut B,
        decoder: &mut MessageDecoder,
        component: &ComponentContext,
    ) -> Option<Batch> {
        let positions = std::mem::take(&mut self.held);
        match decoder.take(component) {
            Some(data) if positions.is_empty() => Some(Batch::new(data)),
            Some(data) => {
                let token = self.ack_tx.token(self.tracker.push(positions));
                Some(Batch::with_finalizers(data, Finalizers::one(token)))
            }
            None if positions.is_empty() => None,
            None => {
                let id = self.tracker.push(positions);
                let released = self.tracker.ack(id, true);
                broker.settle(component, released, false).await;
                None
            }
        }
    }
}

/// How often an idle broker source sends the checkpoint barriers asked of it (a busy
/// one sends them with its batches).
pub(crate) fn barrier_ticker() -> tokio::time::Interval {
    let mut t = tokio::time::interval(std::time::Duration::from_millis(100));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Batches in flight and the broker positions each carries, in emission order. Positions
/// are released for commit only as a contiguous prefix of acknowledged batches, so a
/// commit never covers data that a sink has not made durable.
pub struct AckTracker<P> {
    next_id: u64,
    /// (batch id, positions, outcome once known) in emission order.
    in_flight: VecDeque<(u64, Vec<P>, Option<bool>)>,
    failed: u64,
}

impl<P> Default for AckTracker<P> {
    fn default() -> Self {
        AckTracker {
            next_id: 0,
            in_flight: VecDeque::new(),
            failed: 0,
        }
    }
}

impl<P> AckTracker<P> {
    /// Registers a batch carrying `positions`; returns the id for its ack token.
    pub fn push(&mut self, positions: Vec<P>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.push_back((id, positions, None));
        id
    }

    /// Records the outcome of batch `id`; returns the positions that may now be
    /// committed (delivered) and those of batches that failed (to be redelivered), in
    /// emission order.
    pub fn ack(&mut self, id: u64, delivered: bool) -> Released<P> {
        if let Some(entry) = self.in_flight.iter_mut().find(|(i, _, _)| *i == id) {
            entry.2 = Some(delivered);
        }
        let mut released = Released {
            delivered: Vec::new(),
            failed: Vec::new(),
        };
        while let Some((_, _, Some(_))) = self.in_flight.front() {
            let Some((_, positions, Some(ok))) = self.in_flight.pop_front() else {
                break;
            };
            if ok {
                released.delivered.extend(positions);
            } else {
                self.failed += 1;
                released.failed.extend(positions);
            }
        }
        released
    }

    /// Batches whose outcome is not known yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Batches that were reported as not delivered so far.
    pub fn failed(&self) -> u64 {
        self.failed
    }
}

/// What an acknowledgement released.
pub struct Released<P> {
    /// Positions of delivered batches: commit them.
    pub delivered: Vec<P>,
    /// Positions of batches a sink failed to deliver: do not commit; let the broker
    /// redeliver them.
    pub failed: Vec<P>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_contiguous_acknowledged_prefix_is_released() {
        let mut t = AckTracker::default();
        let a = t.push(vec![1]);
        let b = t.push(vec![2, 3]);
        let c = t.push(vec![4]);
        assert!(t.ack(b, true).delivered.is_empty(), "a is still in flight");
        let r = t.ack(a, true);
        assert_eq!(r.delivered, vec![1, 2, 3]);
        let r = t.ack(c, false);
        assert_eq!((r.delivered, r.failed), (vec![], vec![4]));
        assert_eq!((t.in_flight(), t.failed()), (0, 1));
    }

    #[test]
    fn topic_levels_from_either_end() {
        let k = KeyFromTopic {
            field: "sensor_id".into(),
            level: 2,
        };
        assert_eq!(k.pick("plant/3/pump-7/temp", '/'), Some("pump-7"));
        let k = KeyFromTopic { level: -1, ..k };
        assert_eq!(k.pick("plant.3.pump-7", '.'), Some("pump-7"));
        let k = KeyFromTopic { level: 9, ..k };
        assert_eq!(k.pick("a/b", '/'), None);
    }
}
