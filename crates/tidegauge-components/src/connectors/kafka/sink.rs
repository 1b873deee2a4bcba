//! `kafka` sink: each event as a JSON message on a Kafka topic, keyed by a field so that
//! one sensor's events land in one partition, in order. A batch counts as delivered once
//! the brokers have acknowledged every one of its messages.

use std::collections::VecDeque;
use std::time::Duration;

use arrow_array::Array;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::SchemaRef;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::SinkContext;
use tidegauge_core::component::sink_fn;
use tidegauge_core::resilience::{Resilience, RetryPolicy};
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Sink, SinkConfig,
    SinkInput,
};

use super::kafka_connection;
use crate::codec::encode::JsonEncoder;
use crate::connectors::outbound::{self, BrokerSink, Tally};
use crate::settings::{collect, config};

config! {
    [kafka_connection]
    /// Writes each event as a JSON object (every field) to a Kafka topic.
    ///
    /// Messages are keyed by `key_field`, so the partitioner sends one key's events to one
    /// partition. The producer batches (`linger_ms`, `batch_messages`) and compresses
    /// (`compression`); a batch of events is acknowledged upstream once the brokers have
    /// acknowledged all its messages (`acks = all`). Events too large for the broker are
    /// dead-lettered.
    pub struct KafkaSinkConfig {
        /// Topic to write to.
        #[schemars(example = &"anomalies")]
        pub topic: String,
        /// Field whose value keys each message (and so picks its partition); unset: no
        /// key, messages spread over partitions.
        #[serde(default)]
        pub key_field: Option<String>,
        /// Compression of message batches.
        #[serde(default)]
        pub compression: KafkaCompression,
        /// How long the producer waits to fill a batch, in milliseconds.
        #[serde(default = "default_linger_ms")]
        pub linger_ms: u64,
        /// Most messages per producer batch.
        #[serde(default = "default_batch_messages")]
        #[schemars(range(min = 1))]
        pub batch_messages: u32,
        /// How long the producer keeps retrying a message before reporting it
        /// undelivered, in milliseconds.
        #[serde(default = "default_message_timeout_ms")]
        #[schemars(range(min = 1))]
        pub message_timeout_ms: u64,
        /// Largest message in bytes; larger events are dead-lettered.
        #[serde(default = "default_max_message_bytes")]
        #[schemars(range(min = 1000))]
        pub max_message_bytes: usize,
        /// Producing again the messages of a batch that were not delivered within
        /// `message_timeout_ms` (backoff with full jitter, shared budget); when the
        /// attempts are spent the batch counts as not delivered and the sink fails.
        #[serde(default)]
        pub retry: RetryPolicy,
    }
}

/// Compression codecs.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    #[default]
    Lz4,
}

fn default_linger_ms() -> u64 {
    5
}
fn default_batch_messages() -> u32 {
    10_000
}
fn default_message_timeout_ms() -> u64 {
    60_000
}
fn default_max_message_bytes() -> usize {
    1_000_000
}

/// Properties the sink sets itself; `options` may not override them.
const RESERVED: [&str; 6] = [
    "compression.type",
    "linger.ms",
    "batch.num.messages",
    "message.timeout.ms",
    "message.max.bytes",
    "acks",
];

impl SinkConfig for KafkaSinkConfig {
    const TYPE: &'static str = "kafka";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.connection().validate(&RESERVED, &mut errors);
        if self.topic.trim().is_empty() {
            errors.push(ConfigError::new("topic", "expected a topic name"));
        }
        if let Some(k) = &self.key_field
            && input.field_with_name(k).is_err()
        {
            errors.push(ConfigError::new(
                "key_field",
                format!("the input has no field `{k}`"),
            ));
        }
        errors.extend(self.retry.validate("retry"));
        collect(errors, || ())
    }

    async fn build(
        &self,
        input: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let mut c = self.connection().client_config();
        c.set(
            "compression.type",
            match self.compression {
                KafkaCompression::None => "none",
                KafkaCompression::Gzip => "gzip",
                KafkaCompression::Snappy => "snappy",
                KafkaCompression::Lz4 => "lz4",
            },
        )
        .set("linger.ms", self.linger_ms.to_string())
        .set("batch.num.messages", self.batch_messages.to_string())
        .set("message.timeout.ms", self.message_timeout_ms.to_string())
        .set(
            "message.max.bytes",
            self.max_message_bytes.max(1000).to_string(),
        )
        .set("acks", "all");
        if !self.options.contains_key("partitioner") {
            // The Java client's partitioner: the same key lands in the same partition
            // whichever client wrote it.
            c.set("partitioner", "murmur2_random");
        }
        let producer: FutureProducer = c.create().map_err(|e| {
            BuildError::new(
                self.connection()
                    .redact(&format!("cannot create Kafka producer: {e}")),
            )
        })?;
        let key_index = self.key_field.as_ref().and_then(|k| input.index_of(k).ok());
        let sink = KafkaSink {
            resilience: Resilience::new(self.retry.clone()),
            config: self.clone(),
            producer,
            encoder: JsonEncoder::new(&input),
            key_index,
        };
        Ok(sink_fn(move |input, cx| sink.run_async(input, cx)))
    }
}

