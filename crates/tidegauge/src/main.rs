//! `tidegauge`: streaming analytics for sensor and machine telemetry.

/// `writeln!` to standard error. A standard error that cannot be written (a closed
/// pipe) is ignored: nothing else could be told, and the work goes on.
macro_rules! ewriteln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `write!` to standard error, ignoring a standard error that cannot be written.
macro_rules! ewrite {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod generate;
mod init;
mod logs;
mod run;
mod score;
mod top;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tidegauge_core::ConfigError;
use tidegauge_core::admin::AdminConfig;
use tidegauge_core::describe;
use tidegauge_core::registry::{self, ComponentKind};
use tidegauge_core::topology::{self, Pipeline};

/// The pipeline `tidegauge run` uses when given no file.
pub const DEFAULT_PIPELINE: &str = include_str!("../../../examples/default.toml");

/// Exit status: a pipeline ran (or was being built to run) and failed: a component
/// could not start (its server unreachable, its file unreadable) or failed while running.
/// Running it again may succeed; a service manager may restart it.
const EXIT_FAILED: u8 = 1;
/// Exit status: anything else went wrong: bad usage, a pipeline file unreadable or
/// invalid, a file or admin API another command needs unavailable.
const EXIT_INVALID: u8 = 2;

/// `-V`: version and commit; `--version` adds the connector features and the target
/// (from build.rs).
const VERSION: &str = env!("TIDEGAUGE_VERSION_SHORT");
const LONG_VERSION: &str = include_str!(concat!(env!("OUT_DIR"), "/long_version.txt"));

#[derive(Parser)]
#[command(
    name = "tidegauge",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Streaming analytics for sensor and machine telemetry, with per-sensor anomaly detection.",
    long_about = "Streaming analytics for sensor and machine telemetry, with per-sensor anomaly detection.\n\n\
A pipeline is a TOML file of sources -> transforms -> sinks. `tidegauge run` with no file runs \
the embedded default: a simulated sensor fleet through a z-score detector, anomalies printed \
as they occur. `tidegauge init` writes a commented pipeline to start from.\n\n\
Output goes to standard output, errors and logs to standard error. Colours appear only on a \
terminal, and never when NO_COLOR is set.\n\n\
Exit status: 0 ok (also when the reader of the output goes away, as with `| head`), \
1 a pipeline ran and failed (a component could not start or failed while running), \
2 usage or configuration error (bad arguments, a pipeline file unreadable or invalid, \
an input another command needs unavailable).",
    after_help = "Examples:\n  tidegauge run                          # the embedded default; Ctrl-C stops it\n  tidegauge init --source mqtt --detector mad --sink jsonl -o pipeline.toml\n  tidegauge check pipeline.toml          # validate without running\n  tidegauge describe zscore              # parameters of a component\n  W1_INPUT=in.jsonl W1_OUTPUT=out.jsonl tidegauge run examples/w1.toml"
)]
struct Cli {
    /// Log filter (`error`, `warn`, `info`, `debug`, or per-module directives); also read from TIDEGAUGE_LOG.
    #[arg(long, global = true, env = "TIDEGAUGE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its input ends or Ctrl-C; prints a summary at the end.
    Run {
        /// Pipeline file. Without one, runs the embedded default pipeline.
        pipeline: Option<PathBuf>,
        /// Print the pipeline's graph before running.
        #[arg(long)]
        show_graph: bool,
        /// Do not print the summary at the end.
        #[arg(long, short)]
        quiet: bool,
        /// Measure per-stage time (ns/event, share, events/s); printed at the end and
        /// served at the admin API's /profile.
        #[arg(long)]
        profile: bool,
        /// Do not reload when the pipeline file changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
        /// Directory for the change history and log files (default: `[admin] state_dir`,
        /// else `<pipeline>.state` beside the pipeline file).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Start over: remove what earlier runs left in the `[checkpoint]` directory
        /// (checkpoints, transform state, acknowledged positions) before running. Needed
        /// when the checkpoint is damaged beyond the ones kept, its manifest is missing,
        /// or it was taken by another pipeline or on other input (the run refuses to
        /// start then, exit status 1).
        #[arg(long)]
        reset_state: bool,
    },
    /// Validate a pipeline without running it: every problem, each with its place.
    Check {
        /// Pipeline file.
        pipeline: PathBuf,
    },
    /// List every source, transform and sink with a one-line description.
    Components {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a component's parameters: type, default, allowed range, documentation.
    Describe {
        /// Component type, e.g. `zscore`, `file`, `jsonl`.
        name: String,
        /// Only the component of this kind (when a name is both a source and a sink).
        #[arg(long, value_parser = ["source", "transform", "sink"])]
        kind: Option<String>,
        /// Print the component's JSON Schema instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of pipeline files (for editor completion).
    Schema,
    /// Write a commented pipeline for a source, a detector and a sink, that `check`
    /// accepts as written.
    ///
    /// Every parameter of the chosen components is listed with its documentation:
    /// required ones set to an example value to replace, the others commented out at
    /// their default. Between the detector and the sink a filter passes only anomalies
    /// (--all-events leaves it out).
    #[command(
        after_help = "Examples:\n  tidegauge init > pipeline.toml                       # simulate -> zscore -> stdout\n  tidegauge init --source mqtt --detector mad --sink postgres -o plant.toml\n  tidegauge check plant.toml"
    )]
    Init {
        /// Source type (`tidegauge components` lists them).
        #[arg(long, default_value = "simulate", value_parser = clap::builder::PossibleValuesParser::new(init::source_names()))]
        source: String,
        /// Detector type: a transform that judges each reading.
        #[arg(long, default_value = "zscore", value_parser = clap::builder::PossibleValuesParser::new(init::detector_names()))]
        detector: String,
        /// Sink type.
        #[arg(long, default_value = "stdout", value_parser = clap::builder::PossibleValuesParser::new(init::sink_names()))]
        sink: String,
        /// Deliver every event with its verdict, not only anomalies.
        #[arg(long)]
        all_events: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace the --output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Show the history of parameter changes of a pipeline (who changed what, when).
    Changes {
        /// Pipeline file (its state directory holds the history).
        pipeline: PathBuf,
        /// State directory, when not the pipeline's own.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Only changes of this component.
        #[arg(long)]
        component: Option<String>,
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Query the structured logs of a pipeline's runs.
    Logs {
        /// Pipeline file (its state directory holds the logs).
        pipeline: PathBuf,
        /// State directory, when not the pipeline's own.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Least severe level shown: error, warn, info, debug, trace.
        #[arg(long)]
        level: Option<tracing::Level>,
        /// Only lines about this component.
        #[arg(long)]
        component: Option<String>,
        /// Only lines newer than this, e.g. `10m`, `2h`, `1day`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Only lines containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Live view of a running pipeline through its admin API: events/s, latency, queue
    /// fill, errors, breakers, recent anomalies.
    Top {
        /// The admin API's address.
        #[arg(long, env = "TIDEGAUGE_ADMIN", default_value = tidegauge_core::admin::DEFAULT_ADDRESS)]
        address: String,
        /// Time between updates, e.g. `1s`, `500ms`.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Score recorded data with a detector: one verdict per row, written as CSV.
    ///
    /// Each row's value columns are judged as separate channels by the same transform a
    /// pipeline would run (state per channel, and per key with --key-column); the row's
    /// anomaly_score is the highest of its channels', and it is an anomaly when at least
    /// --min-channels of them are. Every file starts from fresh state. For each input
    /// the output directory gets a CSV under the same relative path with the input's
    /// time column, anomaly_score and is_anomaly (0/1), same rows, same order.
    #[command(
        after_help = "Example (SKAB):\n  tidegauge score --detector zscore --set window=100 --delimiter ';' \\\n      --ignore-columns anomaly,changepoint --out pred data/skab/valve1 data/skab/valve2 data/skab/other"
    )]
    Score(score::ScoreArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Install (the .deb package does this for bash, zsh and fish):\n  tidegauge completions bash > ~/.local/share/bash-completion/completions/tidegauge\n  tidegauge completions zsh  > ~/.zfunc/_tidegauge          # with fpath+=(~/.zfunc)\n  tidegauge completions fish > ~/.config/fish/completions/tidegauge.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write a page per command into a directory.
    #[command(after_help = "Example:\n  tidegauge man | man -l -")]
    Man {
        /// Write tidegauge.1 and a tidegauge-COMMAND.1 per command into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command, &cli.log) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing is wrong (ripgrep).
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            ewriteln!("error: {e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Whether output to a stream may be coloured: only a terminal, and never when
/// `NO_COLOR` is set to something (<https://no-color.org>).
fn colours(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether `e` comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Level of what goes into log files (the terminal gets `--log`).
const FILE_LOG_LEVEL: &str = "info";

/// Where a pipeline file's state (change history, logs) lives: `--state-dir`, else
/// `[admin] state_dir`, else `<stem>.state` beside the file.
fn state_dir(file: &Path, given: Option<PathBuf>, admin: Option<&AdminConfig>) -> PathBuf {
    given
        .or_else(|| admin.and_then(|a| a.state_dir.clone()))
        .unwrap_or_else(|| {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into());
            file.with_file_name(format!("{stem}.state"))
        })
}

/// The state directory of a pipeline file, read without validating the whole pipeline
/// (history and logs stay readable while the file is broken).
fn state_dir_of(file: &Path, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if given.is_some() {
        return Ok(state_dir(file, given, None));
    }
    let (_, text) = read_pipeline(Some(file))?;
    let admin = tidegauge_core::config::load(&text, &tidegauge_core::config::process_env)
        .ok()
        .and_then(|c| c.admin);
    Ok(state_dir(file, None, admin.as_ref()))
}

fn dispatch(command: Command, log: &str) -> anyhow::Result<ExitCode> {
    // The component registrations live in the components crate; touching it keeps it
    // linked in.
    let _ = tidegauge_components::registered_types;
    let _guard = match &command {
        Command::Run { .. } => None,
        _ => Some(logs::init(log, None, FILE_LOG_LEVEL)),
    };
    // Written with `writeln!` rather than `println!`, so that a closed pipe is an error
    // to return (and end quietly on), not a panic.
    let mut out = std::io::stdout().lock();
    match command {
        Command::Run {
            pipeline,
            show_graph,
            quiet,
            profile,
            no_watch,
            state_dir: given,
            reset_state,
        } => {
            let (origin, text) = read_pipeline(pipeline.as_deref())?;
            let loaded = topology::load(&text, &tidegauge_core::config::process_env);
            let state = pipeline.as_deref().map(|f| {
                state_dir(
                    f,
                    given,
                    loaded.as_ref().ok().and_then(|p| p.admin.as_ref()),
                )
            });
            let _guard = logs::init(
                log,
                state.as_ref().map(|d| d.join("logs")).as_deref(),
                FILE_LOG_LEVEL,
            );
            let p = match loaded {
                Ok(p) => p,
                Err(errors) => {
                    report(&origin, &errors);
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            if show_graph {
                ewrite!("{}", p.describe());
            }
            if reset_state {
                match &p.checkpoint {
                    Some(c) => match tidegauge_core::checkpoint::reset(c) {
                        Ok(n) => {
                            tracing::warn!(
                                "--reset-state: removed {n} file(s) of earlier runs from {}; starting over",
                                c.dir.display()
                            );
                        }
                        Err(e) => {
                            ewriteln!("error: --reset-state: {e}");
                            return Ok(ExitCode::from(EXIT_FAILED));
                        }
                    },
                    None => tracing::warn!(
                        "--reset-state: {origin} has no [checkpoint] table; nothing to reset"
                    ),
                }
            }
            drop(out);
            let result = run::run(
                p,
                &origin,
                pipeline.as_deref(),
                run::RunArgs {
                    quiet,
                    profile,
                    watch: !no_watch,
                    state_dir: state,
                },
            );
            // The pipeline was built or running when this happened: a failure of the run.
            result.or_else(|e| {
                ewriteln!("error: {e:#}");
                Ok(ExitCode::from(EXIT_FAILED))
            })
        }
        Command::Changes {
            pipeline,
            state_dir: given,
            component,
            json,
        } => {
            let dir = state_dir_of(&pipeline, given)?;
            let path = dir.join(tidegauge_api::changes::FILE_NAME);
            let all = tidegauge_api::changes::read(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let shown: Vec<_> = all
                .into_iter()
                .filter(|r| component.as_ref().is_none_or(|c| &r.component == c))
                .collect();
            if json {
                for r in &shown {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else if shown.is_empty() {
                writeln!(out, "no parameter changes recorded in {}", path.display())?;
            } else {
                writeln!(
                    out,
                    "{:<24}  {:<14}  {:<12}  {:>12}  {:>12}  actor",
                    "time", "component", "parameter", "old", "new"
                )?;
                for r in &shown {
                    writeln!(
                        out,
                        "{:<24}  {:<14}  {:<12}  {:>12}  {:>12}  {}",
                        r.time, r.component, r.parameter, r.old, r.new, r.actor
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            pipeline,
            state_dir: given,
            level,
            component,
            since,
            grep,
            json,
        } => {
            let dir = state_dir_of(&pipeline, given)?.join("logs");
            let q = logs::Query {
                level,
                component,
                since,
                until: None,
                grep,
            };
            let shown = logs::query(&dir, &q, json, &mut out)?;
            if shown == 0 {
                ewriteln!("no log lines match (logs in {})", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Top { address, interval } => {
            drop(out);
            top::run(&address, interval)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { pipeline } => {
            let (origin, text) = read_pipeline(Some(&pipeline))?;
            match load_or_report(&origin, &text) {
                None => Ok(ExitCode::from(EXIT_INVALID)),
                Some(p) => {
                    // Inputs that are there but cannot be read are errors; missing ones
                    // may appear before the pipeline runs (it is often checked first).
                    let (unreadable, missing) = topology::check_inputs(&p);
                    if !unreadable.is_empty() {
                        report(&origin, &unreadable);
                        return Ok(ExitCode::from(EXIT_INVALID));
                    }
                    for e in &missing {
                        let at = e.line.map(|l| format!(":{l}")).unwrap_or_default();
                        ewriteln!(
                            "warning: {origin}{at}: {e} (yet); `run` fails unless it exists by then"
                        );
                    }
                    writeln!(
                        out,
                        "{origin}: ok ({} sources, {} transforms, {} sinks)",
                        p.count(ComponentKind::Source),
                        p.count(ComponentKind::Transform),
                        p.count(ComponentKind::Sink)
                    )?;
                    write!(out, "{}", p.describe())?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Components { json } => {
            let all = registry::all();
            if json {
                let list: Vec<_> = all
                    .iter()
                    .map(|d| serde_json::json!({"name": d.type_name, "kind": d.kind, "summary": d.summary()}))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for kind in [
                    ComponentKind::Source,
                    ComponentKind::Transform,
                    ComponentKind::Sink,
                ] {
                    writeln!(out, "{}:", kind.table())?;
                    for d in all.iter().filter(|d| d.kind == kind) {
                        writeln!(out, "  {:<12} {}", d.type_name, d.summary())?;
                    }
                }
                writeln!(
                    out,
                    "\n`tidegauge describe <name>` shows a component's parameters."
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe { name, kind, json } => {
            let found: Vec<_> = registry::find_any(&name)
                .into_iter()
                .filter(|d| kind.as_deref().is_none_or(|k| d.kind.name() == k))
                .collect();
            if found.is_empty() {
                let known: Vec<_> = registry::all().iter().map(|d| d.type_name).collect();
                ewriteln!(
                    "error: no component called `{name}` (known: {}){}",
                    known.join(", "),
                    tidegauge_core::suggest::hint(&name, known.iter().copied())
                );
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            for (i, d) in found.iter().enumerate() {
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&describe::component_schema(d))?
                    )?;
                } else {
                    if i > 0 {
                        writeln!(out)?;
                    }
                    write!(out, "{}", describe::describe_text(d))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Score(mut args) => {
            args.delimiter_byte = match args.delimiter.as_bytes() {
                [b] if b.is_ascii() => *b,
                _ => {
                    ewriteln!(
                        "error: --delimiter takes one ASCII character, got {:?}",
                        args.delimiter
                    );
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            if args.min_channels == 0 {
                ewriteln!("error: --min-channels must be at least 1");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            args.progress =
                !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
            score::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&describe::pipeline_schema())?
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            source,
            detector,
            sink,
            all_events,
            output,
            force,
        } => {
            let text = init::pipeline(&init::Choice {
                source: &source,
                detector: &detector,
                sink: &sink,
                all_events,
            })?;
            match output {
                None => out.write_all(text.as_bytes())?,
                Some(path) => {
                    let mut file = std::fs::OpenOptions::new();
                    file.write(true);
                    if force {
                        file.create(true).truncate(true);
                    } else {
                        file.create_new(true);
                    }
                    let mut file = file.open(&path).map_err(|e| {
                        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                            " (--force replaces it)"
                        } else {
                            ""
                        };
                        anyhow::anyhow!("cannot write {}: {e}{hint}", path.display())
                    })?;
                    file.write_all(text.as_bytes())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    ewriteln!(
                        "wrote {}; check it with `tidegauge check {}`",
                        path.display(),
                        path.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            out.write_all(&generate::completions(shell))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            match dir {
                None => out.write_all(&generate::man_page()?)?,
                Some(dir) => {
                    let pages = generate::man_pages(&dir)
                        .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
                    ewriteln!("wrote {} pages to {}", pages.len(), dir.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_pipeline(path: Option<&Path>) -> anyhow::Result<(String, String)> {
    match path {
        None => Ok(("(embedded default)".into(), DEFAULT_PIPELINE.into())),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read pipeline file {}", p.display()))?;
            Ok((p.display().to_string(), text))
        }
    }
}

/// Loads and validates; on failure prints every problem and returns `None`.
fn load_or_report(origin: &str, text: &str) -> Option<Pipeline> {
    match topology::load(text, &tidegauge_core::config::process_env) {
        Ok(p) => Some(p),
        Err(errors) => {
            report(origin, &errors);
            None
        }
    }
}

fn report(origin: &str, errors: &[ConfigError]) {
    ewrite!("{}", ConfigError::report(origin, errors));
}
