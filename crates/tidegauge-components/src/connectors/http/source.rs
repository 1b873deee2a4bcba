//! `http_poll` source: many HTTP endpoints polled concurrently on an interval, each JSON
//! response mapped to the declared fields.
//!
//! Each poll goes through the source's one [`Resilience`] (retries with exponential
//! backoff and full jitter, bounded by `retry.max_attempts` and by a retry budget shared
//! by every endpoint) and the endpoint's own [`CircuitBreaker`].
//!
//! Graceful degradation, per endpoint:
//! - a good response gives a row with `stale = false`, `stale_age_ms = 0`;
//! - while the endpoint fails (error, timeout, bad body, breaker open) its last good
//!   reading is emitted again each interval, unchanged (its own timestamp) but with
//!   `stale = true` and `stale_age_ms` = how long ago it was read, for at most
//!   `max_stale_ms`;
//! - after that, or when there never was a good reading, nothing is emitted for it: the
//!   missing-data signal is telemetry — [`EndpointDataMissing`] (a warning when the
//!   endpoint goes missing, the endpoint marked `missing` in the component's
//!   per-endpoint health next to its breaker state) and a count per poll
//!   ([`MISSING_READINGS`]) — until it answers again
//!   ([`EndpointRecovered`]). Downstream, the absence of rows is what a heartbeat
//!   detector watches.
//!
//! A body that is not a JSON object with the declared fields is dead-lettered (endpoint
//! URL as location) and counts as a failure of the endpoint.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::SendError;
use tidegauge_core::resilience::{
    BreakerConfig, CircuitBreaker, Resilience, RetryError, RetryPolicy,
};
use tidegauge_core::telemetry::{
    BreakerTransitioned, BytesReceived, ComponentErrorOccurred, EndpointDataMissing,
    EndpointRecovered, EventsReceived, MetricAdded, MetricDesc,
};
use tidegauge_core::{
    Batch, BoxFuture, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError,
    Output, Source, SourceConfig, SourceContext,
};
use tokio::sync::{Semaphore, mpsc};

use crate::telemetry::{MISSING_READINGS, STALE_EVENTS};

use crate::codec::json::JsonDecoder;
use crate::codec::{Columns, FieldMap, Row, default_fields, schema_for};
use crate::sources::linger::Linger;
use crate::sources::{BatchConfig, validate_fields};

/// Polls HTTP endpoints on an interval; each response is one JSON object holding the
/// declared fields.
///
/// Adds to the declared fields the endpoint's id (`endpoint_field`), `stale` and
/// `stale_age_ms`. A failing endpoint's last good reading is repeated with
/// `stale = true` for up to `max_stale_ms`; after that nothing is emitted for it and its
/// data is reported missing (warning and telemetry) until it answers again.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpPollConfig {
    /// Endpoints: URLs, or tables `{ url = "http://...", id = "pump-7" }` (the id goes in
    /// `endpoint_field`; it defaults to the URL with its secrets masked: user information,
    /// query values named like keys, tokens or passwords, token-like path segments).
    #[schemars(example = serde_json::json!([{ "url": "http://10.0.0.7/reading", "id": "pump-7" }]))]
    pub endpoints: Vec<Endpoint>,
    /// Time between two polls of an endpoint, in milliseconds. A poll still running
    /// (retrying) when the next is due skips it.
    #[serde(default = "default_interval_ms")]
    #[schemars(range(min = 1))]
    pub interval_ms: u64,
    /// Longest wait for one request, from connecting to the end of the body, in
    /// milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Fields to extract from each response and their types, in output order.
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    /// Fields that may be missing or null; all others are required in every response.
    #[serde(default)]
    pub optional_fields: Vec<String>,
    /// Name of the added column holding the endpoint's id.
    #[serde(default = "default_endpoint_field")]
    pub endpoint_field: String,
    /// How long a failing endpoint's last good reading is repeated (flagged stale), in
    /// milliseconds; 0 never repeats it.
    #[serde(default = "default_max_stale_ms")]
    pub max_stale_ms: u64,
    /// Most requests in flight at once, over all endpoints.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1))]
    pub concurrency: usize,
    /// Largest accepted response body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: usize,
    /// Retries of a failed poll: backoff with full jitter, attempts, and the retry budget
    /// shared by all endpoints.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Circuit breaker, one per endpoint.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Batching of events.
    #[serde(default)]
    pub batch: BatchConfig,
}

