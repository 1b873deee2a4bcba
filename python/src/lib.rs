//! The native half of the `tidegauge` Python package: the engine's detectors over Arrow
//! data handed over through the Arrow C stream interface.
//!
//! A detector here is the very transform a pipeline (and `tidegauge score`) runs, built
//! from the component registry; each input row becomes one `sensor_id`/`ts`/`value` event
//! (key column, time column, value column), and the columns the transform adds (its
//! statistic, `anomaly_score`, `is_anomaly`, `reason`) are appended to the row.
//!
//! Whole pipelines run here too ([`run`]): a pipeline file on a background runtime, whose
//! `python` sinks ([`sink`]) hand their batches to Python iterators.

mod run;
mod sink;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, RecordBatchReader, StringArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use tidegauge_core::ConfigError;
use tidegauge_core::component::{Transform, TransformContext};
use tidegauge_core::describe as cli_describe;
use tidegauge_core::registry::{self, AnyConfig, ComponentKind, ErasedTransformConfig};

/// What went wrong, by the Python exception it becomes (see `tidegauge/_errors.py`).
#[derive(Debug)]
pub(crate) enum Failure {
    /// A column that is not there.
    MissingColumn(String),
    /// A column of the wrong type.
    ColumnType(String),
    /// A detector name the registry does not know.
    UnknownDetector(String),
    /// A setting the detector refuses.
    Param(String),
    /// A pipeline file that does not load or check (the command line's report).
    InvalidPipeline(String),
    /// A pipeline that could not be built, or failed while running.
    Pipeline(String),
    /// Anything else (bad stream, a checkpoint that does not decode, ...).
    Other(String),
}

impl From<ArrowError> for Failure {
    fn from(e: ArrowError) -> Self {
        Failure::Other(e.to_string())
    }
}