struct KafkaSink {
    config: KafkaSinkConfig,
    producer: FutureProducer,
    encoder: JsonEncoder,
    key_index: Option<usize>,
    resilience: Resilience,
}

/// A message: key and payload, kept to produce again or dead-letter.
type Msg = (Option<String>, Vec<u8>);

/// A batch whose messages are on their way.
struct Pending {
    finalizers: Finalizers,
    /// Messages handed to the producer, oldest first, their delivery still to hear of.
    deliveries: VecDeque<(DeliveryFuture, Msg)>,
    /// What became of the messages whose delivery was heard of.
    tally: Tally<Msg>,
}

/// Batches being delivered at once; the producer batches across them.
const MAX_PENDING_BATCHES: usize = 8;

impl KafkaSink {
    async fn run_async(self, mut input: SinkInput, cx: SinkContext) -> Result<(), ComponentError> {
        let component = cx.component;
        let origin = format!(
            "{}/{}",
            self.config.connection().origin(),
            self.config.topic
        );
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut buf = Vec::with_capacity(1 << 16);
        let result: Result<(), ComponentError> = async {
            while let Some(batch) =
                outbound::next_batch(&self, &component, &origin, &mut input, &mut pending).await?
            {
                let mut p = Pending {
                    finalizers: batch.finalizers,
                    deliveries: VecDeque::with_capacity(batch.data.num_rows()),
                    tally: Tally::default(),
                };
                // Whatever fails from here on, the batch is failed, never released.
                if let Err(e) = self
                    .produce_batch(
                        &component,
                        &origin,
                        &batch.data,
                        &mut buf,
                        &mut p,
                        &mut pending,
                    )
                    .await
                {
                    p.finalizers.fail();
                    return Err(e);
                }
                pending.push_back(p);
                while pending.len() > MAX_PENDING_BATCHES {
                    if let Some(p) = pending.pop_front() {
                        self.settle(&component, &origin, p).await?;
                    }
                }
            }
            outbound::settle_all(&self, &component, &origin, &mut pending).await
        }
        .await;
        if result.is_err() {
            for p in pending {
                p.finalizers.fail();
            }
        }
        let _ = self.producer.flush(Duration::from_secs(10));
        result
    }

    /// Encodes a batch and hands each message to the producer.
    async fn produce_batch(
        &self,
        component: &ComponentContext,
        origin: &str,
        data: &arrow_array::RecordBatch,
        buf: &mut Vec<u8>,
        p: &mut Pending,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), ComponentError> {
        buf.clear();
        self.encoder.encode_batch(data, buf)?;
        let keys: Option<Vec<Option<String>>> = match self.key_index {
            Some(i) => {
                let col = data.column(i);
                let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
                Some(
                    (0..col.len())
                        .map(|r| col.is_valid(r).then(|| f.value(r).to_string()))
                        .collect(),
                )
            }
            None => None,
        };
        for (row, payload) in buf.split(|&b| b == b'\n').take(data.num_rows()).enumerate() {
            let key = keys.as_ref().and_then(|k| k[row].clone());
            if payload.len() + key.as_ref().map_or(0, String::len) + 64
                > self.config.max_message_bytes
            {
                component.dead_letter(
                    origin,
                    &format!(
                        "message of {} bytes exceeds max_message_bytes ({})",
                        payload.len(),
                        self.config.max_message_bytes
                    ),
                    payload,
                );
                continue;
            }
            let msg = (key, payload.to_vec());
            let d = self.produce(component, origin, &msg, p, pending).await?;
            p.deliveries.push_back((d, msg));
        }
        Ok(())
    }

    /// Hands one message of batch `p` to the producer. While the producer's queue is
    /// full it waits for deliveries, which free places: of the older batches first (each
    /// settled whole), then of `p`'s own oldest messages. The queue holds nothing but
    /// these (the producer is this sink's own, and a settled batch has heard of every
    /// message), so there is always one to wait for.
    async fn produce(
        &self,
        component: &ComponentContext,
        origin: &str,
        msg: &Msg,
        p: &mut Pending,
        pending: &mut VecDeque<Pending>,
    ) -> Result<DeliveryFuture, ComponentError> {
        loop {
            if let Some(d) = self.try_produce(origin, msg)? {
                return Ok(d);
            }
            if let Some(older) = pending.pop_front() {
                self.settle(component, origin, older).await?;
            } else if !self
                .hear_oldest(component, origin, &mut p.deliveries, &mut p.tally)
                .await
            {
                return Err(ComponentError::new(format!(
                    "{origin}: the producer's queue is full with no message of this sink in it"
                )));
            }
        }
    }

