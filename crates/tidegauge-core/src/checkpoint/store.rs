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

use super::{CheckpointConfig, CheckpointError};

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

/// `checkpoint.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    version: u32,
    id: u64,
    time: String,
    /// Source id -> position (null for sources that cannot resume).
    sources: BTreeMap<String, Value>,
    /// Transform id -> state file (transforms without state are absent).
    transforms: BTreeMap<String, StateEntry>,
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

pub(super) fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A pipeline's checkpoint directory: what the last run left, and where this run writes.
#[derive(Debug)]
pub struct CheckpointStore {
    pub(super) config: CheckpointConfig,
    manifest: Option<Manifest>,
    acked: HashMap<String, Value>,
    stateful: bool,
}

impl CheckpointStore {
    /// Opens (creating) the directory and reads what an earlier run left. A manifest or
    /// acknowledged-position file that cannot be parsed is an error: starting over
    /// silently would replay or skip data.
    pub fn open(config: &CheckpointConfig) -> Result<Self, CheckpointError> {
        let dir = &config.dir;
        for d in [dir.clone(), dir.join("state"), dir.join("acked")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let manifest_path = dir.join(MANIFEST);
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => Some(serde_json::from_slice::<Manifest>(&bytes).map_err(|e| {
                CheckpointError::Corrupt {
                    path: manifest_path.clone(),
                    reason: format!("not a checkpoint manifest: {e}"),
                }
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&manifest_path)(e)),
        };
        let mut acked = HashMap::new();
        let acked_dir = dir.join("acked");
        for entry in fs::read_dir(&acked_dir).map_err(io_err(&acked_dir))? {
            let entry = entry.map_err(io_err(&acked_dir))?;
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let file: AckedFile =
                serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                    path: path.clone(),
                    reason: format!("not an acknowledged position: {e}"),
                })?;
            acked.insert(id.to_string(), file.position);
        }
        Ok(CheckpointStore {
            config: config.clone(),
            manifest,
            acked,
            stateful: false,
        })
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
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(CheckpointError::Corrupt {
                path,
                reason: format!("{} bytes, the manifest says {}", bytes.len(), entry.bytes),
            });
        }
        let crc = crc32fast::hash(&bytes);
        if crc != entry.crc32 {
            return Err(CheckpointError::Corrupt {
                path,
                reason: format!(
                    "checksum {crc:08x} does not match the manifest's {:08x}",
                    entry.crc32
                ),
            });
        }
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

    /// Writes checkpoint `id`: state files first, then the manifest; then removes state
    /// files of earlier checkpoints.
    pub fn write(
        &mut self,
        id: u64,
        sources: BTreeMap<String, Value>,
        states: BTreeMap<String, Vec<u8>>,
    ) -> Result<(), CheckpointError> {
        let state_dir = self.config.dir.join("state");
        let mut transforms = BTreeMap::new();
        for (name, bytes) in &states {
            let file = format!("{name}-{id}.bin");
            let path = state_dir.join(&file);
            {
                let mut f = File::create(&path).map_err(io_err(&path))?;
                f.write_all(bytes).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
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
        };
        let path = self.config.dir.join(MANIFEST);
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(io_err(&path))?;
        // Earlier state files are no longer referenced.
        let keep: Vec<&str> = manifest
            .transforms
            .values()
            .map(|e| e.file.as_str())
            .collect();
        if let Ok(entries) = fs::read_dir(&state_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".bin") && !keep.contains(&name.as_ref()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        self.manifest = Some(manifest);
        Ok(())
    }
}

#[derive(Debug)]
pub(super) struct Committer {
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