/// One endpoint to poll.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Endpoint {
    /// Just the URL (also its id).
    Url(String),
    /// URL and id.
    Named {
        /// The URL (`http://host:port/path`).
        url: String,
        /// The id written in `endpoint_field`.
        id: String,
    },
}

impl Endpoint {
    fn url(&self) -> &str {
        match self {
            Endpoint::Url(u) | Endpoint::Named { url: u, .. } => u,
        }
    }

    /// The id events carry: the one given, or the URL with its secrets masked.
    fn id(&self) -> String {
        match self {
            Endpoint::Url(u) => tidegauge_core::redact::url(u, false).into_owned(),
            Endpoint::Named { id, .. } => id.clone(),
        }
    }
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_endpoint_field() -> String {
    "endpoint".into()
}
fn default_max_stale_ms() -> u64 {
    30_000
}
fn default_concurrency() -> usize {
    64
}
fn default_max_body_bytes() -> usize {
    1 << 20
}

/// How long the loop waits for a reading, holding none, before it looks at checkpoint
/// barriers again.
const BARRIER_WAIT: Duration = Duration::from_millis(100);

const STALE: &str = "stale";
const STALE_AGE: &str = "stale_age_ms";

impl SourceConfig for HttpPollConfig {
    const TYPE: &'static str = "http_poll";
    const METRICS: &'static [&'static MetricDesc] = crate::telemetry::POLL_METRICS;

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.endpoints.is_empty() {
            errors.push(ConfigError::new("endpoints", "list at least one endpoint"));
        }
        let mut ids = std::collections::HashMap::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Some(first) = ids.insert(e.id(), i) {
                errors.push(ConfigError::new(
                    format!("endpoints[{i}]"),
                    format!(
                        "has the same id as endpoints[{first}] (`{}`, secrets masked); give each an `id`",
                        e.id()
                    ),
                ));
            }
            match reqwest::Url::parse(e.url()) {
                // The text is not quoted: it may hold a secret that only a URL would show
                // where.
                Err(err) => errors.push(ConfigError::new(
                    format!("endpoints[{i}]"),
                    format!("not a URL: {err}"),
                )),
                Ok(u) if u.scheme() == "http" => {}
                Ok(u) if u.scheme() == "https" && cfg!(feature = "http-tls") => {}
                Ok(u) if u.scheme() == "https" => errors.push(ConfigError::new(
                    format!("endpoints[{i}]"),
                    "https needs a build with the `http-tls` feature",
                )),
                Ok(u) => errors.push(ConfigError::new(
                    format!("endpoints[{i}]"),
                    format!("scheme `{}` is not http", u.scheme()),
                )),
            }
        }
        validate_fields(&self.fields, &self.optional_fields, &mut errors);
        for name in [
            &self.endpoint_field,
            &STALE.to_string(),
            &STALE_AGE.to_string(),
        ] {
            if self.fields.contains_key(name) {
                errors.push(ConfigError::new(
                    "fields",
                    format!("`{name}` is a column this source adds; rename the field"),
                ));
            }
        }
        if self.endpoint_field.is_empty() || [STALE, STALE_AGE].contains(&&*self.endpoint_field) {
            errors.push(ConfigError::new(
                "endpoint_field",
                "expected a name other than `stale` and `stale_age_ms`",
            ));
        }
        errors.extend(self.retry.validate("retry"));
        errors.extend(self.breaker.validate("breaker"));
        if !errors.is_empty() {
            return Err(errors);
        }
        let base = schema_for(&self.fields, &self.optional_fields);
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(&self.endpoint_field, DataType::Utf8, false));
        fields.push(Field::new(STALE, DataType::Boolean, false));
        fields.push(Field::new(STALE_AGE, DataType::Int64, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        #[cfg(feature = "http-tls")]
        crate::tls::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(self.timeout_ms))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| BuildError::new(format!("cannot create the HTTP client: {e}")))?;
        let _ = schema;
        Ok(Box::new(HttpPoll {
            config: self.clone(),
            client,
        }))
    }
}

