//! What a checkpoint records beside positions and state: the identity of the sources'
//! input, and the counters of checkpointing.

use std::fs::{self, File};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