impl Failure {
    pub(crate) fn into_py(self, py: Python<'_>) -> PyErr {
        let (class, message) = match self {
            Failure::MissingColumn(m) => ("MissingColumnError", m),
            Failure::ColumnType(m) => ("ColumnTypeError", m),
            Failure::UnknownDetector(m) => ("UnknownDetectorError", m),
            Failure::Param(m) => ("ParamError", m),
            Failure::InvalidPipeline(m) => ("InvalidPipelineError", m),
            Failure::Pipeline(m) => ("PipelineError", m),
            Failure::Other(m) => ("Error", m),
        };
        match py
            .import("tidegauge._errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.call1((message.clone(),)))
        {
            Ok(exc) => PyErr::from_value(exc),
            Err(_) => PyRuntimeError::new_err(message),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The event shape detectors read in a pipeline.
fn long_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// A detector's configuration, checked against the event shape, ready to build.
struct Spec {
    name: String,
    settings: String,
    config: Box<dyn ErasedTransformConfig>,
    input: SchemaRef,
    output: SchemaRef,
}

impl Spec {
    /// The detector `name` with `settings` (a JSON object), as the registry parses it.
    fn new(name: &str, settings: &str) -> Result<Spec> {
        let d = registry::find(ComponentKind::Transform, name).ok_or_else(|| {
            let known: Vec<&str> = tidegauge_components::transforms::detector::all()
                .iter()
                .map(|d| d.name)
                .collect();
            Failure::UnknownDetector(format!(
                "no detector called `{name}` (detectors: {})",
                known.join(", ")
            ))
        })?;
        let value: serde_json::Value =
            serde_json::from_str(settings).map_err(|e| Failure::Param(e.to_string()))?;
        let config = match d.parse_json(value) {
            Ok(AnyConfig::Transform(t)) => t,
            Ok(_) => {
                return Err(Failure::UnknownDetector(format!(
                    "`{name}` is not a transform"
                )));
            }
            Err(e) => return Err(Failure::Param(format!("{}: {}", e.path, e.message))),
        };
        let input = long_schema();
        let output = config
            .validate(&input)
            .map_err(|e| Failure::Param(format!("{name}: {}", ConfigError::join(&e))))?;
        for needed in ["anomaly_score", "is_anomaly"] {
            if output.index_of(needed).is_err() {
                return Err(Failure::UnknownDetector(format!(
                    "{name} is not a detector: its output has no `{needed}`"
                )));
            }
        }
        Ok(Spec {
            name: name.to_string(),
            settings: settings.to_string(),
            config,
            input,
            output,
        })
    }
}

/// Which columns of the caller's data feed the detector.
#[derive(Clone)]
struct Columns {
    key: Option<String>,
    value: String,
    time: Option<String>,
}

/// A built detector: the transform, its context and the runtime it may need.
struct Judge {
    spec: Spec,
    columns: Columns,
    transform: Box<dyn Transform>,
    cx: TransformContext,
    /// Rows seen so far: the time of rows when there is no time column.
    rows: i64,
    _runtime: tokio::runtime::Runtime,
}

impl Judge {
    fn new(spec: Spec, columns: Columns) -> Result<Judge> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Failure::Other(e.to_string()))?;
        let (transform, cx) = spec
            .config
            .build_alone(
                &spec.name,
                "python",
                spec.input.clone(),
                spec.output.clone(),
                runtime.handle().clone(),
            )
            .map_err(|e| Failure::Param(format!("{}: {e}", spec.name)))?;
        Ok(Judge {
            spec,
            columns,
            transform,
            cx,
            rows: 0,
            _runtime: runtime,
        })
    }

    /// The events of `batch` in the detector's shape.
    fn events(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let column = |role: &str, name: &str| -> Result<&ArrayRef> {
            schema.index_of(name).map(|i| batch.column(i)).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Failure::MissingColumn(format!(
                    "no {role} column `{name}` (columns: {})",
                    names.join(", ")
                ))
            })
        };
        let n = batch.num_rows();
        let value = column("value", &self.columns.value)?;
        if !(value.data_type().is_numeric() || value.data_type() == &DataType::Null) {
            return Err(Failure::ColumnType(format!(
                "value column `{}` is {}, not numeric",
                self.columns.value,
                value.data_type()
            )));
        }
        let value = arrow_cast::cast(value, &DataType::Float64)?;
        let key: ArrayRef = match &self.columns.key {
            Some(k) => key_text(column("key", k)?).map_err(|e| {
                Failure::ColumnType(format!("key column `{k}` cannot be read as text: {e}"))
            })?,
            None => Arc::new(StringArray::new_repeated(&self.columns.value, n)),
        };
        if key.null_count() > 0 {
            return Err(Failure::Other(format!(
                "key column `{}` has missing values",
                self.columns.key.as_deref().unwrap_or_default()
            )));
        }
        let ts: ArrayRef = match &self.columns.time {
            Some(t) => {
                let col = column("time", t)?;
                let ok = col.data_type().is_integer()
                    || matches!(
                        col.data_type(),
                        DataType::Timestamp(..) | DataType::Date64 | DataType::Date32
                    );
                if !ok {
                    return Err(Failure::ColumnType(format!(
                        "time column `{t}` is {}, not an integer or a timestamp",
                        col.data_type()
                    )));
                }
                let col = arrow_cast::cast(col, &DataType::Int64)?;
                if col.null_count() > 0 {
                    return Err(Failure::Other(format!(
                        "time column `{t}` has missing values"
                    )));
                }
                col
            }
            None => Arc::new(Int64Array::from_iter_values(
                self.rows..self.rows + n as i64,
            )),
        };
        self.rows += n as i64;
        Ok(RecordBatch::try_new(
            self.spec.input.clone(),
            vec![key, ts, value],
        )?)
    }

    /// Feeds `batch` to the detector; returns the events it judged so far.
    fn feed(&mut self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let events = self.events(batch)?;
        self.transform
            .process(events, &mut self.cx)
            .map_err(|e| Failure::Other(format!("{}: {e}", self.spec.name)))?;
        Ok(self.cx.take_emitted().map(|(b, _)| b).collect())
    }

