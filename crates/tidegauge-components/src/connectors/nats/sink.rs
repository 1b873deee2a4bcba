//! `nats` sink: each event as a JSON message published to JetStream, or several events
//! of one subject per message as JSON Lines (`events_per_message`). A batch counts as
//! delivered once the stream has stored (acknowledged) every one of its messages.

use std::collections::VecDeque;

use arrow_schema::SchemaRef;
use async_nats::jetstream::{self, context::PublishAckFuture};
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::SinkContext;
use tidegauge_core::component::sink_fn;
use tidegauge_core::resilience::{Resilience, RetryPolicy};
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Sink, SinkConfig,
    SinkInput,
};

use super::nats_connection;
use crate::codec::encode::JsonEncoder;
use crate::connectors::outbound::{self, BrokerSink, Tally};
use crate::connectors::template::{Template, pack};
use crate::settings::{collect, config};

config! {
    [nats_connection]
    /// Publishes each event as a JSON object (every field) to a NATS JetStream subject.
    ///
    /// `subject` may name fields in braces (`alerts.{sensor_id}`). A batch is acknowledged
    /// upstream once JetStream has stored all its messages; the stream is created when
    /// missing if `stream` and `stream_subjects` are given.
    pub struct NatsSinkConfig {
        /// Subject to publish to; `{field}` is replaced by the event's value of that field.
        #[schemars(example = &"alerts.{sensor_id}")]
        pub subject: String,
        /// Stream to create when missing (with `stream_subjects`); unset: a stream
        /// capturing the subject must exist.
        #[serde(default)]
        pub stream: Option<String>,
        /// Subjects of the stream to create (`alerts.>`).
        #[serde(default)]
        pub stream_subjects: Vec<String>,
        /// Where the stream this sink creates keeps its messages: `file` (survives a
        /// server restart) or `memory` (does not; spares the server a disk write per
        /// message). An existing stream is used as it is.
        #[serde(default)]
        pub stream_storage: super::StreamStorage,
        /// Messages published and not yet stored, at most (within a batch too: a batch
        /// larger than this waits for its own first messages to be stored).
        #[serde(default = "default_max_in_flight")]
        #[schemars(range(min = 1, max = 1000000))]
        pub max_in_flight: usize,
        /// Connection attempts at start, and publishing again the messages of a batch that
        /// the stream did not store (backoff with full jitter, shared budget); when the
        /// attempts are spent the batch counts as not delivered and the sink fails.
        #[serde(default)]
        pub retry: RetryPolicy,
        /// Events of one subject per message, at most: 1 publishes one JSON object per
        /// message; more packs the events of a batch that share a subject into messages of
        /// JSON Lines (one object per line, each subject's order kept, within the server's
        /// largest payload), which the `nats` source reads back as separate events. One
        /// message per event costs JetStream a stored message and an acknowledgement per
        /// event: above a few tens of thousands of events per second, pack.
        #[serde(default = "default_events_per_message")]
        #[schemars(range(min = 1))]
        pub events_per_message: u32,
    }
}

fn default_max_in_flight() -> usize {
    4096
}
fn default_events_per_message() -> u32 {
    1
}

impl SinkConfig for NatsSinkConfig {
    const TYPE: &'static str = "nats";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.connection().validate(&mut errors);
        Template::check("subject", &self.subject, input, &mut errors);
        if self.stream.is_some() && self.stream_subjects.is_empty() {
            errors.push(ConfigError::new(
                "stream_subjects",
                "list the subjects of the stream to create",
            ));
        }
        if self.events_per_message == 0 {
            errors.push(ConfigError::new("events_per_message", "must be at least 1"));
        }
        errors.extend(self.retry.validate("retry"));
        collect(errors, || ())
    }

    async fn build(
        &self,
        input: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let client = self.connection().connect(&self.retry).await?;
        // The client lets at most `max_ack_inflight` acknowledgements be awaited at once.
        // The sink keeps at most `max_in_flight` for new batches plus as many for messages
        // published again while settling, so the client's limit is never the one reached;
        // if it were, publishing fails (and is retried, then reported) instead of waiting
        // for ever on acknowledgements that only this task would await.
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(2 * self.max_in_flight)
            .backpressure_on_inflight(false)
            .build(client);
        if let Some(name) = &self.stream {
            js.get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: self.stream_subjects.clone(),
                storage: self.stream_storage.jetstream(),
                ..Default::default()
            })
            .await
            .map_err(|e| BuildError::new(format!("cannot create stream `{name}`: {e}")))?;
        }
        let sink = NatsSink {
            resilience: Resilience::new(self.retry.clone()),
            subject: Template::parse(&self.subject).map_err(BuildError::new)?,
            config: self.clone(),
            js,
            encoder: JsonEncoder::new(&input),
        };
        Ok(sink_fn(move |input, cx| sink.run_async(input, cx)))
    }
}

struct NatsSink {
    config: NatsSinkConfig,
    subject: Template,
    js: jetstream::Context,
    encoder: JsonEncoder,
    resilience: Resilience,
}

/// A message: subject, payload and the number of events in it.
type Msg = (String, bytes::Bytes, u64);

/// Waits for one message's acknowledgement and counts it in `tally`.
async fn settle_one(tally: &mut Tally<Msg>, ack: PublishAckFuture, msg: Msg) {
    match ack.await {
        Ok(_) => tally.delivered(msg.2, msg.1.len()),
        Err(e) => tally.failed(msg, e.to_string()),
    }
}

/// A batch whose messages await the stream's acknowledgement.
struct Pending {
    finalizers: Finalizers,
    /// Messages published, oldest first, with their acknowledgements still to come.
    acks: VecDeque<(PublishAckFuture, Msg)>,
    /// What became of the messages whose acknowledgement already came.
    tally: Tally<Msg>,
}

