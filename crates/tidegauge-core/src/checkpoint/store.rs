//! The checkpoint directory: atomic writes, the manifest, what the last run left and
//! where this run writes; a source's view of it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CheckpointConfig, CheckpointError, CheckpointTelemetry, InputIdentity};
use crate::dead_letter::DeadLetter;

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
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
pub(super) struct StateEntry {
    /// File under `state/`.
    file: String,
    bytes: u64,
    crc32: u32,
}

/// `checkpoint.json` (the newest) and `checkpoint-<id>.json` (the ones kept before it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    version: u32,
    pub(super) id: u64,
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

/// `acked/<id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AckedFile {
    version: u32,
    time: String,
    position: Value,
}

pub(super) const MANIFEST: &str = "checkpoint.json";
pub(super) const VERSION: u32 = 1;
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
pub(super) struct Found {
    pub(super) file: String,
    pub(super) manifest: Manifest,
}

pub(super) fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A pipeline's checkpoint directory: what the last run left, and where this run writes.
#[derive(Debug)]
pub struct CheckpointStore {
    pub(super) config: CheckpointConfig,
    /// The checkpoint a restart resumes from: the newest intact one.
    manifest: Option<Manifest>,
    /// Whether `checkpoint.json` on disk is `manifest` (else it is missing or damaged
    /// and is not kept when the next checkpoint replaces it).
    newest_on_disk: bool,
    /// Intact checkpoints kept before `manifest`, newest first.
    pub(super) history: Vec<Found>,
    acked: HashMap<String, Value>,
    stateful: bool,
    /// What this run's sources read, recorded with every checkpoint.
    inputs: BTreeMap<String, InputIdentity>,
    telemetry: Arc<CheckpointTelemetry>,
    /// Made durable before any position is written (checkpoint or acknowledged).
    dead_letter: Option<DeadLetter>,
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
pub(super) fn file_names(dir: &Path) -> Result<Vec<String>, CheckpointError> {
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
            dead_letter: None,
        })
    }

    /// The pipeline's dead-letter output: every position written from now on (the
    /// checkpoints' and the acknowledged ones) is written only after the dead letters
    /// written before it are durable, as a sink's data is before its batch is
    /// acknowledged. Handles made earlier are not affected.
    pub fn set_dead_letter(&mut self, dead_letter: DeadLetter) {
        self.dead_letter = Some(dead_letter);
    }

    fn sync_dead_letters(&self) -> Result<(), CheckpointError> {
        match &self.dead_letter {
            Some(dl) => dl.sync().map_err(|source| CheckpointError::Io {
                path: PathBuf::from("dead_letter.path"),
                source,
            }),
            None => Ok(()),
        }
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
            dead_letter: self.dead_letter.clone(),
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
        // The sources' positions skip lines that were dead-lettered: those records must
        // be on disk before a position past them is.
        self.sync_dead_letters()?;
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
pub(super) struct Committer {
    path: PathBuf,
    every: Duration,
    last_write: Option<Instant>,
    pending: Option<Value>,
    dead_letter: Option<DeadLetter>,
}

impl Committer {
    fn write_pending(&mut self) -> io::Result<()> {
        let Some(position) = self.pending.take() else {
            return Ok(());
        };
        if let Some(dl) = &self.dead_letter
            && let Err(e) = dl.sync()
        {
            // Not committed: the dead letters before it are not durable.
            self.pending = Some(position);
            return Err(e);
        }
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
