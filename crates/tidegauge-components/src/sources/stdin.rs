//! `stdin` source: JSON Lines or CSV on standard input.

use std::io::{self, Read};
use std::sync::mpsc;
use std::time::Duration;

use arrow_schema::SchemaRef;
use tidegauge_core::component::blocking_source_fn;
use tidegauge_core::telemetry::BytesReceived;
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Source, SourceConfig, SourceContext,
};

use super::file::default_max_line_bytes;
use super::{CsvOptions, Format, LineDecoder, LineOutcome};
use crate::codec::lines::{LineReader, Poll};
use crate::settings::{config, decoded_records};

config! {
    [decoded_records]
    /// Reads events from standard input until it closes: JSON Lines or CSV.
    ///
    /// A slow stream still flows: events waiting longer than `batch.linger_ms` are sent
    /// without waiting for the batch to fill.
    pub struct StdinSourceConfig {
        /// Record format.
        #[serde(default = "default_format")]
        pub format: Format,
        /// CSV settings (when the format is `csv`).
        #[serde(default)]
        pub csv: CsvOptions,
        /// Longest accepted line in bytes; longer lines are dead-lettered and skipped.
        #[serde(default = "default_max_line_bytes")]
        #[schemars(range(min = 1))]
        pub max_line_bytes: usize,
    }
}

fn default_format() -> Format {
    Format::Jsonl
}

impl SourceConfig for StdinSourceConfig {
    const TYPE: &'static str = "stdin";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Err(e) = self.csv.delimiter_byte() {
            errors.push(e);
        }
        if self.max_line_bytes == 0 {
            errors.push(ConfigError::new(
                "max_line_bytes",
                "expected a positive integer",
            ));
        }
        self.decoded_schema(errors)
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let source = StdinSource {
            config: self.clone(),
            schema,
        };
        Ok(blocking_source_fn("stdin reader", move |cx| {
            source.read(cx)
        }))
    }
}

struct StdinSource {
    config: StdinSourceConfig,
    schema: SchemaRef,
}

/// Reads chunks that another thread pulled off a blocking reader; a wait longer than
/// `linger` surfaces as `WouldBlock` so the caller can send what it holds.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    linger: Duration,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.rx.recv_timeout(self.linger) {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Pulls chunks off `input` on a thread of its own (standard input cannot be read with a
/// timeout) and hands them over through a small bounded queue.
pub(crate) fn spawn_chunk_reader(
    mut input: impl Read + Send + 'static,
    linger: Duration,
) -> impl Read {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        loop {
            let mut chunk = vec![0u8; 256 * 1024];
            match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send(Ok(chunk)).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    ChannelReader {
        rx,
        chunk: Vec::new(),
        at: 0,
        linger,
    }
}

impl StdinSource {
    fn read(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            mut out,
            shutdown,
            ..
        } = cx;
        let linger = Duration::from_millis(self.config.batch.linger_ms);
        let input = spawn_chunk_reader(io::stdin(), linger);
        let mut lines = LineReader::new(input, self.config.max_line_bytes);
        let mut dec = LineDecoder::new(
            self.config.format,
            &self.config.csv,
            &self.config.fields,
            self.schema,
            self.config.batch.rows,
        );
        dec.start_input();
        let mut skipping = false;
        while !shutdown.is_cancelled() {
            let polled = lines.poll(true, |line_no, line| {
                if skipping {
                    return Ok::<(), tidegauge_core::component::SendError>(());
                }
                if dec.line(&component, "stdin", line_no, line) == LineOutcome::SkipInput {
                    skipping = true;
                }
                if dec.is_full() {
                    dec.flush_to(&component, &mut out)?;
                }
                Ok(())
            });
            match polled {
                Ok(Ok(Poll::Read(n))) => component.emit(BytesReceived { bytes: n as u64 }),
                Ok(Ok(Poll::Eof)) => break,
                Ok(Err(_closed)) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if dec.flush_to(&component, &mut out).is_err() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(ComponentError::io("reading standard input", e)),
            }
        }
        let _ = dec.flush_to(&component, &mut out);
        Ok(())
    }
}

tidegauge_core::register_source!(StdinSourceConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_reader_times_out_then_delivers_then_ends() {
        let (w, r) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut reader = spawn_chunk_reader(r, Duration::from_millis(20));
        let mut buf = [0u8; 16];
        let e = reader.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        use std::io::Write;
        (&w).write_all(b"hello\n").unwrap();
        let mut got = 0;
        while got == 0 {
            match reader.read(&mut buf) {
                Ok(n) => got = n,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(&buf[..got], b"hello\n");
        drop(w);
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => panic!("no more data was written"),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
    }
}
