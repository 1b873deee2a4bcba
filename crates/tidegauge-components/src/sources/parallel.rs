//! Decoding lines on several threads for the `file` and `stdin` sources.
//!
//! The reader frames lines as before and gathers them into chunks (at most a batch of
//! lines each). Decoder threads turn chunks into Arrow batches; the reader hands the
//! batches on in input order, each chunk's dead letters first, each chunk with the
//! position the reader had after its last line. The output is the one of a single
//! decoder: same rows in the same order, same dead letters with the same line numbers,
//! positions that only ever cover what was handed on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use tidegauge_core::ComponentContext;
use tidegauge_core::component::SendError;

use super::{BatchConfig, CsvOptions, Format, LineDecoder, LineOutcome};
use crate::codec::FieldMap;
use crate::codec::lines::Line;

/// The `decoders` setting when a config leaves it out: decode on the reading thread.
/// Two decoders did not make W1 faster on a 2-core machine (the reader, the decoders,
/// the detector and the writer share the cores), so more threads are asked for, not
/// assumed.
pub(crate) fn default_decoders() -> usize {
    1
}

/// Most decoder threads chosen when the setting is 0.
const AUTO_MAX: usize = 4;

/// The number of decoder threads for the `decoders` setting: itself when not 0, else chosen
/// from the cores (one when there is a single core: the reader and the pipeline need it;
/// otherwise as many as the cores but one, at least two, at most four).
pub(crate) fn decoder_threads(setting: usize) -> usize {
    if setting > 0 {
        return setting;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        1
    } else {
        (cores - 1).clamp(2, AUTO_MAX)
    }
}

/// What a decoder needs to be built (on any thread).
#[derive(Clone)]
pub(crate) struct DecoderSpec {
    pub(crate) format: Format,
    pub(crate) csv: CsvOptions,
    pub(crate) fields: FieldMap,
    pub(crate) schema: SchemaRef,
    pub(crate) batch: BatchConfig,
}

impl DecoderSpec {
    fn build(&self) -> LineDecoder {
        LineDecoder::new(
            self.format,
            &self.csv,
            &self.fields,
            self.schema.clone(),
            &self.batch,
        )
    }
}

/// Hands on decoded batches with the position after them (`P`: what the source
/// commits; `()` when it commits nothing). The batches of one chunk come together; a
/// chunk without events comes as no batch, so that its position still moves on.
pub(crate) type Deliver<'a, P> = dyn FnMut(Vec<RecordBatch>, P) -> Result<(), SendError> + 'a;

/// One decoder on the reader's thread, or a pool of decoder threads.
pub(crate) enum Decoding<P> {
    One(Box<LineDecoder>),
    Many(Box<Pool<P>>),
}

impl<P> Decoding<P> {
    /// `threads` decoders (1: on the caller's thread, as the source always did).
    pub(crate) fn new(spec: DecoderSpec, threads: usize, cx: &ComponentContext) -> Self {
        if threads <= 1 {
            Decoding::One(Box::new(spec.build()))
        } else {
            Decoding::Many(Box::new(Pool::new(spec, threads, cx)))
        }
    }

    /// Call when a new input (file) starts.
    pub(crate) fn start_input(&mut self) {
        match self {
            Decoding::One(d) => d.start_input(),
            Decoding::Many(p) => p.start_input(),
        }
    }

    /// Takes one framed line from `origin` (see [`LineDecoder::line`]).
    pub(crate) fn line(
        &mut self,
        cx: &ComponentContext,
        origin: &str,
        line_no: u64,
        line: Line<'_>,
    ) -> LineOutcome {
        match self {
            Decoding::One(d) => d.line(cx, origin, line_no, line),
            Decoding::Many(p) => p.line(origin, line_no, line),
        }
    }

    /// Whether what is held makes a full batch (or chunk): time to send.
    pub(crate) fn is_full(&self) -> bool {
        match self {
            Decoding::One(d) => d.is_full(),
            Decoding::Many(p) => p.is_full(),
        }
    }

    /// Sends what is held, to be covered by `position`. With one decoder it goes to
    /// `deliver` at once; with several, the chunk goes to the decoder threads and every
    /// chunk decoded by now is delivered in input order, or, when `settle`, every chunk
    /// sent so far (the source has caught up with its input, or it ends).
    pub(crate) fn send(
        &mut self,
        cx: &ComponentContext,
        position: P,
        settle: bool,
        deliver: &mut Deliver<'_, P>,
    ) -> Result<(), SendError> {
        match self {
            Decoding::One(d) => deliver(d.take(cx).into_iter().collect(), position),
            Decoding::Many(p) => p.send(cx, position, settle, deliver),
        }
    }
}

/// Where the lines of a chunk come from, as of the chunk's first line.
#[derive(Clone)]
struct Context {
    /// Counts inputs: a new one starts the decoder over (a CSV header is read again).
    input: u64,
    origin: Arc<str>,
    /// The CSV header of the input (its line number and text), once read.
    header: Option<Arc<(u64, Vec<u8>)>>,
}

