//! `tidegauge top`: a live view of a running pipeline, through its admin API. Per
//! component: events/s in and out, latency, queue fill, errors, breaker; then the open
//! alerts (incidents of `alert` transforms) and the latest anomalies; with a `kafka`
//! source that keeps partition state, the partitions this instance owns (position, lag,
//! state size). `q` or Esc quits.

use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use serde_json::Value;
use tidegauge_api::client::AdminClient;

/// One poll of the API.
struct Poll {
    at: Instant,
    health: Value,
    components: Vec<Value>,
    /// Open incidents (`GET /alerts`).
    alerts: Vec<Value>,
    /// Consumer-group members with partition state and what they own
    /// (`GET /partitions`).
    members: Vec<Value>,
}

/// What is drawn: the last poll, rates against the one before, or why there is none.
#[derive(Default)]
struct View {
    address: String,
    last: Option<Poll>,
    previous: Option<Poll>,
    error: Option<String>,
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn rate(now: &Poll, before: Option<&Poll>, id: &str, key: &str) -> Option<f64> {
    let before = before?;
    let secs = now.at.duration_since(before.at).as_secs_f64();
    let find = |p: &Poll| {
        p.components
            .iter()
            .find(|c| s(c, "id") == id)
            .map(|c| u(c, key))
    };
    let (a, b) = (find(before)?, find(now)?);
    (secs > 0.0).then(|| b.saturating_sub(a) as f64 / secs)
}

fn human_rate(r: Option<f64>) -> String {
    match r {
        None => "…".into(),
        Some(r) if r >= 1e6 => format!("{:.2}M", r / 1e6),
        Some(r) if r >= 1e4 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{r:.0}"),
    }
}

fn human_ns(ns: u64) -> String {
    match ns {
        0 => "-".into(),
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0}µs", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}

/// Red for trouble, grey for what stopped; with `NO_COLOR`, bold and dim instead.
fn alarm() -> Style {
    if crate::colours(true) {
        Style::new().fg(Color::Red)
    } else {
        Style::new().add_modifier(Modifier::BOLD)
    }
}

fn muted() -> Style {
    if crate::colours(true) {
        Style::new().fg(Color::DarkGray)
    } else {
        Style::new().add_modifier(Modifier::DIM)
    }
}

/// One line per owned partition: member, topic/partition, position, high watermark,
/// lag, state size.
fn partition_lines(members: &[Value]) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for m in members {
        let id = s(m, "component_id").to_string();
        let parts = m
            .get("partitions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if parts.is_empty() {
            lines.push(Line::from(format!("{id:<12} owns no partition")).style(muted()));
        }
        let known = |v: i64| {
            if v < 0 {
                "-".to_string()
            } else {
                v.to_string()
            }
        };
        for p in parts {
            let i = |k: &str| p.get(k).and_then(Value::as_i64).unwrap_or(-1);
            lines.push(Line::from(format!(
                "{id:<12} {:<20} position {:>10}  high {:>10}  lag {:>8}  state {}",
                format!("{}/{}", s(&p, "topic"), i("partition")),
                known(i("position")),
                known(i("high_watermark")),
                known(i("lag")),
                human_bytes(u(&p, "state_bytes")),
            )));
        }
        lines.push(
            Line::from(format!(
                "{id:<12} {} assignments (last {} ms, restores included), {} revocations",
                u(m, "assignments"),
                u(m, "last_assign_ms"),
                u(m, "revocations"),
            ))
            .style(muted()),
        );
    }
    lines
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn draw(frame: &mut Frame, view: &View) {
    let partitions = view
        .last
        .as_ref()
        .map(|p| partition_lines(&p.members))
        .unwrap_or_default();
    // The partitions pane only when the instance has a partition-state source.
    let pane = if partitions.is_empty() {
        0
    } else {
        (partitions.len() as u16 + 2).min(10)
    };
    let [head, table, owned, open_alerts, anomalies, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(pane),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    if pane > 0 {
        frame.render_widget(
            Paragraph::new(partitions).block(Block::bordered().title(" partitions owned ")),
            owned,
        );
    }

    let title = match (&view.last, &view.error) {
        (_, Some(e)) => format!("tidegauge top  {}  error: {e}", view.address),
        (Some(p), None) => format!(
            "tidegauge top  {}  up {}  {} components, {} running{}",
            view.address,
            humantime::format_duration(Duration::from_secs(
                p.health
                    .get("uptime_seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0) as u64
            )),
            u(&p.health, "components"),
            u(&p.health, "running"),
            if p.health.get("profiling") == Some(&Value::Bool(true)) {
                "  (profiling)"
            } else {
                ""
            }
        ),
        (None, None) => format!("tidegauge top  {}  connecting…", view.address),
    };
    frame.render_widget(
        Paragraph::new(title).style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );

    let header = Row::new([
        "component",
        "kind",
        "type",
        "in/s",
        "out/s",
        "latency",
        "queue",
        "errors",
        "dead",
        "anomalies",
        "breaker",
    ])
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows: Vec<Row> = view
        .last
        .as_ref()
        .map(|p| {
            p.components
                .iter()
                .map(|c| {
                    let id = s(c, "id");
                    let latency = c
                        .get("latency")
                        .map(|l| u(l, "sum_ns").checked_div(u(l, "count")).unwrap_or(0))
                        .unwrap_or(0);
                    let queue = c
                        .get("queue")
                        .filter(|q| !q.is_null())
                        .map(|q| format!("{}/{}", u(q, "queued"), u(q, "capacity")))
                        .unwrap_or_else(|| "-".into());
                    let breaker = c
                        .get("breaker")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_string();
                    let errors = u(c, "errors");
                    let style = if errors > 0 || breaker == "open" {
                        alarm()
                    } else if c.get("running") == Some(&Value::Bool(false)) {
                        muted()
                    } else {
                        Style::new()
                    };
                    Row::new([
                        Cell::from(id.to_string()),
                        Cell::from(s(c, "kind").to_string()),
                        Cell::from(s(c, "type_name").to_string()),
                        Cell::from(human_rate(rate(p, view.previous.as_ref(), id, "events_in"))),
                        Cell::from(human_rate(rate(
                            p,
                            view.previous.as_ref(),
                            id,
                            "events_out",
                        ))),
                        Cell::from(human_ns(latency)),
                        Cell::from(queue),
                        Cell::from(errors.to_string()),
                        Cell::from(u(c, "dead_lettered").to_string()),
                        Cell::from(u(c, "anomalies").to_string()),
                        Cell::from(breaker),
                    ])
                    .style(style)
                })
                .collect()
        })
        .unwrap_or_default();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" components ")),
        table,
    );

    let open: Vec<Line> = view
        .last
        .as_ref()
        .map(|p| {
            p.alerts
                .iter()
                .map(|a| {
                    let t = a.get("starts_at_ms").and_then(Value::as_i64).unwrap_or(0);
                    let since = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(t.max(0) as u64),
                    );
                    let flap = if a.get("flapping") == Some(&Value::Bool(true)) {
                        " flapping"
                    } else {
                        ""
                    };
                    Line::from(format!(
                        "since {since}  {:<10} {:<12} {:>6} anomalies  peak {:.2}{flap}  {}",
                        s(a, "component_id"),
                        s(a, "key"),
                        u(a, "anomalies"),
                        a.get("peak_score").and_then(Value::as_f64).unwrap_or(0.0),
                        s(a, "reason")
                    ))
                    .style(alarm())
                })
                .take(open_alerts.height.saturating_sub(2) as usize)
                .collect()
        })
        .unwrap_or_default();
    let count = view.last.as_ref().map_or(0, |p| p.alerts.len());
    frame.render_widget(
        Paragraph::new(open).block(Block::bordered().title(format!(" open alerts: {count} "))),
        open_alerts,
    );

