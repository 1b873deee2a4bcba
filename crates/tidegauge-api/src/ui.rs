//! The dashboard (`GET /ui`) and the data it draws: recent verdicts per sensor, the top
//! anomalous sensors, a live feed (Server-Sent Events) and a logs search.
//!
//! The page is plain HTML, CSS and JavaScript with uPlot for charts, embedded in the
//! binary: nothing is fetched from elsewhere, and the Content-Security-Policy forbids it
//! (scripts and styles from the admin address only, no inline script, requests to the
//! admin address only). The page asks for the token once, keeps it in the tab's memory
//! (and `sessionStorage` when the user ticks it) and sends it as the `Authorization`
//! header; no cookie is ever set, so a page of another site cannot act with it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidegauge_core::live::SensorHistory;
use tidegauge_core::redact;

use super::{AdminState, ApiError, authorize};

/// The page's Content-Security-Policy: everything from the admin address itself, no
/// inline script or style attribute, no frames, no forms posted elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Live feeds open at once; more are refused (503) until one ends.
pub const MAX_FEEDS: usize = 16;
/// A live feed ends after this long; the browser's `EventSource` reconnects by itself.
pub const FEED_LIFETIME: Duration = Duration::from_secs(600);
/// How often a live feed looks for new points.
const FEED_TICK: Duration = Duration::from_millis(500);

/// The embedded files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../ui/vendor/LICENSE"),
    ),
];

