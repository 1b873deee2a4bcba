//! A running pipeline that can be watched, tuned and rewired while it runs. This is the
//! one runner: [`BuiltPipeline::run`] is [`start`] without a handle.
//!
//! [`start`] spawns every component of a built pipeline (sources and sinks as tasks,
//! transforms on threads of their own) joined by one bounded channel per edge, and
//! returns a [`LiveHandle`] and the future that drives the run to its end.
//!
//! - Each component's output is a [`Fanout`](crate::component::Fanout) shared with the
//!   runner, so the graph can be rewired without stopping anything: an edge nobody lists
//!   any more closes once the sends in flight are done, and its consumer drains, flushes
//!   and ends.
//! - Each transform answers [`ControlRequest`](crate::control::ControlRequest)s between
//!   batches (its tunable parameters), and at a checkpoint barrier snapshots its state and
//!   forwards the barrier (see [`crate::checkpoint`]: barriers are aligned across a
//!   component's input edges, sinks close an epoch per barrier and release its
//!   acknowledgements once durable).
//! - A reload ([`ReloadRequest`]) compares the new pipeline with the running one: unchanged
//!   components keep running with their state and their input edges; components whose
//!   only changes are tunable parameters are changed in place (state kept); the rest are
//!   built anew (first, so a failing build leaves the running pipeline untouched) and
//!   swapped in, the old instances draining into their old edges. What changes is
//!   decided by a pure function (`plan::plan`); carrying it out is the runner's job.
//!
//! # Reload and checkpoints
//!
//! With a `[checkpoint]` table, the graph changes only between two checkpoints: a reload
//! that replaces, adds or removes components first waits for the checkpoint in flight to
//! complete (giving up, with nothing changed, after 30 s), and no checkpoint starts again
//! until every replaced instance has drained and ended. A checkpoint therefore never
//! mixes old and new instances, and every barrier crosses one graph. A replaced source
//! stops, waits for every batch it sent to be acknowledged and commits that position;
//! its successor starts only then, from that position, so nothing acknowledged is lost
//! and nothing is read twice by the transforms that kept running. Without checkpoints a
//! rebuilt source starts as a freshly built one does.
//!
//! A sink that replaces a running one (with or without checkpoints) is built only once
//! that one has drained, flushed and ended: both may write the same file, and a disk
//! buffer has one owner. Meanwhile its input edges fill and backpressure holds upstream.

mod anomaly_tap;
mod handle;
mod plan;
mod reload;
mod runner;
pub mod sensor_history;
mod spawn;
mod transform_loop;

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::topology::{BuiltPipeline, Pipeline, RunReport};

pub use handle::{ComponentView, LiveHandle, ParamChange, ParamError};
pub use sensor_history::SensorHistory;

/// How to run.
#[derive(Default)]
pub struct RunOptions {
    /// Measure waits per stage (the profiler).
    pub profile: bool,
    /// Where reload requests arrive; `None` for a pipeline that is never reloaded.
    pub reloads: Option<mpsc::Receiver<ReloadRequest>>,
    /// Where every detector's verdicts are kept for live views (the dashboard's charts);
    /// `None` keeps none.
    pub history: Option<std::sync::Arc<SensorHistory>>,
}

/// A request to replace the running pipeline with `pipeline` (already validated).
pub struct ReloadRequest {
    /// The new pipeline.
    pub pipeline: Pipeline,
    /// What was done, or why nothing was.
    pub reply: oneshot::Sender<Result<ReloadSummary, String>>,
}

/// What a reload did, by component id.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReloadSummary {
    /// Running on, untouched.
    pub kept: Vec<String>,
    /// Running on with parameters changed in place (state kept).
    pub retuned: Vec<String>,
    /// Built anew and swapped in.
    pub rebuilt: Vec<String>,
    /// New components.
    pub added: Vec<String>,
    /// Components no longer in the pipeline (drained and stopped).
    pub removed: Vec<String>,
    /// The parameters changed in place, old and new values.
    pub changes: Vec<ParamChange>,
}

impl ReloadSummary {
    /// Whether the reload changed nothing.
    pub fn is_noop(&self) -> bool {
        self.retuned.is_empty()
            && self.rebuilt.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
    }
}

/// Starts every component of `built`; returns the handle on the running pipeline and the
/// future that runs it to its end (end of input, failure, or `shutdown`). Must be called
/// inside a tokio runtime.
pub fn start(
    built: BuiltPipeline,
    shutdown: CancellationToken,
    options: RunOptions,
) -> (LiveHandle, impl Future<Output = RunReport> + Send + 'static) {
    runner::start(built, shutdown, options)
}

impl BuiltPipeline {
    /// Runs until every source has finished (end of input) or `shutdown` is cancelled,
    /// then drains: transforms flush, sinks flush and close. With checkpoints configured,
    /// takes them while running and a final one after a clean end. See [`crate::live`]
    /// for a run that can be watched, tuned and reloaded.
    pub async fn run(self, shutdown: CancellationToken) -> RunReport {
        let (_, run) = start(self, shutdown, RunOptions::default());
        run.await
    }
}
