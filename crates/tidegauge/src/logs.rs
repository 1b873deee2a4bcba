//! Logging: human lines on standard error, and (when running a pipeline file) JSON lines
//! in the pipeline's state directory, rotated daily, that `tidegauge logs` queries.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::Value;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log files start with this and end with [`LOG_SUFFIX`].
const LOG_PREFIX: &str = "tidegauge";
const LOG_SUFFIX: &str = "jsonl";
/// Rotated files kept.
const LOG_FILES_KEPT: usize = 7;

/// Keeps the file writer flushing until dropped (at exit).
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

fn filter(directives: &str, fallback: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback))
}

/// A writer that masks secrets ([`tidegauge_core::redact::scrub`]) in what it is given:
/// the formatting layers hand it one whole event per write.
pub struct Scrubbing<W>(W);

impl<W: std::io::Write> std::io::Write for Scrubbing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(tidegauge_core::redact::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Makes [`Scrubbing`] writers around another layer's writers.
struct ScrubbingWriters<M>(M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for ScrubbingWriters<M>
{
    type Writer = Scrubbing<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Scrubbing(self.0.make_writer())
    }
}

/// Sets up logging: `stderr_filter` for the terminal; when `dir` is given, JSON lines
/// at `file_filter` into rotated files there.
pub fn init(stderr_filter: &str, dir: Option<&Path>, file_filter: &str) -> LogGuard {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(ScrubbingWriters(std::io::stderr))
        .with_target(false)
        .with_ansi(crate::colours(std::io::stderr().is_terminal()))
        // A closed standard error must not turn into a panic (the default reports the
        // failed write on standard error itself, with `eprintln!`).
        .log_internal_errors(false)
        .with_filter(filter(stderr_filter, "warn"));
    let mut guard = None;
    let file = dir.and_then(|dir| {
        // The appender prunes old files from the directory when built: it must exist.
        let appender = std::fs::create_dir_all(dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                tracing_appender::rolling::Builder::new()
                    .rotation(tracing_appender::rolling::Rotation::DAILY)
                    .filename_prefix(LOG_PREFIX)
                    .filename_suffix(LOG_SUFFIX)
                    .max_log_files(LOG_FILES_KEPT)
                    .build(dir)
                    .map_err(|e| e.to_string())
            });
        match appender {
            Ok(a) => {
                let (writer, g) = tracing_appender::non_blocking(a);
                guard = Some(g);
                Some(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_span_list(false)
                        .with_writer(ScrubbingWriters(writer))
                        .with_filter(filter(file_filter, "info")),
                )
            }
            Err(e) => {
                ewriteln!(
                    "tidegauge: cannot write logs to {}: {e}; logging to standard error only",
                    dir.display()
                );
                None
            }
        }
    });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
    LogGuard(guard)
}

/// What `tidegauge logs` asks for.
pub struct Query {
    /// Least severe level shown.
    pub level: Option<tracing::Level>,
    /// Only lines of this component.
    pub component: Option<String>,
    /// Only lines newer than this.
    pub since: Option<Duration>,
    /// Only lines older than this (the dashboard's time range; the command has none).
    pub until: Option<Duration>,
    /// Only lines whose message or fields contain this.
    pub grep: Option<String>,
}

fn level_of(v: &Value) -> Option<tracing::Level> {
    v.get("level")?.as_str()?.parse().ok()
}

impl Query {
    fn matches(&self, v: &Value, raw: &str, now: SystemTime) -> bool {
        if let Some(min) = self.level {
            // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
            match level_of(v) {
                Some(l) if l <= min => {}
                _ => return false,
            }
        }
        if let Some(c) = &self.component
            && v.get("component_id").and_then(Value::as_str) != Some(c.as_str())
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let age = v
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .map(|t| now.duration_since(t).unwrap_or_default());
            let Some(age) = age else {
                return false;
            };
            if self.since.is_some_and(|since| age > since)
                || self.until.is_some_and(|until| age < until)
            {
                return false;
            }
        }
        if let Some(g) = &self.grep
            && !raw.contains(g.as_str())
        {
            return false;
        }
        true
    }
}