    /// Waits for the delivery of the oldest message of `deliveries` and counts it in
    /// `tally`; false when there is none.
    async fn hear_oldest(
        &self,
        component: &ComponentContext,
        origin: &str,
        deliveries: &mut VecDeque<(DeliveryFuture, Msg)>,
        tally: &mut Tally<Msg>,
    ) -> bool {
        let Some((d, msg)) = deliveries.pop_front() else {
            return false;
        };
        match self.outcome(component, origin, d, &msg).await {
            Outcome::Delivered => tally.delivered(1, msg.1.len()),
            Outcome::DeadLettered => {}
            Outcome::Failed(e) => tally.failed(msg, e),
        }
        true
    }

    /// Hands one message to the producer; `None` when its queue is full.
    fn try_produce(
        &self,
        origin: &str,
        msg: &Msg,
    ) -> Result<Option<DeliveryFuture>, ComponentError> {
        let mut record = FutureRecord::to(&self.config.topic).payload(&msg.1);
        if let Some(k) = &msg.0 {
            record = record.key(k.as_str());
        }
        match self.producer.send_result(record) {
            Ok(d) => Ok(Some(d)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(None),
            Err((e, _)) => Err(ComponentError::new(
                self.config
                    .connection()
                    .redact(&format!("{origin}: cannot produce: {e}")),
            )),
        }
    }

    /// What became of one message.
    async fn outcome(
        &self,
        component: &ComponentContext,
        origin: &str,
        d: DeliveryFuture,
        msg: &Msg,
    ) -> Outcome {
        match d.await {
            Ok(Ok(_)) => Outcome::Delivered,
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))) => {
                component.dead_letter(origin, "message too large for the broker", &msg.1);
                Outcome::DeadLettered
            }
            Ok(Err((e, _))) => Outcome::Failed(self.config.connection().redact(&e.to_string())),
            Err(_) => Outcome::Failed("producer closed before delivery".into()),
        }
    }

    /// Produces `left` and waits for each; keeps those not delivered. Returns messages
    /// and bytes delivered when all were, the first error otherwise.
    async fn produce_again(
        &self,
        component: &ComponentContext,
        origin: &str,
        left: &mut Vec<Msg>,
    ) -> Result<(u64, u64), String> {
        let mut deliveries = VecDeque::with_capacity(left.len());
        let mut tally = Tally::default();
        for msg in left.drain(..) {
            // Older batches wait for this one: a full queue is waited out, on the
            // delivery of the oldest message produced again, else on the producer's
            // own pace (the queue then holds only younger batches' messages, whose
            // deliveries other tasks await). librdkafka has no wait for room in its
            // queue (rdkafka's own `FutureProducer::send` polls every 100 ms in this
            // case); 5 ms between attempts, only in this corner of a retry, keeps the
            // wait short without a busy loop.
            loop {
                match self.try_produce(origin, &msg) {
                    Ok(Some(d)) => {
                        deliveries.push_back((d, msg));
                        break;
                    }
                    Ok(None) => {
                        if !self
                            .hear_oldest(component, origin, &mut deliveries, &mut tally)
                            .await
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Err(e) => {
                        tally.failed(msg, e.to_string());
                        break;
                    }
                }
            }
        }
        while self
            .hear_oldest(component, origin, &mut deliveries, &mut tally)
            .await
        {}
        tally.into_retry_result(left)
    }
}

impl BrokerSink for KafkaSink {
    type Msg = Msg;
    type Pending = Pending;

    /// Waits for every message of a batch; produces those not delivered again, through
    /// the shared retry layer; releases the batch's finalizers when all arrived, fails
    /// them when the attempts are spent.
    async fn settle(
        &self,
        component: &ComponentContext,
        origin: &str,
        mut p: Pending,
    ) -> Result<(), ComponentError> {
        while self
            .hear_oldest(component, origin, &mut p.deliveries, &mut p.tally)
            .await
        {}
        outbound::settle(
            self,
            component,
            origin,
            &self.resilience,
            p.finalizers,
            p.tally,
            ["delivered", "producing"],
        )
        .await
    }

    async fn send_again(
        &self,
        component: &ComponentContext,
        origin: &str,
        left: &mut Vec<Msg>,
    ) -> Result<(u64, u64), String> {
        self.produce_again(component, origin, left).await
    }
}

/// What became of one message handed to the producer.
enum Outcome {
    Delivered,
    DeadLettered,
    Failed(String),
}

tidegauge_core::register_sink!(KafkaSinkConfig);
