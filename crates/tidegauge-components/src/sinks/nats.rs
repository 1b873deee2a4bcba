//! `nats` sink: each event as a JSON message published to JetStream. A batch counts as
//! delivered once the stream has stored (acknowledged) every one of its messages.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use arrow_schema::SchemaRef;
use async_nats::jetstream::{self, context::PublishAckFuture};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::resilience::{Resilience, RetryPolicy};
use tidegauge_core::telemetry::{BytesSent, ComponentErrorOccurred, EventsSent};
use tidegauge_core::{
    BoxFuture, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Sink,
    SinkConfig, SinkInput,
};

use super::message::Template;
use crate::codec::encode::JsonEncoder;
use crate::secret::Secret;
use crate::sources::nats::{connect, validate_connection};

/// Publishes each event as a JSON object (every field) to a NATS JetStream subject.
///
/// `subject` may name fields in braces (`alerts.{sensor_id}`). A batch is acknowledged
/// upstream once JetStream has stored all its messages; the stream is created when
/// missing if `stream` and `stream_subjects` are given.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Server URLs (`nats://host:4222`, or `tls://...`).
    pub servers: Vec<String>,
    /// Subject to publish to; `{field}` is replaced by the event's value of that field.
    pub subject: String,
    /// Stream to create when missing (with `stream_subjects`); unset: a stream capturing
    /// the subject must exist.
    #[serde(default)]
    pub stream: Option<String>,
    /// Subjects of the stream to create (`alerts.>`).
    #[serde(default)]
    pub stream_subjects: Vec<String>,
    /// Messages published and not yet stored, at most.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1))]
    pub max_in_flight: usize,
    /// User name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (use `${ENV_VAR}`); never logged or printed.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Authentication token; never logged or printed.
    #[serde(default)]
    pub token: Option<Secret>,
    /// PEM file of the certificate authorities for TLS; setting it requires TLS.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Connection attempts at start, and publishing again the messages of a batch that
    /// the stream did not store (backoff with full jitter, shared budget); when the
    /// attempts are spent the batch counts as not delivered and the sink fails.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_max_in_flight() -> usize {
    4096
}

impl SinkConfig for NatsSinkConfig {
    const TYPE: &'static str = "nats";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        validate_connection(
            &self.servers,
            self.username.as_ref(),
            self.password.as_ref(),
            self.token.as_ref(),
            &mut errors,
        );
        match Template::parse(&self.subject) {
            Ok(t) => {
                for f in t.missing_fields(input) {
                    errors.push(ConfigError::new(
                        "subject",
                        format!("`{{{f}}}` names a field the input does not have"),
                    ));
                }
            }
            Err(e) => errors.push(ConfigError::new("subject", e)),
        }
        if self.stream.is_some() && self.stream_subjects.is_empty() {
            errors.push(ConfigError::new(
                "stream_subjects",
                "list the subjects of the stream to create",
            ));
        }
        if self.max_in_flight == 0 {
            errors.push(ConfigError::new("max_in_flight", "expected at least 1"));
        }
        errors.extend(self.retry.validate("retry"));
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
        let client = connect(
            &self.servers,
            self.username.as_ref(),
            self.password.as_ref(),
            self.token.as_ref(),
            self.tls_ca_file.as_ref(),
            &self.retry,
        )
        .await?;
        let js = jetstream::new(client);
        if let Some(name) = &self.stream {
            js.get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: self.stream_subjects.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| BuildError::new(format!("cannot create stream `{name}`: {e}")))?;
        }
        Ok(Box::new(NatsSink {
            resilience: Resilience::new(self.retry.clone()),
            subject: Template::parse(&self.subject).map_err(BuildError::new)?,
            config: self.clone(),
            js,
            encoder: JsonEncoder::new(&input),
        }))
    }
}

struct NatsSink {
    config: NatsSinkConfig,
    subject: Template,
    js: jetstream::Context,
    encoder: JsonEncoder,
    resilience: Resilience,
}

/// A message: subject and payload.
type Msg = (String, bytes::Bytes);

/// A batch whose messages await the stream's acknowledgement.
struct Pending {
    finalizers: Finalizers,
    acks: Vec<(PublishAckFuture, Msg)>,
    /// Messages the client did not take (to publish again when settling).
    unsent: Vec<Msg>,
    /// Why the first of them was not taken.
    unsent_error: Option<String>,
}

impl Pending {
    fn len(&self) -> usize {
        self.acks.len() + self.unsent.len()
    }
}

