//! The tidegauge admin HTTP API: what runs, how it is doing, and live parameter changes
//! with their history.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | up, uptime, components running |
//! | `GET /components` | every component with its counters |
//! | `GET /topology` | the graph, each edge with the schema it carries |
//! | `GET /components/{id}/params` | parameters: value, type, range, doc, tunable |
//! | `PATCH /components/{id}/params` | change tunable parameters (bearer token) |
//! | `GET /changes` | the history of parameter changes |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /profile` | per-stage time (when running with `--profile`) |
//! | `GET /alerts` | incidents open now, from every `alert` transform |
//! | `GET /partitions` | Kafka partitions each group member with partition state owns: lag, state size, rebalances |
//! | `GET /openapi.json` | this API, described |
//! | `GET /ui` | the dashboard ([`ui`]) |
//! | `GET /sensors` | sensors with a recent history (search by id) |
//! | `GET /sensors/top` | the sensors with the most anomalies lately |
//! | `GET /sensors/points` | a sensor's recent verdicts: value, statistic, score, flag |
//! | `GET /events` | live feed (Server-Sent Events): counters, top sensors, incidents, points |
//! | `GET /logs` | logs search (bearer token) |
//!
//! Requests larger than [`MAX_BODY_BYTES`] or slower than [`REQUEST_TIMEOUT`] are refused;
//! connections are bounded in number, time and memory ([`server`]).
//!
//! Who may read what: `/health`, `/metrics`, `/openapi.json`, `/components`, `/topology`,
//! `/profile`, `/alerts` and `/partitions` are open (liveness probes and Prometheus
//! scrapers carry no token; they show counters, ids and field names, never a setting's
//! value), and so are the dashboard's page, its sensor data (`/sensors*`, `/events`: ids
//! and verdicts, as `/alerts` shows). Parameters
//! (`/components/{id}/params`, which show settings) and the change history (`/changes`,
//! which shows old and new values and who made them) need the bearer token, like changes,
//! and so does the logs search (`/logs`: log lines record parameter changes).
#![deny(missing_docs)]

pub mod changes;
pub mod client;
mod openapi;
pub mod server;
pub mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use tidegauge_core::live::{LiveHandle, ParamError};
use tidegauge_core::metrics::{self, ProcessMetrics};
use tidegauge_core::params;
use tidegauge_core::redact;
use tidegauge_core::registry;
use tidegauge_core::schema;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use changes::{ChangeLog, ChangeRecord};
pub use server::{ConnectionCounters, Limits};
pub use ui::{LogQuery, LogSearch};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Header naming who makes a change (recorded in the history).
pub const ACTOR_HEADER: &str = "x-tidegauge-actor";

/// Counters of things the binary does around the pipeline (reloads), shown in `/metrics`.
#[derive(Debug, Default)]
pub struct ProcessCounters {
    /// Reloads applied.
    pub reloads_applied: AtomicU64,
    /// Reloads rejected.
    pub reloads_rejected: AtomicU64,
    /// Parameters changed while running.
    pub parameter_changes: AtomicU64,
}

/// What the API serves from.
#[derive(Clone)]
pub struct AdminState {
    live: LiveHandle,
    token: Option<Arc<str>>,
    changes: Arc<ChangeLog>,
    counters: Arc<ProcessCounters>,
    connections: Arc<ConnectionCounters>,
    history: Option<Arc<tidegauge_core::live::SensorHistory>>,
    logs: Option<Arc<dyn LogSearch>>,
    feeds: Arc<tokio::sync::Semaphore>,
}

impl AdminState {
    /// Serves `live`; changes need `token` (none: changes are refused) and are recorded in
    /// `changes`.
    pub fn new(
        live: LiveHandle,
        token: Option<String>,
        changes: Arc<ChangeLog>,
        counters: Arc<ProcessCounters>,
    ) -> Self {
        AdminState {
            live,
            token: token.map(Into::into),
            changes,
            counters,
            connections: Arc::default(),
            history: None,
            logs: None,
            feeds: Arc::new(tokio::sync::Semaphore::new(ui::MAX_FEEDS)),
        }
    }

    /// Serves the recent verdicts kept in `history` (the dashboard's charts).
    pub fn with_history(mut self, history: Arc<tidegauge_core::live::SensorHistory>) -> Self {
        self.history = Some(history);
        self
    }

    /// Searches logs with `logs`.
    pub fn with_logs(mut self, logs: Arc<dyn LogSearch>) -> Self {
        self.logs = Some(logs);
        self
    }
}

