//! Sinks that write local output (files, the terminal). One file per sink; the loop
//! shared by sinks that write synchronously is here. Network sinks live in
//! [`crate::connectors`], grouped by the system they talk to.

pub mod jsonl;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod stdout;

use std::io;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::resilience::{Resilience, RetryPolicy};
use tidegauge_core::telemetry::{BytesSent, ComponentErrorOccurred, EventsSent};
use tidegauge_core::{ComponentError, SinkInput};

/// When a sink flushes what it holds (writes it out, makes it durable, releases the
/// batches' acknowledgements): as soon as its input is idle, so a quiet stream is never
/// held back by a timer, and while the input stays busy at least every `every`, so a busy
/// sink defers durability no longer than that.
#[derive(Debug)]
pub(crate) struct FlushRule {
    every: Duration,
    last: Instant,
    when_idle: bool,
}

impl FlushRule {
    /// Flushes when idle and at least every `every`.
    pub(crate) fn new(every: Duration, now: Instant) -> Self {
        FlushRule {
            every,
            last: now,
            when_idle: true,
        }
    }

    /// Flushes only every `every`, whether the input is idle or not.
    pub(crate) fn timed_only(mut self) -> Self {
        self.when_idle = false;
        self
    }

    /// How long to wait for the next batch. Holding unflushed data, not at all: a
    /// `Recv::Idle` at once says the input is idle.
    pub(crate) fn wait(&self, holding: bool, now: Instant) -> Duration {
        if holding && self.when_idle {
            Duration::ZERO
        } else {
            let left = self
                .every
                .saturating_sub(now.saturating_duration_since(self.last));
            left.max(Duration::from_millis(1))
        }
    }

    /// Whether to flush now: something is held and the input is `idle` or the interval
    /// has passed.
    pub(crate) fn due(&self, holding: bool, idle: bool, now: Instant) -> bool {
        holding
            && ((idle && self.when_idle) || now.saturating_duration_since(self.last) >= self.every)
    }

    /// A flush happened at `now`.
    pub(crate) fn flushed(&mut self, now: Instant) {
        self.last = now;
    }
}

/// A sink that writes batches with blocking I/O. Runs on a thread of its own.
pub(crate) trait BatchWriter: Send + 'static {
    /// Writes every row of the batch (buffered); returns the bytes written.
    fn write(&mut self, batch: &RecordBatch) -> io::Result<u64>;
    /// Makes everything written so far durable (or at least visible, for a terminal).
    fn flush(&mut self) -> io::Result<()>;
    /// What the writer writes to, for error messages.
    fn target(&self) -> String;
    /// Whether a flush is due as soon as the input is idle (true), or only every
    /// `flush_every` (a flush that ends a file, as Parquet's does, would otherwise cut
    /// one file per quiet moment).
    fn flush_when_idle(&self) -> bool {
        true
    }
    /// Whether [`BatchWriter::publish`] does less than a flush. Then an idle input gets
    /// a publish (what was written is seen at once) and the costly flush (an fsync)
    /// comes only every `flush_every` and at the end: a fast stream leaves the sink idle
    /// between most of its batches, and a sync per pause would bound the whole
    /// pipeline by the disk's sync rate.
    fn can_publish(&self) -> bool {
        false
    }
    /// Hands what was written to the target so its readers see it, without making it
    /// durable (a file: written to the system, not synced). Only called when
    /// [`BatchWriter::can_publish`].
    fn publish(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// Goes back to where the last successful flush left the target, dropping whatever
    /// was written since, so those batches can be written again after an error (a file
    /// is cut back to its durable length). Writers that cannot return the error.
    fn rollback(&mut self) -> io::Result<()> {
        Err(io::Error::other(
            "this output cannot be rolled back to retry",
        ))
    }
}

