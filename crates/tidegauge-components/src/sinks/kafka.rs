//! `kafka` sink: each event as a JSON message on a Kafka topic, keyed by a field so that
//! one sensor's events land in one partition, in order. A batch counts as delivered once
//! the brokers have acknowledged every one of its messages.

use std::collections::VecDeque;
use std::time::Duration;

use arrow_array::Array;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::SchemaRef;
use indexmap::IndexMap;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::telemetry::{BytesSent, EventsSent};
use tidegauge_core::{
    BoxFuture, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Sink,
    SinkConfig, SinkInput,
};

use crate::codec::encode::JsonEncoder;
use crate::secret::Secret;
use crate::sources::kafka::{client_config, redact, validate_options};

/// Writes each event as a JSON object (every field) to a Kafka topic.
///
/// Messages are keyed by `key_field`, so the partitioner sends one key's events to one
/// partition. The producer batches (`linger_ms`, `batch_messages`) and compresses
/// (`compression`); a batch of events is acknowledged upstream once the brokers have
/// acknowledged all its messages (`acks = all`). Events too large for the broker are
/// dead-lettered.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic to write to.
    pub topic: String,
    /// Field whose value keys each message (and so picks its partition); unset: no key,
    /// messages spread over partitions.
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
    /// How long the producer keeps retrying a message before reporting it undelivered,
    /// in milliseconds.
    #[serde(default = "default_message_timeout_ms")]
    #[schemars(range(min = 1))]
    pub message_timeout_ms: u64,
    /// Largest message in bytes; larger events are dead-lettered.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1000))]
    pub max_message_bytes: usize,
    /// SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password (use `${ENV_VAR}`); never logged or printed.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// Further librdkafka producer properties (`partitioner`, `security.protocol`, ...).
    #[serde(default)]
    pub options: IndexMap<String, String>,
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

const RESERVED: [&str; 9] = [
    "bootstrap.servers",
    "compression.type",
    "linger.ms",
    "batch.num.messages",
    "message.timeout.ms",
    "message.max.bytes",
    "sasl.password",
    "sasl.username",
    "acks",
];

impl SinkConfig for KafkaSinkConfig {
    const TYPE: &'static str = "kafka";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            errors.push(ConfigError::new("brokers", "list at least one `host:port`"));
        }
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
        if self.batch_messages == 0 {
            errors.push(ConfigError::new("batch_messages", "expected at least 1"));
        }
        if self.max_message_bytes < 1000 {
            errors.push(ConfigError::new(
                "max_message_bytes",
                "expected at least 1000",
            ));
        }
        if self.sasl_password.is_some() && self.sasl_username.is_none() {
            errors.push(ConfigError::new(
                "sasl_password",
                "a password needs sasl_username",
            ));
        }
        validate_options(&self.options, &RESERVED, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn build(
        &self,
        input: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let mut c = client_config(
            &self.brokers,
            self.sasl_username.as_ref(),
            self.sasl_password.as_ref(),
            &self.options,
        );
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
            BuildError::new(redact(
                &format!("cannot create Kafka producer: {e}"),
                self.sasl_password.as_ref(),
            ))
        })?;
        let key_index = self.key_field.as_ref().and_then(|k| input.index_of(k).ok());
        Ok(Box::new(KafkaSink {
            config: self.clone(),
            producer,
            encoder: JsonEncoder::new(&input),
            key_index,
        }))
    }
}

struct KafkaSink {
    config: KafkaSinkConfig,
    producer: FutureProducer,
    encoder: JsonEncoder,
    key_index: Option<usize>,
}

/// A batch whose messages are on their way.
struct Pending {
    finalizers: Finalizers,
    deliveries: Vec<(DeliveryFuture, usize)>,
    /// Payloads kept for dead letters, indexed by the second member of `deliveries`.
    payloads: Vec<Vec<u8>>,
}

/// Batches being delivered at once; the producer batches across them.
const MAX_PENDING_BATCHES: usize = 8;

impl Sink for KafkaSink {
    fn run(
        self: Box<Self>,
        input: SinkInput,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_async(input, cx))
    }
}

