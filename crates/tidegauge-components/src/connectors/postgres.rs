//! `postgres` sink: events into a PostgreSQL table with batched `COPY`. A lost connection
//! is re-established and the batch copied again (retries with backoff through the shared
//! resilience layer); `COPY` is atomic, so a batch is either stored whole or not at all.

use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, SchemaRef};
use futures_util::SinkExt;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::sink_fn;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::resilience::{
    BreakerConfig, CircuitBreaker, Resilience, RetryError, RetryPolicy,
};
use tidegauge_core::telemetry::{BytesSent, ComponentErrorOccurred, EventsSent};
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Sink, SinkConfig,
    SinkInput,
};
use tokio_postgres::NoTls;

use crate::secret::Secret;
use crate::sinks::FlushRule;

/// Writes events into a PostgreSQL table, one row per event, with batched `COPY`.
///
/// Columns are the input's fields, by name. With `create_table = true` the table is
/// created when missing (text, bigint, double precision, boolean columns). Batches are
/// acknowledged upstream once committed. On a lost connection the sink reconnects and
/// copies the batch again (`retry`); a row the database rejects (a constraint, a type)
/// is found by splitting the batch and dead-lettered with the database's reason.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection settings, libpq style: `host=db port=5432 user=tidegauge dbname=telemetry`
    /// (no password here: use `password`).
    #[schemars(example = &"host=localhost user=tidegauge dbname=telemetry")]
    pub connection: String,
    /// Password (use `${ENV_VAR}`); never logged or printed.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Table to write, optionally schema-qualified (`public.readings`).
    #[schemars(example = &"anomalies")]
    pub table: String,
    /// Create the table when it does not exist.
    #[serde(default)]
    pub create_table: bool,
    /// Most rows per `COPY`; batches are merged up to this.
    #[serde(default = "default_max_rows")]
    #[schemars(range(min = 1))]
    pub max_rows: usize,
    /// Rows are copied as soon as the input is idle; while more keep coming, this is the
    /// longest rows wait to be copied, in milliseconds.
    #[serde(default = "default_flush_interval_ms")]
    #[schemars(range(min = 1))]
    pub flush_interval_ms: u64,
    /// Retries of a `COPY` after a lost connection (backoff with jitter, shared budget).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Circuit breaker around the database.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Timeout of one `COPY` (connecting included), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
}

fn default_max_rows() -> usize {
    50_000
}
fn default_flush_interval_ms() -> u64 {
    500
}
fn default_timeout_ms() -> u64 {
    30_000
}

/// `"name"` with quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` quoted part by part.
fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn sql_type(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "bigint",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => "bigint",
        DataType::Float32 | DataType::Float64 => "double precision",
        DataType::Boolean => "boolean",
        _ => "text",
    }
}

impl SinkConfig for PostgresSinkConfig {
    const TYPE: &'static str = "postgres";

    fn validate(&self, _input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        match self.connection.parse::<tokio_postgres::Config>() {
            Ok(c) if c.get_password().is_some() => errors.push(ConfigError::new(
                "connection",
                "holds a password; put it in `password` (never printed) instead",
            )),
            Ok(_) => {}
            Err(e) => errors.push(ConfigError::new("connection", e.to_string())),
        }
        let parts: Vec<&str> = self.table.split('.').collect();
        if self.table.trim().is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            errors.push(ConfigError::new(
                "table",
                "expected `table` or `schema.table`",
            ));
        }
        errors.extend(self.retry.validate("retry"));
        errors.extend(self.breaker.validate("breaker"));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn build(&self, input: SchemaRef, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let mut pg: tokio_postgres::Config = self
            .connection
            .parse()
            .map_err(|e| BuildError::new(format!("connection: {e}")))?;
        if let Some(p) = &self.password {
            pg.password(p.expose());
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("tidegauge-{}", cx.component.id()));
        }
        pg.connect_timeout(Duration::from_millis(self.timeout_ms));
        let columns: Vec<String> = input
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect();
        let target = format!(
            "postgres://{}/{}",
            pg.get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default(),
            self.table
        );
        let mut conn = Connection { pg, client: None };
        let client = conn
            .client()
            .await
            .map_err(|e| BuildError::new(format!("{target}: cannot connect: {}", classify(e))))?;
        if self.create_table {
            let cols: Vec<String> = input
                .fields()
                .iter()
                .map(|f| {
                    format!(
                        "{} {}{}",
                        quote_ident(f.name()),
                        sql_type(f.data_type()),
                        if f.is_nullable() { "" } else { " NOT NULL" }
                    )
                })
                .collect();
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                quote_table(&self.table),
                cols.join(", ")
            );
            client.batch_execute(&sql).await.map_err(|e| {
                BuildError::new(format!("{target}: cannot create table: {}", classify(e)))
            })?;
        }
        let copy = format!(
            "COPY {} ({}) FROM STDIN",
            quote_table(&self.table),
            columns.join(", ")
        );
        let sink = PostgresSink {
            config: self.clone(),
            conn,
            copy,
            target,
        };
        Ok(sink_fn(move |input, cx| sink.run_async(input, cx)))
    }
}