/// Drives `writer`: writes each batch, flushes by the [`FlushRule`] (when the input is
/// idle, and while busy at least every `flush_every`; a writer that can publish
/// publishes when idle and flushes every `flush_every`) and at the end, and
/// releases each batch's finalizers only after the flush that made it durable. A write
/// or flush that fails is not retried; the sink fails.
pub(crate) async fn run_writer(
    writer: impl BatchWriter,
    input: SinkInput,
    cx: SinkContext,
    flush_every: Duration,
) -> Result<(), ComponentError> {
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    run_writer_with_retry(writer, input, cx, flush_every, once).await
}

/// Like [`run_writer`], but when a write or flush fails, the target is rolled back to
/// its last durable state and every batch since is written again, with backoff, as
/// `retry` allows (an outage: a full disk, a server down). Meanwhile nothing more is
/// read: backpressure reaches the sources, memory stays bounded. When the attempts are
/// spent the batches are marked failed and the sink fails.
pub(crate) async fn run_writer_with_retry(
    mut writer: impl BatchWriter,
    mut input: SinkInput,
    cx: SinkContext,
    flush_every: Duration,
    retry: RetryPolicy,
) -> Result<(), ComponentError> {
    let runtime = cx.runtime.clone();
    let component = cx.component;
    let task = tokio::task::spawn_blocking(move || {
        let resilience = Resilience::new(retry);
        // Batches written since the last successful flush, kept to write again.
        let mut pending: Vec<(RecordBatch, Finalizers)> = Vec::new();
        let mut rule = FlushRule::new(flush_every, Instant::now());
        if !writer.flush_when_idle() {
            rule = rule.timed_only();
        }
        let publishing = writer.can_publish();
        // Everything written so far has been published (or flushed).
        let mut published = true;
        // Rolls back and writes every pending batch again, then flushes.
        let recover = |writer: &mut dyn BatchWriterDyn,
                       pending: &mut Vec<(RecordBatch, Finalizers)>,
                       what: &str,
                       first: io::Error|
         -> Result<(), ComponentError> {
            component.emit(ComponentErrorOccurred {
                error: &format!(
                    "cannot {what} {}: {first}; retrying {} batch(es)",
                    writer.target_dyn(),
                    pending.len()
                ),
            });
            let result = resilience.call_blocking(
                None,
                |n| {
                    if n > 1 {
                        tracing::debug!(attempt = n, "retrying {}", writer.target_dyn());
                    }
                    writer.rollback_dyn()?;
                    for (batch, _) in pending.iter() {
                        writer.write_dyn(batch)?;
                    }
                    writer.flush_dyn()
                },
                |_| true,
                |_| {},
            );
            match result {
                Ok(()) => {
                    tracing::info!(
                        component_id = component.id(),
                        "{} accepts writes again",
                        writer.target_dyn()
                    );
                    Ok(())
                }
                Err(e) => {
                    for (_, f) in pending.iter() {
                        f.fail();
                    }
                    Err(ComponentError::new(format!(
                        "cannot {what} {}: {e}",
                        writer.target_dyn()
                    )))
                }
            }
        };
        // The reader of the output went away (a closed pipe): what was written since the
        // last flush is not delivered, and the sink ends without retrying.
        let reader_gone = |writer: &dyn BatchWriterDyn,
                           pending: &mut Vec<(RecordBatch, Finalizers)>| {
            for (_, f) in pending.drain(..) {
                f.fail();
            }
            ComponentError::reader_gone(writer.target_dyn())
        };
        // What a write, publish or flush came to: fine (false), failed and recovered by
        // writing the pending batches again and flushing (true: they are durable now), or
        // the sink's end (the reader gone, or the retries spent).
        let settle = |writer: &mut dyn BatchWriterDyn,
                      pending: &mut Vec<(RecordBatch, Finalizers)>,
                      what: &str,
                      result: io::Result<()>|
         -> Result<bool, ComponentError> {
            match result {
                Ok(()) => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    Err(reader_gone(writer, pending))
                }
                Err(e) => recover(writer, pending, what, e).map(|()| true),
            }
        };
        // Makes what was written durable (recovering as a write does) and releases it.
        let flush = |writer: &mut dyn BatchWriterDyn,
                     pending: &mut Vec<(RecordBatch, Finalizers)>|
         -> Result<(), ComponentError> {
            let result = writer.flush_dyn();
            settle(writer, pending, "flush", result)?;
            release(pending);
            Ok(())
        };
        loop {
            // Holding what no reader has seen yet: look for idleness at once.
            let seen = publishing && published;
            let unseen = !pending.is_empty() && !seen;
            let wait = rule.wait(unseen, Instant::now());
            let idle = match input.blocking_recv_timeout(&runtime, wait) {
                Recv::Batch(batch) => {
                    let rows = batch.num_rows() as u64;
                    let written = writer.write(&batch.data);
                    pending.push((batch.data, batch.finalizers));
                    published = false;
                    let bytes = written.as_ref().ok().copied();
                    if settle(&mut writer, &mut pending, "write to", written.map(drop))? {
                        release(&mut pending);
                        rule.flushed(Instant::now());
                        published = true;
                    }
                    component.emit(EventsSent { count: rows });
                    if let Some(bytes) = bytes {
                        component.emit(BytesSent { bytes });
                    }
                    false
                }
                Recv::Idle => true,
                Recv::Closed => break,
            };
            let holding = !pending.is_empty();
            if rule.due(holding, idle && !publishing, Instant::now()) {
                flush(&mut writer, &mut pending)?;
                rule.flushed(Instant::now());
                published = true;
            } else if idle && publishing && !published {
                let result = writer.publish();
                if settle(&mut writer, &mut pending, "write to", result)? {
                    release(&mut pending);
                    rule.flushed(Instant::now());
                }
                published = true;
            }
        }
        flush(&mut writer, &mut pending)
    });
    task.await
        .map_err(|e| ComponentError::new(format!("writer stopped: {e}")))?
}