fn asset(name: &str) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError(StatusCode::NOT_FOUND, format!("no file `{name}` in /ui")).into_response();
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /ui`.
pub(crate) async fn index() -> Response {
    asset("index.html")
}

/// `GET /ui/{file}`.
pub(crate) async fn file(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    asset(&name)
}

fn history(s: &AdminState) -> Result<&Arc<SensorHistory>, ApiError> {
    s.history.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no sensor history is kept: set [admin] history_sensors above 0".into(),
        )
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(serde::Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

/// `GET /sensors?q=&limit=`: the sensors with a history whose id contains `q`.
pub(crate) async fn sensors(
    State(s): State<AdminState>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let h = history(&s)?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let (matched, list) = h.search(&q.q, limit);
    Ok(Json(json!({
        "history": h.stats(),
        "matched": matched,
        "sensors": list,
    })))
}

#[derive(serde::Deserialize)]
pub(crate) struct TopQuery {
    window_s: Option<u64>,
    limit: Option<usize>,
}

/// `GET /sensors/top?window_s=&limit=`: the sensors with the most anomalies lately.
pub(crate) async fn top(
    State(s): State<AdminState>,
    Query(q): Query<TopQuery>,
) -> Result<Json<Value>, ApiError> {
    let h = history(&s)?;
    Ok(Json(top_value(h, q.window_s, q.limit)))
}

fn top_value(h: &SensorHistory, window_s: Option<u64>, limit: Option<usize>) -> Value {
    let window_s = window_s.unwrap_or(60).min(86_400);
    let since = now_ms() - (window_s as i64) * 1000;
    json!({
        "window_s": window_s,
        "sensors": h.top(since, limit.unwrap_or(20).min(1000)),
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct PointsQuery {
    sensor: String,
    component: Option<String>,
    after: Option<u64>,
}

/// `GET /sensors/points?sensor=&component=&after=`: a sensor's recent verdicts.
pub(crate) async fn points(
    State(s): State<AdminState>,
    Query(q): Query<PointsQuery>,
) -> Result<Json<Value>, ApiError> {
    let h = history(&s)?;
    let found = h
        .points(&q.sensor, q.component.as_deref(), q.after)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "no history of sensor `{}`{}; GET /sensors lists those kept",
                    q.sensor,
                    q.component
                        .as_deref()
                        .map(|c| format!(" in `{c}`"))
                        .unwrap_or_default()
                ),
            )
        })?;
    Ok(Json(serde_json::to_value(found).unwrap_or(Value::Null)))
}

#[derive(serde::Deserialize)]
pub(crate) struct FeedQuery {
    sensor: Option<String>,
    component: Option<String>,
    /// Points of `sensor` the client has already (the `total` it last read).
    after: Option<u64>,
}

/// What a live feed remembers between ticks.
struct Feed {
    state: AdminState,
    sensor: Option<String>,
    component: Option<String>,
    /// Points of the sensor already sent (its `total` then).
    seen: Option<u64>,
    ticks: u64,
    started: Instant,
    queued: VecDeque<Event>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn event(name: &str, data: &Value) -> Event {
    // Masked like every other answer of the API.
    let text = data.to_string();
    Event::default().event(name).data(&*redact::scrub(&text))
}

impl Feed {
    /// The events of one tick: new points of the sensor every tick; components every
    /// second; top sensors and open incidents every two seconds.
    fn fill(&mut self) {
        if let (Some(sensor), Some(h)) = (&self.sensor, &self.state.history)
            && let Some(p) = h.points(sensor, self.component.as_deref(), self.seen)
            && (self.seen != Some(p.total))
        {
            self.seen = Some(p.total);
            self.queued.push_back(event(
                "points",
                &serde_json::to_value(p).unwrap_or_default(),
            ));
        }
        if self.ticks.is_multiple_of(2) {
            self.queued.push_back(event(
                "components",
                &json!({ "at_ms": now_ms(), "components": super::components_value(&self.state) }),
            ));
        }
        if self.ticks.is_multiple_of(4) {
            let top = self
                .state
                .history
                .as_ref()
                .map(|h| top_value(h, None, None))
                .unwrap_or(Value::Null);
            self.queued.push_back(event(
                "overview",
                &json!({ "top": top, "alerts": super::alerts_value(&self.state) }),
            ));
        }
        self.ticks += 1;
    }
}

/// `GET /events?sensor=&component=&after=`: Server-Sent Events. `components` (every component
/// with its counters) each second, `overview` (top sensors and open incidents) every two
/// seconds, and `points` (the verdicts of `sensor`, when given, past the `after`th) as
/// they come. Ends
/// after [`FEED_LIFETIME`]; at most [`MAX_FEEDS`] at once.
pub(crate) async fn feed(
    State(s): State<AdminState>,
    Query(q): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let permit = s.feeds.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_FEEDS} live feeds are open already; try again later"),
        )
    })?;
    let feed = Feed {
        state: s,
        sensor: q.sensor,
        component: q.component,
        seen: q.after,
        ticks: 0,
        started: Instant::now(),
        queued: VecDeque::new(),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.queued.pop_front() {
                return Some((Ok::<Event, Infallible>(e), f));
            }
            if f.started.elapsed() >= FEED_LIFETIME {
                return None;
            }
            if f.ticks > 0 {
                tokio::time::sleep(FEED_TICK).await;
            }
            f.fill();
        }
    });
    let mut response = (
        [(header::CACHE_CONTROL, "no-cache")],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response();
    // The connection stays busy while the feed runs (not closed as idle).
    response.extensions_mut().insert(super::server::Streaming);
    Ok(response)
}

/// A logs search, as `tidegauge logs` does.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct LogQuery {
    /// Least severe level shown (`error`, `warn`, `info`, `debug`, `trace`).
    pub level: Option<String>,
    /// Only lines of this component.
    pub component: Option<String>,
    /// Only lines containing this.
    pub text: Option<String>,
    /// Only lines newer than this (`15m`, `2h`).
    pub since: Option<String>,
    /// Only lines older than this (`5m`: up to five minutes ago).
    pub until: Option<String>,
    /// Most lines returned (the newest), 200 unless given, 5000 at most.
    pub limit: Option<usize>,
}

/// Where the logs are searched (the binary knows the log files).
pub trait LogSearch: Send + Sync {
    /// The lines matching `q`, oldest first, the newest `limit` of them, as JSON objects;
    /// an error a user can act on otherwise. Runs on a blocking thread.
    fn search(&self, q: &LogQuery, limit: usize) -> Result<Vec<Value>, String>;
}

/// `GET /logs?level=&component=&text=&since=&until=&limit=` (token needed: log lines
/// carry old and new parameter values).
pub(crate) async fn logs(
    State(s): State<AdminState>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, "reading the logs")?;
    let search = s.logs.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this process writes no log files to search".into(),
        )
    })?;
    let limit = q.limit.unwrap_or(200).min(5000);
    let lines = tokio::task::spawn_blocking(move || search.search(&q, limit))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(json!({ "lines": lines })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_the_policy() {
        for (name, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name}");
            let r = asset(name);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(
                r.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_has_no_inline_script_and_loads_nothing_from_elsewhere() {
        let html = std::str::from_utf8(ASSETS[0].2).unwrap();
        for tag in html.split("<script").skip(1) {
            let head = &tag[..tag.find('>').unwrap()];
            assert!(head.contains("src=\""), "inline script: {head}");
            assert!(
                tag[tag.find('>').unwrap() + 1..]
                    .trim_start()
                    .starts_with("</script>")
            );
        }
        for asset in ASSETS {
            let text = String::from_utf8_lossy(asset.2);
            for scheme in ["http://", "https://"] {
                // uPlot's licence and SVG namespace are the only URLs, never fetched.
                for (at, _) in text.match_indices(scheme) {
                    let rest = &text[at..(at + 40).min(text.len())];
                    assert!(
                        rest.starts_with("http://www.w3.org/")
                            || asset.0 == "uPlot.LICENSE"
                            || rest.starts_with("https://github.com/leeoniya"),
                        "{}: {rest}",
                        asset.0
                    );
                }
            }
        }
    }
}
