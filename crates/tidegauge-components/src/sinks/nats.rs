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
use tidegauge_core::telemetry::{BytesSent, EventsSent};
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
}

/// A batch whose messages await the stream's acknowledgement.
struct Pending {
    finalizers: Finalizers,
    acks: Vec<(PublishAckFuture, u64)>,
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
                            in_flight -= p.acks.len();
                            self.settle(&component, &origin, p).await?;
                        }
                        continue;
                    }
                    Recv::Closed => break,
                };
                let rows = batch.num_rows();
                let subjects = match &static_subject {
                    Some(_) => Vec::new(),
                    None => self.subject.render_all(&batch.data)?,
                };
                buf.clear();
                self.encoder.encode_batch(&batch.data, &mut buf)?;
                let mut p = Pending {
                    finalizers: batch.finalizers,
                    acks: Vec::with_capacity(rows),
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
                        in_flight -= older.acks.len();
                        self.settle(&component, &origin, older).await?;
                    }
                    let ack = self
                        .js
                        .publish(subject.to_string(), bytes::Bytes::copy_from_slice(payload))
                        .await
                        .map_err(|e| {
                            ComponentError::new(format!(
                                "{origin}: cannot publish to {subject}: {e}"
                            ))
                        })?;
                    p.acks.push((ack, payload.len() as u64));
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

    async fn settle(
        &self,
        component: &ComponentContext,
        origin: &str,
        p: Pending,
    ) -> Result<(), ComponentError> {
        let mut count = 0;
        let mut bytes = 0;
        for (ack, len) in p.acks {
            if let Err(e) = ack.await {
                p.finalizers.fail();
                return Err(ComponentError::new(format!(
                    "{origin}: message not stored: {e}"
                )));
            }
            count += 1;
            bytes += len;
        }
        component.emit(EventsSent { count });
        component.emit(BytesSent { bytes });
        p.finalizers.release();
        Ok(())
    }
}

tidegauge_core::register_sink!(NatsSinkConfig);