/// The batches are durable: their sources may hear so.
fn release(pending: &mut Vec<(RecordBatch, Finalizers)>) {
    pending.drain(..).for_each(|(_, f)| f.release());
}

/// [`BatchWriter`] as a trait object (the recovery closure takes any writer).
trait BatchWriterDyn {
    fn write_dyn(&mut self, batch: &RecordBatch) -> io::Result<u64>;
    fn flush_dyn(&mut self) -> io::Result<()>;
    fn rollback_dyn(&mut self) -> io::Result<()>;
    fn target_dyn(&self) -> String;
}

impl<W: BatchWriter> BatchWriterDyn for W {
    fn write_dyn(&mut self, batch: &RecordBatch) -> io::Result<u64> {
        self.write(batch)
    }
    fn flush_dyn(&mut self) -> io::Result<()> {
        self.flush()
    }
    fn rollback_dyn(&mut self) -> io::Result<()> {
        self.rollback()
    }
    fn target_dyn(&self) -> String {
        self.target()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_input_is_flushed_at_once() {
        let t = Instant::now();
        let rule = FlushRule::new(Duration::from_secs(1), t);
        // Holding data: do not wait for input, so idleness shows at once.
        assert_eq!(rule.wait(true, t), Duration::ZERO);
        assert!(rule.due(true, true, t));
        // Nothing held: nothing to flush, wait for input.
        assert!(!rule.due(false, true, t));
        assert_eq!(rule.wait(false, t), Duration::from_secs(1));
    }

    #[test]
    fn a_busy_input_defers_the_flush_at_most_the_interval() {
        let t = Instant::now();
        let mut rule = FlushRule::new(Duration::from_millis(100), t);
        assert!(!rule.due(true, false, t + Duration::from_millis(99)));
        assert!(rule.due(true, false, t + Duration::from_millis(100)));
        rule.flushed(t + Duration::from_millis(100));
        assert!(!rule.due(true, false, t + Duration::from_millis(150)));
    }

    #[test]
    fn timed_only_ignores_idleness() {
        let t = Instant::now();
        let rule = FlushRule::new(Duration::from_millis(100), t).timed_only();
        assert!(!rule.due(true, true, t + Duration::from_millis(50)));
        assert_eq!(
            rule.wait(true, t + Duration::from_millis(50)),
            Duration::from_millis(50)
        );
        assert!(rule.due(true, true, t + Duration::from_millis(100)));
    }
}