struct HttpPoll {
    config: HttpPollConfig,
    client: reqwest::Client,
}

/// Why one attempt failed.
#[derive(Debug)]
enum PollError {
    /// Connection refused or reset, timeout, truncated body: worth retrying.
    Transport(String),
    /// A status that may pass (5xx, 408, 429).
    Status(u16),
    /// A status that will not (other 4xx).
    Rejected(u16),
    /// 2xx with a body that is not a usable reading.
    Body { reason: String, body: Vec<u8> },
}

impl PollError {
    fn retryable(&self) -> bool {
        matches!(self, PollError::Transport(_) | PollError::Status(_))
    }
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Transport(e) => write!(f, "{e}"),
            PollError::Status(s) | PollError::Rejected(s) => write!(f, "HTTP status {s}"),
            PollError::Body { reason, .. } => write!(f, "unusable body: {reason}"),
        }
    }
}

/// What one poll of one endpoint gave.
struct Reading {
    endpoint: usize,
    outcome: Result<Vec<u8>, String>,
}

/// Checks a body the way the batch will decode it.
struct Validator {
    decoder: JsonDecoder,
    row: Row,
    columns: Columns,
}

impl Validator {
    fn new(config: &HttpPollConfig) -> Self {
        let base = schema_for(&config.fields, &config.optional_fields);
        Validator {
            decoder: JsonDecoder::new(config.fields.keys().cloned().collect()),
            row: Row::new(config.fields.len()),
            columns: Columns::new(base, &config.fields, 1),
        }
    }

