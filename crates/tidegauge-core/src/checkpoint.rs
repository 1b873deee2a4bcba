//! Checkpoints: consistent snapshots of where every source stands and of every
//! transform's state, so a restart neither loses warm-up nor counts an event twice.
//!
//! # Design: aligned barriers (Chandy–Lamport, as Flink does)
//!
//! Every `interval_ms` the coordinator (a task of the running pipeline) asks each source
//! for barrier `n`. A source's [`Output`](crate::Output) sends the barrier downstream
//! between two batches, and reports the position the source had reached with the batches
//! sent before it (file offsets; `null` for sources that cannot resume).
//!
//! - Every edge is its own bounded channel. A transform or sink with several inputs that
//!   receives barrier `n` on one input stops reading that input until barrier `n` has come
//!   on every other open input (alignment; the blocked input backs up, memory stays
//!   bounded). A closed input counts as aligned: everything it carried has been read.
//! - A transform, once aligned, snapshots its state ([`Transform::checkpoint`]) — which
//!   then reflects exactly the events before the barrier on every input — reports it, and
//!   forwards the barrier.
//! - A sink does not take part: its [`SinkInput`](crate::SinkInput) tags every batch it
//!   hands out with an acknowledgement token of the current *epoch* (the batches between
//!   barrier `n-1` and `n`). When barrier `n` is aligned, the epoch is closed; once the
//!   sink has released every batch of the epoch (made it durable, as sinks already must),
//!   the coordinator hears that the sink holds everything before barrier `n`.
//! - Checkpoint `n` is complete when every source reported its barrier position, every
//!   transform its state, and every sink its epochs up to `n`. It is written atomically:
//!   each state to its own file (temporary file, fsync, rename, fsync of the directory),
//!   then the manifest `checkpoint.json` naming them in the same way; the manifest it
//!   replaces stays as `checkpoint-<id>.json`, and the state files of checkpoints older
//!   than the [`KEEP`] newest go only after the new manifest is in place. One checkpoint
//!   is in flight at a time.
//! - A restart resumes from the newest intact checkpoint (every state file's length and
//!   checksum checked), with a warning when that is not the newest. Each manifest
//!   records what the sources read ([`InputIdentity`]); a checkpoint of other input, or
//!   positions and state left without any manifest, are refused ([`reset`] starts over).
//! - A component that has finished counts with its final value: a source's last
//!   position, a transform's state after its last batch (before `flush`), a sink that
//!   ended cleanly holds everything. At the end of a run without failures a final
//!   checkpoint is written from these.
//!
//! # Acknowledged positions
//!
//! Independently of checkpoints, a source that tracks acknowledgements commits the
//! position up to which every batch has been made durable by every sink
//! ([`SourceCheckpoint::commit`], written to `acked/<id>.json` at most every
//! `commit_interval_ms`). These move more often than checkpoints.
//!
//! # What a restart resumes from
//!
//! Transforms restore the state of the last complete checkpoint. Sources resume from the
//! checkpoint's positions when the pipeline has a transform with state (one whose
//! [`Transform::checkpoint`] gives bytes; resuming further would skip events that state
//! has not seen) or the checkpoint holds some; otherwise from their last acknowledged
//! position when there is one (fewer duplicates). Delivery
//! is at least once: events after the resumed position may be written again.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::ConfigError;
use crate::kind::ComponentKind;

/// `[checkpoint]` in a pipeline file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory holding checkpoints and acknowledged source positions (created if
    /// missing). One directory per pipeline.
    pub dir: PathBuf,
    /// How often a consistent checkpoint of source positions and transform state is
    /// taken, in milliseconds.
    #[serde(default = "default_interval_ms")]
    #[schemars(range(min = 1))]
    pub interval_ms: u64,
    /// Most often a source writes its acknowledged position, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    #[schemars(range(min = 1))]
    pub commit_interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    10_000
}

fn default_commit_interval_ms() -> u64 {
    200
}

impl CheckpointConfig {
    /// Range checks; paths under `checkpoint`.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.dir.as_os_str().is_empty() {
            errors.push(ConfigError::new("checkpoint.dir", "expected a directory"));
        }
        if self.interval_ms == 0 {
            errors.push(ConfigError::new(
                "checkpoint.interval_ms",
                "expected a positive integer",
            ));
        }
        if self.commit_interval_ms == 0 {
            errors.push(ConfigError::new(
                "checkpoint.commit_interval_ms",
                "expected a positive integer",
            ));
        }
        errors
    }
}

/// A checkpoint directory that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not what was written (bad JSON, checksum mismatch, wrong length).
    #[error("{path}: {reason}; run with --reset-state to start over")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds what an earlier run left but no checkpoint manifest: where
    /// that run stood is unknown, and starting over silently would replay everything.
    #[error(
        "{dir}: holds {what} of an earlier run but no checkpoint manifest ({MANIFEST}); \
         run with --reset-state to start over"
    )]
    Missing {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What it holds.
        what: String,
    },
    /// The checkpoint was taken by another pipeline or on other input.
    #[error(
        "{dir}: checkpoint {id} was taken {reason}; run with --reset-state to start over \
         from it, or give this pipeline its own [checkpoint] dir"
    )]
    Foreign {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The checkpoint's id.
        id: u64,
        /// What differs.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content:
/// temporary file, fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    let tmp = dir.join(name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(&dir)
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// One transform's state in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StateEntry {
    /// File under `state/`.
    file: String,
    bytes: u64,
    crc32: u32,
}

/// `checkpoint.json` (the newest) and `checkpoint-<id>.json` (the ones kept before it).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    id: u64,
    time: String,
    /// Source id -> position (null for sources that cannot resume).
    sources: BTreeMap<String, Value>,
    /// Transform id -> state file (transforms without state are absent).
    transforms: BTreeMap<String, StateEntry>,
    /// Source id -> what it read when the checkpoint was taken (absent in manifests of
    /// earlier versions, which are then not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inputs: Option<BTreeMap<String, InputIdentity>>,
}

/// What a source reads, as recorded with each checkpoint: a restart on other input
/// (another file, another pipeline's directory) must not resume at its positions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputIdentity {
    /// The source's type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// What the source says identifies its input (e.g. file paths and first bytes);
    /// null when it has nothing to say.
    pub input: Value,
}