    /// Ends the input; returns what the detector still held.
    fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        self.transform
            .flush(&mut self.cx)
            .map_err(|e| Failure::Other(format!("{}: {e}", self.spec.name)))?;
        Ok(self.cx.take_emitted().map(|(b, _)| b).collect())
    }

    /// Waits for the verdicts still with the detector's workers (none without workers).
    fn drain(&mut self) -> Result<Vec<RecordBatch>> {
        self.transform
            .before_checkpoint(&mut self.cx)
            .map_err(|e| Failure::Other(format!("{}: {e}", self.spec.name)))?;
        Ok(self.cx.take_emitted().map(|(b, _)| b).collect())
    }

    /// The columns the detector adds to an event, and their fields.
    fn added(&self) -> Vec<(usize, Field)> {
        self.spec
            .output
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| self.spec.input.index_of(f.name()).is_err())
            .map(|(i, f)| (i, f.as_ref().clone()))
            .collect()
    }

    /// `inputs` with the added columns of `judged` (the same rows, in order) appended.
    /// Without copying when a judged batch covers an input batch (one worker: the
    /// detector answers each batch with one batch of the same rows); otherwise only the
    /// added columns of the pieces covering an input batch are put together.
    fn attach(&self, inputs: &[RecordBatch], judged: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        let rows_in: usize = inputs.iter().map(|b| b.num_rows()).sum();
        let rows_out: usize = judged.iter().map(|b| b.num_rows()).sum();
        if rows_in != rows_out {
            return Err(Failure::Other(format!(
                "{}: {rows_in} rows in, {rows_out} judged",
                self.spec.name
            )));
        }
        let added = self.added();
        let mut out = Vec::with_capacity(inputs.len());
        // The judged batch being read, and the first of its rows not attached yet.
        let (mut at, mut offset) = (0, 0);
        for batch in inputs {
            let schema = output_schema(&batch.schema(), &added);
            let mut columns = batch.columns().to_vec();
            let mut pieces: Vec<Vec<ArrayRef>> = vec![Vec::new(); added.len()];
            let mut wanted = batch.num_rows();
            while wanted > 0 {
                let piece = &judged[at];
                let take = wanted.min(piece.num_rows() - offset);
                for ((i, _), p) in added.iter().zip(&mut pieces) {
                    p.push(piece.column(*i).slice(offset, take));
                }
                wanted -= take;
                offset += take;
                if offset == piece.num_rows() {
                    (at, offset) = (at + 1, 0);
                }
            }
            for p in pieces {
                columns.push(match p.as_slice() {
                    [one] => one.clone(),
                    [] => arrow_array::new_empty_array(
                        added[columns.len() - batch.num_columns()].1.data_type(),
                    ),
                    many => {
                        let refs: Vec<&dyn Array> = many.iter().map(|a| a.as_ref()).collect();
                        arrow_select::concat::concat(&refs)?
                    }
                });
            }
            out.push(RecordBatch::try_new(schema, columns)?);
        }
        Ok(out)
    }
}

/// A key column as the text keys detectors read. Text is taken as it is (`Utf8`) or in
/// one bulk copy (large or view strings); a dictionary has its distinct values converted
/// once and then spread over its rows; other types (integers) are formatted.
fn key_text(column: &ArrayRef) -> std::result::Result<ArrayRef, ArrowError> {
    match column.data_type() {
        DataType::Utf8 => Ok(column.clone()),
        DataType::Dictionary(..) => {
            let dict = column.as_any_dictionary();
            let values = key_text(dict.values())?;
            arrow_select::take::take(&values, dict.keys(), None)
        }
        _ => arrow_cast::cast(column, &DataType::Utf8),
    }
}

fn output_schema(input: &SchemaRef, added: &[(usize, Field)]) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(added.iter().map(|(_, f)| f.clone()));
    Arc::new(Schema::new(fields))
}

