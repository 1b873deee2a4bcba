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
//!   then the manifest `checkpoint.json` naming them in the same way; older state files
//!   go only after the new manifest is in place. One checkpoint is in flight at a time.
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
    #[error("{path}: {reason}; remove the checkpoint directory to start over")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
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

/// `checkpoint.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
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
struct AckedFile {
    version: u32,
    time: String,
    position: Value,
}

const MANIFEST: &str = "checkpoint.json";
const VERSION: u32 = 1;

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A pipeline's checkpoint directory: what the last run left, and where this run writes.
#[derive(Debug)]
pub struct CheckpointStore {
    config: CheckpointConfig,
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
        let written = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(id, sources, states)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.completed += 1;
                summary.last_id = id;
                tracing::debug!(checkpoint = id, "checkpoint complete");
            }
            Ok(Err(e)) => {
                tracing::error!("checkpoint {id} could not be written: {e}");
                summary
                    .errors
                    .push(format!("checkpoint {id} could not be written: {e}"));
            }
            Err(e) => summary
                .errors
                .push(format!("checkpoint {id}: writer stopped: {e}")),
        }
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
        let files: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, vec!["z-2.bin".to_string()]);
    }

    #[test]
    fn a_damaged_state_file_is_reported_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
        store
            .write(
                1,
                BTreeMap::new(),
                BTreeMap::from([("z".to_string(), b"abcdef".to_vec())]),
            )
            .unwrap();
        let path = dir.path().join("state/z-1.bin");
        fs::write(&path, b"abcdeF").unwrap();
        let again = CheckpointStore::open(&config(dir.path())).unwrap();
        let e = again.transform_state("z").unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        fs::write(&path, b"abc").unwrap();
        let e = again.transform_state("z").unwrap_err().to_string();
        assert!(e.contains("3 bytes"), "{e}");
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
