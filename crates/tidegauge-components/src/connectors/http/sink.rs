//! `http` sink: events POSTed in batches to a URL (webhooks for alerts), with retries and
//! a circuit breaker from the shared resilience layer. The auth header's value is a
//! secret: it is sent, never printed.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::sink_fn;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::resilience::{
    BreakerConfig, CircuitBreaker, Resilience, RetryError, RetryPolicy,
};
use tidegauge_core::schema::require_field;
use tidegauge_core::telemetry::{BytesSent, ComponentErrorOccurred, EventsSent};
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Sink, SinkConfig,
    SinkInput,
};

use crate::codec::encode::JsonEncoder;
use crate::connectors::template::Template;
use crate::secret::Secret;
use crate::sinks::FlushRule;

/// Sends events to an HTTP endpoint in batches: a JSON array of objects (or JSON Lines)
/// per request; or, for the events of an `alert` transform, Alertmanager alerts
/// (`encoding = "alertmanager"`, to Alertmanager's `/api/v2/alerts`), or one request per
/// event whose body is a template (`encoding = "template"`: a Slack-style webhook).
///
/// Failed requests (connection errors, timeouts, 408, 429 and 5xx answers) are retried
/// with backoff and jitter within a retry budget; a circuit breaker stops calling an
/// endpoint that keeps failing. Events the endpoint refuses (other 4xx answers), or that
/// could not be sent when retries ran out or the breaker was open, are dead-lettered with
/// the reason. Error messages and dead letters name the endpoint by scheme, host and port
/// only (webhook URLs often carry tokens in their path).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Endpoint URL (`http://` or `https://`). Its path and query are treated as secret
    /// (webhook URLs carry their token there): shown as `https://host/***`.
    #[schemars(extend("x-secret-path" = true))]
    #[schemars(example = &"https://hooks.example.com/alerts")]
    pub url: String,
    /// Request method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Body format.
    #[serde(default)]
    pub encoding: HttpEncoding,
    /// With `encoding = "alertmanager"`: the `alertname` label of every alert.
    #[serde(default = "default_alertname")]
    pub alertname: String,
    /// With `encoding = "template"`: the body of each request, with `{field}` replaced
    /// by the event's value (escaped for use inside a JSON string; null is empty) and
    /// `{{`/`}}` for literal braces. A Slack incoming webhook:
    /// `'{{"text": "{sensor_id} is {status}: {reason}"}}'`.
    #[serde(default)]
    pub template: Option<String>,
    /// Extra request headers. Their values are treated as secrets (never shown, masked
    /// wherever they would appear); credentials still belong in `auth_header_value`.
    #[serde(default)]
    pub headers: IndexMap<String, Secret>,
    /// Name of the header carrying credentials.
    #[serde(default = "default_auth_header_name")]
    pub auth_header_name: String,
    /// Value of the credentials header, e.g. `Bearer ${WEBHOOK_TOKEN}`; never logged or
    /// printed.
    #[serde(default)]
    pub auth_header_value: Option<Secret>,
    /// Most events per request.
    #[serde(default = "default_max_events")]
    #[schemars(range(min = 1))]
    pub max_events: usize,
    /// Events go out as soon as the input is idle; while more keep coming, this is the
    /// longest an event waits for its request, in milliseconds.
    #[serde(default = "default_flush_interval_ms")]
    #[schemars(range(min = 1))]
    pub flush_interval_ms: u64,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Retries of failed requests.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Circuit breaker around the endpoint.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// HTTP method.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
}

/// Request body format.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HttpEncoding {
    /// `[{...},{...}]`, `Content-Type: application/json`.
    #[default]
    JsonArray,
    /// One object per line, `Content-Type: application/x-ndjson`.
    Ndjson,
    /// Alertmanager alerts (API v2): `[{"labels": {...}, "annotations": {...},
    /// "startsAt": ..., "endsAt": ...}]`, from the events of an `alert` transform.
    /// Labels: `alertname` and every string field but `status`,
    /// `incident_id` and `reason` (the group, the detector). Annotations: `summary` (the
    /// reason), `incident_id`, `peak_score`, `anomalies`. `endsAt` is set when resolved.
    Alertmanager,
    /// One request per event, its body the `template` (JSON).
    Template,
}

/// Fields an alert event has that `encoding = "alertmanager"` reads.
const ALERT_FIELDS: [(&str, DataType); 2] =
    [("status", DataType::Utf8), ("starts_at", DataType::Int64)];