impl Sink for NatsSink {
    fn run(
        self: Box<Self>,
        input: SinkInput,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_async(input, cx))
    }
}

impl NatsSink {
    async fn run_async(self, mut input: SinkInput, cx: SinkContext) -> Result<(), ComponentError> {
        let component = cx.component;
        let origin = format!("nats://{}", self.config.servers.join(","));
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut in_flight = 0usize;
        let mut buf = Vec::with_capacity(1 << 16);
        let static_subject = self
            .subject
            .is_static()
            .then(|| self.config.subject.clone());
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
                            in_flight -= p.len();
                            self.settle(&component, &origin, p).await?;
                        }
                        continue;
                    }
                    Recv::Closed => break,
                };
                let rows = batch.num_rows();
                let mut p = Pending {
                    finalizers: batch.finalizers,
                    acks: Vec::with_capacity(rows),
                    unsent: Vec::new(),
                    unsent_error: None,
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
                    while in_flight >= self.config.max_in_flight {
                        let Some(older) = pending.pop_front() else {
                            break;
                        };
                        in_flight -= older.len();
                        if let Err(e) = self.settle(&component, &origin, older).await {
                            p.finalizers.fail();
                            return Err(e);
                        }
                    }
                    let msg = (subject.to_string(), bytes::Bytes::copy_from_slice(payload));
                    match self.js.publish(msg.0.clone(), msg.1.clone()).await {
                        Ok(ack) => p.acks.push((ack, msg)),
                        Err(e) => {
                            p.unsent_error.get_or_insert_with(|| e.to_string());
                            p.unsent.push(msg);
                        }
                    }
                    in_flight += 1;
                }
                pending.push_back(p);
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
        let _ = self.js.client().flush().await;
        result
    }

    /// Waits for the stream to store every message of a batch; publishes those it did
    /// not store again, through the shared retry layer; releases the batch's finalizers
    /// once all are stored, or fails them when the attempts are spent.
    async fn settle(
        &self,
        component: &ComponentContext,
        origin: &str,
        p: Pending,
    ) -> Result<(), ComponentError> {
        let mut count = 0;
        let mut bytes = 0;
        let mut failed = p.unsent;
        let mut first_error = p.unsent_error;
        for (ack, msg) in p.acks {
            match ack.await {
                Ok(_) => {
                    count += 1;
                    bytes += msg.1.len() as u64;
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                    failed.push(msg);
                }
            }
        }
        if !failed.is_empty() {
            component.emit(ComponentErrorOccurred {
                error: &format!(
                    "{origin}: {} message(s) not stored: {}; publishing again",
                    failed.len(),
                    first_error.as_deref().unwrap_or("unknown error")
                ),
            });
            let left = tokio::sync::Mutex::new(failed);
            let left = &left;
            let js = &self.js;
            let result = self
                .resilience
                .call(
                    None,
                    move |_| async move {
                        let mut left = left.lock().await;
                        publish_again(js, &mut left).await
                    },
                    |_| true,
                    |_| {},
                )
                .await;
            match result {
                Ok(stored) => {
                    count += stored.0;
                    bytes += stored.1;
                }
                Err(e) => {
                    p.finalizers.fail();
                    return Err(ComponentError::new(format!(
                        "{origin}: messages not stored: {e}"
                    )));
                }
            }
        }
        component.emit(EventsSent { count });
        component.emit(BytesSent { bytes });
        p.finalizers.release();
        Ok(())
    }
}

/// Publishes `left` and waits for each to be stored; keeps those that were not. Returns
/// the messages and bytes stored when all were, the first error otherwise.
async fn publish_again(js: &jetstream::Context, left: &mut Vec<Msg>) -> Result<(u64, u64), String> {
    let mut acks = Vec::with_capacity(left.len());
    let mut still = Vec::new();
    let mut first_error = None;
    for msg in left.drain(..) {
        match js.publish(msg.0.clone(), msg.1.clone()).await {
            Ok(ack) => acks.push((ack, msg)),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                still.push(msg);
            }
        }
    }
    let (mut count, mut bytes) = (0, 0);
    for (ack, msg) in acks {
        match ack.await {
            Ok(_) => {
                count += 1;
                bytes += msg.1.len() as u64;
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                still.push(msg);
            }
        }
    }
    *left = still;
    match first_error {
        None => Ok((count, bytes)),
        Some(e) => Err(format!("{e} ({} message(s) left)", left.len())),
    }
}

tidegauge_core::register_sink!(NatsSinkConfig);
