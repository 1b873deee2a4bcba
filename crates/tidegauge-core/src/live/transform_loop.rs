//! The loop of a transform's thread.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::anomaly_tap::AnomalyTap;
use super::sensor_history::{HistoryColumns, SensorHistory};
use crate::ack::Finalizers;
use crate::batch::Batch;
use crate::checkpoint::{Report, ReportPort};
use crate::component::{
    ComponentContext, Event, Output, SendError, SinkInput, Transform, TransformContext,
};
use crate::control::{self, ControlRequest};
use crate::error::ComponentError;
use crate::telemetry::BatchProcessed;

enum Step {
    Control(ControlRequest),
    Input(Event),
}

/// What a transform's thread reads from and writes to.
pub(super) struct TransformIo {
    pub(super) input: SinkInput,
    pub(super) out: Output,
    pub(super) requests: mpsc::Receiver<ControlRequest>,
    pub(super) reports: Option<ReportPort>,
}

/// The loop of a transform's thread: process each batch, send its outputs with the
/// input's finalizers, snapshot state at checkpoint barriers, answer control requests
/// between batches, tick on silence, flush at the end.
pub(super) fn run_transform(
    mut transform: Box<dyn Transform>,
    io: TransformIo,
    component: ComponentContext,
    runtime: &tokio::runtime::Handle,
    history: Option<std::sync::Arc<SensorHistory>>,
) -> Result<(), ComponentError> {
    let TransformIo {
        mut input,
        mut out,
        mut requests,
        reports,
    } = io;
    let telemetry = component.telemetry().clone();
    // Only detectors, which declare where their verdicts are, feed the live views.
    let verdicts = transform.verdict_columns();
    let tap = verdicts
        .as_ref()
        .and_then(|v| AnomalyTap::new(out.schema(), v));
    telemetry.set_detector(tap.is_some());
    let history = history.zip(verdicts.as_ref()).and_then(|(h, v)| {
        HistoryColumns::new(out.schema(), v).map(|c| Recorder {
            history: h,
            columns: c,
        })
    });
    let mut cx = TransformContext::new(component);
    let mut last_tick = Instant::now();
    loop {
        let tick = transform.tick_interval();
        let since_tick = last_tick.elapsed();
        let step = runtime.block_on(async {
            tokio::select! {
                biased;
                Some(request) = requests.recv() => Step::Control(request),
                next = async {
                    match tick {
                        Some(every) => {
                            let wait = every.saturating_sub(since_tick);
                            input.next_event_timeout(wait.max(Duration::from_millis(1))).await
                        }
                        None => input.next_event().await,
                    }
                } => Step::Input(next),
            }
        });
        let next = match step {
            Step::Control(request) => {
                control::answer(&telemetry.id, transform.as_mut(), request);
                continue;
            }
            Step::Input(next) => next,
        };
        match next {
            Event::Batch(b) => {
                let started = Instant::now();
                cx.set_finalizers(b.finalizers);
                transform.process(b.data, &mut cx)?;
                cx.set_finalizers(Finalizers::none());
                telemetry.emit(BatchProcessed {
                    elapsed: started.elapsed(),
                });
            }
            Event::Barrier(id) => {
                // Work still in flight inside the transform is finished and its outputs
                // sent before the barrier: state and outputs are then exactly those of
                // the events before it.
                transform.before_checkpoint(&mut cx)?;
                if !forward(&mut cx, &mut out, tap.as_ref(), history.as_ref())? {
                    return Ok(());
                }
                if let Some(port) = &reports {
                    port.send(Report::TransformBarrier {
                        node: port.node,
                        id,
                        state: transform.checkpoint().map_err(|e| e.message),
                        covered: transform.checkpoint_tokens(),
                    });
                }
                match out.blocking_send_barrier(id) {
                    Ok(()) => {}
                    Err(SendError::Closed) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            Event::Idle => {}
            Event::Closed => {
                if let Some(port) = &reports {
                    transform.before_checkpoint(&mut cx)?;
                    port.send(Report::TransformFinal {
                        node: port.node,
                        state: transform.checkpoint().map_err(|e| e.message),
                    });
                }
                transform.flush(&mut cx)?;
                forward(&mut cx, &mut out, tap.as_ref(), history.as_ref())?;
                return Ok(());
            }
        }
        if let Some(every) = transform.tick_interval()
            && last_tick.elapsed() >= every
        {
            last_tick = Instant::now();
            transform.tick(SystemTime::now(), &mut cx)?;
        }
        if !forward(&mut cx, &mut out, tap.as_ref(), history.as_ref())? {
            return Ok(());
        }
    }
}

/// Sends what the transform emitted, each batch with its tokens. `Ok(false)` when
/// downstream has gone away.
fn forward(
    cx: &mut TransformContext,
    out: &mut Output,
    tap: Option<&AnomalyTap>,
    history: Option<&Recorder>,
) -> Result<bool, ComponentError> {
    let telemetry = cx.component().telemetry().clone();
    for (data, finalizers) in cx.take_emitted() {
        if let Some(tap) = tap {
            tap.scan(&data, &telemetry);
        }
        if let Some(r) = history {
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            r.columns.record(&data, &telemetry.id, &r.history, now_ms);
        }
        match out.blocking_send(Batch::with_finalizers(data, finalizers)) {
            Ok(()) => {}
            Err(SendError::Closed) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// A detector's history columns and the store they go to.
struct Recorder {
    history: std::sync::Arc<SensorHistory>,
    columns: HistoryColumns,
}
