//! The API described in OpenAPI 3.1, written by hand (a handful of routes; no generator
//! dependency needed).

use axum::Json;
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_ok(description: &str, schema: Value) -> Value {
    json!({
        "200": {
            "description": description,
            "content": { "application/json": { "schema": schema } }
        }
    })
}

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    Json(description())
}

pub(crate) fn description() -> Value {
    let mut doc = routes();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in dashboard_paths() {
            paths.insert(path.into(), item);
        }
    }
    doc
}

fn query(name: &str, required: bool, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": required,
            "description": description, "schema": { "type": "string" } })
}

/// The dashboard and the routes it reads.
fn dashboard_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/ui",
            json!({ "get": { "summary": "The dashboard (HTML; its files under /ui/).",
            "responses": { "200": { "description": "The page.", "content": { "text/html": {} } } } } }),
        ),
        (
            "/sensors",
            json!({ "get": { "summary": "Sensors with a recent history (one series per detector and sensor) whose id contains `q`, with the store's bounds and counters.",
            "parameters": [query("q", false, "Text the sensor id contains (case-insensitive)."),
                           query("limit", false, "Most series listed (100; at most 1000).")],
            "responses": json_ok("`{history, matched, sensors}`.", json!({ "type": "object" })) } }),
        ),
        (
            "/sensors/top",
            json!({ "get": { "summary": "The series with the most anomalies in the last `window_s` seconds, then the highest score.",
            "parameters": [query("window_s", false, "Seconds looked back (60)."),
                           query("limit", false, "Most series listed (20).")],
            "responses": json_ok("`{window_s, sensors}`.", json!({ "type": "object" })) } }),
        ),
        (
            "/sensors/points",
            json!({ "get": { "summary": "A sensor's recent verdicts: time, value, the detector's statistic, score, flag.",
            "parameters": [query("sensor", true, "Sensor id."),
                           query("component", false, "Detector's component id (the first one when omitted)."),
                           query("after", false, "Only points after this count (the `total` of a previous answer).")],
            "responses": json_ok("`{component, sensor, statistic, total, points}`.", json!({ "type": "object" })) } }),
        ),
        (
            "/events",
            json!({ "get": { "summary": "Live feed, Server-Sent Events: `components` each second, `overview` (top sensors, open incidents) every two, `points` of `sensor` as they come. Ends after 10 minutes (EventSource reconnects); at most 16 at once.",
            "parameters": [query("sensor", false, "Sensor whose new points are sent."),
                           query("component", false, "Its detector."),
                           query("after", false, "Points the client has (a `total` it read); only later ones are sent.")],
            "responses": { "200": { "description": "The feed.", "content": { "text/event-stream": {} } } } } }),
        ),
        (
            "/logs",
            json!({ "get": { "summary": "Logs search, as `tidegauge logs`: the newest `limit` matching lines, oldest first.",
            "security": [{ "bearer": [] }],
            "parameters": [query("level", false, "Least severe level: error, warn, info, debug, trace."),
                           query("component", false, "Component id."),
                           query("text", false, "Text the line contains."),
                           query("since", false, "Newer than this long ago (`15m`)."),
                           query("until", false, "Older than this long ago (`5m`)."),
                           query("limit", false, "Most lines (200; at most 5000).")],
            "responses": json_ok("`{lines}`.", json!({ "type": "object" })) } }),
        ),
    ]
}