/// A connection made on demand and again after it was lost.
struct Connection {
    pg: tokio_postgres::Config,
    client: Option<tokio_postgres::Client>,
}

impl Connection {
    async fn client(&mut self) -> Result<&tokio_postgres::Client, tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, connection) = self.pg.connect(NoTls).await?;
            tokio::spawn(async move {
                // Its error also reaches the client's next call, which reports it.
                let _ = connection.await;
            });
            self.client = Some(client);
        }
        // Set just above.
        Ok(self.client.as_ref().expect("connected"))
    }
}

struct PostgresSink {
    config: PostgresSinkConfig,
    conn: Connection,
    copy: String,
    target: String,
}

/// Rows waiting for the next `COPY`, in COPY text format, one line each.
struct Pending {
    lines: Vec<Vec<u8>>,
    finalizers: Vec<Finalizers>,
}

/// Why a `COPY` failed.
#[derive(Debug)]
enum CopyError {
    /// The connection failed or timed out: try again on a new one.
    Connection(String),
    /// The database rejected the data.
    Data(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Connection(e) | CopyError::Data(e) => f.write_str(e),
        }
    }
}

fn classify(e: tokio_postgres::Error) -> CopyError {
    match e.as_db_error() {
        // Data exceptions (22), integrity violations (23), syntax/undefined (42).
        Some(db) if matches!(&db.code().code()[..2], "22" | "23" | "42") => {
            CopyError::Data(format!("{}: {}", db.code().code(), db.message()))
        }
        Some(db) => CopyError::Connection(format!("{}: {}", db.code().code(), db.message())),
        None => CopyError::Connection(match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }),
    }
}

impl PostgresSink {
    async fn run_async(
        mut self,
        mut input: SinkInput,
        cx: SinkContext,
    ) -> Result<(), ComponentError> {
        let component = cx.component;
        let resilience = Resilience::new(self.config.retry.clone());
        let breaker = CircuitBreaker::new(self.config.breaker.clone());
        let flush_every = Duration::from_millis(self.config.flush_interval_ms);
        let mut pending = Pending {
            lines: Vec::new(),
            finalizers: Vec::new(),
        };
        let mut rule = FlushRule::new(flush_every, Instant::now());
        loop {
            let holding = !pending.finalizers.is_empty();
            let (closed, idle) = match input.recv_timeout(rule.wait(holding, Instant::now())).await
            {
                Recv::Batch(b) => {
                    pending.finalizers.push(b.finalizers);
                    if let Err(e) = encode_rows(&b.data, &mut pending.lines) {
                        // Nothing held counts as delivered once the sink fails.
                        pending.finalizers.iter().for_each(Finalizers::fail);
                        return Err(e);
                    }
                    (false, false)
                }
                Recv::Idle => (false, true),
                Recv::Closed => (true, false),
            };
            let holding = !pending.finalizers.is_empty();
            if closed
                || pending.lines.len() >= self.config.max_rows
                || rule.due(holding, idle, Instant::now())
            {
                let batch = std::mem::replace(
                    &mut pending,
                    Pending {
                        lines: Vec::new(),
                        finalizers: Vec::new(),
                    },
                );
                if let Err(e) = self.flush(&component, &resilience, &breaker, batch).await {
                    for f in &pending.finalizers {
                        f.fail();
                    }
                    return Err(e);
                }
                rule.flushed(Instant::now());
            }
            if closed {
                return Ok(());
            }
        }
    }

    /// Copies `batch`: all at once, or, when the database rejects a row, in halves until
    /// the rejected rows are found and dead-lettered.
    async fn flush(
        &mut self,
        component: &ComponentContext,
        resilience: &Resilience,
        breaker: &CircuitBreaker,
        batch: Pending,
    ) -> Result<(), ComponentError> {
        if batch.lines.is_empty() {
            batch.finalizers.into_iter().for_each(Finalizers::release);
            return Ok(());
        }
        let mut stack: Vec<std::ops::Range<usize>> = Vec::new();
        stack.push(0..batch.lines.len());
        let mut written = 0u64;
        let mut bytes = 0u64;
        while let Some(range) = stack.pop() {
            let rows = &batch.lines[range.clone()];
            match self.copy(component, resilience, breaker, rows).await {
                Ok(Ok(n)) => {
                    written += range.len() as u64;
                    bytes += n;
                }
                Ok(Err(reason)) => {
                    if range.len() == 1 {
                        let row = &batch.lines[range.start];
                        component.dead_letter(
                            &self.target,
                            &format!("rejected by the database: {reason}"),
                            &row[..row.len().saturating_sub(1)],
                        );
                    } else {
                        let mid = range.start + range.len() / 2;
                        stack.push(mid..range.end);
                        stack.push(range.start..mid);
                    }
                }
                Err(e) => {
                    for f in &batch.finalizers {
                        f.fail();
                    }
                    let what = match e {
                        RetryError::BreakerOpen => "circuit breaker open".to_string(),
                        RetryError::Failed { error, attempts } => {
                            format!("{error} (after {attempts} attempt(s))")
                        }
                    };
                    return Err(ComponentError::new(format!(
                        "{}: cannot copy rows: {what}",
                        self.target
                    )));
                }
            }
        }
        component.emit(EventsSent { count: written });
        component.emit(BytesSent { bytes });
        batch.finalizers.into_iter().for_each(Finalizers::release);
        Ok(())
    }