/// One entry of a chunk; text lies in the chunk's buffer.
enum Item {
    /// A framed line: its text, or the head of one longer than allowed (`too_long`: its
    /// length), as [`Line`] has them.
    Line {
        no: u64,
        start: usize,
        end: usize,
        too_long: Option<u64>,
    },
    /// Found bad while looking for the header: (location, reason), raw text.
    Dead {
        location: String,
        reason: String,
        start: usize,
        end: usize,
    },
    /// The lines after it come from this input (or the header was read).
    Context(Context),
}

struct Job {
    seq: u64,
    context: Context,
    text: Vec<u8>,
    items: Vec<Item>,
}

/// A decoded chunk.
struct Done {
    seq: u64,
    batches: Vec<RecordBatch>,
    /// (location, reason, raw), in line order.
    dead: Vec<(String, String, Vec<u8>)>,
}

/// Decoder threads, and what the reader keeps to put their work back in order.
pub(crate) struct Pool<P> {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Chunks in flight: at most this many.
    most_in_flight: usize,
    /// The chunk being gathered.
    job: Job,
    context: Context,
    /// Finds the CSV header of each input: lines go through this decoder on the
    /// reader's thread while it awaits the header.
    header_finder: Option<LineDecoder>,
    batch_rows: usize,
    batch_bytes: usize,
    next_seq: u64,
    /// Sequence number of the next chunk to deliver.
    next_out: u64,
    /// Positions of the chunks in flight, oldest first.
    positions: VecDeque<P>,
    /// Chunks decoded ahead of an older one.
    early: BTreeMap<u64, Done>,
}

impl<P> Pool<P> {
    fn new(spec: DecoderSpec, threads: usize, cx: &ComponentContext) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(threads);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done_rx) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let spec = spec.clone();
                let cx = cx.clone();
                let jobs = jobs_rx.clone();
                let done = done_tx.clone();
                std::thread::Builder::new()
                    .name("line decoder".into())
                    .spawn(move || decode_jobs(&spec, &cx, &jobs, &done))
                    .expect("cannot start a decoder thread")
            })
            .collect();
        let context = Context {
            input: 0,
            origin: Arc::from(""),
            header: None,
        };
        let header_finder = (spec.format == Format::Csv && spec.csv.header).then(|| spec.build());
        Pool {
            jobs: Some(jobs_tx),
            done: done_rx,
            workers,
            most_in_flight: threads * 2,
            job: Job {
                seq: 0,
                context: context.clone(),
                text: Vec::new(),
                items: Vec::new(),
            },
            context,
            header_finder,
            batch_rows: spec.batch.rows.max(1),
            batch_bytes: spec.batch.max_bytes,
            next_seq: 0,
            next_out: 0,
            positions: VecDeque::new(),
            early: BTreeMap::new(),
        }
    }

    fn set_context(&mut self, context: Context) {
        self.context = context.clone();
        if self.job.items.is_empty() {
            self.job.context = context;
        } else {
            self.job.items.push(Item::Context(context));
        }
    }

    fn start_input(&mut self) {
        let mut context = self.context.clone();
        context.input += 1;
        context.header = None;
        self.set_context(context);
        if let Some(finder) = &mut self.header_finder {
            finder.start_input();
        }
    }

    fn line(&mut self, origin: &str, no: u64, line: Line<'_>) -> LineOutcome {
        if *self.context.origin != *origin {
            let mut context = self.context.clone();
            context.origin = Arc::from(origin);
            self.set_context(context);
        }
        if let Some(finder) = self.header_finder.as_mut().filter(|f| f.awaits_header()) {
            let mut dead = None;
            let outcome = finder.line_to(origin, no, line, &mut |location, reason, raw| {
                dead = Some((location.to_string(), reason.to_string(), raw.to_vec()));
            });
            if let LineOutcome::SkipInput(_) = outcome {
                return outcome;
            }
            match (dead, line) {
                (Some((location, reason, raw)), _) => {
                    let start = self.job.text.len();
                    self.job.text.extend_from_slice(&raw);
                    let end = self.job.text.len();
                    self.job.items.push(Item::Dead {
                        location,
                        reason,
                        start,
                        end,
                    });
                }
                (None, Line::Complete(text)) if !finder.awaits_header() => {
                    // The decoder took it as the header.
                    let mut context = self.context.clone();
                    context.header = Some(Arc::new((no, text.to_vec())));
                    self.set_context(context);
                }
                (None, _) => {}
            }
            return LineOutcome::Continue;
        }
        let (text, too_long) = match line {
            Line::Complete(text) => (text, None),
            Line::TooLong { head, len } => (head, Some(len)),
        };
        let start = self.job.text.len();
        self.job.text.extend_from_slice(text);
        self.job.items.push(Item::Line {
            no,
            start,
            end: self.job.text.len(),
            too_long,
        });
        LineOutcome::Continue
    }

    fn is_full(&self) -> bool {
        self.job.items.len() >= self.batch_rows || self.job.text.len() >= self.batch_bytes
    }

    fn send(
        &mut self,
        cx: &ComponentContext,
        position: P,
        settle: bool,
        deliver: &mut Deliver<'_, P>,
    ) -> Result<(), SendError> {
        if self.job.items.is_empty() && self.positions.is_empty() {
            // Nothing held, nothing in flight: only the position moves.
            return deliver(Vec::new(), position);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let next = Job {
            seq: self.next_seq,
            context: self.context.clone(),
            text: Vec::with_capacity(self.job.text.capacity()),
            items: Vec::with_capacity(self.job.items.capacity()),
        };
        let job = std::mem::replace(&mut self.job, next);
        debug_assert_eq!(job.seq, seq);
        self.positions.push_back(position);
        if let Some(jobs) = &self.jobs {
            // Only fails when every decoder thread is gone; then nothing comes back and
            // the wait below says so.
            let _ = jobs.send(job);
        }
        loop {
            let wait = self.positions.len() > self.most_in_flight
                || (settle && !self.positions.is_empty());
            if !wait {
                while let Ok(done) = self.done.try_recv() {
                    self.early.insert(done.seq, done);
                }
                return self.deliver_ready(cx, deliver);
            }
            match self.done.recv() {
                Ok(done) => {
                    self.early.insert(done.seq, done);
                }
                Err(_) => return Err(SendError::Closed),
            }
            self.deliver_ready(cx, deliver)?;
        }
    }

    /// Delivers the decoded chunks that are next in input order.
    fn deliver_ready(
        &mut self,
        cx: &ComponentContext,
        deliver: &mut Deliver<'_, P>,
    ) -> Result<(), SendError> {
        while let Some(done) = self.early.remove(&self.next_out) {
            self.next_out += 1;
            let Some(position) = self.positions.pop_front() else {
                break;
            };
            for (location, reason, raw) in &done.dead {
                cx.dead_letter(location, reason, raw);
            }
            deliver(done.batches, position)?;
        }
        Ok(())
    }
}