impl KafkaSink {
    async fn run_async(self, mut input: SinkInput, cx: SinkContext) -> Result<(), ComponentError> {
        let component = cx.component;
        let origin = format!(
            "kafka://{}/{}",
            self.config.brokers.join(","),
            self.config.topic
        );
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut buf = Vec::with_capacity(1 << 16);
        let result: Result<(), ComponentError> = async {
            loop {
                // Wait for input only when nothing is pending; otherwise take what is
                // ready and settle the rest as soon as the input is quiet.
                let wait = if pending.is_empty() {
                    Duration::from_secs(3600)
                } else {
                    Duration::ZERO
                };
                let batch = match input.recv_timeout(wait).await {
                    Recv::Batch(b) => b,
                    Recv::Idle => {
                        while let Some(p) = pending.pop_front() {
                            self.settle(&component, &origin, p).await?;
                        }
                        continue;
                    }
                    Recv::Closed => break,
                };
                buf.clear();
                self.encoder.encode_batch(&batch.data, &mut buf)?;
                let keys: Option<Vec<Option<String>>> = match self.key_index {
                    Some(i) => {
                        let col = batch.data.column(i);
                        let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
                        Some(
                            (0..col.len())
                                .map(|r| col.is_valid(r).then(|| f.value(r).to_string()))
                                .collect(),
                        )
                    }
                    None => None,
                };
                let mut p = Pending {
                    finalizers: batch.finalizers,
                    deliveries: Vec::with_capacity(batch.data.num_rows()),
                    payloads: Vec::new(),
                };
                for (row, payload) in buf
                    .split(|&b| b == b'\n')
                    .take(batch.data.num_rows())
                    .enumerate()
                {
                    let key = keys.as_ref().and_then(|k| k[row].as_deref());
                    self.produce(&component, &origin, key, payload, &mut p, &mut pending)
                        .await?;
                }
                pending.push_back(p);
                while pending.len() > MAX_PENDING_BATCHES {
                    if let Some(p) = pending.pop_front() {
                        self.settle(&component, &origin, p).await?;
                    }
                }
            }
            while let Some(p) = pending.pop_front() {
                self.settle(&component, &origin, p).await?;
            }
            Ok(())
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

    /// Hands one message to the producer, waiting for older batches while its queue is
    /// full.
    async fn produce(
        &self,
        component: &ComponentContext,
        origin: &str,
        key: Option<&str>,
        payload: &[u8],
        p: &mut Pending,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), ComponentError> {
        if payload.len() + key.map_or(0, str::len) + 64 > self.config.max_message_bytes {
            component.dead_letter(
                origin,
                &format!(
                    "message of {} bytes exceeds max_message_bytes ({})",
                    payload.len(),
                    self.config.max_message_bytes
                ),
                payload,
            );
            return Ok(());
        }
        loop {
            let mut record = FutureRecord::to(&self.config.topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send_result(record) {
                Ok(d) => {
                    p.deliveries.push((d, p.payloads.len()));
                    p.payloads.push(payload.to_vec());
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.pop_front() {
                        Some(older) => self.settle(component, origin, older).await?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((e, _)) => {
                    p.finalizers.fail();
                    return Err(ComponentError::new(redact(
                        &format!("{origin}: cannot produce: {e}"),
                        self.config.sasl_password.as_ref(),
                    )));
                }
            }
        }
    }

    /// Waits for every message of a batch; releases its finalizers when all arrived.
    async fn settle(
        &self,
        component: &ComponentContext,
        origin: &str,
        p: Pending,
    ) -> Result<(), ComponentError> {
        let mut delivered = 0u64;
        let mut bytes = 0u64;
        for (d, i) in p.deliveries {
            match d.await {
                Ok(Ok(_)) => {
                    delivered += 1;
                    bytes += p.payloads[i].len() as u64;
                }
                Ok(Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                    _,
                ))) => {
                    component.dead_letter(
                        origin,
                        "message too large for the broker",
                        &p.payloads[i],
                    );
                }
                Ok(Err((e, _))) => {
                    p.finalizers.fail();
                    return Err(ComponentError::new(redact(
                        &format!("{origin}: message not delivered: {e}"),
                        self.config.sasl_password.as_ref(),
                    )));
                }
                Err(_) => {
                    p.finalizers.fail();
                    return Err(ComponentError::new(format!(
                        "{origin}: producer closed before delivery"
                    )));
                }
            }
        }
        component.emit(EventsSent { count: delivered });
        component.emit(BytesSent { bytes });
        p.finalizers.release();
        Ok(())
    }
}

tidegauge_core::register_sink!(KafkaSinkConfig);