/// The batches of an object with `__arrow_c_stream__` (PyArrow, Polars, pandas >= 2.2).
fn import_stream(data: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(Failure::ColumnType(format!(
            "expected Arrow data (an object with __arrow_c_stream__), got {}",
            data.get_type().name()?
        ))
        .into_py(data.py()));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let ptr = capsule.pointer_checked(Some(c"arrow_array_stream"))?;
    // SAFETY: the capsule holds an `ArrowArrayStream` (its name says so); `from_raw`
    // moves it out and leaves a released stream for the capsule's destructor.
    unsafe { RecordBatchStreamReader::from_raw(ptr.as_ptr() as *mut FFI_ArrowArrayStream) }
        .map_err(|e| Failure::Other(e.to_string()).into_py(data.py()))
}

/// Batches handed back to Python: an object with `__arrow_c_stream__`, which
/// `pyarrow.table(...)` or `polars.DataFrame(...)` import without copying.
#[pyclass(module = "tidegauge._native", name = "ArrowStream")]
struct ArrowStream {
    schema: SchemaRef,
    batches: Option<Vec<RecordBatch>>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let batches = self
            .batches
            .take()
            .ok_or_else(|| Failure::Other("this stream was already read".into()).into_py(py))?;
        let reader: Box<dyn RecordBatchReader + Send> = Box::new(RecordBatchIterator::new(
            batches.into_iter().map(Ok),
            self.schema.clone(),
        ));
        let stream = FFI_ArrowArrayStream::new(reader);
        PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }
}

fn columns(key: Option<String>, value: String, time: Option<String>) -> Columns {
    Columns { key, value, time }
}

/// Scores every row of `data` with a fresh detector; returns the rows with the
/// detector's columns appended.
#[pyfunction]
#[pyo3(signature = (data, detector, key, value, time, settings))]
fn score(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    detector: &str,
    key: Option<String>,
    value: String,
    time: Option<String>,
    settings: &str,
) -> PyResult<ArrowStream> {
    let spec = Spec::new(detector, settings).map_err(|e| e.into_py(py))?;
    let reader = import_stream(data)?;
    let input_schema = reader.schema();
    let cols = columns(key, value, time);
    let result = py.detach(move || -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut judge = Judge::new(spec, cols)?;
        judge_stream(&mut judge, reader, &input_schema, Judge::finish)
    });
    let (schema, batches) = result.map_err(|e| e.into_py(py))?;
    Ok(ArrowStream {
        schema,
        batches: Some(batches),
    })
}

/// Feeds every batch of `reader` to `judge`, then takes what `last` gives (the
/// verdicts still held: `finish` at the end of a stream, `drain` between updates), and
/// returns the batches with the detector's columns attached.
fn judge_stream(
    judge: &mut Judge,
    reader: RecordBatchStreamReader,
    input_schema: &SchemaRef,
    last: fn(&mut Judge) -> Result<Vec<RecordBatch>>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut inputs = Vec::new();
    let mut judged = Vec::new();
    for batch in reader {
        let batch = batch?;
        judged.extend(judge.feed(&batch)?);
        inputs.push(batch);
    }
    judged.extend(last(judge)?);
    let schema = output_schema(input_schema, &judge.added());
    Ok((schema, judge.attach(&inputs, &judged)?))
}

fn poisoned(py: Python<'_>) -> PyErr {
    Failure::Other("the detector failed in an earlier call".into()).into_py(py)
}

/// A detector kept between batches (see `tidegauge.Detector`).
#[pyclass(module = "tidegauge._native", name = "NativeDetector")]
struct NativeDetector {
    judge: std::sync::Mutex<Judge>,
}

#[pymethods]
impl NativeDetector {
    #[new]
    #[pyo3(signature = (detector, key, value, time, settings))]
    fn new(
        py: Python<'_>,
        detector: &str,
        key: Option<String>,
        value: String,
        time: Option<String>,
        settings: &str,
    ) -> PyResult<Self> {
        let spec = Spec::new(detector, settings).map_err(|e| e.into_py(py))?;
        let judge = Judge::new(spec, columns(key, value, time)).map_err(|e| e.into_py(py))?;
        Ok(NativeDetector {
            judge: std::sync::Mutex::new(judge),
        })
    }

