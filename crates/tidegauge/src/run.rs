//! `tidegauge run`: build, run until end of input or Ctrl-C, print the summary; with the
//! admin API, hot reload (SIGHUP or a change of the file), the profiler and progress bars.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tidegauge_api::{AdminState, ChangeLog, ChangeRecord, ProcessCounters};
use tidegauge_core::live::{self, LiveHandle, ReloadRequest, RunOptions, SensorHistory};
use tidegauge_core::metrics::{self, StageProfile};
use tidegauge_core::registry::ComponentKind;
use tidegauge_core::topology::{self, Pipeline, RunReport};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How to run.
pub struct RunArgs {
    /// Print nothing but errors.
    pub quiet: bool,
    /// Measure per-stage time and print it at the end.
    pub profile: bool,
    /// Reload when the pipeline file changes (SIGHUP always reloads).
    pub watch: bool,
    /// Where state (change history, logs) lives; `None` for the embedded pipeline.
    pub state_dir: Option<PathBuf>,
}

/// How often the pipeline file is looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(
    pipeline: Pipeline,
    origin: &str,
    file: Option<&Path>,
    args: RunArgs,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tg-io")
        .build()?;
    runtime.block_on(async move {
        let admin = pipeline.admin.clone().filter(|a| a.enabled);
        // Resolved before anything runs: an API that would serve beyond loopback without
        // a usable token does not start, and neither does the pipeline.
        let token = match admin
            .as_ref()
            .map(|a| a.start_token(&tidegauge_core::config::process_env))
            .transpose()
        {
            Ok(t) => t.flatten(),
            Err(e) => {
                ewriteln!("error: {origin}: [admin] {e}");
                return Ok(ExitCode::from(crate::EXIT_INVALID));
            }
        };
        let progress_total = if !args.quiet && std::io::stderr().is_terminal() {
            finite_input_bytes(&pipeline)
        } else {
            None
        };
        let built = match topology::build(pipeline).await {
            Ok(b) => b,
            Err(e) => {
                // The file was valid; what it names could not be opened or reached (a
                // server down, a missing file): a failure of this run, which a retry or a
                // service manager's restart may get past.
                ewriteln!("error: {origin}: {e}");
                return Ok(ExitCode::from(crate::EXIT_FAILED));
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let (reload_tx, reload_rx) = mpsc::channel(1);
        // The dashboard's recent verdicts per sensor, bounded by [admin] history_*.
        let history = admin
            .as_ref()
            .filter(|a| a.history_sensors > 0)
            .map(|a| Arc::new(SensorHistory::new(a.history_sensors, a.history_points)));
        let (live, run) = live::start(
            built,
            shutdown.clone(),
            RunOptions {
                profile: args.profile,
                reloads: Some(reload_rx),
                history: history.clone(),
            },
        );
        let run = tokio::spawn(run);
        let counters = Arc::new(ProcessCounters::default());
        let stop_services = CancellationToken::new();

        let changes = match &args.state_dir {
            Some(dir) => match ChangeLog::open(dir) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    ewriteln!(
                        "error: cannot open the change history in {}: {e}",
                        dir.display()
                    );
                    None
                }
            },
            None => None,
        };
        if let Some(admin) = admin {
            let Some(changes) = changes.clone() else {
                ewriteln!(
                    "error: the admin API needs a state directory for the change history; set [admin] state_dir"
                );
                shutdown.cancel();
                let _ = run.await;
                return Ok(ExitCode::from(crate::EXIT_INVALID));
            };
            if token.is_none() {
                let hint = match &admin.token_env {
                    Some(var) => format!("`{var}` is not set"),
                    None => "no token is configured".to_string(),
                };
                tracing::warn!(
                    "admin API: {hint}; parameter changes and reads of parameters and changes are refused"
                );
            }
            let address = admin
                .socket_addr()
                .unwrap_or_else(|| ([127, 0, 0, 1], 7878).into());
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => {
                    let bound = listener.local_addr().unwrap_or(address);
                    if !args.quiet {
                        ewriteln!("tidegauge: admin API on http://{bound}");
                    }
                    tracing::info!(address = %bound, "admin API listening");
                    let mut state =
                        AdminState::new(live.clone(), token, changes, counters.clone());
                    if let Some(h) = &history {
                        state = state.with_history(h.clone());
                    }
                    if let Some(dir) = &args.state_dir {
                        state = state.with_logs(Arc::new(crate::logs::LogDir(dir.join("logs"))));
                    }
                    tokio::spawn(tidegauge_api::serve(listener, state, stop_services.clone()));
                }
                Err(e) => {
                    ewriteln!("error: admin API: cannot listen on {address}: {e}");
                    shutdown.cancel();
                    let _ = run.await;
                    return Ok(ExitCode::from(crate::EXIT_FAILED));
                }
            }
        }
        if let Some(path) = file {
            tokio::spawn(watch_reloads(
                Hangups::listen(),
                path.to_path_buf(),
                args.watch,
                reload_tx,
                counters.clone(),
                changes.clone(),
                args.quiet,
                stop_services.clone(),
            ));
        }
        if let Some(total) = progress_total {
            tokio::spawn(show_progress(live.clone(), total, stop_services.clone()));
        }
        tracing::info!(pipeline = %origin, profile = args.profile, "pipeline started");
        if !args.quiet {
            ewriteln!("tidegauge: running {origin}; Ctrl-C stops it");
        }
        let report = match run.await {
            Ok(r) => r,
            Err(e) => anyhow::bail!("the pipeline stopped abnormally: {e}"),
        };
        stop_services.cancel();
        tracing::info!(
            pipeline = %origin,
            events = report.source_events(),
            anomalies = report.anomalies(),
            dead_lettered = report.dead_lettered(),
            failures = report.failures.len(),
            interrupted = report.interrupted,
            "pipeline {}",
            if report.interrupted { "stopped" } else { "finished" }
        );
        if !args.quiet {
            ewrite!("{}", summary(&report));
        }
        if args.profile {
            ewrite!("{}", profile_table(&metrics::profile(&report.components)));
        }
        for (id, e) in &report.failures {
            ewriteln!("error: component `{id}` failed: {e}");
        }
        Ok(if report.failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(crate::EXIT_FAILED)
        })
    })
}