fn routes() -> Value {
    let id_param = json!({
        "name": "id", "in": "path", "required": true,
        "description": "Component id as written in the pipeline file.",
        "schema": { "type": "string" }
    });
    let mut patch_responses = json_ok(
        "The changes made, as recorded in the history.",
        json!({ "type": "object", "properties": { "changes": {
            "type": "array", "items": { "$ref": "#/components/schemas/Change" } } } }),
    );
    if let Some(m) = patch_responses.as_object_mut() {
        m.insert(
            "400".into(),
            error_response("The body is not a JSON object of parameters."),
        );
        m.insert("401".into(), error_response("No bearer token."));
        m.insert(
            "403".into(),
            error_response("Wrong token, or changes are disabled (no token configured)."),
        );
        m.insert("404".into(), error_response("No such component."));
        m.insert(
            "409".into(),
            error_response(
                "The parameter cannot be changed while running, or the component has stopped.",
            ),
        );
        m.insert("413".into(), error_response("The body is too large."));
        m.insert(
            "422".into(),
            error_response("The new value does not pass validation."),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tidegauge admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "What a running tidegauge pipeline is doing, and live changes of its tunable parameters. Changes, and reads of parameters and of the change history, need `Authorization: Bearer <token>`; health, components, topology, metrics and profile are open (they show counters, ids and field names, never a setting's value). `X-Tidegauge-Actor` names who makes a change."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Change": {
                    "type": "object",
                    "required": ["time", "component", "parameter", "old", "new", "actor"],
                    "properties": {
                        "time": { "type": "string", "format": "date-time" },
                        "component": { "type": "string" },
                        "parameter": { "type": "string" },
                        "old": {}, "new": {},
                        "actor": { "type": "string" }
                    }
                },
                "Param": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" }, "value": {}, "type": { "type": "string" },
                        "default": {}, "required": { "type": "boolean" },
                        "range": { "type": ["string", "null"] }, "doc": { "type": "string" },
                        "secret": { "type": "boolean" }, "tunable": { "type": "boolean" }
                    }
                }
            }
        },
        "paths": {
            "/health": { "get": { "summary": "Liveness, uptime and components running.",
                "responses": json_ok("Up.", json!({ "type": "object" })) } },
            "/components": { "get": { "summary": "Every component with its counters.",
                "responses": json_ok("Components in topological order.", json!({ "type": "array", "items": { "type": "object" } })) } },
            "/topology": { "get": { "summary": "The graph: nodes, and edges with the schema each carries.",
                "responses": json_ok("The graph.", json!({ "type": "object", "properties": {
                    "nodes": { "type": "array" }, "edges": { "type": "array" } } })) } },
            "/components/{id}/params": {
                "get": { "summary": "A component's parameters: value, type, default, range, doc, and whether it can be changed while running. Secrets show as `***`.",
                    "security": [{ "bearer": [] }],
                    "parameters": [id_param.clone()],
                    "responses": json_ok("Parameters.", json!({ "type": "object", "properties": {
                        "params": { "type": "array", "items": { "$ref": "#/components/schemas/Param" } } } })) },
                "patch": { "summary": "Change tunable parameters while running; validated like the pipeline file, recorded in the history.",
                    "security": [{ "bearer": [] }],
                    "parameters": [id_param, { "name": "X-Tidegauge-Actor", "in": "header", "required": false,
                        "description": "Who makes the change (recorded).", "schema": { "type": "string" } }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "additionalProperties": true,
                        "examples": [{ "threshold": 4.5 }] } } } },
                    "responses": patch_responses }
            },
            "/changes": { "get": { "summary": "The history of parameter changes, oldest first; it outlives restarts.",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "component", "in": "query", "required": false, "schema": { "type": "string" } }],
                "responses": json_ok("Changes.", json!({ "type": "array", "items": { "$ref": "#/components/schemas/Change" } })) } },
            "/metrics": { "get": { "summary": "Prometheus text exposition.",
                "responses": { "200": { "description": "Metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
            "/alerts": { "get": { "summary": "Incidents open now (from `alert` transforms), oldest first: key, incident id, start, latest anomaly, count, peak score, detector and reason.",
                "responses": json_ok("Open incidents: `{\"open\": [...]}`.", json!({ "type": "object" })) } },
            "/partitions": { "get": { "summary": "Kafka partitions each consumer-group member with partition state owns: position, lag, state size; its rebalances.",
                "responses": json_ok("Owned partitions per member: `{\"members\": [...]}`.", json!({ "type": "object" })) } },
            "/profile": { "get": { "summary": "Per-stage time: ns per event, share of the total, events per second.",
                "responses": json_ok("Profile.", json!({ "type": "object" })) } },
            "/openapi.json": { "get": { "summary": "This description.",
                "responses": json_ok("OpenAPI 3.1.", json!({ "type": "object" })) } }
        }
    })
}