/// Identity of an input file: its path made absolute and, unless the file may be
/// replaced between runs (`replaceable`, a followed log that rotates), a fingerprint of
/// its first 64 bytes (files shorter than that are known by path alone, as appending
/// to them changes those bytes).
pub fn file_identity(path: &Path, replaceable: bool) -> Value {
    const HEAD: usize = 64;
    let absolute = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut v = serde_json::json!({ "path": absolute.display().to_string() });
    if !replaceable {
        let mut head = [0u8; HEAD];
        let read = File::open(path).and_then(|mut f| {
            use std::io::Read;
            let mut n = 0;
            while n < HEAD {
                match f.read(&mut head[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        });
        if let Ok(HEAD) = read {
            v["head_crc32"] = Value::from(format!("{:08x}", crc32fast::hash(&head)));
        }
    }
    v
}

/// `acked/<id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AckedFile {
    version: u32,
    time: String,
    position: Value,
}

const MANIFEST: &str = "checkpoint.json";
const VERSION: u32 = 1;
/// Checkpoints kept: the newest and the ones before it, to fall back on when the newest
/// is damaged.
pub const KEEP: usize = 3;

fn kept_name(id: u64) -> String {
    format!("checkpoint-{id}.json")
}

/// The id of a kept manifest's file name.
fn kept_id(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Counters of checkpointing, for `/metrics`.
#[derive(Debug, Default)]
pub struct CheckpointTelemetry {
    /// Id of the last checkpoint written (or restored, before the first is written).
    pub last_id: std::sync::atomic::AtomicU64,
    /// When it was written, in milliseconds since the Unix epoch (0: never).
    pub last_unix_ms: std::sync::atomic::AtomicU64,
    /// How long it took, from the barrier request to the manifest on disk, in
    /// nanoseconds.
    pub last_duration_ns: std::sync::atomic::AtomicU64,
    /// Bytes it wrote (state files and manifest).
    pub last_bytes: std::sync::atomic::AtomicU64,
    /// Checkpoints written.
    pub completed: std::sync::atomic::AtomicU64,
    /// Checkpoints that failed (could not be written, or a component could not
    /// snapshot its state or deliver).
    pub failures: std::sync::atomic::AtomicU64,
    /// Restarts that fell back to an older checkpoint because a newer one was damaged or
    /// missing (0 or 1 in one process).
    pub restore_fallbacks: std::sync::atomic::AtomicU64,
}

impl CheckpointTelemetry {
    /// The values now.
    pub fn metrics(&self) -> crate::metrics::CheckpointMetrics {
        use std::sync::atomic::Ordering::Relaxed;
        let written = self.last_unix_ms.load(Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        crate::metrics::CheckpointMetrics {
            last_id: self.last_id.load(Relaxed),
            age_seconds: (written > 0).then(|| now.saturating_sub(written) as f64 / 1e3),
            last_duration_seconds: self.last_duration_ns.load(Relaxed) as f64 / 1e9,
            last_bytes: self.last_bytes.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failures: self.failures.load(Relaxed),
            restore_fallbacks: self.restore_fallbacks.load(Relaxed),
        }
    }
}

/// Removes everything an earlier run left in the checkpoint directory (manifests, state,
/// acknowledged positions): the next run starts over. Returns how many files went.
pub fn reset(config: &CheckpointConfig) -> Result<usize, CheckpointError> {
    let dir = &config.dir;
    let mut removed = 0;
    let mut remove_in = |d: &Path, pick: &dyn Fn(&str) -> bool| -> Result<(), CheckpointError> {
        let entries = match fs::read_dir(d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(d))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_file() && pick(&name) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed += 1;
            }
        }
        Ok(())
    };
    remove_in(dir, &|n| {
        n == MANIFEST
            || kept_id(n).is_some()
            || (n.starts_with("checkpoint") && n.ends_with(".json.tmp"))
    })?;
    remove_in(&dir.join("state"), &|_| true)?;
    remove_in(&dir.join("acked"), &|_| true)?;
    if dir.exists() {
        sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(removed)
}

/// A manifest read from disk, with its file.
#[derive(Debug)]
struct Found {
    file: String,
    manifest: Manifest,
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A pipeline's checkpoint directory: what the last run left, and where this run writes.
#[derive(Debug)]
pub struct CheckpointStore {
    config: CheckpointConfig,
    /// The checkpoint a restart resumes from: the newest intact one.
    manifest: Option<Manifest>,
    /// Whether `checkpoint.json` on disk is `manifest` (else it is missing or damaged
    /// and is not kept when the next checkpoint replaces it).
    newest_on_disk: bool,
    /// Intact checkpoints kept before `manifest`, newest first.
    history: Vec<Found>,
    acked: HashMap<String, Value>,
    stateful: bool,
    /// What this run's sources read, recorded with every checkpoint.
    inputs: BTreeMap<String, InputIdentity>,
    telemetry: Arc<CheckpointTelemetry>,
}

/// Reads manifest `name` and checks every state file it names (length and checksum).
fn read_manifest(dir: &Path, name: &str) -> Result<Manifest, String> {
    let path = dir.join(name);
    let bytes = fs::read(&path).map_err(|e| format!("cannot be read: {e}"))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("is not a checkpoint manifest: {e}"))?;
    for (transform, entry) in &manifest.transforms {
        check_state(&dir.join("state").join(&entry.file), entry)
            .map_err(|e| format!("names a damaged state of transform `{transform}`: {e}"))?;
    }
    Ok(manifest)
}

/// A state file's bytes, checked against its manifest entry.
fn check_state(path: &Path, entry: &StateEntry) -> Result<Vec<u8>, CheckpointError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{} bytes, the manifest says {}", bytes.len(), entry.bytes),
        });
    }
    let crc = crc32fast::hash(&bytes);
    if crc != entry.crc32 {
        return Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "checksum {crc:08x} does not match the manifest's {:08x}",
                entry.crc32
            ),
        });
    }
    Ok(bytes)
}

