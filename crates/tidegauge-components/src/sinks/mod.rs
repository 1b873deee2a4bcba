//! Sinks: where events go. One file per sink; the loop shared by sinks that write
//! synchronously (files, the terminal) is here.

#[cfg(feature = "http")]
pub mod http;
pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(feature = "mqtt", feature = "kafka", feature = "nats"))]
pub mod message;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "parquet")]
pub mod parquet;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod stdout;

use std::io;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::telemetry::{BytesSent, EventsSent};
use tidegauge_core::{ComponentError, SinkInput};

/// A sink that writes batches with blocking I/O. Runs on a thread of its own.
pub(crate) trait BatchWriter: Send + 'static {
    /// Writes every row of the batch (buffered); returns the bytes written.
    fn write(&mut self, batch: &RecordBatch) -> io::Result<u64>;
    /// Makes everything written so far durable (or at least visible, for a terminal).
    fn flush(&mut self) -> io::Result<()>;
    /// What the writer writes to, for error messages.
    fn target(&self) -> String;
}

/// Drives `writer`: writes each batch, flushes every `flush_every` and at the end, and
/// releases each batch's finalizers only after the flush that made it durable.
pub(crate) async fn run_writer(
    mut writer: impl BatchWriter,
    mut input: SinkInput,
    cx: SinkContext,
    flush_every: Duration,
) -> Result<(), ComponentError> {
    let runtime = cx.runtime.clone();
    let component = cx.component;
    let task = tokio::task::spawn_blocking(move || {
        let mut pending: Vec<Finalizers> = Vec::new();
        let mut last_flush = Instant::now();
        let fail = |pending: Vec<Finalizers>, what: &str, e: io::Error, target: String| {
            for f in &pending {
                f.fail();
            }
            ComponentError::new(format!("{what} {target}: {e}"))
        };
        loop {
            let wait = flush_every.saturating_sub(last_flush.elapsed());
            match input.blocking_recv_timeout(&runtime, wait.max(Duration::from_millis(1))) {
                Recv::Batch(batch) => {
                    let rows = batch.num_rows() as u64;
                    pending.push(batch.finalizers);
                    match writer.write(&batch.data) {
                        Ok(bytes) => {
                            component.emit(EventsSent { count: rows });
                            component.emit(BytesSent { bytes });
                        }
                        Err(e) => return Err(fail(pending, "cannot write to", e, writer.target())),
                    }
                }
                Recv::Idle => {}
                Recv::Closed => break,
            }
            if last_flush.elapsed() >= flush_every {
                if let Err(e) = writer.flush() {
                    return Err(fail(pending, "cannot flush", e, writer.target()));
                }
                pending.drain(..).for_each(Finalizers::release);
                last_flush = Instant::now();
            }
        }
        if let Err(e) = writer.flush() {
            return Err(fail(pending, "cannot flush", e, writer.target()));
        }
        pending.drain(..).for_each(Finalizers::release);
        Ok(())
    });
    task.await
        .map_err(|e| ComponentError::new(format!("writer stopped: {e}")))?
}