/// The API's routes with their limits.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/components", get(components))
        .route("/topology", get(topology))
        .route(
            "/components/{id}/params",
            get(get_params).patch(patch_params),
        )
        .route("/changes", get(list_changes))
        .route("/metrics", get(prometheus))
        .route("/profile", get(profile))
        .route("/alerts", get(alerts))
        .route("/partitions", get(partitions))
        .route("/openapi.json", get(openapi::document))
        .route("/sensors", get(ui::sensors))
        .route("/sensors/top", get(ui::top))
        .route("/sensors/points", get(ui::points))
        .route("/logs", get(ui::logs))
        .fallback(not_found)
        .layer(axum::middleware::map_response(scrub_response))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // A live feed lasts longer than a request may and is sent as it goes: it is
        // outside the timeout and the whole-answer scrub (it scrubs each event itself).
        .route("/events", get(ui::feed))
        // The dashboard's files are constants of the binary, served as built: the scrub
        // would take `name=value` in minified code for a secret and break it.
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`, within the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, Limits::default(), shutdown).await
}

/// Serves the API on `listener` until `shutdown`, within `limits`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AdminState,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = state.connections.clone();
    server::serve(listener, router(state), limits, connections, shutdown).await
}

/// Largest answer body scrubbed (anything larger is refused rather than sent unread).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Every answer, whatever route made it, with the secrets the process knows masked
/// ([`redact::scrub`]): the last line of defence behind the redaction by schema.
async fn scrub_response(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the answer could not be prepared".into(),
            )
            .into_response();
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    match redact::scrub(&text) {
        std::borrow::Cow::Borrowed(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
        std::borrow::Cow::Owned(masked) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(masked))
        }
    }
}

/// An error answer: status and `{"error": message}`.
struct ApiError(StatusCode, String);

/// Longest error message an answer carries: a rejected value (a 40 KB condition, say)
/// is quoted in part, never echoed whole.
const MAX_ERROR_CHARS: usize = 2000;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut message = self.1;
        if message.chars().count() > MAX_ERROR_CHARS {
            let len = message.len();
            message = message.chars().take(MAX_ERROR_CHARS).collect();
            message.push_str(&format!("… (message of {len} bytes cut)"));
        }
        (self.0, Json(json!({ "error": message }))).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such route; GET /openapi.json lists them".into(),
    )
}

async fn health(State(s): State<AdminState>) -> Json<Value> {
    let snapshot = s.live.snapshot();
    let running = snapshot.iter().filter(|c| c.running).count();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.live.uptime().as_secs_f64(),
        "components": snapshot.len(),
        "running": running,
        "profiling": s.live.profiling(),
    }))
}

async fn components(State(s): State<AdminState>) -> Json<Value> {
    Json(components_value(&s))
}

/// Every component with its counters, inputs and whether it is tunable.
fn components_value(s: &AdminState) -> Value {
    let list: Vec<Value> = s
        .live
        .components()
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(c.telemetry.snapshot()).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("inputs".into(), json!(c.inputs));
                m.insert("tunable".into(), json!(c.control.is_some()));
            }
            v
        })
        .collect();
    Value::Array(list)
}

fn fields(s: &arrow_schema::SchemaRef) -> Value {
    Value::Array(
        s.fields()
            .iter()
            .map(|f| {
                json!({
                    "name": f.name(),
                    "type": f.data_type().to_string(),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

async fn topology(State(s): State<AdminState>) -> Json<Value> {
    let comps = s.live.components();
    let nodes: Vec<Value> = comps
        .iter()
        .map(|c| json!({ "id": c.id, "kind": c.kind, "type": c.type_name }))
        .collect();
    let mut edges = Vec::new();
    for c in &comps {
        for input in &c.inputs {
            let from = comps.iter().find(|o| &o.id == input);
            let schema = from
                .and_then(|o| o.output_schema.as_ref())
                .map(fields)
                .unwrap_or(Value::Null);
            let described = from
                .and_then(|o| o.output_schema.as_ref())
                .map(|s| schema::describe(s));
            edges.push(
                json!({ "from": input, "to": c.id, "schema": schema, "describe": described }),
            );
        }
    }
    Json(json!({ "nodes": nodes, "edges": edges }))
}

fn unknown(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no component `{id}`"))
}

async fn get_params(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, "reading parameters")?;
    let view = s.live.component(&id).ok_or_else(|| unknown(&id))?;
    let descriptor = registry::find(view.kind, view.type_name).ok_or_else(|| unknown(&id))?;
    let schema = descriptor.json_schema().to_value();
    let shown = redact::settings(&schema, &view.settings);
    let live: Vec<(String, Value)> = match &view.control {
        Some(c) => c
            .tunables()
            .await
            .map(|ts| ts.into_iter().map(|t| (t.name, t.value)).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let list: Vec<Value> = params::params(descriptor)
        .into_iter()
        .map(|p| {
            let tunable = live.iter().find(|(n, _)| *n == p.name);
            // Settings as shown are masked by their schema: a secret reads `***` (or
            // null when unset), a map of secrets keeps its keys.
            let value = if let Some((name, v)) = tunable {
                redact::settings(&schema, &json!({ name.as_str(): v }))[name.as_str()].clone()
            } else {
                setting(&shown, &p.name)
                    .or_else(|| {
                        p.default
                            .as_deref()
                            .and_then(|d| serde_json::from_str(d).ok())
                    })
                    .unwrap_or(Value::Null)
            };
            json!({
                "name": p.name,
                "value": value,
                "type": p.kind,
                "default": p.default.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
                "required": p.required,
                "range": p.range,
                "doc": p.doc,
                "secret": p.secret,
                "tunable": tunable.is_some(),
            })
        })
        .collect();
    Ok(Json(json!({
        "component": view.id,
        "kind": view.kind,
        "type": view.type_name,
        "params": list,
    })))
}

/// The value at dotted `path` in `settings`.
fn setting(settings: &Value, path: &str) -> Option<Value> {
    path.split('.').try_fold(settings, |v, k| v.get(k)).cloned()
}

/// Checks the bearer token for `what` ("changes", "reading parameters").
fn authorize(s: &AdminState, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!("{what} needs `Authorization: Bearer <token>`"),
        ));
    };
    match &s.token {
        Some(expected) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::FORBIDDEN, "wrong token".into())),
        None => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{what} is disabled: the pipeline's [admin] table sets no token"),
        )),
    }
}

/// Compares without stopping at the first difference (no timing hint of a matching
/// prefix); only the length shows.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn actor(headers: &HeaderMap) -> String {
    headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().chars().take(100).collect::<String>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "api".to_string())
}

async fn patch_params(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, "changing parameters")?;
    let patch: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON object of parameter names to new values: {e}"),
        )
    })?;
    if patch.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no parameter given".into(),
        ));
    }
    let who = actor(&headers);
    let changes = s.live.set_params(&id, &patch).await.map_err(|e| {
        let status = match &e {
            ParamError::UnknownComponent(_) => StatusCode::NOT_FOUND,
            ParamError::NotTunable(_) => StatusCode::CONFLICT,
            ParamError::Invalid(_) | ParamError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ParamError::Stopped(_) => StatusCode::CONFLICT,
        };
        let message = match &e {
            ParamError::Invalid(errors) => errors
                .iter()
                .map(|c| {
                    let c = c.clone().prefixed(&format!("transforms.{id}"));
                    c.to_string()
                })
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        ApiError(status, message)
    })?;
    let records: Vec<ChangeRecord> = changes
        .into_iter()
        .map(|c| ChangeRecord::now(c, &who))
        .collect();
    for r in &records {
        tracing::info!(
            component_id = %r.component,
            parameter = %r.parameter,
            old = %r.old,
            new = %r.new,
            actor = %r.actor,
            "parameter changed through the admin API"
        );
    }
    s.counters
        .parameter_changes
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    s.changes.append(&records).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the change is applied but could not be recorded in {}: {e}",
                s.changes.path().display()
            ),
        )
    })?;
    Ok(Json(json!({ "changes": records })))
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    component: Option<String>,
}

async fn list_changes(
    State(s): State<AdminState>,
    Query(q): Query<ChangesQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<ChangeRecord>>, ApiError> {
    authorize(&s, &headers, "reading the change history")?;
    let all = s
        .changes
        .read()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        all.into_iter()
            .filter(|r| q.component.as_ref().is_none_or(|c| &r.component == c))
            .collect(),
    ))
}

async fn prometheus(State(s): State<AdminState>) -> Response {
    let process = ProcessMetrics {
        uptime_seconds: s.live.uptime().as_secs_f64(),
        reloads_applied: s.counters.reloads_applied.load(Ordering::Relaxed),
        reloads_rejected: s.counters.reloads_rejected.load(Ordering::Relaxed),
        parameter_changes: s.counters.parameter_changes.load(Ordering::Relaxed),
        checkpoint: s.live.checkpoint_metrics(),
    };
    let mut text = metrics::render(&process, &s.live.snapshot());
    connection_metrics(&mut text, &s.connections);
    partition_metrics(&mut text, &s);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// The admin API's own connections, in the exposition format.
fn connection_metrics(out: &mut String, c: &ConnectionCounters) {
    use std::fmt::Write as _;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP tidegauge_admin_connections Connections to the admin API open now.\n\
         # TYPE tidegauge_admin_connections gauge\n\
         tidegauge_admin_connections {}",
        load(&c.open)
    );
    let _ = writeln!(
        out,
        "# HELP tidegauge_admin_connections_total Connections to the admin API, by what became of them.\n\
         # TYPE tidegauge_admin_connections_total counter"
    );
    for (outcome, v) in [
        ("accepted", &c.accepted),
        ("evicted_idle_for_room", &c.evicted),
        ("refused_all_busy", &c.refused),
        ("closed_idle", &c.idle_closed),
        ("accept_error", &c.accept_errors),
    ] {
        let _ = writeln!(
            out,
            "tidegauge_admin_connections_total{{outcome=\"{outcome}\"}} {}",
            load(v)
        );
    }
}

/// Open incidents of every component that raises alerts, oldest first.
async fn alerts(State(s): State<AdminState>) -> Json<Value> {
    Json(alerts_value(&s))
}

/// Open incidents of every component that raises alerts, oldest first.
fn alerts_value(s: &AdminState) -> Value {
    let mut open: Vec<(i64, Value)> = Vec::new();
    for c in s.live.components() {
        for i in c.telemetry.open_incidents() {
            let mut v = serde_json::to_value(&i).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("component_id".into(), json!(c.telemetry.id.as_ref()));
            }
            open.push((i.starts_at_ms, v));
        }
    }
    open.sort_by_key(|(t, _)| *t);
    json!({ "open": open.into_iter().map(|(_, v)| v).collect::<Vec<_>>() })
}

/// The partitions each consumer-group member with partition state owns, with lag and
/// state size, and its rebalances.
async fn partitions(State(s): State<AdminState>) -> Json<Value> {
    let mut members = Vec::new();
    for c in s.live.components() {
        if let Some(o) = c.telemetry.ownership() {
            let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("component_id".into(), json!(c.telemetry.id.as_ref()));
            }
            members.push(v);
        }
    }
    Json(json!({ "members": members }))
}

/// Rebalances, owned partitions, lag and state size, in the exposition format.
fn partition_metrics(out: &mut String, s: &AdminState) {
    use std::fmt::Write as _;
    let owned: Vec<(String, tidegauge_core::telemetry::Ownership)> = s
        .live
        .components()
        .iter()
        .filter_map(|c| {
            c.telemetry
                .ownership()
                .map(|o| (metrics::escape(&c.telemetry.id), o))
        })
        .collect();
    if owned.is_empty() {
        return;
    }
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        out,
        "tidegauge_kafka_rebalances_total",
        "counter",
        "Partition assignments and revocations handled.",
    );
    for (id, o) in &owned {
        let _ = writeln!(
            out,
            "tidegauge_kafka_rebalances_total{{component_id=\"{id}\",kind=\"assign\"}} {}",
            o.assignments
        );
        let _ = writeln!(
            out,
            "tidegauge_kafka_rebalances_total{{component_id=\"{id}\",kind=\"revoke\"}} {}",
            o.revocations
        );
    }
    family(
        out,
        "tidegauge_kafka_last_rebalance_seconds",
        "gauge",
        "Duration of the last assignment (state restore included) and revocation.",
    );
    for (id, o) in &owned {
        let _ = writeln!(
            out,
            "tidegauge_kafka_last_rebalance_seconds{{component_id=\"{id}\",kind=\"assign\"}} {}",
            o.last_assign_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "tidegauge_kafka_last_rebalance_seconds{{component_id=\"{id}\",kind=\"revoke\"}} {}",
            o.last_revoke_ms as f64 / 1000.0
        );
    }
    family(
        out,
        "tidegauge_kafka_partition_lag_messages",
        "gauge",
        "Messages behind the high watermark, per owned partition (-1: unknown yet).",
    );
    for (id, o) in &owned {
        for p in &o.partitions {
            let _ = writeln!(
                out,
                "tidegauge_kafka_partition_lag_messages{{component_id=\"{id}\",topic=\"{}\",partition=\"{}\"}} {}",
                metrics::escape(&p.topic),
                p.partition,
                p.lag
            );
        }
    }
    family(
        out,
        "tidegauge_kafka_partition_state_bytes",
        "gauge",
        "Bytes of the last state snapshot written, per owned partition.",
    );
    for (id, o) in &owned {
        for p in &o.partitions {
            let _ = writeln!(
                out,
                "tidegauge_kafka_partition_state_bytes{{component_id=\"{id}\",topic=\"{}\",partition=\"{}\"}} {}",
                metrics::escape(&p.topic),
                p.partition,
                p.state_bytes
            );
        }
    }
}

async fn profile(State(s): State<AdminState>) -> Json<Value> {
    let stages = metrics::profile(&s.live.snapshot());
    Json(json!({
        "profiling": s.live.profiling(),
        "note": if s.live.profiling() { "busy = running time less waits for input and for room downstream" } else { "run with --profile to measure waits; busy time is running time here" },
        "stages": stages,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn dotted_settings() {
        let v = json!({"batch": {"rows": 5}});
        assert_eq!(setting(&v, "batch.rows"), Some(json!(5)));
        assert_eq!(setting(&v, "batch.bytes"), None);
    }
}