/// Files in `dir` (none when it does not exist).
fn file_names(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map_err(io_err(dir))?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl CheckpointStore {
    /// Opens (creating) the directory and reads what an earlier run left: the newest
    /// intact checkpoint (falling back, with a warning, to an older one kept when the
    /// newest is damaged or missing). No intact checkpoint where an earlier run left
    /// some, or left positions or state without one, is an error: starting over
    /// silently would replay or skip data.
    pub fn open(config: &CheckpointConfig) -> Result<Self, CheckpointError> {
        let dir = &config.dir;
        for d in [dir.clone(), dir.join("state"), dir.join("acked")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let telemetry = Arc::new(CheckpointTelemetry::default());
        let mut found = Vec::new();
        let mut damaged: Vec<(String, String)> = Vec::new();
        for name in file_names(dir)? {
            if name != MANIFEST && kept_id(&name).is_none() {
                continue;
            }
            match read_manifest(dir, &name) {
                Ok(manifest) => found.push(Found {
                    file: name,
                    manifest,
                }),
                Err(reason) => damaged.push((name, reason)),
            }
        }
        // Newest first; of two files with one id (a crash between keeping the old
        // manifest and writing the new), `checkpoint.json` first.
        found.sort_by_key(|f| (std::cmp::Reverse(f.manifest.id), f.file != MANIFEST));
        found.dedup_by_key(|f| f.manifest.id);
        let mut found = found.into_iter();
        let chosen = found.next();
        let history: Vec<Found> = found.collect();
        let newest_on_disk = chosen.as_ref().is_some_and(|f| f.file == MANIFEST);
        match &chosen {
            Some(c) if !newest_on_disk => {
                let why = match damaged.iter().find(|(n, _)| n == MANIFEST) {
                    Some((_, reason)) => reason.clone(),
                    None if !dir.join(MANIFEST).exists() => "is missing".to_string(),
                    None => "is older than a checkpoint kept before it".to_string(),
                };
                telemetry
                    .restore_fallbacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "checkpoint: the newest checkpoint {} {why}; falling back to checkpoint {} \
                     of {} ({}): what was read after it is read again",
                    dir.join(MANIFEST).display(),
                    c.manifest.id,
                    c.manifest.time,
                    dir.join(&c.file).display()
                );
            }
            Some(c) => {
                for (name, reason) in &damaged {
                    tracing::warn!(
                        "checkpoint: {} {reason}; not needed (checkpoint {} is intact)",
                        dir.join(name).display(),
                        c.manifest.id
                    );
                }
            }
            None => {
                if let Some((name, _)) = damaged.first() {
                    let reasons: Vec<String> =
                        damaged.iter().map(|(n, r)| format!("{n} {r}")).collect();
                    return Err(CheckpointError::Corrupt {
                        path: dir.join(name),
                        reason: format!("no intact checkpoint: {}", reasons.join("; ")),
                    });
                }
                let acked = file_names(&dir.join("acked"))?.len();
                let states = file_names(&dir.join("state"))?.len();
                if acked + states > 0 {
                    let mut what = Vec::new();
                    if acked > 0 {
                        what.push(format!("{acked} acknowledged source position(s)"));
                    }
                    if states > 0 {
                        what.push(format!("{states} transform state file(s)"));
                    }
                    return Err(CheckpointError::Missing {
                        dir: dir.clone(),
                        what: what.join(" and "),
                    });
                }
            }
        }
        let manifest = chosen.map(|c| c.manifest);
        if let Some(m) = &manifest {
            telemetry
                .last_id
                .store(m.id, std::sync::atomic::Ordering::Relaxed);
        }
        let mut acked = HashMap::new();
        let acked_dir = dir.join("acked");
        for name in file_names(&acked_dir)? {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let path = acked_dir.join(&name);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            match serde_json::from_slice::<AckedFile>(&bytes) {
                Ok(file) => {
                    acked.insert(id.to_string(), file.position);
                }
                Err(e) => {
                    let held = manifest
                        .as_ref()
                        .filter(|m| m.sources.get(id).is_some_and(|p| !p.is_null()));
                    match held {
                        // The checkpoint knows where this source stood: resume there
                        // (events after it come again), the file is rewritten at the
                        // next commit.
                        Some(m) => tracing::warn!(
                            "checkpoint: {} is not an acknowledged position ({e}); source `{id}` \
                             resumes from checkpoint {} instead",
                            path.display(),
                            m.id
                        ),
                        None => {
                            return Err(CheckpointError::Corrupt {
                                path: path.clone(),
                                reason: format!(
                                    "not an acknowledged position ({e}), and no checkpoint holds the position of source `{id}`"
                                ),
                            });
                        }
                    }
                }
            }
        }
        Ok(CheckpointStore {
            config: config.clone(),
            manifest,
            newest_on_disk,
            history,
            acked,
            stateful: false,
            inputs: BTreeMap::new(),
            telemetry,
        })
    }

    /// Checks that the checkpoint resumed from was taken on the same input as `inputs`
    /// (source id -> identity; sources present on both sides are compared), records
    /// `inputs` for the checkpoints to come, and, when the directory holds no checkpoint
    /// yet, writes an empty one (number 0) so that a later restart can tell a state
    /// directory in use from one whose manifest went missing.
    pub fn begin(
        &mut self,
        inputs: BTreeMap<String, InputIdentity>,
    ) -> Result<(), CheckpointError> {
        if let Some(m) = &self.manifest
            && let Some(recorded) = &m.inputs
        {
            let foreign = |reason: String| CheckpointError::Foreign {
                dir: self.config.dir.clone(),
                id: m.id,
                reason,
            };
            let common: Vec<&String> = inputs
                .keys()
                .filter(|k| recorded.contains_key(*k))
                .collect();
            if common.is_empty() && !recorded.is_empty() && !inputs.is_empty() {
                let names = |m: &BTreeMap<String, InputIdentity>| {
                    m.keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(foreign(format!(
                    "by a pipeline with source(s) {}; this one has {}",
                    names(recorded),
                    names(&inputs)
                )));
            }
            for id in common {
                let (was, now) = (&recorded[id], &inputs[id]);
                if was.type_name != now.type_name {
                    return Err(foreign(format!(
                        "with source `{id}` of type `{}`; it is now of type `{}`",
                        was.type_name, now.type_name
                    )));
                }
                if was.input != now.input {
                    return Err(foreign(format!(
                        "with source `{id}` reading {}; it now reads {}",
                        was.input, now.input
                    )));
                }
            }
        }
        self.inputs = inputs;
        if self.manifest.is_none() {
            self.write(0, BTreeMap::new(), BTreeMap::new())?;
            // A marker, not a checkpoint of this run: the counters start at zero.
            use std::sync::atomic::Ordering::Relaxed;
            self.telemetry.completed.store(0, Relaxed);
            self.telemetry.last_unix_ms.store(0, Relaxed);
        }
        Ok(())
    }

    /// Records what source `id` reads from now on (a reload rebuilt it).
    pub fn set_input(&mut self, id: &str, identity: InputIdentity) {
        self.inputs.insert(id.to_string(), identity);
    }

    /// Counters of checkpointing, for `/metrics`.
    pub fn telemetry(&self) -> Arc<CheckpointTelemetry> {
        self.telemetry.clone()
    }

    /// The settings.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// Id of the last complete checkpoint (0: none).
    pub fn last_id(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.id)
    }

    /// Whether the last checkpoint holds the state of at least one transform.
    pub fn has_transform_state(&self) -> bool {
        self.manifest
            .as_ref()
            .is_some_and(|m| !m.transforms.is_empty())
    }

    /// Declares that the pipeline has transforms with state: sources then resume only
    /// from complete checkpoints, never from acknowledged positions past them.
    pub fn set_stateful(&mut self, stateful: bool) {
        self.stateful = stateful;
    }

    /// Where source `id` resumes (see the module documentation for the rule).
    pub fn source_position(&self, id: &str) -> Option<Value> {
        let from_manifest = self
            .manifest
            .as_ref()
            .and_then(|m| m.sources.get(id))
            .filter(|v| !v.is_null())
            .cloned();
        if self.stateful || self.has_transform_state() {
            return from_manifest;
        }
        self.acked.get(id).cloned().or(from_manifest)
    }

    /// The state transform `id` had at the last checkpoint, checked against its
    /// checksum.
    pub fn transform_state(&self, id: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        let Some(entry) = self.manifest.as_ref().and_then(|m| m.transforms.get(id)) else {
            return Ok(None);
        };
        let path = self.config.dir.join("state").join(&entry.file);
        let bytes = check_state(&path, entry)?;
        Ok(Some(bytes))
    }

    /// Ids of transforms with state in the last checkpoint.
    pub fn transforms_with_state(&self) -> Vec<String> {
        self.manifest
            .as_ref()
            .map(|m| m.transforms.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The handle a source uses to resume and to commit acknowledged positions.
    pub fn source_handle(&self, id: &str) -> SourceCheckpoint {
        SourceCheckpoint {
            restored: self.source_position(id),
            committer: Some(self.committer(id)),
        }
    }

    /// The handle for a source instance that takes over from an earlier instance of the
    /// same running pipeline (a reload rebuilt it), once that one has ended: it resumes
    /// at the position the earlier instance committed as acknowledged, which is where
    /// the running transforms' state stands. Without one, as [`Self::source_handle`].
    pub fn takeover_handle(&mut self, id: &str) -> Result<SourceCheckpoint, CheckpointError> {
        let path = self.config.dir.join("acked").join(format!("{id}.json"));
        match fs::read(&path) {
            Ok(bytes) => {
                let file: AckedFile =
                    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: format!("not an acknowledged position: {e}"),
                    })?;
                self.acked.insert(id.to_string(), file.position);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(SourceCheckpoint {
            restored: self
                .acked
                .get(id)
                .cloned()
                .or_else(|| self.source_position(id)),
            committer: Some(self.committer(id)),
        })
    }

    fn committer(&self, id: &str) -> Arc<Mutex<Committer>> {
        Arc::new(Mutex::new(Committer {
            path: self.config.dir.join("acked").join(format!("{id}.json")),
            every: Duration::from_millis(self.config.commit_interval_ms),
            last_write: None,
            pending: None,
        }))
    }

    /// Writes checkpoint `id`: state files first, then the manifest (the one it replaces
    /// is kept as `checkpoint-<id>.json`); then removes the manifests and state files
    /// of checkpoints older than the [`KEEP`] newest.
    pub fn write(
        &mut self,
        id: u64,
        sources: BTreeMap<String, Value>,
        states: BTreeMap<String, Vec<u8>>,
    ) -> Result<(), CheckpointError> {
        let started = Instant::now();
        let dir = self.config.dir.clone();
        let state_dir = dir.join("state");
        let mut transforms = BTreeMap::new();
        let mut written: u64 = 0;
        for (name, bytes) in &states {
            let file = format!("{name}-{id}.bin");
            let path = state_dir.join(&file);
            {
                let mut f = File::create(&path).map_err(io_err(&path))?;
                f.write_all(bytes).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            written += bytes.len() as u64;
            transforms.insert(
                name.clone(),
                StateEntry {
                    file,
                    bytes: bytes.len() as u64,
                    crc32: crc32fast::hash(bytes),
                },
            );
        }
        if !states.is_empty() {
            sync_dir(&state_dir).map_err(io_err(&state_dir))?;
        }
        let manifest = Manifest {
            version: VERSION,
            id,
            time: now_text(),
            sources,
            transforms,
            inputs: Some(self.inputs.clone()),
        };
        let path = dir.join(MANIFEST);
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        written += bytes.len() as u64;
        // The manifest about to be replaced stays as the newest to fall back on (a
        // second name for the same file: nothing is copied, and `checkpoint.json` is
        // never missing).
        if self.newest_on_disk {
            if let Some(old) = self.manifest.take() {
                let kept = kept_name(old.id);
                let kept_path = dir.join(&kept);
                let _ = fs::remove_file(&kept_path);
                fs::hard_link(&path, &kept_path).map_err(io_err(&kept_path))?;
                self.history.insert(
                    0,
                    Found {
                        file: kept,
                        manifest: old,
                    },
                );
            }
        } else if let Some(old) = self.manifest.take() {
            // Resumed from a kept checkpoint (the newest was damaged): it stays kept.
            if dir.join(kept_name(old.id)).exists() {
                self.history.insert(
                    0,
                    Found {
                        file: kept_name(old.id),
                        manifest: old,
                    },
                );
            }
        }
        write_atomic(&path, &bytes).map_err(io_err(&path))?;
        self.history.retain(|f| f.manifest.id < id);
        self.history.truncate(KEEP.saturating_sub(1));
        // What older checkpoints used is no longer needed.
        let mut keep_files: Vec<&str> = manifest
            .transforms
            .values()
            .map(|e| e.file.as_str())
            .collect();
        let mut keep_manifests = vec![MANIFEST];
        for f in &self.history {
            keep_manifests.push(f.file.as_str());
            keep_files.extend(f.manifest.transforms.values().map(|e| e.file.as_str()));
        }
        if let Ok(names) = file_names(&dir) {
            for name in names {
                if kept_id(&name).is_some() && !keep_manifests.contains(&name.as_str()) {
                    let _ = fs::remove_file(dir.join(&name));
                }
            }
        }
        if let Ok(names) = file_names(&state_dir) {
            for name in names {
                if name.ends_with(".bin") && !keep_files.contains(&name.as_str()) {
                    let _ = fs::remove_file(state_dir.join(&name));
                }
            }
        }
        self.manifest = Some(manifest);
        self.newest_on_disk = true;
        use std::sync::atomic::Ordering::Relaxed;
        let t = &self.telemetry;
        t.last_id.store(id, Relaxed);
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        t.last_unix_ms.store(unix_ms, Relaxed);
        t.last_duration_ns
            .store(started.elapsed().as_nanos() as u64, Relaxed);
        t.last_bytes.store(written, Relaxed);
        t.completed.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[derive(Debug)]
struct Committer {
    path: PathBuf,
    every: Duration,
    last_write: Option<Instant>,
    pending: Option<Value>,
}

impl Committer {
    fn write_pending(&mut self) -> io::Result<()> {
        let Some(position) = self.pending.take() else {
            return Ok(());
        };
        let file = AckedFile {
            version: VERSION,
            time: now_text(),
            position,
        };
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes)?;
        self.last_write = Some(Instant::now());
        Ok(())
    }
}

/// A source's view of checkpointing: where to resume, and where to commit the position
/// up to which everything it sent has been made durable.
#[derive(Clone, Debug, Default)]
pub struct SourceCheckpoint {
    restored: Option<Value>,
    committer: Option<Arc<Mutex<Committer>>>,
}

impl SourceCheckpoint {
    /// No checkpointing: start from the beginning, commits go nowhere.
    pub fn disabled() -> Self {
        SourceCheckpoint::default()
    }

    /// Whether positions are kept at all (the pipeline has a `[checkpoint]` table).
    pub fn is_enabled(&self) -> bool {
        self.committer.is_some()
    }

    /// The position to resume from, as the source reported it earlier.
    pub fn restored(&self) -> Option<&Value> {
        self.restored.as_ref()
    }

    fn lock(c: &Mutex<Committer>) -> std::sync::MutexGuard<'_, Committer> {
        c.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `position`: everything before it has been made durable by every sink.
    /// Written at most every `commit_interval_ms`; a later call or [`flush`](Self::flush)
    /// writes what is held back.
    pub fn commit(&self, position: Value) -> io::Result<()> {
        let Some(c) = &self.committer else {
            return Ok(());
        };
        let mut c = Self::lock(c);
        c.pending = Some(position);
        if c.last_write.is_none_or(|t| t.elapsed() >= c.every) {
            c.write_pending()?;
        }
        Ok(())
    }

    /// Writes a held-back commit if the interval has passed (call while idle).
    pub fn tick(&self) -> io::Result<()> {
        let Some(c) = &self.committer else {
            return Ok(());
        };
        let mut c = Self::lock(c);
        if c.pending.is_some() && c.last_write.is_none_or(|t| t.elapsed() >= c.every) {
            c.write_pending()?;
        }
        Ok(())
    }

    /// Writes a held-back commit now (at the end of a run).
    pub fn flush(&self) -> io::Result<()> {
        match &self.committer {
            Some(c) => Self::lock(c).write_pending(),
            None => Ok(()),
        }
    }
}

/// What components tell the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// A source sent barrier `id`, having reached `position`.
    SourceBarrier {
        node: usize,
        id: u64,
        position: Option<Value>,
    },
    /// A source stopped sending; `position` covers everything it sent.
    SourceFinal {
        node: usize,
        position: Option<Value>,
    },
    /// A transform's state at barrier `id`.
    TransformBarrier {
        node: usize,
        id: u64,
        state: Result<Option<Vec<u8>>, String>,
    },
    /// A transform's state after its last batch.
    TransformFinal {
        node: usize,
        state: Result<Option<Vec<u8>>, String>,
    },
    /// A sink released every batch it received before barrier `id`.
    SinkEpoch {
        node: usize,
        id: u64,
        delivered: bool,
    },
    /// A component's task ended.
    Finished { node: usize, ok: bool },
    /// Every component has ended; write the final checkpoint if `clean`.
    End { clean: bool },
    /// The graph is about to change (reload): start no checkpoint, and answer with the
    /// id the next barrier will have once none is in flight.
    Pause { reply: oneshot::Sender<u64> },
    /// The graph now has these nodes (slot, id, kind); `requests` reach the sources that
    /// are new. Reports of slots not listed are ignored from now on.
    Regraph {
        nodes: Vec<(usize, String, ComponentKind)>,
        requests: HashMap<usize, mpsc::UnboundedSender<u64>>,
    },
    /// The replaced components have drained: checkpoints go on.
    Resume,
}

/// Where a component sends its reports.
#[derive(Clone, Debug)]
pub(crate) struct ReportPort {
    pub(crate) node: usize,
    pub(crate) tx: mpsc::UnboundedSender<Report>,
}

impl ReportPort {
    pub(crate) fn send(&self, report: Report) {
        // The coordinator outlives every component; if it is gone the run is over.
        let _ = self.tx.send(report);
    }
}

#[derive(Debug)]
enum Final {
    Position(Option<Value>),
    State(Option<Vec<u8>>),
    SinkDone,
    Failed,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    positions: HashMap<usize, Option<Value>>,
    states: HashMap<usize, Option<Vec<u8>>>,
    failed: Option<String>,
    /// When its barriers were requested.
    started: Instant,
}

/// Takes checkpoints while a pipeline runs. See the module documentation.
pub(crate) struct Coordinator {
    store: Arc<Mutex<CheckpointStore>>,
    /// The running graph's components by slot (a slot is one component instance).
    nodes: BTreeMap<usize, (String, ComponentKind)>,
    /// While the graph changes: no checkpoint starts; these wait for the one in flight.
    paused: bool,
    pause_waiters: Vec<oneshot::Sender<u64>>,
    /// Barrier requests, per source node.
    requests: HashMap<usize, mpsc::UnboundedSender<u64>>,
    next_id: u64,
    first_id: u64,
    finals: HashMap<usize, Final>,
    /// Per sink: epochs completed, and the highest id up to which all are.
    sink_epochs: HashMap<usize, (std::collections::BTreeSet<u64>, u64)>,
    in_flight: Option<InFlight>,
    completed: u64,
    telemetry: Arc<CheckpointTelemetry>,
}

/// What [`Coordinator::run`] reports at the end.
#[derive(Debug, Default, Clone)]
pub struct CheckpointSummary {
    /// Checkpoints completed during the run (the final one included).
    pub completed: u64,
    /// Id of the last complete checkpoint.
    pub last_id: u64,
    /// Problems (a checkpoint that could not be written or was abandoned).
    pub errors: Vec<String>,
}

impl Coordinator {
    pub(crate) fn new(
        store: CheckpointStore,
        nodes: Vec<(String, ComponentKind)>,
        requests: HashMap<usize, mpsc::UnboundedSender<u64>>,
    ) -> Self {
        let first_id = store.last_id() + 1;
        let nodes: BTreeMap<usize, (String, ComponentKind)> =
            nodes.into_iter().enumerate().collect();
        let sink_epochs = nodes
            .iter()
            .filter(|(_, (_, k))| *k == ComponentKind::Sink)
            .map(|(&i, _)| (i, (Default::default(), first_id - 1)))
            .collect();
        Coordinator {
            telemetry: store.telemetry(),
            store: Arc::new(Mutex::new(store)),
            nodes,
            paused: false,
            pause_waiters: Vec::new(),
            requests,
            next_id: first_id,
            first_id,
            finals: HashMap::new(),
            sink_epochs,
            in_flight: None,
            completed: 0,
        }
    }

    /// The id the first barrier of this run will have (sinks number their epochs from it).
    pub(crate) fn first_id(&self) -> u64 {
        self.first_id
    }

    /// The checkpoint directory, shared with the runner (sources taking over on reload).
    pub(crate) fn store(&self) -> Arc<Mutex<CheckpointStore>> {
        self.store.clone()
    }

    pub(crate) async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) -> CheckpointSummary {
        let interval = Duration::from_millis(self.lock_store().config.interval_ms);
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut summary = CheckpointSummary {
            last_id: self.first_id - 1,
            ..Default::default()
        };
        loop {
            tokio::select! {
                _ = timer.tick() => self.start(),
                r = reports.recv() => match r {
                    None => break,
                    Some(Report::End { clean }) => {
                        if clean {
                            self.in_flight = None;
                            let id = self.next_id;
                            self.next_id += 1;
                            let mut cp = InFlight {
                                id,
                                positions: HashMap::new(),
                                states: HashMap::new(),
                                failed: None,
                                started: Instant::now(),
                            };
                            if self.fill_from_finals(&mut cp) {
                                self.in_flight = Some(cp);
                                self.try_complete(&mut summary).await;
                            } else {
                                summary.errors.push("final checkpoint: not every component reported its final state".into());
                            }
                        }
                        break;
                    }
                    Some(r) => {
                        self.handle(r);
                        self.try_complete(&mut summary).await;
                        if self.in_flight.is_none() {
                            for w in self.pause_waiters.drain(..) {
                                let _ = w.send(self.next_id);
                            }
                        }
                    }
                },
            }
        }
        summary.completed = self.completed;
        summary
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, CheckpointStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&mut self) {
        if self.in_flight.is_some() || self.paused {
            return;
        }
        let live_sources = self
            .requests
            .keys()
            .any(|node| !self.finals.contains_key(node));
        if !live_sources {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for (node, tx) in &self.requests {
            if !self.finals.contains_key(node) {
                let _ = tx.send(id);
            }
        }
        self.in_flight = Some(InFlight {
            id,
            positions: HashMap::new(),
            states: HashMap::new(),
            failed: None,
            started: Instant::now(),
        });
    }

    /// Fills what finished components contribute; false if one of them failed.
    fn fill_from_finals(&self, cp: &mut InFlight) -> bool {
        let mut ok = true;
        for (i, (_, kind)) in &self.nodes {
            match (kind, self.finals.get(i)) {
                (ComponentKind::Source, Some(Final::Position(p))) => {
                    cp.positions.entry(*i).or_insert_with(|| p.clone());
                }
                (ComponentKind::Transform, Some(Final::State(s))) => {
                    cp.states.entry(*i).or_insert_with(|| s.clone());
                }
                (ComponentKind::Sink, Some(Final::SinkDone)) => {}
                (_, Some(Final::Failed)) | (_, None) => ok = false,
                _ => {}
            }
        }
        ok
    }

    fn name(&self, node: usize) -> &str {
        self.nodes.get(&node).map_or("?", |n| n.0.as_str())
    }

    fn handle(&mut self, report: Report) {
        let slot = match &report {
            Report::SourceBarrier { node, .. }
            | Report::SourceFinal { node, .. }
            | Report::TransformBarrier { node, .. }
            | Report::TransformFinal { node, .. }
            | Report::SinkEpoch { node, .. }
            | Report::Finished { node, .. } => Some(*node),
            _ => None,
        };
        if slot.is_some_and(|s| !self.nodes.contains_key(&s)) {
            // An instance a reload replaced: it drains, it is no longer part of
            // checkpoints.
            return;
        }
        match report {
            Report::SourceBarrier { node, id, position } => {
                if let Some(cp) = self.in_flight.as_mut().filter(|c| c.id == id) {
                    cp.positions.insert(node, position);
                }
            }
            Report::SourceFinal { node, position } => {
                self.finals.insert(node, Final::Position(position));
            }
            Report::TransformBarrier { node, id, state } => {
                let name = self.name(node).to_string();
                if let Some(cp) = self.in_flight.as_mut().filter(|c| c.id == id) {
                    match state {
                        Ok(s) => {
                            cp.states.insert(node, s);
                        }
                        Err(e) => {
                            cp.failed = Some(format!(
                                "checkpoint {id}: transform `{name}` could not snapshot its state: {e}"
                            ))
                        }
                    }
                }
            }
            Report::TransformFinal { node, state } => {
                let f = match state {
                    Ok(s) => Final::State(s),
                    Err(e) => {
                        tracing::error!(component_id = %self.name(node), "cannot snapshot final state: {e}");
                        Final::Failed
                    }
                };
                self.finals.insert(node, f);
            }
            Report::SinkEpoch {
                node,
                id,
                delivered,
            } => {
                if !delivered {
                    let name = self.name(node).to_string();
                    if let Some(cp) = self.in_flight.as_mut() {
                        cp.failed = Some(format!(
                            "checkpoint {}: sink `{name}` did not deliver",
                            cp.id
                        ));
                    }
                    return;
                }
                if let Some((done, upto)) = self.sink_epochs.get_mut(&node) {
                    done.insert(id);
                    while done.remove(&(*upto + 1)) {
                        *upto += 1;
                    }
                }
            }
            Report::Finished { node, ok } => {
                let Some(kind) = self.nodes.get(&node).map(|n| n.1) else {
                    return;
                };
                match (kind, ok) {
                    (ComponentKind::Sink, true) => {
                        self.finals.insert(node, Final::SinkDone);
                    }
                    (_, false) => {
                        self.finals.insert(node, Final::Failed);
                    }
                    // Sources and transforms report their final value themselves.
                    _ => {}
                }
            }
            Report::End { .. } => {}
            Report::Pause { reply } => {
                self.paused = true;
                if self.in_flight.is_none() {
                    let _ = reply.send(self.next_id);
                } else {
                    self.pause_waiters.push(reply);
                }
            }
            Report::Regraph { nodes, requests } => {
                let nodes: BTreeMap<usize, (String, ComponentKind)> = nodes
                    .into_iter()
                    .map(|(slot, id, kind)| (slot, (id, kind)))
                    .collect();
                self.requests.retain(|slot, _| nodes.contains_key(slot));
                self.requests.extend(requests);
                self.finals.retain(|slot, _| nodes.contains_key(slot));
                self.sink_epochs.retain(|slot, _| nodes.contains_key(slot));
                for (slot, (_, kind)) in &nodes {
                    if *kind == ComponentKind::Sink {
                        // A new sink numbers its epochs from the next barrier.
                        self.sink_epochs
                            .entry(*slot)
                            .or_insert_with(|| (Default::default(), self.next_id - 1));
                    }
                }
                self.nodes = nodes;
            }
            Report::Resume => self.paused = false,
        }
    }

    async fn try_complete(&mut self, summary: &mut CheckpointSummary) {
        let Some(mut cp) = self.in_flight.take() else {
            return;
        };
        if let Some(reason) = cp.failed.take() {
            self.fail();
            tracing::warn!("{reason}; abandoned, the next one follows");
            summary.errors.push(reason);
            return;
        }
        let mut ready = true;
        for (i, (_, kind)) in &self.nodes {
            let have = match kind {
                ComponentKind::Source => {
                    cp.positions.contains_key(i)
                        || matches!(self.finals.get(i), Some(Final::Position(_)))
                }
                ComponentKind::Transform => {
                    cp.states.contains_key(i) || matches!(self.finals.get(i), Some(Final::State(_)))
                }
                ComponentKind::Sink => {
                    matches!(self.finals.get(i), Some(Final::SinkDone))
                        || self
                            .sink_epochs
                            .get(i)
                            .is_some_and(|(_, upto)| *upto >= cp.id)
                }
            };
            if !have {
                ready = false;
                break;
            }
        }
        if !ready {
            self.in_flight = Some(cp);
            return;
        }
        self.fill_from_finals(&mut cp);
        let mut sources = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (i, (id, kind)) in &self.nodes {
            match kind {
                ComponentKind::Source => {
                    let p = cp.positions.remove(i).flatten();
                    sources.insert(id.clone(), p.unwrap_or(Value::Null));
                }
                ComponentKind::Transform => {
                    if let Some(Some(s)) = cp.states.remove(i) {
                        states.insert(id.clone(), s);
                    }
                }
                ComponentKind::Sink => {}
            }
        }
        let store = self.store.clone();
        let id = cp.id;
        let started = cp.started;
        let written = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(id, sources, states)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                // From the barrier request to the manifest on disk.
                self.telemetry.last_duration_ns.store(
                    started.elapsed().as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.completed += 1;
                summary.last_id = id;
                tracing::debug!(checkpoint = id, "checkpoint complete");
            }
            Ok(Err(e)) => {
                self.fail();
                tracing::error!("checkpoint {id} could not be written: {e}");
                summary
                    .errors
                    .push(format!("checkpoint {id} could not be written: {e}"));
            }
            Err(e) => {
                self.fail();
                summary
                    .errors
                    .push(format!("checkpoint {id}: writer stopped: {e}"))
            }
        }
    }

    fn fail(&self) {
        self.telemetry
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> CheckpointConfig {
        CheckpointConfig {
            dir: dir.to_path_buf(),
            interval_ms: 10,
            commit_interval_ms: 1,
        }
    }

    #[test]
    fn write_atomic_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("f.json.tmp").exists());
    }

    #[test]
    fn a_checkpoint_round_trips_and_old_state_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(store.last_id(), 0);
        let sources = BTreeMap::from([("in".to_string(), serde_json::json!({"offset": 5}))]);
        store
            .write(
                1,
                sources.clone(),
                BTreeMap::from([("z".to_string(), b"state-1".to_vec())]),
            )
            .unwrap();
        store
            .write(
                2,
                sources,
                BTreeMap::from([("z".to_string(), b"state-2".to_vec())]),
            )
            .unwrap();
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(again.last_id(), 2);
        assert_eq!(
            again.transform_state("z").unwrap().unwrap(),
            b"state-2".to_vec()
        );
        assert_eq!(
            again.source_position("in"),
            Some(serde_json::json!({"offset": 5}))
        );
        let mut store = again;
        for id in 3..=5 {
            store
                .write(
                    id,
                    BTreeMap::new(),
                    BTreeMap::from([("z".to_string(), format!("state-{id}").into_bytes())]),
                )
                .unwrap();
        }
        let names = |d: &Path| file_names(d).unwrap();
        assert_eq!(
            names(&dir.path().join("state")),
            ["z-3.bin", "z-4.bin", "z-5.bin"]
        );
        assert_eq!(
            names(dir.path())
                .into_iter()
                .filter(|n| n.starts_with("checkpoint"))
                .collect::<Vec<_>>(),
            ["checkpoint-3.json", "checkpoint-4.json", "checkpoint.json"],
            "the {KEEP} newest are kept"
        );
    }

    fn write_states(store: &mut CheckpointStore, ids: std::ops::RangeInclusive<u64>) {
        for id in ids {
            store
                .write(
                    id,
                    BTreeMap::from([("in".to_string(), serde_json::json!(id * 10))]),
                    BTreeMap::from([("z".to_string(), format!("state-{id}").into_bytes())]),
                )
                .unwrap();
        }
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        write_states(&mut store, 1..=3);
        fs::write(dir.path().join("state/z-3.bin"), b"state-X").unwrap();
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(again.last_id(), 2);
        assert_eq!(again.transform_state("z").unwrap().unwrap(), b"state-2");
        assert_eq!(again.source_position("in"), Some(serde_json::json!(20)));
        assert_eq!(
            again
                .telemetry()
                .restore_fallbacks
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The next checkpoint replaces the damaged one and keeps the intact ones.
        let mut store = again;
        write_states(&mut store, 4..=4);
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(again.last_id(), 4);
        assert_eq!(again.history.len(), 2);
        assert_eq!(again.history[0].manifest.id, 2);

        // A garbled or missing checkpoint.json: the same.
        fs::write(dir.path().join(MANIFEST), b"{\"version\":1,").unwrap();
        assert_eq!(
            CheckpointStore::open(&config(dir.path()))
                .unwrap()
                .last_id(),
            2
        );
        fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        assert_eq!(
            CheckpointStore::open(&config(dir.path()))
                .unwrap()
                .last_id(),
            2
        );
    }

    #[test]
    fn a_damaged_only_state_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        write_states(&mut store, 1..=1);
        let path = dir.path().join("state/z-1.bin");
        fs::write(&path, b"state-X").unwrap();
        let e = CheckpointStore::open(&config(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum") && e.contains("--reset-state"), "{e}");
        fs::write(&path, b"abc").unwrap();
        let e = CheckpointStore::open(&config(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 bytes"), "{e}");
    }

    #[test]
    fn positions_without_a_manifest_are_refused_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        store.begin(BTreeMap::new()).unwrap();
        assert!(
            dir.path().join(MANIFEST).exists(),
            "a first, empty checkpoint"
        );
        let h = store.source_handle("in");
        h.commit(serde_json::json!(25)).unwrap();
        h.flush().unwrap();
        assert_eq!(
            CheckpointStore::open(&config(dir.path()))
                .unwrap()
                .source_position("in"),
            Some(serde_json::json!(25))
        );
        fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        let e = CheckpointStore::open(&config(dir.path())).unwrap_err();
        assert!(matches!(e, CheckpointError::Missing { .. }), "{e}");
        assert_eq!(reset(&config(dir.path())).unwrap(), 1);
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(again.source_position("in"), None);
    }

    #[test]
    fn a_damaged_acknowledged_position_gives_way_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        write_states(&mut store, 1..=1);
        let acked = dir.path().join("acked/in.json");
        fs::write(&acked, b"{\"version\":").unwrap();
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(again.source_position("in"), Some(serde_json::json!(10)));
        // A source the checkpoint does not place: still an error.
        fs::write(dir.path().join("acked/other.json"), b"{").unwrap();
        let e = CheckpointStore::open(&config(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("other"), "{e}");
    }

    #[test]
    fn a_checkpoint_of_other_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let identity = |path: &str| {
            BTreeMap::from([(
                "in".to_string(),
                InputIdentity {
                    type_name: "file".into(),
                    input: serde_json::json!([{ "path": path }]),
                },
            )])
        };
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        store.begin(identity("/a.jsonl")).unwrap();
        write_states(&mut store, 1..=1);
        let mut again = CheckpointStore::open(&config(dir.path())).unwrap();
        again.begin(identity("/a.jsonl")).unwrap();
        let mut again = CheckpointStore::open(&config(dir.path())).unwrap();
        let e = again.begin(identity("/b.jsonl")).unwrap_err().to_string();
        assert!(e.contains("/a.jsonl") && e.contains("/b.jsonl"), "{e}");
        let mut again = CheckpointStore::open(&config(dir.path())).unwrap();
        let other = BTreeMap::from([(
            "mqtt_in".to_string(),
            InputIdentity {
                type_name: "mqtt".into(),
                input: Value::Null,
            },
        )]);
        let e = again.begin(other).unwrap_err().to_string();
        assert!(e.contains("another") || e.contains("pipeline"), "{e}");
    }

    #[test]
    fn a_file_is_known_by_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl");
        fs::write(&p, vec![b'a'; 100]).unwrap();
        let first = file_identity(&p, false);
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        assert_eq!(
            file_identity(&p, false),
            first,
            "appending keeps the identity"
        );
        fs::write(&p, vec![b'b'; 100]).unwrap();
        assert_ne!(file_identity(&p, false), first, "other content");
        assert_eq!(
            file_identity(&p, true),
            serde_json::json!({"path": fs::canonicalize(&p).unwrap().display().to_string()})
        );
    }

    #[test]
    fn acknowledged_positions_win_only_without_transform_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        store
            .write(
                1,
                BTreeMap::from([("in".to_string(), serde_json::json!(10))]),
                BTreeMap::new(),
            )
            .unwrap();
        let h = store.source_handle("in");
        h.commit(serde_json::json!(25)).unwrap();
        h.flush().unwrap();
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(again.source_position("in"), Some(serde_json::json!(25)));

        let mut store = again;
        store
            .write(
                2,
                BTreeMap::from([("in".to_string(), serde_json::json!(12))]),
                BTreeMap::from([("z".to_string(), b"s".to_vec())]),
            )
            .unwrap();
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        assert_eq!(
            again.source_position("in"),
            Some(serde_json::json!(12)),
            "transform state was taken at 12: resuming at 25 would skip events it never saw"
        );
    }

    #[test]
    fn a_garbled_manifest_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST), b"{\"version\":1,").unwrap();
        let e = CheckpointStore::open(&config(dir.path())).unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
    }
}