/// First SIGINT/SIGTERM: orderly shutdown. Second: leave at once. Listening starts when
/// this is called, before the pipeline says it runs, so a Ctrl-C from then on stops it in
/// order.
#[cfg(unix)]
fn watch_signals(shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = signals else {
            tracing::warn!("cannot listen for signals; Ctrl-C will not stop the pipeline cleanly");
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        ewriteln!(
            "\ntidegauge: stopping: sources stop, stages flush, sinks close (Ctrl-C again to quit at once)"
        );
        shutdown.cancel();
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        ewriteln!("tidegauge: quitting without flushing");
        std::process::exit(130);
    }
}

#[cfg(not(unix))]
async fn watch_signals(shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = tokio::signal::ctrl_c().await;
    std::process::exit(130);
}

/// SIGHUP, listened for from creation on (unix; elsewhere it never comes).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn listen() -> Self {
        Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut()
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Reloads on SIGHUP and, with `watch`, when the file's content changes.
#[allow(clippy::too_many_arguments)]
async fn watch_reloads(
    mut hangups: Hangups,
    path: PathBuf,
    watch: bool,
    reloads: mpsc::Sender<ReloadRequest>,
    counters: Arc<ProcessCounters>,
    changes: Option<Arc<ChangeLog>>,
    quiet: bool,
    stop: CancellationToken,
) {
    let mut seen = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangups.next() => "SIGHUP",
            _ = tick.tick(), if watch => {
                let now = std::fs::read(&path).ok();
                if now.is_none() || now == seen {
                    continue;
                }
                "file changed"
            }
        };
        seen = std::fs::read(&path).ok();
        reload_once(&path, why, &reloads, &counters, changes.as_deref(), quiet).await;
    }
}