    /// Judges `data`; returns its rows with the detector's columns.
    fn update(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<ArrowStream> {
        let reader = import_stream(data)?;
        let input_schema = reader.schema();
        let mut guard = self.judge.lock().map_err(|_| poisoned(py))?;
        let judge = &mut *guard;
        // With workers, verdicts come back later: `drain` waits for those of these rows.
        let result = py.detach(move || judge_stream(judge, reader, &input_schema, Judge::drain));
        let (schema, batches) = result.map_err(|e| e.into_py(py))?;
        Ok(ArrowStream {
            schema,
            batches: Some(batches),
        })
    }

    /// The detector's state in the engine's checkpoint encoding (empty: no state yet).
    fn checkpoint(&mut self, py: Python<'_>) -> PyResult<Vec<u8>> {
        let mut guard = self.judge.lock().map_err(|_| poisoned(py))?;
        let judge = &mut *guard;
        judge
            .transform
            .before_checkpoint(&mut judge.cx)
            .and_then(|_| judge.transform.checkpoint())
            .map(Option::unwrap_or_default)
            .map_err(|e| Failure::Other(e.to_string()).into_py(py))
    }

    /// Puts back a state `checkpoint` returned.
    fn restore(&mut self, py: Python<'_>, state: &[u8]) -> PyResult<()> {
        if state.is_empty() {
            return Ok(());
        }
        self.judge
            .lock()
            .map_err(|_| poisoned(py))?
            .transform
            .restore(state)
            .map_err(|e| Failure::Other(format!("cannot restore: {e}")).into_py(py))
    }

    /// The detector's name and settings (JSON), to rebuild it.
    fn spec(&self, py: Python<'_>) -> PyResult<(String, String)> {
        let judge = self.judge.lock().map_err(|_| poisoned(py))?;
        Ok((judge.spec.name.clone(), judge.spec.settings.clone()))
    }
}

/// `tidegauge describe NAME` (or `--json`): every component of that name.
#[pyfunction]
#[pyo3(signature = (name, json=false))]
fn describe(py: Python<'_>, name: &str, json: bool) -> PyResult<String> {
    let found = registry::find_any(name);
    if found.is_empty() {
        let known: Vec<_> = registry::all().iter().map(|d| d.type_name).collect();
        return Err(Failure::UnknownDetector(format!(
            "no component called `{name}` (known: {}){}",
            known.join(", "),
            tidegauge_core::suggest::hint(name, known.iter().copied())
        ))
        .into_py(py));
    }
    let mut out = String::new();
    for (i, d) in found.iter().enumerate() {
        if json {
            let text = serde_json::to_string_pretty(&cli_describe::component_schema(d))
                .map_err(|e| Failure::Other(e.to_string()).into_py(py))?;
            out.push_str(&text);
            out.push('\n');
        } else {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&cli_describe::describe_text(d));
        }
    }
    Ok(out)
}

/// The detector `name`'s JSON Schema, as `tidegauge describe --json NAME` prints it for
/// the transform of that name.
#[pyfunction]
fn detector_schema(py: Python<'_>, name: &str) -> PyResult<String> {
    let d = registry::find(ComponentKind::Transform, name).ok_or_else(|| {
        Failure::UnknownDetector(format!("no detector called `{name}`")).into_py(py)
    })?;
    serde_json::to_string_pretty(&cli_describe::component_schema(d))
        .map_err(|e| Failure::Other(e.to_string()).into_py(py))
}

/// The names of the detectors.
#[pyfunction]
fn detectors() -> Vec<&'static str> {
    tidegauge_components::transforms::detector::all()
        .iter()
        .map(|d| d.name)
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = tidegauge_components::registered_types;
    m.add_function(wrap_pyfunction!(score, m)?)?;
    m.add_function(wrap_pyfunction!(describe, m)?)?;
    m.add_function(wrap_pyfunction!(detectors, m)?)?;
    m.add_function(wrap_pyfunction!(detector_schema, m)?)?;
    m.add_class::<NativeDetector>()?;
    m.add_class::<ArrowStream>()?;
    m.add_function(wrap_pyfunction!(run::run, m)?)?;
    m.add_class::<run::Output>()?;
    m.add_class::<run::ArrowBatch>()?;
    Ok(())
}
