//! The dead-letter output: records that cannot be processed, with where they came from
//! and why, one JSON object per line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use schemars::JsonSchema;
use serde::Deserialize;

/// `[dead_letter]` in a pipeline file.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// File that dead-lettered records are appended to as JSON Lines. When unset they are
    /// written to standard error.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How many bytes of the offending input each record keeps (the rest is cut, and the
    /// full length is given in `raw_bytes`).
    #[serde(default = "default_max_raw_bytes")]
    #[schemars(range(min = 0))]
    pub max_raw_bytes: usize,
}

fn default_max_raw_bytes() -> usize {
    1024
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            path: None,
            max_raw_bytes: default_max_raw_bytes(),
        }
    }
}

enum Target {
    Stderr,
    File {
        out: BufWriter<File>,
        last_flush: Instant,
    },
}

struct Inner {
    target: Target,
    max_raw_bytes: usize,
    written: u64,
    /// `written` when the output was last made durable.
    synced: u64,
}

/// Shared handle on the dead-letter output. Clone freely.
///
/// Dead letters are delivered under the same rule as sinks' data: a position is
/// committed (acknowledged, or in a checkpoint) only once every dead letter written
/// before it is durable. Records are written while the batch they come from is built,
/// before anything after them can be acknowledged, so the checkpoint store calls
/// [`DeadLetter::sync`] before it writes a position: a crash can then lose a dead letter
/// only together with the position that would skip its line, and the line is read again.
#[derive(Clone)]
pub struct DeadLetter(Arc<Mutex<Inner>>);

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetter")
    }
}

/// One dead-lettered record.
#[derive(serde::Serialize)]
struct Record<'a> {
    time: String,
    component: &'a str,
    location: &'a str,
    reason: &'a str,
    raw: std::borrow::Cow<'a, str>,
    raw_bytes: usize,
}

impl DeadLetter {
    /// Opens the output named by `config` (creating the file, appending to it).
    pub fn open(config: &DeadLetterConfig) -> io::Result<Self> {
        let target = match &config.path {
            None => Target::Stderr,
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Target::File {
                    out: BufWriter::new(file),
                    last_flush: Instant::now(),
                }
            }
        };
        Ok(DeadLetter(Arc::new(Mutex::new(Inner {
            target,
            max_raw_bytes: config.max_raw_bytes,
            written: 0,
            synced: 0,
        }))))
    }

    /// Writes to standard error (tests and tools that have no config).
    pub fn stderr() -> Self {
        DeadLetter(Arc::new(Mutex::new(Inner {
            target: Target::Stderr,
            max_raw_bytes: default_max_raw_bytes(),
            written: 0,
            synced: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the writer in a state worse than a
        // partly written line, which the next write follows with a newline anyway.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record. Errors writing the dead-letter output itself are reported on
    /// standard error: there is nowhere else left to put them.
    pub fn write(&self, component: &str, location: &str, reason: &str, raw: &[u8]) {
        let mut inner = self.lock();
        let keep = raw.len().min(inner.max_raw_bytes);
        // Secrets are masked in every part: a URL's token in the location, a password
        // in a library's error text, a token echoed back by a webhook in the input.
        let location = crate::redact::scrub(location);
        let reason = crate::redact::scrub(reason);
        let kept = String::from_utf8_lossy(&raw[..keep]);
        let record = Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            component,
            location: &location,
            reason: &reason,
            raw: std::borrow::Cow::Owned(crate::redact::scrub(&kept).into_owned()),
            raw_bytes: raw.len(),
        };
        let mut line = match serde_json::to_vec(&record) {
            Ok(l) => l,
            Err(e) => format!("{{\"error\":\"cannot encode dead letter: {e}\"}}").into_bytes(),
        };
        line.push(b'\n');
        inner.written += 1;
        let result = match &mut inner.target {
            Target::Stderr => io::stderr().lock().write_all(&line),
            Target::File { out, last_flush } => out.write_all(&line).and_then(|_| {
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    *last_flush = Instant::now();
                    out.flush()
                } else {
                    Ok(())
                }
            }),
        };
        if let Err(e) = result {
            // Not `eprintln!`: a closed standard error must not become a panic.
            let _ = writeln!(
                io::stderr().lock(),
                "tidegauge: cannot write dead-letter record ({e}); it was: {reason} at {location}"
            );
        }
    }

    /// Flushes and syncs the output (at shutdown).
    pub fn flush(&self) -> io::Result<()> {
        let mut inner = self.lock();
        let written = inner.written;
        match &mut inner.target {
            Target::Stderr => {}
            Target::File { out, last_flush } => {
                out.flush()?;
                *last_flush = Instant::now();
                out.get_ref().sync_data()?;
            }
        }
        inner.synced = written;
        Ok(())
    }

    /// Makes every record written so far durable; free when there is none since the
    /// last time. Called before a source position is committed.
    pub fn sync(&self) -> io::Result<()> {
        {
            let inner = self.lock();
            if inner.synced == inner.written {
                return Ok(());
            }
        }
        self.flush()
    }

    /// Number of records written so far.
    pub fn written(&self) -> u64 {
        self.lock().written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_with_place_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl/dead.jsonl");
        let dl = DeadLetter::open(&DeadLetterConfig {
            path: Some(path.clone()),
            max_raw_bytes: 4,
        })
        .unwrap();
        dl.write("src", "in.jsonl:3", "expected a JSON object", b"[1,2,3]");
        dl.write("src", "in.jsonl:4", "invalid UTF-8", b"\xff\xfe");
        dl.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["location"], "in.jsonl:3");
        assert_eq!(lines[0]["raw"], "[1,2");
        assert_eq!(lines[0]["raw_bytes"], 7);
        assert_eq!(lines[1]["reason"], "invalid UTF-8");
        assert_eq!(dl.written(), 2);
    }

    #[test]
    fn sync_writes_buffered_records_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let dl = DeadLetter::open(&DeadLetterConfig {
            path: Some(path.clone()),
            max_raw_bytes: 64,
        })
        .unwrap();
        dl.sync().unwrap(); // nothing written: nothing to do
        dl.write("src", "in.csv:2", "bad number", b"x");
        assert_eq!(std::fs::read(&path).unwrap().len(), 0, "still buffered");
        dl.sync().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