impl<P> Drop for Pool<P> {
    fn drop(&mut self) {
        // Without jobs the decoder threads end.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A decoder thread: takes chunks until the pool is gone.
fn decode_jobs(
    spec: &DecoderSpec,
    cx: &ComponentContext,
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
) {
    let mut dec = spec.build();
    // The input the decoder is at, and whether it has read that input's header.
    let mut at: Option<(u64, bool)> = None;
    let mut origin: Arc<str> = Arc::from("");
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let mut dead = Vec::new();
        let mut batches = Vec::new();
        let mut keep = |location: &str, reason: &str, raw: &[u8]| {
            dead.push((location.to_string(), reason.to_string(), raw.to_vec()));
        };
        enter(&mut dec, &mut at, &mut origin, &job.context);
        for item in &job.items {
            match item {
                Item::Line {
                    no,
                    start,
                    end,
                    too_long,
                } => {
                    let text = &job.text[*start..*end];
                    let line = match *too_long {
                        None => Line::Complete(text),
                        Some(len) => Line::TooLong { head: text, len },
                    };
                    // A bad header was found on the reader's thread: nothing else ends
                    // an input here.
                    let _ = dec.line_to(&origin, *no, line, &mut keep);
                }
                Item::Dead {
                    location,
                    reason,
                    start,
                    end,
                } => keep(location, reason, &job.text[*start..*end]),
                Item::Context(context) => {
                    // What is decoded of the earlier input stays in the batch, as with
                    // one decoder.
                    enter(&mut dec, &mut at, &mut origin, context);
                }
            }
            if dec.is_full()
                && let Some(b) = dec.take(cx)
            {
                batches.push(b);
            }
        }
        if let Some(b) = dec.take(cx) {
            batches.push(b);
        }
        let finished = Done {
            seq: job.seq,
            batches,
            dead,
        };
        if done.send(finished).is_err() {
            return;
        }
    }
}

/// Brings a decoder thread's decoder to `context`: a new input starts it over, with the
/// header when it is known.
fn enter(
    dec: &mut LineDecoder,
    at: &mut Option<(u64, bool)>,
    origin: &mut Arc<str>,
    context: &Context,
) {
    *origin = context.origin.clone();
    let want = (context.input, context.header.is_some());
    if *at == Some(want) {
        return;
    }
    dec.start_input();
    if let Some(header) = &context.header {
        let (no, text) = &**header;
        let _ = dec.line_to(
            &context.origin,
            *no,
            Line::Complete(text),
            &mut |_, _, _| {},
        );
    }
    *at = Some(want);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::file::FileSourceConfig;
    use crate::sources::stdin::StdinSourceConfig;

    #[test]
    fn one_decoder_unless_more_are_asked_for() {
        let file: FileSourceConfig = toml::from_str("paths = [\"in.jsonl\"]").unwrap();
        let stdin: StdinSourceConfig = toml::from_str("").unwrap();
        assert_eq!((file.decoders, stdin.decoders), (1, 1));
        assert_eq!(decoder_threads(file.decoders), 1);
        assert_eq!(decoder_threads(3), 3);
        let auto = decoder_threads(0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!((1..=AUTO_MAX).contains(&auto), "{auto}");
        assert_eq!(
            auto == 1,
            cores < 2,
            "0 chooses one decoder on one core only"
        );
    }
}