    let mut recent: Vec<(u64, String)> = view
        .last
        .as_ref()
        .map(|p| {
            p.components
                .iter()
                .flat_map(|c| {
                    let id = s(c, "id").to_string();
                    c.get("recent_anomalies")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |a| {
                            let t = u(&a, "time_ms");
                            let when = humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_millis(t),
                            );
                            (
                                t,
                                format!(
                                    "{when}  {:<10} {:<12} {}",
                                    id,
                                    s(&a, "key"),
                                    s(&a, "reason")
                                ),
                            )
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    recent.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    let lines: Vec<Line> = recent
        .into_iter()
        .take(anomalies.height.saturating_sub(2) as usize)
        .map(|(_, l)| Line::from(l))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" recent anomalies ")),
        anomalies,
    );
    frame.render_widget(Paragraph::new("q quits").style(muted()), foot);
}

async fn poll(client: &AdminClient) -> Result<Poll, String> {
    let health = client
        .get_json("/health")
        .await
        .map_err(|e| e.to_string())?;
    let components = client
        .get_json("/components")
        .await
        .map_err(|e| e.to_string())?;
    // An older binary has no alerts route: then there are none to show.
    let alerts = client
        .get_json("/alerts")
        .await
        .ok()
        .and_then(|v| v.get("open").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    // Likewise partitions: none without the route or without a partition-state source.
    let members = client
        .get_json("/partitions")
        .await
        .ok()
        .and_then(|v| v.get("members").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    Ok(Poll {
        at: Instant::now(),
        health,
        components: components.as_array().cloned().unwrap_or_default(),
        alerts,
        members,
    })
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub fn run(address: &str, interval: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = AdminClient::new(address);
    let mut view = View {
        address: address.to_string(),
        ..View::default()
    };
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut next_poll = Instant::now();
        loop {
            if Instant::now() >= next_poll {
                match runtime.block_on(poll(&client)) {
                    Ok(p) => {
                        view.previous = view.last.take();
                        view.last = Some(p);
                        view.error = None;
                    }
                    Err(e) => view.error = Some(e),
                }
                next_poll = Instant::now() + interval;
                terminal.draw(|f| draw(f, &view))?;
            }
            let wait = next_poll.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                            return Ok(());
                        }
                    }
                    Event::Resize(..) => {
                        terminal.draw(|f| draw(f, &view))?;
                    }
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn screen(members: Vec<Value>) -> String {
        let view = View {
            address: "127.0.0.1:9598".into(),
            last: Some(Poll {
                at: Instant::now(),
                health: json!({ "components": 3, "running": 3 }),
                components: Vec::new(),
                alerts: Vec::new(),
                members,
            }),
            previous: None,
            error: None,
        };
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
        terminal.draw(|f| draw(f, &view)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn owned_partitions_are_shown_with_lag_and_state_size() {
        let members = vec![json!({
            "component_id": "readings",
            "partitions": [
                { "topic": "w1", "partition": 4, "position": 1200, "high_watermark": 1500,
                  "lag": 300, "state_bytes": 171_435 },
                { "topic": "w1", "partition": 5, "position": -1, "high_watermark": -1,
                  "lag": -1, "state_bytes": 0 }
            ],
            "assignments": 2, "revocations": 1, "last_assign_ms": 254, "last_revoke_ms": 1
        })];
        let text = screen(members);
        assert!(text.contains("partitions owned"), "{text}");
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
                .to_string()
        };
        let p4 = line("w1/4");
        assert!(p4.contains("readings"), "{p4}");
        assert!(p4.contains("1200") && p4.contains("1500"), "{p4}");
        assert!(p4.contains("lag      300"), "{p4}");
        assert!(p4.contains("167.4 KiB"), "{p4}");
        let p5 = line("w1/5");
        assert!(p5.contains("lag        -"), "{p5}");
        assert!(line("assignments").contains("2 assignments (last 254 ms"));
    }

    #[test]
    fn without_a_partition_state_source_there_is_no_partitions_pane() {
        assert!(!screen(Vec::new()).contains("partitions owned"));
    }
}
