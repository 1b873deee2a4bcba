//! `python` sink: a pipeline's output handed to Python, batch by batch, through a bounded
//! channel that `tidegauge.run(...)`'s iterator reads.
//!
//! The sink finds its channel through [`OUTLETS`], a task-local value that
//! `tidegauge.run` sets around building the pipeline: one sender per `python` sink, by
//! component id. A pipeline built any other way has none, and the sink says so.

use std::collections::HashMap;
use std::sync::Mutex;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::sink_fn;
use tidegauge_core::telemetry::EventsSent;
use tidegauge_core::{BuildContext, BuildError, ConfigError, Sink, SinkConfig};
use tokio::sync::mpsc;

/// A batch on its way to Python, with the tokens that acknowledge it to its source.
pub(crate) type Delivery = (RecordBatch, Finalizers);

tokio::task_local! {
    /// The senders of the run being built, by sink id; each sink takes its own.
    pub(crate) static OUTLETS: Mutex<HashMap<String, mpsc::Sender<Delivery>>>;
}

/// Hands its input to Python: each batch becomes a `pyarrow.RecordBatch` that the
/// iterator `tidegauge.run(...)` returns yields (through the Arrow C data interface, no
/// Python object per row).
///
/// Only a pipeline started from Python by `tidegauge.run` can have this sink. A batch
/// counts as delivered (acknowledged to its source) when Python takes it; when
/// `buffer_batches` batches wait for Python, the pipeline waits (backpressure). Closing
/// the iterator stops the pipeline: sources stop, stages flush, and what Python did not
/// take is not counted as delivered.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PythonSinkConfig {
    /// How many batches may wait for Python to take them before the pipeline waits.
    #[serde(default = "default_buffer_batches")]
    #[schemars(range(min = 1, max = 1024))]
    pub buffer_batches: usize,
}

fn default_buffer_batches() -> usize {
    4
}

impl SinkConfig for PythonSinkConfig {
    const TYPE: &'static str = "python";

    fn validate(&self, _input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        // `buffer_batches`' range is checked from the schema, as every setting's is.
        Ok(())
    }

    async fn build(
        &self,
        _input: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let id = cx.component.id().to_string();
        let tx = OUTLETS
            .try_with(|o| o.lock().ok().and_then(|mut o| o.remove(&id)))
            .ok()
            .flatten()
            .ok_or_else(|| {
                BuildError::new(format!(
                    "sinks.{id}: a `python` sink hands its batches to Python; run this pipeline with tidegauge.run(...) from Python, or give the sink another type"
                ))
            })?;
        let component = cx.component;
        Ok(sink_fn(move |mut input, _cx| async move {
            while let Some(batch) = input.recv().await {
                let rows = batch.num_rows() as u64;
                if let Err(mpsc::error::SendError((_, finalizers))) =
                    tx.send((batch.data, batch.finalizers)).await
                {
                    // Python closed the iterator: this batch and what is left unread are
                    // not delivered; the pipeline is being stopped.
                    finalizers.fail();
                    return Ok(());
                }
                component.emit(EventsSent { count: rows });
            }
            Ok(())
        }))
    }
}

tidegauge_core::register_sink!(PythonSinkConfig);