    async fn copy(
        &mut self,
        component: &ComponentContext,
        resilience: &Resilience,
        breaker: &CircuitBreaker,
        rows: &[Vec<u8>],
    ) -> Result<Result<u64, String>, RetryError<CopyError>> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let copy = self.copy.clone();
        let target = self.target.clone();
        let conn = tokio::sync::Mutex::new(&mut self.conn);
        resilience
            .call(
                Some(breaker),
                |attempt| {
                    let conn = &conn;
                    let copy = &copy;
                    let target = &target;
                    async move {
                        let mut conn = conn.lock().await;
                        let r = tokio::time::timeout(timeout, copy_once(&mut conn, copy, rows))
                            .await
                            .unwrap_or_else(|_| Err(CopyError::Connection("timed out".into())));
                        match r {
                            Ok(n) => Ok(Ok(n)),
                            // The database answered: not a failure of the connection,
                            // neither retried nor counted by the breaker.
                            Err(CopyError::Data(reason)) => Ok(Err(reason)),
                            Err(CopyError::Connection(e)) => {
                                // Start over on a fresh connection.
                                conn.client = None;
                                component.emit(ComponentErrorOccurred {
                                    error: &format!("{target}: attempt {attempt}: {e}"),
                                });
                                Err(CopyError::Connection(e))
                            }
                        }
                    }
                },
                |e| matches!(e, CopyError::Connection(_)),
                |t| {
                    component.emit(ComponentErrorOccurred {
                        error: &format!("{target}: circuit breaker {:?} -> {:?}", t.from, t.to),
                    })
                },
            )
            .await
    }
}

async fn copy_once(conn: &mut Connection, copy: &str, rows: &[Vec<u8>]) -> Result<u64, CopyError> {
    let client = conn.client().await.map_err(classify)?;
    let sink = client
        .copy_in::<_, bytes::Bytes>(copy)
        .await
        .map_err(classify)?;
    let mut data = Vec::with_capacity(rows.iter().map(Vec::len).sum());
    for r in rows {
        data.extend_from_slice(r);
    }
    let n = data.len() as u64;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data))
        .await
        .map_err(classify)?;
    sink.finish().await.map_err(classify)?;
    Ok(n)
}

/// Appends each row of `batch` as a line of COPY text format: tab-separated, `\N` for
/// null, backslash escapes.
fn encode_rows(batch: &RecordBatch, lines: &mut Vec<Vec<u8>>) -> Result<(), ComponentError> {
    let options = FormatOptions::default();
    let formatters: Vec<ArrayFormatter<'_>> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<_, _>>()?;
    let mut text = String::new();
    for row in 0..batch.num_rows() {
        let mut line = Vec::with_capacity(64);
        for (i, col) in batch.columns().iter().enumerate() {
            if i > 0 {
                line.push(b'\t');
            }
            if col.is_null(row) {
                line.extend_from_slice(b"\\N");
                continue;
            }
            match col.data_type() {
                DataType::Int64 => line.extend_from_slice(
                    itoa::Buffer::new()
                        .format(col.as_primitive::<Int64Type>().value(row))
                        .as_bytes(),
                ),
                DataType::Float64 => {
                    let v = col.as_primitive::<Float64Type>().value(row);
                    if v.is_finite() {
                        line.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                    } else if v.is_nan() {
                        line.extend_from_slice(b"NaN");
                    } else if v > 0.0 {
                        line.extend_from_slice(b"Infinity");
                    } else {
                        line.extend_from_slice(b"-Infinity");
                    }
                }
                DataType::Boolean => line.extend_from_slice(if col.as_boolean().value(row) {
                    b"t"
                } else {
                    b"f"
                }),
                _ => {
                    text.clear();
                    use std::fmt::Write;
                    let _ = write!(text, "{}", formatters[i].value(row));
                    escape(&text, &mut line);
                }
            }
        }
        line.push(b'\n');
        lines.push(line);
    }
    Ok(())
}

fn escape(text: &str, out: &mut Vec<u8>) {
    for &b in text.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => {} // PostgreSQL text cannot hold NUL.
            b => out.push(b),
        }
    }
}

tidegauge_core::register_sink!(PostgresSinkConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_and_quotes() {
        let mut out = Vec::new();
        escape("a\tb\\c\nd", &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\nd");
        assert_eq!(
            quote_table("public.my \"t\""),
            "\"public\".\"my \"\"t\"\"\""
        );
    }
}
