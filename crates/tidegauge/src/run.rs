//! `tidegauge run`: build, run until end of input or Ctrl-C, print the summary.

use std::process::ExitCode;
use std::time::Duration;

use tidegauge_core::registry::ComponentKind;
use tidegauge_core::topology::{self, Pipeline, RunReport};
use tokio_util::sync::CancellationToken;

pub fn run(pipeline: Pipeline, origin: &str, quiet: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tg-io")
        .build()?;
    runtime.block_on(async move {
        let built = match topology::build(pipeline).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {origin}: {e}");
                return Ok(ExitCode::from(crate::EXIT_INVALID));
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        if !quiet {
            eprintln!("tidegauge: running {origin}; Ctrl-C stops it");
        }
        let report = built.run(shutdown).await;
        if !quiet {
            eprint!("{}", summary(&report));
        }
        for (id, e) in &report.failures {
            eprintln!("error: component `{id}` failed: {e}");
        }
        Ok(if report.failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(crate::EXIT_FAILED)
        })
    })
}

/// First SIGINT/SIGTERM: orderly shutdown. Second: leave at once.
#[cfg(unix)]
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals; Ctrl-C will not stop the pipeline cleanly");
        return;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    eprintln!(
        "\ntidegauge: stopping: sources stop, stages flush, sinks close (Ctrl-C again to quit at once)"
    );
    shutdown.cancel();
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    eprintln!("tidegauge: quitting without flushing");
    std::process::exit(130);
}

#[cfg(not(unix))]
async fn watch_signals(shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = tokio::signal::ctrl_c().await;
    std::process::exit(130);
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The end-of-run table: per stage in/out, errors, dead letters, anomalies; then totals.
pub fn summary(r: &RunReport) -> String {
    let mut out = String::new();
    let secs = r.elapsed.as_secs_f64();
    let how = if r.interrupted { "stopped" } else { "finished" };
    out.push_str(&format!(
        "\ntidegauge: {how} after {}\n",
        format_duration(r.elapsed)
    ));
    let width = r
        .components
        .iter()
        .map(|c| c.id.len())
        .max()
        .unwrap_or(4)
        .max(9);
    out.push_str(&format!(
        "  {:<width$}  {:<9}  {:<9}  {:>12}  {:>12}  {:>7}  {:>13}  {:>9}\n",
        "component",
        "kind",
        "type",
        "events in",
        "events out",
        "errors",
        "dead-lettered",
        "anomalies"
    ));
    for c in &r.components {
        let dash = |show: bool, v: u64| if show { thousands(v) } else { "-".into() };
        out.push_str(&format!(
            "  {:<width$}  {:<9}  {:<9}  {:>12}  {:>12}  {:>7}  {:>13}  {:>9}\n",
            c.id,
            c.kind.name(),
            c.type_name,
            thousands(c.events_in),
            dash(
                c.kind != ComponentKind::Sink || c.events_out > 0,
                c.events_out
            ),
            thousands(c.errors),
            thousands(c.dead_lettered),
            dash(c.kind == ComponentKind::Transform, c.anomalies),
        ));
    }
    let events = r.source_events();
    let rate = if secs > 0.0 {
        events as f64 / secs
    } else {
        0.0
    };
    out.push_str(&format!(
        "  {} events in {:.2} s ({} events/s), {} anomalies, {} dead-lettered\n",
        thousands(events),
        secs,
        thousands(rate as u64),
        thousands(r.anomalies()),
        thousands(r.dead_lettered())
    ));
    if let Some(c) = &r.checkpoints {
        out.push_str(&format!(
            "  checkpoints: {} taken, last is #{}\n",
            c.completed, c.last_id
        ));
        for e in &c.errors {
            out.push_str(&format!("  checkpoint problem: {e}\n"));
        }
    }
    out
}

fn format_duration(d: Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