fn default_alertname() -> String {
    "tidegauge".into()
}

/// Appends `value` as text for use inside a JSON string (null or absent: nothing).
fn json_text(value: Option<&serde_json::Value>, out: &mut String) {
    let text = match value {
        None | Some(serde_json::Value::Null) => return,
        Some(serde_json::Value::String(s)) => serde_json::to_string(s),
        Some(other) => serde_json::to_string(&other.to_string()),
    };
    if let Ok(quoted) = text {
        out.push_str(&quoted[1..quoted.len() - 1]);
    }
}

/// An event of an `alert` transform as an Alertmanager alert (API v2 `postableAlert`).
fn alertmanager_alert(
    alertname: &str,
    event: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let rfc3339 = |v: Option<&Value>| {
        v.and_then(Value::as_i64).filter(|ms| *ms >= 0).map(|ms| {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
            humantime::format_rfc3339_millis(t).to_string()
        })
    };
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(alertname));
    for (k, v) in event {
        if let Value::String(s) = v
            && !["status", "incident_id", "reason"].contains(&k.as_str())
        {
            labels.insert(k.clone(), json!(s));
        }
    }
    let mut annotations = serde_json::Map::new();
    for (name, field) in [
        ("summary", "reason"),
        ("incident_id", "incident_id"),
        ("peak_score", "peak_score"),
        ("anomalies", "anomalies"),
    ] {
        match event.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                annotations.insert(name.into(), json!(s));
            }
            Some(v) => {
                annotations.insert(name.into(), json!(v.to_string()));
            }
        }
    }
    let mut alert = json!({ "labels": labels, "annotations": annotations });
    if let Some(start) = rfc3339(event.get("starts_at")) {
        alert["startsAt"] = json!(start);
    }
    if event.get("status").and_then(Value::as_str) == Some("resolved")
        && let Some(end) = rfc3339(event.get("ends_at"))
    {
        alert["endsAt"] = json!(end);
    }
    alert
}

/// How much of a refusing receiver's reply is read, and how much of it is shown.
const REPLY_SHOWN_BYTES: usize = 1024;
const REPLY_SHOWN_CHARS: usize = 200;