/// The log files in `dir`, oldest first (rotated names sort by date).
fn log_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("no logs in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(LOG_PREFIX) && n.ends_with(LOG_SUFFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// One log line as a person reads it: time, level, component, message, other fields.
fn human(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let mut line = format!("{} {:>5}", s("timestamp"), s("level"));
    if let Some(c) = v.get("component_id").and_then(Value::as_str) {
        line.push_str(&format!(" [{c}]"));
    }
    line.push(' ');
    line.push_str(s("message"));
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            if matches!(
                k.as_str(),
                "timestamp" | "level" | "message" | "component_id" | "target"
            ) {
                continue;
            }
            match val {
                Value::String(t) => line.push_str(&format!(" {k}={t}")),
                other => line.push_str(&format!(" {k}={other}")),
            }
        }
    }
    line
}

/// The logs of a running pipeline, searched by the admin API (`GET /logs`).
pub struct LogDir(pub PathBuf);

impl tidegauge_api::LogSearch for LogDir {
    fn search(&self, q: &tidegauge_api::LogQuery, limit: usize) -> Result<Vec<Value>, String> {
        let duration = |name: &str, v: &Option<String>| {
            v.as_deref()
                .filter(|t| !t.trim().is_empty())
                .map(|t| {
                    humantime::parse_duration(t.trim())
                        .map_err(|e| format!("{name}: `{t}` is not a duration like 15m or 2h: {e}"))
                })
                .transpose()
        };
        let query = Query {
            level: q
                .level
                .as_deref()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    l.parse().map_err(|_| {
                        format!("level: `{l}` is not one of error, warn, info, debug, trace")
                    })
                })
                .transpose()?,
            component: q.component.clone().filter(|c| !c.is_empty()),
            since: duration("since", &q.since)?,
            until: duration("until", &q.until)?,
            grep: q.text.clone().filter(|t| !t.is_empty()),
        };
        let now = SystemTime::now();
        let mut found = std::collections::VecDeque::new();
        let files = log_files(&self.0).map_err(|e| format!("{e:#}"))?;
        for path in files {
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else {
                    break;
                };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if !query.matches(&v, &line, now) {
                    continue;
                }
                if found.len() == limit {
                    found.pop_front();
                }
                // Masked on the way out, as `tidegauge logs` does.
                let masked = tidegauge_core::redact::scrub(&line);
                found.push_back(serde_json::from_str(&masked).unwrap_or(v));
            }
        }
        Ok(found.into())
    }
}

/// Prints the lines of the logs in `dir` that match `q`; returns how many.
pub fn query(
    dir: &Path,
    q: &Query,
    json: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<usize> {
    let now = SystemTime::now();
    let mut shown = 0;
    for path in log_files(dir)? {
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if !q.matches(&v, &line, now) {
                continue;
            }
            // Masked again on the way out: lines written before a secret was known (or
            // by an older version) do not show it either.
            let shown_line = if json { line.clone() } else { human(&v) };
            writeln!(out, "{}", tidegauge_core::redact::scrub(&shown_line))?;
            shown += 1;
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: &str, component: &str, message: &str, age: Duration) -> String {
        let t = humantime::format_rfc3339_micros(SystemTime::now() - age);
        serde_json::json!({
            "timestamp": t.to_string(), "level": level, "message": message,
            "component_id": component, "target": "x"
        })
        .to_string()
    }

    #[test]
    fn filters_by_level_component_age_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let text = [
            line(
                "INFO",
                "spikes",
                "parameter changed",
                Duration::from_secs(5),
            ),
            line(
                "WARN",
                "spikes",
                "record dead-lettered: bad",
                Duration::from_secs(5),
            ),
            line("ERROR", "out", "cannot write", Duration::from_secs(3600)),
            "not json".to_string(),
        ]
        .join("\n");
        std::fs::write(dir.path().join("tidegauge.2026-11-25.jsonl"), text).unwrap();
        let count = |q: Query| {
            let mut out = Vec::new();
            query(dir.path(), &q, false, &mut out).unwrap()
        };
        let all = Query {
            level: None,
            component: None,
            since: None,
            until: None,
            grep: None,
        };
        assert_eq!(count(all), 3);
        assert_eq!(
            count(Query {
                level: Some(tracing::Level::WARN),
                component: None,
                since: None,
                until: None,
                grep: None
            }),
            2
        );
        assert_eq!(
            count(Query {
                level: None,
                component: Some("spikes".into()),
                since: Some(Duration::from_secs(600)),
                until: None,
                grep: Some("dead-lettered".into())
            }),
            1
        );
        let mut out = Vec::new();
        query(
            dir.path(),
            &Query {
                level: Some(tracing::Level::ERROR),
                component: None,
                since: None,
                until: None,
                grep: None,
            },
            false,
            &mut out,
        )
        .unwrap();
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("ERROR [out] cannot write"), "{shown}");
    }
}