impl Pending {
    /// Waits for the oldest acknowledgement still to come; false when none is.
    async fn settle_oldest(&mut self) -> bool {
        match self.acks.pop_front() {
            Some((ack, msg)) => {
                settle_one(&mut self.tally, ack, msg).await;
                true
            }
            None => false,
        }
    }
}

impl NatsSink {
    async fn run_async(self, mut input: SinkInput, cx: SinkContext) -> Result<(), ComponentError> {
        let component = cx.component;
        let origin = self.config.connection().origin();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut in_flight = 0usize;
        let mut buf = Vec::with_capacity(1 << 16);
        let static_subject = self
            .subject
            .is_static()
            .then(|| self.config.subject.clone());
        let result: Result<(), ComponentError> = async {
            while let Some(batch) =
                outbound::next_batch(&self, &component, &origin, &mut input, &mut pending).await?
            {
                // Settling while the input was quiet took acknowledgements off.
                in_flight = pending.iter().map(|p| p.acks.len()).sum();
                let rows = batch.num_rows();
                let mut p = Pending {
                    finalizers: batch.finalizers,
                    acks: VecDeque::with_capacity(rows.min(self.config.max_in_flight)),
                    tally: Tally::default(),
                };
                // Whatever fails from here on, the batch is failed, never released.
                let subjects = match &static_subject {
                    Some(_) => Ok(Vec::new()),
                    None => self.subject.render_all(&batch.data),
                };
                let encoded = subjects.and_then(|subjects| {
                    buf.clear();
                    self.encoder.encode_batch(&batch.data, &mut buf)?;
                    Ok(subjects)
                });
                let subjects = match encoded {
                    Ok(s) => s,
                    Err(e) => {
                        p.finalizers.fail();
                        return Err(ComponentError::from(e));
                    }
                };
                let mut events = Vec::with_capacity(rows);
                for (row, payload) in buf.split(|&b| b == b'\n').take(rows).enumerate() {
                    let subject = match &static_subject {
                        Some(s) => s.as_str(),
                        None => subjects[row].as_str(),
                    };
                    if subject.is_empty() || subject.contains([' ', '*', '>']) {
                        component.dead_letter(
                            &format!("{origin}/{subject}"),
                            "not a subject one can publish to",
                            payload,
                        );
                        continue;
                    }
                    events.push((subject, payload));
                }
                let per_message = self.config.events_per_message as usize;
                let max_payload = self.js.client().server_info().max_payload;
                for m in pack(events, per_message, |_| max_payload) {
                    // Room for one more acknowledgement: settle older batches first,
                    // then this batch's own oldest messages (a batch may hold more
                    // messages than may be in flight).
                    while in_flight >= self.config.max_in_flight {
                        if let Some(older) = pending.pop_front() {
                            in_flight -= older.acks.len();
                            if let Err(e) = self.settle(&component, &origin, older).await {
                                p.finalizers.fail();
                                return Err(e);
                            }
                        } else if p.settle_oldest().await {
                            in_flight -= 1;
                        } else {
                            break;
                        }
                    }
                    let msg = (m.topic.to_string(), bytes::Bytes::from(m.payload), m.events);
                    match self.js.publish(msg.0.clone(), msg.1.clone()).await {
                        Ok(ack) => {
                            p.acks.push_back((ack, msg));
                            in_flight += 1;
                        }
                        Err(e) => p.tally.failed(msg, e.to_string()),
                    }
                }
                pending.push_back(p);
            }
            outbound::settle_all(&self, &component, &origin, &mut pending).await
        }
        .await;
        if result.is_err() {
            for p in pending {
                p.finalizers.fail();
            }
        }
        let _ = self.js.client().flush().await;
        result
    }
}

impl BrokerSink for NatsSink {
    type Msg = Msg;
    type Pending = Pending;

    /// Waits for the stream to store every message of a batch; publishes those it did
    /// not store again, through the shared retry layer; releases the batch's finalizers
    /// once all are stored, or fails them when the attempts are spent.
    async fn settle(
        &self,
        component: &ComponentContext,
        origin: &str,
        mut p: Pending,
    ) -> Result<(), ComponentError> {
        while p.settle_oldest().await {}
        outbound::settle(
            self,
            component,
            origin,
            &self.resilience,
            p.finalizers,
            p.tally,
            ["stored", "publishing"],
        )
        .await
    }

    async fn send_again(
        &self,
        _component: &ComponentContext,
        _origin: &str,
        left: &mut Vec<Msg>,
    ) -> Result<(u64, u64), String> {
        publish_again(&self.js, left, self.config.max_in_flight).await
    }
}

/// Publishes `left`, with at most `window` acknowledgements awaited at once, and waits
/// for each to be stored; keeps those that were not. Returns the messages and bytes
/// stored when all were, the first error otherwise.
async fn publish_again(
    js: &jetstream::Context,
    left: &mut Vec<Msg>,
    window: usize,
) -> Result<(u64, u64), String> {
    let mut acks = VecDeque::with_capacity(left.len().min(window));
    let mut tally = Tally::default();
    for msg in left.drain(..) {
        if acks.len() >= window
            && let Some((ack, msg)) = acks.pop_front()
        {
            settle_one(&mut tally, ack, msg).await;
        }
        match js.publish(msg.0.clone(), msg.1.clone()).await {
            Ok(ack) => acks.push_back((ack, msg)),
            Err(e) => tally.failed(msg, e.to_string()),
        }
    }
    for (ack, msg) in acks {
        settle_one(&mut tally, ack, msg).await;
    }
    tally.into_retry_result(left)
}

tidegauge_core::register_sink!(NatsSinkConfig);