fn default_auth_header_name() -> String {
    "Authorization".into()
}
fn default_max_events() -> usize {
    1000
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// `scheme://host:port` of a URL: what errors may show.
fn endpoint(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

impl SinkConfig for HttpSinkConfig {
    const TYPE: &'static str = "http";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                if !u.username().is_empty() || u.password().is_some() {
                    errors.push(ConfigError::new(
                        "url",
                        "put credentials in auth_header_value, not in the URL",
                    ));
                }
            }
            Ok(_) => errors.push(ConfigError::new(
                "url",
                "expected an http:// or https:// URL",
            )),
            Err(e) => errors.push(ConfigError::new("url", format!("not a URL: {e}"))),
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(ConfigError::new(
                    format!("headers.{name}"),
                    "not a header name",
                ));
            }
            if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                errors.push(ConfigError::new(
                    format!("headers.{name}"),
                    "not a header value",
                ));
            }
            if name.eq_ignore_ascii_case(&self.auth_header_name) {
                errors.push(ConfigError::new(
                    format!("headers.{name}"),
                    "credentials go in auth_header_value, which is never printed",
                ));
            }
        }
        if reqwest::header::HeaderName::from_bytes(self.auth_header_name.as_bytes()).is_err() {
            errors.push(ConfigError::new("auth_header_name", "not a header name"));
        }
        if let Some(v) = &self.auth_header_value
            && reqwest::header::HeaderValue::from_str(v.expose()).is_err()
        {
            // The message must not quote the value.
            errors.push(ConfigError::new(
                "auth_header_value",
                "not a valid header value (control characters?)",
            ));
        }
        match (self.encoding, &self.template) {
            (HttpEncoding::Template, None) => errors.push(ConfigError::new(
                "template",
                "`encoding = \"template\"` needs a template, e.g. '{{\"text\": \"{sensor_id}: {reason}\"}}'",
            )),
            (HttpEncoding::Template, Some(t)) => Template::check("template", t, input, &mut errors),
            (_, Some(_)) => errors.push(ConfigError::new(
                "template",
                "only used with `encoding = \"template\"`",
            )),
            _ => {}
        }
        if self.encoding == HttpEncoding::Alertmanager {
            for (name, t) in ALERT_FIELDS {
                if let Err(e) = require_field(input, "encoding", name, &[t]) {
                    errors.push(ConfigError::new(
                        "encoding",
                        format!(
                            "{}; `alertmanager` takes the events of an `alert` transform",
                            e.message
                        ),
                    ));
                }
            }
        }
        errors.extend(self.retry.validate("retry"));
        errors.extend(self.breaker.validate("breaker"));
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
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| BuildError::new(format!("url: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| BuildError::new(format!("headers.{name}: {e}")))?;
            let mut v = reqwest::header::HeaderValue::from_str(value.expose())
                .map_err(|e| BuildError::new(format!("headers.{name}: {e}")))?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        if let Some(secret) = &self.auth_header_value {
            let n = reqwest::header::HeaderName::from_bytes(self.auth_header_name.as_bytes())
                .map_err(|e| BuildError::new(format!("auth_header_name: {e}")))?;
            let mut v = reqwest::header::HeaderValue::from_str(secret.expose())
                .map_err(|_| BuildError::new("auth_header_value: not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        let content_type = match self.encoding {
            HttpEncoding::JsonArray | HttpEncoding::Alertmanager | HttpEncoding::Template => {
                "application/json"
            }
            HttpEncoding::Ndjson => "application/x-ndjson",
        };
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static(content_type),
        );
        #[cfg(feature = "http-tls")]
        crate::tls::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_millis(self.timeout_ms))
            .user_agent(concat!("tidegauge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::new(format!("cannot set up the HTTP client: {e}")))?;
        let sink = HttpSink {
            endpoint: endpoint(&url),
            url,
            config: self.clone(),
            client,
            encoder: JsonEncoder::new(&input),
            template: match &self.template {
                Some(t) => Some(
                    Template::parse(t).map_err(|e| BuildError::new(format!("template: {e}")))?,
                ),
                None => None,
            },
        };
        Ok(sink_fn(move |input, cx| sink.run_async(input, cx)))
    }
}

struct HttpSink {
    config: HttpSinkConfig,
    url: reqwest::Url,
    endpoint: String,
    client: reqwest::Client,
    encoder: JsonEncoder,
    template: Option<Template>,
}

/// Why a request failed.
#[derive(Debug)]
enum RequestError {
    /// Worth trying again: no answer, a timeout, 408, 429, 5xx.
    Transient(String),
    /// The endpoint refused the events.
    Refused(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Transient(e) | RequestError::Refused(e) => f.write_str(e),
        }
    }
}

/// Events waiting for the next request: one encoded object each.
#[derive(Default)]
struct Pending {
    events: Vec<Vec<u8>>,
    finalizers: Vec<Finalizers>,
}

impl HttpSink {
    /// One event as the encoding wants it: a JSON object (an Alertmanager alert with
    /// `alertmanager`), or the rendered template.
    fn encode_row(
        &self,
        batch: &RecordBatch,
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), arrow_schema::ArrowError> {
        self.encoder.encode_row(batch, row, out)?;
        let encoding = self.config.encoding;
        if matches!(encoding, HttpEncoding::JsonArray | HttpEncoding::Ndjson) {
            return Ok(());
        }
        let event: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(out)
            .map_err(|e| arrow_schema::ArrowError::JsonError(e.to_string()))?;
        out.clear();
        match (&self.template, encoding) {
            (Some(t), HttpEncoding::Template) => {
                out.extend_from_slice(
                    t.render_with(|field, s| json_text(event.get(field), s))
                        .as_bytes(),
                );
            }
            _ => {
                let alert = alertmanager_alert(&self.config.alertname, &event);
                serde_json::to_writer(&mut *out, &alert)
                    .map_err(|e| arrow_schema::ArrowError::JsonError(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn run_async(self, mut input: SinkInput, cx: SinkContext) -> Result<(), ComponentError> {
        let component = cx.component;
        let resilience = Resilience::new(self.config.retry.clone());
        let breaker = CircuitBreaker::new(self.config.breaker.clone());
        let flush_every = Duration::from_millis(self.config.flush_interval_ms);
        let mut pending = Pending::default();
        let mut rule = FlushRule::new(flush_every, Instant::now());
        let mut row = Vec::new();
        loop {
            let holding = !pending.finalizers.is_empty();
            let (closed, idle) = match input.recv_timeout(rule.wait(holding, Instant::now())).await
            {
                Recv::Batch(b) => {
                    pending.finalizers.push(b.finalizers);
                    for r in 0..b.data.num_rows() {
                        row.clear();
                        if let Err(e) = self.encode_row(&b.data, r, &mut row) {
                            // Nothing held counts as delivered once the sink fails.
                            pending.finalizers.iter().for_each(Finalizers::fail);
                            return Err(e.into());
                        }
                        pending.events.push(row.clone());
                    }
                    (false, false)
                }
                Recv::Idle => (false, true),
                Recv::Closed => (true, false),
            };
            let holding = !pending.finalizers.is_empty();
            if closed
                || pending.events.len() >= self.config.max_events
                || rule.due(holding, idle, Instant::now())
            {
                let batch = std::mem::take(&mut pending);
                let per_request = match self.config.encoding {
                    HttpEncoding::Template => 1,
                    _ => self.config.max_events,
                };
                for chunk in batch.events.chunks(per_request) {
                    self.send(&component, &resilience, &breaker, chunk).await;
                }
                // Every event is now either accepted or dead-lettered.
                batch.finalizers.into_iter().for_each(Finalizers::release);
                rule.flushed(Instant::now());
            }
            if closed {
                return Ok(());
            }
        }
    }

    /// Sends one request's worth of events; what cannot be delivered is dead-lettered.
    async fn send(
        &self,
        component: &ComponentContext,
        resilience: &Resilience,
        breaker: &CircuitBreaker,
        events: &[Vec<u8>],
    ) {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        match self.config.encoding {
            HttpEncoding::JsonArray | HttpEncoding::Alertmanager => {
                body.push(b'[');
                for (i, e) in events.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(e);
                }
                body.push(b']');
            }
            HttpEncoding::Ndjson => {
                for e in events {
                    body.extend_from_slice(e);
                    body.push(b'\n');
                }
            }
            HttpEncoding::Template => {
                for e in events {
                    body.extend_from_slice(e);
                }
            }
        }
        let body = bytes::Bytes::from(body);
        let method = match self.config.method {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        };
        let result = resilience
            .call(
                Some(breaker),
                |attempt| {
                    let request = self
                        .client
                        .request(method.clone(), self.url.clone())
                        .body(body.clone());
                    async move {
                        let r = self.request(request).await;
                        if let Err(RequestError::Transient(e)) = &r {
                            component.emit(ComponentErrorOccurred {
                                error: &format!("{}: attempt {attempt}: {e}", self.endpoint),
                            });
                        }
                        r
                    }
                },
                |e| matches!(e, RequestError::Transient(_)),
                |t| {
                    component.emit(ComponentErrorOccurred {
                        error: &format!(
                            "{}: circuit breaker {:?} -> {:?}",
                            self.endpoint, t.from, t.to
                        ),
                    })
                },
            )
            .await;
        let reason = match result {
            Ok(()) => {
                component.emit(EventsSent {
                    count: events.len() as u64,
                });
                component.emit(BytesSent {
                    bytes: body.len() as u64,
                });
                return;
            }
            Err(RetryError::BreakerOpen) => "not sent: circuit breaker open".to_string(),
            Err(RetryError::Failed { error, attempts }) => match error {
                RequestError::Refused(e) => format!("refused: {e}"),
                RequestError::Transient(e) => format!("not sent after {attempts} attempt(s): {e}"),
            },
        };
        for e in events {
            component.dead_letter(&self.endpoint, &reason, e);
        }
    }

    async fn request(&self, request: reqwest::RequestBuilder) -> Result<(), RequestError> {
        let response = request.send().await.map_err(|e| {
            // reqwest's message includes the full URL: keep only what may be shown.
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            RequestError::Transient(what.to_string())
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The receiver's reply goes into logs and dead letters: only its start is read
        // (a reply can be any size), and whatever it echoes of the request (the URL's
        // token, the auth header) is masked.
        let mut reply = Vec::new();
        let mut response = response;
        while reply.len() < REPLY_SHOWN_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => reply.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&reply);
        let snippet: String = text.chars().take(REPLY_SHOWN_CHARS).collect();
        let what = format!("HTTP {status}: {snippet}");
        let what = match &self.config.auth_header_value {
            Some(s) => s.redact(&what),
            None => what,
        };
        let what = tidegauge_core::redact::scrub(&what).into_owned();
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(RequestError::Transient(what))
        } else {
            Err(RequestError::Refused(what))
        }
    }
}

tidegauge_core::register_sink!(HttpSinkConfig);
