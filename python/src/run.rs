//! `tidegauge.run(...)`: a pipeline file run from Python on a runtime of its own, its
//! `python` sinks read by iterators ([`Output`]).
//!
//! The pipeline is loaded and built in the call (an invalid file or a component that
//! cannot be built raises there, with the command line's message), then runs on a
//! background runtime whose threads are all named `tg-...`. Each `python` sink sends its
//! batches over a bounded channel; an [`Output`] waits for the next one with the GIL
//! released, looking for Ctrl-C (KeyboardInterrupt) every [`SIGNAL_POLL`]. Closing any
//! output of a run (or dropping them all) stops the whole run: shutdown is requested, the
//! channels are closed (batches Python did not take are failed, not acknowledged), and the
//! call returns once the pipeline has drained and the runtime's threads are gone.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arrow_array::{Array, RecordBatch, StructArray};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};
use tidegauge_core::live::{self, RunOptions};
use tidegauge_core::registry::ComponentKind;
use tidegauge_core::topology::{self, RunReport};
use tidegauge_core::{ConfigError, SinkConfig as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::sink::{Delivery, OUTLETS, PythonSinkConfig};

/// How often a waiting iterator lets Python handle signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// How long stopping waits for the runtime's last threads once the pipeline has ended.
const RUNTIME_GRACE: Duration = Duration::from_secs(10);

/// One `python` sink's channel, as its iterator reads it (`None` once ended or closed).
type Outlet = Mutex<Option<mpsc::Receiver<Delivery>>>;

/// A pipeline running for Python.
struct Running {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    shutdown: CancellationToken,
    outlets: Vec<(String, Outlet)>,
    run: Mutex<Option<tokio::task::JoinHandle<RunReport>>>,
    /// Set (and signalled) when the run has ended.
    ended: Arc<(Mutex<bool>, Condvar)>,
    /// How the run ended, once it has: `Err` carries the command line's messages.
    outcome: Mutex<Option<Result<(), String>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (an option
    // taken or not); going on with it is sound.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Running {
    /// Waits for the run to end (once) and says how it ended.
    fn finish(&self) -> Result<(), String> {
        let mut outcome = lock(&self.outcome);
        if let Some(o) = &*outcome {
            return o.clone();
        }
        let joined = lock(&self.run).take().map(|j| self.handle.block_on(j));
        let result = match joined {
            None => Ok(()),
            Some(Ok(report)) if report.failures.is_empty() => Ok(()),
            Some(Ok(report)) => Err(report
                .failures
                .iter()
                .map(|(id, e)| format!("error: component `{id}` failed: {e}"))
                .collect::<Vec<_>>()
                .join("\n")),
            Some(Err(e)) => Err(format!("the pipeline stopped abnormally: {e}")),
        };
        *outcome = Some(result.clone());
        result
    }

    /// Waits at most `wait` for the run to end; whether it has.
    fn wait_end(&self, wait: Duration) -> bool {
        let (ended, signal) = &*self.ended;
        let guard = lock(ended);
        *signal
            .wait_timeout_while(guard, wait, |ended| !*ended)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Stops the run: shutdown requested, every channel closed (what Python did not take
    /// is failed), the pipeline drained, the runtime's threads ended.
    fn stop(&self) {
        self.shutdown.cancel();
        for (_, outlet) in &self.outlets {
            if let Some(rx) = lock(outlet).take() {
                close_outlet(rx);
            }
        }
        let _ = self.finish();
        self.end_runtime();
    }

    /// Shuts the runtime down once no iterator may wait on it any more.
    fn end_runtime(&self) {
        if self.outlets.iter().any(|(_, o)| lock(o).is_some()) {
            return;
        }
        if let Some(runtime) = lock(&self.runtime).take() {
            runtime.shutdown_timeout(RUNTIME_GRACE);
        }
    }
}

/// Closes a channel Python reads no more: the sink's next send fails (and fails its
/// batch), and the batches still queued are failed, not acknowledged (dropping them would
/// count them as delivered).
fn close_outlet(mut rx: mpsc::Receiver<Delivery>) {
    rx.close();
    while let Ok((_, finalizers)) = rx.try_recv() {
        finalizers.fail();
    }
}

/// Tells the waiters of [`Running::wait_end`] that the run has ended, when dropped.
struct EndSignal(Arc<(Mutex<bool>, Condvar)>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        *lock(&self.0.0) = true;
        self.0.1.notify_all();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Loads, checks and builds the pipeline, starts it; returns its outputs' names and the
/// running pipeline. `origin` names the pipeline in messages, as on the command line.
fn start(text: &str, origin: &str) -> Result<(Vec<String>, Arc<Running>), Failure> {
    let pipeline = topology::load(text, &tidegauge_core::config::process_env).map_err(|e| {
        Failure::InvalidPipeline(ConfigError::report(origin, &e).trim_end().to_string())
    })?;
    let mut senders = HashMap::new();
    let mut outlets = Vec::new();
    for node in &pipeline.nodes {
        if node.kind == ComponentKind::Sink && node.type_name == PythonSinkConfig::TYPE {
            let capacity = serde_json::from_value::<PythonSinkConfig>(node.settings.clone())
                .map(|c| c.buffer_batches)
                .unwrap_or(1);
            let (tx, rx) = mpsc::channel(capacity);
            senders.insert(node.id.clone(), tx);
            outlets.push((node.id.clone(), Mutex::new(Some(rx))));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tg-py")
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the pipeline's threads: {e}")))?;
    let handle = runtime.handle().clone();
    let built = runtime
        .block_on(OUTLETS.scope(Mutex::new(senders), topology::build(pipeline)))
        .map_err(|e| Failure::Pipeline(format!("error: {origin}: {e}")))?;
    let shutdown = CancellationToken::new();
    let ended = Arc::new((Mutex::new(false), Condvar::new()));
    let run = {
        let _inside = runtime.enter();
        let (_, run) = live::start(built, shutdown.clone(), RunOptions::default());
        let signal = EndSignal(ended.clone());
        runtime.spawn(async move {
            // Dropped when the run ends, however it ends (a panic included).
            let _signal = signal;
            run.await
        })
    };
    let names = outlets.iter().map(|(n, _)| n.clone()).collect();
    let running = Running {
        runtime: Mutex::new(Some(runtime)),
        handle,
        shutdown,
        outlets,
        run: Mutex::new(Some(run)),
        ended,
        outcome: Mutex::new(None),
    };
    Ok((names, Arc::new(running)))
}

/// `tidegauge.run`: runs the pipeline in `text` (read from `path` when given); returns the
/// names of its `python` sinks and one output per name, in the file's order (a pipeline
/// without one gives a single output named `""` that yields nothing and ends with it).
#[pyfunction]
#[pyo3(signature = (path=None, text=None))]
pub(crate) fn run(
    py: Python<'_>,
    path: Option<std::path::PathBuf>,
    text: Option<String>,
) -> PyResult<Vec<(String, Output)>> {
    let (origin, text) = match (path, text) {
        (Some(p), None) => {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                Failure::Other(format!("cannot read pipeline file {}: {e}", p.display()))
                    .into_py(py)
            })?;
            (p.display().to_string(), text)
        }
        (None, Some(t)) => ("(text)".to_string(), t),
        _ => {
            return Err(Failure::Other(
                "give either a pipeline file or text=, not both nor neither".into(),
            )
            .into_py(py));
        }
    };
    let (names, running) = py
        .detach(|| start(&text, &origin))
        .map_err(|e| e.into_py(py))?;
    if names.is_empty() {
        return Ok(vec![(
            String::new(),
            Output {
                running,
                index: None,
            },
        )]);
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name,
                Output {
                    running: running.clone(),
                    index: Some(i),
                },
            )
        })
        .collect())
}

/// The batches one `python` sink receives, as they come (see `tidegauge.Output`).
#[pyclass(module = "tidegauge._native", name = "NativeOutput")]
pub(crate) struct Output {
    running: Arc<Running>,
    /// Which outlet; `None` for a pipeline without a `python` sink.
    index: Option<usize>,
}

#[pymethods]
impl Output {
    /// The next batch (an object with `__arrow_c_array__`), or `None` at the end of the
    /// run. Raises the run's failures, with the command line's messages, at its end.
    fn next(&self, py: Python<'_>) -> PyResult<Option<ArrowBatch>> {
        let running = &self.running;
        if let Some(i) = self.index {
            let outlet = &running.outlets[i].1;
            loop {
                let got = {
                    let mut guard = lock(outlet);
                    let Some(rx) = guard.as_mut() else { break };
                    let handle = &running.handle;
                    let got = py.detach(|| {
                        handle
                            .block_on(async { tokio::time::timeout(SIGNAL_POLL, rx.recv()).await })
                    });
                    if matches!(got, Ok(None)) {
                        // The sink has ended: nothing more will come.
                        *guard = None;
                    }
                    got
                };
                match got {
                    Ok(Some((batch, finalizers))) => {
                        // Python has taken it: delivered.
                        finalizers.release();
                        return Ok(Some(ArrowBatch { batch: Some(batch) }));
                    }
                    Ok(None) => break,
                    Err(_) => {
                        if let Err(interrupted) = py.check_signals() {
                            py.detach(|| running.stop());
                            return Err(interrupted);
                        }
                    }
                }
            }
        }
        // Every batch of this output has come; the run may still be busy elsewhere (a
        // sink of another output, a file sink flushing). Wait for its end, letting Ctrl-C
        // through.
        while !py.detach(|| running.wait_end(SIGNAL_POLL)) {
            if let Err(interrupted) = py.check_signals() {
                py.detach(|| running.stop());
                return Err(interrupted);
            }
        }
        let outcome = py.detach(|| {
            let outcome = running.finish();
            running.end_runtime();
            outcome
        });
        outcome
            .map(|()| None)
            .map_err(|m| Failure::Pipeline(m).into_py(py))
    }

    /// Stops the run this output belongs to (every output of it ends).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.running.stop());
    }
}

/// One batch handed to Python: an object with `__arrow_c_array__`, which
/// `pyarrow.record_batch(...)` imports without copying.
#[pyclass(module = "tidegauge._native", name = "ArrowBatch")]
pub(crate) struct ArrowBatch {
    batch: Option<RecordBatch>,
}

#[pymethods]
impl ArrowBatch {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema;
        let batch = self
            .batch
            .take()
            .ok_or_else(|| Failure::Other("this batch was already read".into()).into_py(py))?;
        let data = StructArray::from(batch).into_data();
        let (array, schema) = arrow_array::ffi::to_ffi(&data)
            .map_err(|e| Failure::Other(e.to_string()).into_py(py))?;
        let schema = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
        let array = PyCapsule::new_with_value(py, array, c"arrow_array")?;
        PyTuple::new(py, [schema.into_any(), array.into_any()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use tidegauge_core::ack::{Finalizers, ack_channel};

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([(
            "ts",
            Arc::new(Int64Array::from(vec![1, 2])) as arrow_array::ArrayRef,
        )])
        .expect("one column of two rows is a valid batch")
    }

    #[test]
    fn batches_python_did_not_take_are_failed_when_it_closes() {
        let (acks, mut heard) = ack_channel();
        let (tx, rx) = mpsc::channel(4);
        for id in 0..3 {
            tx.try_send((batch(), Finalizers::one(acks.token(id))))
                .expect("room for three");
        }
        drop(acks);
        close_outlet(rx);
        let mut got = Vec::new();
        while let Ok(ack) = heard.try_recv() {
            got.push((ack.id, ack.delivered));
        }
        assert_eq!(got, vec![(0, false), (1, false), (2, false)]);
        // The sink's next send fails: it fails that batch itself.
        assert!(tx.try_send((batch(), Finalizers::none())).is_err());
    }
}
