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
//!   forwards the barrier. With the state it hands over the acknowledgement tokens it held
//!   for the events that state covers ([`Transform::checkpoint_tokens`]: a window's open
//!   windows); the coordinator drops them once the checkpoint is written or abandoned.
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
//!
//! A transform that holds events back (a window holds the tokens of the events in its
//! open windows until it emits them) would otherwise keep its sources' acknowledged
//! positions far behind, and a restart mixing the state of barrier `n` with a source's
//! acknowledged position would count events twice (position earlier than `n`) or lose
//! them (later). Neither happens: such a transform has state, so its sources resume
//! from the checkpoint's positions, which are exactly the positions of barrier `n`
//! whose state is restored. The tokens it holds at a barrier are therefore released
//! once the checkpoint holding that state is written: from then on the events are safe
//! in the checkpoint, not in the transform's memory. Releasing them on an abandoned
//! checkpoint too is equally safe (a restart uses the previous complete checkpoint,
//! state and positions together), and keeps a failing disk from stalling the sources.
//! The results emitted later from restored state are covered like any output: the
//! checkpoint after them completes only once the sinks have made them durable.

mod coordinator;
mod identity;
mod store;
#[cfg(test)]
mod tests;

pub use coordinator::CheckpointSummary;
pub(crate) use coordinator::{Coordinator, Report, ReportPort};
pub use identity::{CheckpointTelemetry, InputIdentity, file_identity};
pub use store::{CheckpointStore, KEEP, SourceCheckpoint, reset, sync_dir, write_atomic};

use std::io;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use store::MANIFEST;

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
    /// What the schema's ranges cannot say (they are checked from the schema when the
    /// file is read); paths under `checkpoint`.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.dir.as_os_str().is_empty() {
            errors.push(ConfigError::new("checkpoint.dir", "expected a directory"));
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