/// Reads, validates and (when valid) applies the pipeline file.
async fn reload_once(
    path: &Path,
    why: &str,
    reloads: &mpsc::Sender<ReloadRequest>,
    counters: &ProcessCounters,
    changes: Option<&ChangeLog>,
    quiet: bool,
) {
    let origin = path.display().to_string();
    let reject = |reason: String| {
        counters.reloads_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::error!(file = %origin, trigger = why, "reload rejected, the running pipeline goes on: {reason}");
        ewriteln!(
            "tidegauge: reload of {origin} rejected ({why}); the running pipeline goes on: {reason}"
        );
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return reject(format!("cannot read the file: {e}")),
    };
    let pipeline = match topology::load(&text, &tidegauge_core::config::process_env) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                let place = e.line.map(|l| format!(":{l}")).unwrap_or_default();
                tracing::error!(file = %origin, "invalid pipeline: {origin}{place}: {e}");
            }
            return reject(format!("{} problem(s) found", errors.len()));
        }
    };
    let (reply, answer) = oneshot::channel();
    if reloads
        .send(ReloadRequest { pipeline, reply })
        .await
        .is_err()
    {
        return;
    }
    match answer.await {
        Ok(Ok(summary)) => {
            counters.reloads_applied.fetch_add(1, Ordering::Relaxed);
            if let Some(log) = changes
                && !summary.changes.is_empty()
            {
                let records: Vec<ChangeRecord> = summary
                    .changes
                    .iter()
                    .cloned()
                    .map(|c| ChangeRecord::now(c, "reload"))
                    .collect();
                counters
                    .parameter_changes
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                if let Err(e) = log.append(&records) {
                    tracing::error!("cannot record reload changes: {e}");
                }
            }
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(", ")
                }
            };
            let text = if summary.is_noop() {
                "nothing changed".to_string()
            } else {
                format!(
                    "kept: {}; retuned: {}; rebuilt: {}; added: {}; removed: {}",
                    list(&summary.kept),
                    list(&summary.retuned),
                    list(&summary.rebuilt),
                    list(&summary.added),
                    list(&summary.removed)
                )
            };
            tracing::info!(file = %origin, trigger = why, "reloaded: {text}");
            if !quiet {
                ewriteln!("tidegauge: reloaded {origin} ({why}): {text}");
            }
        }
        Ok(Err(reason)) => reject(reason),
        Err(_) => {}
    }
}

/// Total size of the files that `file` sources read once (not followed), when every
/// source is one: what a progress bar can count towards.
fn finite_input_bytes(p: &Pipeline) -> Option<u64> {
    let sources: Vec<_> = p
        .nodes
        .iter()
        .filter(|n| n.kind == ComponentKind::Source)
        .collect();
    let mut total = 0;
    for s in sources {
        if s.type_name != "file" || s.settings.get("follow").and_then(|f| f.as_bool()) == Some(true)
        {
            return None;
        }
        for pattern in s.settings.get("paths")?.as_array()? {
            for path in glob::glob(pattern.as_str()?).ok()?.flatten() {
                total += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (total > 0).then_some(total)
}

/// A progress bar over the bytes the sources have read (terminal only).
async fn show_progress(live: LiveHandle, total: u64, stop: CancellationToken) {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let snap = live.snapshot();
        let (bytes, events) = snap
            .iter()
            .filter(|c| c.kind == ComponentKind::Source)
            .fold((0, 0), |(b, e), c| (b + c.bytes_in, e + c.events_out));
        bar.set_position(bytes.min(total));
        let secs = live.uptime().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{} events ({}/s)",
            thousands(events),
            thousands((events as f64 / secs) as u64)
        ));
    }
    bar.finish_and_clear();
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

/// The profiler's table: per stage, ns per event, share of the busy time, events/s.
pub fn profile_table(stages: &[StageProfile]) -> String {
    let width = stages.iter().map(|s| s.id.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "\nprofile (busy = running time less waits for input and for room downstream)\n  {:<width$}  {:<9}  {:>12}  {:>10}  {:>7}  {:>12}\n",
        "stage", "type", "events", "ns/event", "share", "events/s"
    );
    for s in stages {
        out.push_str(&format!(
            "  {:<width$}  {:<9}  {:>12}  {:>10.1}  {:>6.1}%  {:>12}\n",
            s.id,
            s.type_name,
            thousands(s.events),
            s.ns_per_event,
            s.share * 100.0,
            thousands(s.events_per_sec as u64)
        ));
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