    fn check(&mut self, body: &[u8]) -> Result<(), String> {
        self.decoder.decode(body, &mut self.row)?;
        self.columns.push(&mut self.row)?;
        let _ = self.columns.finish();
        Ok(())
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<Vec<u8>, PollError> {
    let mut response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| PollError::Transport(describe(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let code = status.as_u16();
        return Err(if status.is_server_error() || code == 408 || code == 429 {
            PollError::Status(code)
        } else {
            PollError::Rejected(code)
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| PollError::Transport(describe(&e)))?
    {
        if body.len() + chunk.len() > max_body {
            return Err(PollError::Body {
                reason: format!("body exceeds max_body_bytes ({max_body})"),
                body: body[..body.len().min(1024)].to_vec(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's error with its causes ("error sending request: connection reset").
fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Polls one endpoint forever, sending each outcome.
#[allow(clippy::too_many_arguments)]
async fn poll_endpoint(
    index: usize,
    endpoint: Endpoint,
    config: Arc<HttpPollConfig>,
    client: reqwest::Client,
    resilience: Arc<Resilience>,
    permits: Arc<Semaphore>,
    component: ComponentContext,
    start_after: Duration,
    tx: mpsc::Sender<Reading>,
) {
    let breaker = CircuitBreaker::new(config.breaker.clone());
    let interval = Duration::from_millis(config.interval_ms);
    let timeout = Duration::from_millis(config.timeout_ms);
    let validator = Arc::new(Mutex::new(Validator::new(&config)));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + start_after, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let url = endpoint.url().to_string();
    // What logs, errors and dead letters name the endpoint by: its URL, secrets masked.
    let shown = tidegauge_core::redact::url(&url, false).into_owned();
    let breaker_id = endpoint.id();
    loop {
        ticks.tick().await;
        let result = resilience
            .call(
                Some(&breaker),
                |_| {
                    let client = client.clone();
                    let url = url.clone();
                    let permits = permits.clone();
                    let max_body = config.max_body_bytes;
                    let validator = validator.clone();
                    async move {
                        let _permit = permits
                            .acquire_owned()
                            .await
                            .map_err(|_| PollError::Transport("shutting down".into()))?;
                        let body = fetch(&client, &url, timeout, max_body).await?;
                        let checked = validator
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .check(&body);
                        match checked {
                            Ok(()) => Ok(body),
                            Err(reason) => Err(PollError::Body { reason, body }),
                        }
                    }
                },
                PollError::retryable,
                |t| {
                    component.emit(BreakerTransitioned {
                        endpoint: &breaker_id,
                        from: t.from,
                        to: t.to,
                    })
                },
            )
            .await;
        let outcome = match result {
            Ok(body) => {
                component.emit(BytesReceived {
                    bytes: body.len() as u64,
                });
                Ok(body)
            }
            Err(RetryError::BreakerOpen) => Err("circuit breaker open".to_string()),
            Err(RetryError::Failed { error, attempts }) => {
                if let PollError::Body { reason, body } = &error {
                    component.dead_letter(&shown, reason, body);
                } else {
                    component.emit(ComponentErrorOccurred {
                        error: &format!("{shown}: {error} (after {attempts} attempt(s))"),
                    });
                }
                Err(error.to_string())
            }
        };
        if tx
            .send(Reading {
                endpoint: index,
                outcome,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// An endpoint's last good reading.
struct LastGood {
    body: Vec<u8>,
    at: Instant,
}

/// Rows being gathered into the next batch.
struct Pending {
    decoder: JsonDecoder,
    row: Row,
    columns: Columns,
    endpoint: Vec<usize>,
    stale_age_ms: Vec<Option<u64>>,
    linger: Linger,
}

impl HttpPoll {
    async fn run_polls(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            mut out,
            shutdown,
            ..
        } = cx;
        let config = Arc::new(self.config);
        let resilience = Arc::new(Resilience::new(config.retry.clone()));
        let permits = Arc::new(Semaphore::new(config.concurrency));
        let n = config.endpoints.len();
        let (tx, mut rx) = mpsc::channel::<Reading>(n.clamp(16, 4096));
        let mut tasks = tokio::task::JoinSet::new();
        let interval = Duration::from_millis(config.interval_ms);
        for (i, e) in config.endpoints.iter().enumerate() {
            // Spread the endpoints over the interval rather than polling all at once.
            let start_after = interval.mul_f64(i as f64 / n as f64);
            tasks.spawn(poll_endpoint(
                i,
                e.clone(),
                config.clone(),
                self.client.clone(),
                resilience.clone(),
                permits.clone(),
                component.clone(),
                start_after,
                tx.clone(),
            ));
        }
        drop(tx);

        let base = schema_for(&config.fields, &config.optional_fields);
        let mut pending = Pending {
            decoder: JsonDecoder::new(config.fields.keys().cloned().collect()),
            row: Row::new(config.fields.len()),
            columns: Columns::new(base, &config.fields, config.batch.rows),
            endpoint: Vec::new(),
            stale_age_ms: Vec::new(),
            linger: Linger::new(&config.batch),
        };
        let mut last_good: Vec<Option<LastGood>> = (0..n).map(|_| None).collect();
        let max_stale = Duration::from_millis(config.max_stale_ms);
        let ids: Vec<String> = config.endpoints.iter().map(Endpoint::id).collect();
        loop {
            // Holding rows, the linger rule bounds the wait (and sends at once when no
            // reading is ready: caught up); otherwise wait for barriers' sake.
            let wait = pending
                .linger
                .time_left(Instant::now())
                .unwrap_or(BARRIER_WAIT);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(wait, rx.recv()) => match r {
                    Ok(None) => break,
                    Ok(Some(reading)) => {
                        let i = reading.endpoint;
                        match reading.outcome {
                            Ok(body) => {
                                component.emit(EndpointRecovered { endpoint: &ids[i] });
                                pending.push(&component, &config, i, &body, None);
                                last_good[i] = Some(LastGood { body, at: Instant::now() });
                            }
                            Err(_) => {
                                let age = last_good[i].as_ref().map(|g| g.at.elapsed());
                                match (&last_good[i], age) {
                                    (Some(g), Some(age)) if age <= max_stale && !max_stale.is_zero() => {
                                        // At least 1 ms: a stale reading never looks fresh.
                                        let ms = (age.as_millis() as u64).max(1);
                                        pending.push(&component, &config, i, &g.body, Some(ms));
                                        component.emit(MetricAdded { metric: &STALE_EVENTS, count: 1 });
                                    }
                                    _ => {
                                        component.emit(MetricAdded { metric: &MISSING_READINGS, count: 1 });
                                        component.emit(EndpointDataMissing {
                                            endpoint: &ids[i],
                                            last_good_age_ms: age.map(|a| a.as_millis() as u64),
                                        });
                                    }
                                }
                            }
                        }
                    }
                    Err(_) => {}
                },
            }
            let full = pending.columns.len() >= config.batch.rows;
            let due = pending.linger.due(full, rx.is_empty(), Instant::now());
            if due && pending.send(&component, &ids, &mut out).await.is_err() {
                return Ok(());
            }
            if out.serve_barriers().await.is_err() {
                return Ok(());
            }
        }
        tasks.abort_all();
        let _ = pending.send(&component, &ids, &mut out).await;
        Ok(())
    }
}

impl Pending {
    fn push(
        &mut self,
        component: &ComponentContext,
        config: &HttpPollConfig,
        endpoint: usize,
        body: &[u8],
        stale_age_ms: Option<u64>,
    ) {
        let decoded = self
            .decoder
            .decode(body, &mut self.row)
            .and_then(|()| self.columns.push(&mut self.row));
        match decoded {
            Ok(()) => {
                self.endpoint.push(endpoint);
                self.stale_age_ms.push(stale_age_ms);
                self.linger.took_in(Instant::now());
            }
            // Bodies were checked when polled; decoding the same bytes again agrees.
            Err(reason) => component.dead_letter(
                &tidegauge_core::redact::url(config.endpoints[endpoint].url(), false),
                &reason,
                body,
            ),
        }
    }

    async fn send(
        &mut self,
        component: &ComponentContext,
        ids: &[String],
        out: &mut Output,
    ) -> Result<(), SendError> {
        self.linger.sent();
        if self.columns.is_empty() {
            return Ok(());
        }
        let contract = |e: arrow_schema::ArrowError| SendError::Contract(e.to_string());
        let base = self.columns.finish().map_err(contract)?;
        component.emit(EventsReceived {
            count: base.num_rows() as u64,
        });
        let mut columns: Vec<ArrayRef> = base.columns().to_vec();
        columns.push(Arc::new(StringArray::from_iter_values(
            self.endpoint.drain(..).map(|i| ids[i].as_str()),
        )));
        let ages: Vec<Option<u64>> = self.stale_age_ms.drain(..).collect();
        columns.push(Arc::new(BooleanArray::from_iter(
            ages.iter().map(|a| Some(a.is_some())),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            ages.iter().map(|a| a.unwrap_or(0) as i64),
        )));
        let batch = RecordBatch::try_new(out.schema().clone(), columns).map_err(contract)?;
        out.send(Batch::new(batch)).await
    }
}

impl Source for HttpPoll {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_polls(cx))
    }
}

tidegauge_core::register_source!(HttpPollConfig);
