//! `tidegauge`: streaming analytics for sensor and machine telemetry.

mod describe;
mod run;
mod score;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tidegauge_core::ConfigError;
use tidegauge_core::registry::{self, ComponentKind};
use tidegauge_core::topology::{self, Pipeline};

/// The pipeline `tidegauge run` uses when given no file.
pub const DEFAULT_PIPELINE: &str = include_str!("../../../examples/default.toml");

/// Exit status: the pipeline ran but a component failed.
const EXIT_FAILED: u8 = 1;
/// Exit status: bad usage or an invalid pipeline.
const EXIT_INVALID: u8 = 2;

#[derive(Parser)]
#[command(
    name = "tidegauge",
    version,
    about = "Streaming analytics for sensor and machine telemetry, with per-sensor anomaly detection.",
    long_about = "Streaming analytics for sensor and machine telemetry, with per-sensor anomaly detection.\n\n\
A pipeline is a TOML file of sources -> transforms -> sinks. `tidegauge run` with no file runs \
the embedded default: a simulated sensor fleet through a z-score detector, anomalies printed \
as they occur.\n\nExit status: 0 ok, 1 the pipeline ran but a component failed, 2 usage or \
configuration error.",
    after_help = "Examples:\n  tidegauge run                          # the embedded default; Ctrl-C stops it\n  tidegauge check pipeline.toml          # validate without running\n  tidegauge describe zscore              # parameters of a component\n  W1_INPUT=in.jsonl W1_OUTPUT=out.jsonl tidegauge run examples/w1.toml"
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
    Score {
        /// Detector type (`zscore`, `mad`, `ensemble`, ...) or a pipeline file holding one.
        #[arg(long, short)]
        detector: String,
        /// With a pipeline file: the id of the transform that judges.
        #[arg(long)]
        transform: Option<String>,
        /// A detector setting, NAME=VALUE (repeatable), e.g. `--set window=50`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// A setting for one value column only, CHANNEL:NAME=VALUE (repeatable), on top of
        /// --set: e.g. `--channel-set Temperature:threshold=20` when sensors differ.
        #[arg(long = "channel-set", value_name = "CHANNEL:NAME=VALUE")]
        channel_set: Vec<String>,
        /// CSV or JSON Lines files, or directories of them.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Directory for the results.
        #[arg(long, short)]
        out: PathBuf,
        /// Time column (default: datetime, timestamp, time or ts, whichever exists).
        #[arg(long)]
        time_column: Option<String>,
        /// Value columns (default: every numeric column but the time, key and ignored ones).
        #[arg(long, value_delimiter = ',')]
        value_columns: Option<Vec<String>>,
        /// Columns never used as values (e.g. labels).
        #[arg(long, value_delimiter = ',')]
        ignore_columns: Vec<String>,
        /// Column naming the series when a file holds several.
        #[arg(long)]
        key_column: Option<String>,
        /// CSV field separator.
        #[arg(long, default_value = ",")]
        delimiter: String,
        /// Channels that must flag a row for it to count as an anomaly.
        #[arg(long, default_value_t = 1)]
        min_channels: usize,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    // The component registrations live in the components crate; touching it keeps it
    // linked in.
    let _ = tidegauge_components::registered_types;
    match command {
        Command::Run {
            pipeline,
            show_graph,
            quiet,
        } => {
            let (origin, text) = read_pipeline(pipeline.as_deref())?;
            let Some(p) = load_or_report(&origin, &text) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            if show_graph {
                eprint!("{}", p.describe());
            }
            run::run(p, &origin, quiet)
        }
        Command::Check { pipeline } => {
            let (origin, text) = read_pipeline(Some(&pipeline))?;
            match load_or_report(&origin, &text) {
                None => Ok(ExitCode::from(EXIT_INVALID)),
                Some(p) => {
                    println!(
                        "{origin}: ok ({} sources, {} transforms, {} sinks)",
                        p.count(ComponentKind::Source),
                        p.count(ComponentKind::Transform),
                        p.count(ComponentKind::Sink)
                    );
                    print!("{}", p.describe());
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
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for kind in [
                    ComponentKind::Source,
                    ComponentKind::Transform,
                    ComponentKind::Sink,
                ] {
                    println!("{}:", kind.table());
                    for d in all.iter().filter(|d| d.kind == kind) {
                        println!("  {:<12} {}", d.type_name, d.summary());
                    }
                }
                println!("\n`tidegauge describe <name>` shows a component's parameters.");
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
                eprintln!(
                    "error: no component called `{name}` (known: {})",
                    known.join(", ")
                );
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            for (i, d) in found.iter().enumerate() {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&describe::component_schema(d))?
                    );
                } else {
                    if i > 0 {
                        println!();
                    }
                    print!("{}", describe::describe_text(d));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Score {
            detector,
            transform,
            set,
            channel_set,
            inputs,
            out,
            time_column,
            value_columns,
            ignore_columns,
            key_column,
            delimiter,
            min_channels,
            no_progress,
        } => {
            let delimiter = match delimiter.as_bytes() {
                [b] if b.is_ascii() => *b,
                _ => {
                    eprintln!("error: --delimiter takes one ASCII character, got {delimiter:?}");
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            if min_channels == 0 {
                eprintln!("error: --min-channels must be at least 1");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            score::run(score::ScoreArgs {
                detector,
                transform,
                set,
                channel_set,
                inputs,
                out,
                time_column,
                value_columns,
                ignore_columns,
                key_column,
                delimiter,
                min_channels,
                progress: !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&describe::pipeline_schema())?
            );
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
    let mut errors: Vec<&ConfigError> = errors.iter().collect();
    errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.path.clone()));
    for e in &errors {
        match e.line {
            Some(line) => eprintln!("error: {origin}:{line}: {e}"),
            None => eprintln!("error: {origin}: {e}"),
        }
    }
    let n = errors.len();
    eprintln!(
        "{origin}: {n} problem{} found; nothing was run",
        if n == 1 { "" } else { "s" }
    );
}
