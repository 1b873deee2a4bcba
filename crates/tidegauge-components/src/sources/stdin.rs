//! `stdin` source: JSON Lines or CSV on standard input.

use std::io::{self, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use tidegauge_core::component::blocking_source_fn;
use tidegauge_core::telemetry::BytesReceived;
use tidegauge_core::{
    Batch, BuildContext, BuildError, ComponentError, ConfigError, Output, Source, SourceConfig,
    SourceContext,
};

use super::file::default_max_line_bytes;
use super::linger::Linger;
use super::parallel::{DecoderSpec, Decoding, decoder_threads, default_decoders};
use super::{CsvOptions, Format, LineOutcome};
use crate::codec::lines::{LineReader, Poll};
use crate::settings::{config, decoded_records};

config! {
    [decoded_records]
    /// Reads events from standard input until it closes: JSON Lines or CSV.
    ///
    /// Events are sent as soon as everything written so far is read (a slow stream is
    /// never held back), and under load at the latest when the oldest has waited
    /// `batch.linger_ms`.
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
        /// Threads that decode lines into events while this source reads on. 1, the
        /// default, decodes on the reading thread; 0 chooses from the cores (1 on one
        /// core, else the cores but one, at least 2 and at most 4). More than one pays
        /// only with cores to spare beside the pipeline's other threads (on 2 cores W1
        /// was no faster with 2). Events keep their input order whatever the number,
        /// and so do dead letters.
        #[serde(default = "default_decoders")]
        pub decoders: usize,
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

/// Reads chunks that another thread pulled off a blocking reader. When the chunks run
/// dry it says so at once with `WouldBlock` (the caller has caught up with its input and
/// sends what it holds); asked again, it waits up to `patience` for more before saying
/// `WouldBlock` again (so the caller can look at its shutdown signal).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    patience: Duration,
    /// The caller was told the input ran dry, and nothing came since.
    told_dry: bool,
}

impl ChannelReader {
    fn next_chunk(&mut self) -> io::Result<bool> {
        let got = match self.rx.try_recv() {
            Ok(got) => got,
            Err(mpsc::TryRecvError::Disconnected) => return Ok(false),
            Err(mpsc::TryRecvError::Empty) if !self.told_dry => {
                self.told_dry = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(mpsc::TryRecvError::Empty) => match self.rx.recv_timeout(self.patience) {
                Ok(got) => got,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
            },
        };
        self.told_dry = false;
        self.chunk = got?;
        self.at = 0;
        Ok(true)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() && !self.next_chunk()? {
            return Ok(0);
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
    patience: Duration,
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
        patience,
        told_dry: false,
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
        // How often a reader with nothing to read looks at the shutdown signal.
        let input = spawn_chunk_reader(io::stdin(), Duration::from_millis(100));
        let mut linger = Linger::new(&self.config.batch);
        let mut lines = LineReader::new(input, self.config.max_line_bytes);
        let spec = DecoderSpec {
            format: self.config.format,
            csv: self.config.csv.clone(),
            fields: self.config.fields.clone(),
            schema: self.schema,
            batch: self.config.batch.clone(),
        };
        let mut dec: Decoding<()> =
            Decoding::new(spec, decoder_threads(self.config.decoders), &component);
        let send = |dec: &mut Decoding<()>, settle: bool, out: &mut Output| {
            dec.send(&component, (), settle, &mut |batches, ()| {
                batches
                    .into_iter()
                    .try_for_each(|b| out.blocking_send(Batch::new(b)))
            })
        };
        dec.start_input();
        // Why every record would fail the same way (a CSV header lacking a declared
        // field): a configuration error that ends the run, as for the `file` source.
        let mut unusable: Option<String> = None;
        while !shutdown.is_cancelled() {
            let polled = lines.poll(true, |line_no, line| {
                if unusable.is_some() {
                    return Ok::<(), tidegauge_core::component::SendError>(());
                }
                if let LineOutcome::SkipInput(e) = dec.line(&component, "stdin", line_no, line) {
                    unusable = Some(format!("stdin:{line_no}: {e}"));
                    return Ok(());
                }
                if dec.is_full() {
                    send(&mut dec, false, &mut out)?;
                    linger.sent();
                }
                Ok(())
            });
            if let Some(reason) = unusable {
                let _ = send(&mut dec, true, &mut out);
                return Err(ComponentError::new(format!(
                    "{reason}; fix the input or the source's `fields`/`csv` settings"
                )));
            }
            // Caught up with the input: what is held goes now.
            let caught_up = matches!(&polled, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            match polled {
                Ok(Ok(Poll::Read(n))) => {
                    component.emit(BytesReceived { bytes: n as u64 });
                    linger.took_in(Instant::now());
                }
                Ok(Ok(Poll::Eof)) => break,
                Ok(Err(_closed)) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ComponentError::io("reading standard input", e)),
            }
            if linger.due(dec.is_full(), caught_up, Instant::now()) {
                if send(&mut dec, caught_up, &mut out).is_err() {
                    return Ok(());
                }
                linger.sent();
            }
        }
        let _ = send(&mut dec, true, &mut out);
        Ok(())
    }
}

tidegauge_core::register_source!(StdinSourceConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_reader_says_it_ran_dry_before_it_waits() {
        let (tx, rx) = mpsc::sync_channel(4);
        let mut reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            at: 0,
            // Never reached when the reader behaves: the dry report comes first.
            patience: Duration::from_secs(3600),
            told_dry: false,
        };
        tx.send(Ok(b"a\n".to_vec())).unwrap();
        tx.send(Ok(b"b\n".to_vec())).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        // Both chunks taken, nothing more queued: caught up, reported without waiting.
        let e = reader.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        tx.send(Ok(b"c\n".to_vec())).unwrap();
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        drop(tx);
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

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
