//! `tidegauge score`: the detectors of live pipelines over recorded CSV or JSON Lines
//! files, one verdict per row.
//!
//! Each input row is spread into one event per value column (its channel), keyed by the
//! row's key column (if any) and the channel, in the `sensor_id`/`ts`/`value` shape the
//! detectors read in a pipeline; the very transform a pipeline would run judges them;
//! a row's score is the highest of its channels' scores, and it is an anomaly when at
//! least `--min-channels` of its channels are. Each file starts from fresh state.

mod input;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use tidegauge_core::ConfigError;
use tidegauge_core::component::{Transform, TransformContext};
use tidegauge_core::dead_letter::DeadLetter;
use tidegauge_core::registry::{self, AnyConfig, ComponentKind, ErasedTransformConfig};

use input::{Layout, Reader, Row, collect_inputs, count_lines, csv_field, layout, read_chunk};

/// What `score` was asked to do.
#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Detector type (`zscore`, `mad`, `ensemble`, ...) or a pipeline file holding one.
    #[arg(long, short)]
    pub detector: String,
    /// With a pipeline file: the id of the transform that judges.
    #[arg(long)]
    pub transform: Option<String>,
    /// A detector setting, NAME=VALUE (repeatable), e.g. `--set window=50`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// A setting for one value column only, CHANNEL:NAME=VALUE (repeatable), on top of
    /// --set: e.g. `--channel-set Temperature:threshold=20` when sensors differ.
    #[arg(long = "channel-set", value_name = "CHANNEL:NAME=VALUE")]
    pub channel_set: Vec<String>,
    /// CSV or JSON Lines files, or directories of them.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Directory for the results.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Time column (default: datetime, timestamp, time or ts, whichever exists).
    #[arg(long)]
    pub time_column: Option<String>,
    /// Value columns (default: every numeric column but the time, key and ignored ones).
    #[arg(long, value_delimiter = ',')]
    pub value_columns: Option<Vec<String>>,
    /// Columns never used as values (e.g. labels).
    #[arg(long, value_delimiter = ',')]
    pub ignore_columns: Vec<String>,
    /// Column naming the series when a file holds several.
    #[arg(long)]
    pub key_column: Option<String>,
    /// CSV field separator.
    #[arg(long, default_value = ",")]
    pub delimiter: String,
    /// Channels that must flag a row for it to count as an anomaly.
    #[arg(long, default_value_t = 1)]
    pub min_channels: usize,
    /// Judge whole rows: one event per row with every value column as a field, for a
    /// detector of several readings at once (`hotelling`; its `value_fields` are set to
    /// the value columns).
    #[arg(long)]
    pub rows: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Where the lines that cannot be scored go (malformed CSV or JSON, a time that is
    /// not one, a line too long), one JSON object each with its place and reason, as the
    /// `file` source dead-letters them; standard error when not given.
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
    /// `delimiter` as a byte (checked by the caller).
    #[arg(skip)]
    pub delimiter_byte: u8,
    /// Show a progress bar (`no_progress` unset and stderr a terminal).
    #[arg(skip)]
    pub progress: bool,
}

/// The detector, ready to instantiate once per file.
struct Detector {
    name: String,
    config: Box<dyn ErasedTransformConfig>,
    input: SchemaRef,
    output: SchemaRef,
}

impl Detector {
    /// Builds the detector's transform, with its own telemetry and dead letters to stderr;
    /// returns it with the context to run it in.
    fn build(
        &self,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<(Box<dyn Transform>, TransformContext)> {
        self.config
            .build_alone(
                &self.name,
                "score",
                self.input.clone(),
                self.output.clone(),
                runtime.clone(),
            )
            .map_err(|e| anyhow!("{}: {e}", self.name))
    }
}

fn long_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// The detector with the settings `set` (`key=value` each), for per-channel events.
fn resolve_detector(args: &ScoreArgs, set: &[String]) -> anyhow::Result<Detector> {
    resolve_detector_for(args, set, long_schema())
}

/// The detector with the settings `set`, reading events of schema `input`.
fn resolve_detector_for(
    args: &ScoreArgs,
    set: &[String],
    input: SchemaRef,
) -> anyhow::Result<Detector> {
    let path = Path::new(&args.detector);
    let (name, config) = if args.detector.ends_with(".toml") || path.is_file() {
        if !set.is_empty() {
            bail!(
                "--set and --channel-set apply to a detector given by name; edit the pipeline file instead"
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config = tidegauge_core::config::load(&text, &tidegauge_core::config::process_env)
            .map_err(|e| anyhow!("{}: {}", path.display(), ConfigError::join(&e)))?;
        if !config.errors.is_empty() {
            bail!("{}: {}", path.display(), ConfigError::join(&config.errors));
        }
        let mut candidates: Vec<_> = config
            .components
            .into_iter()
            .filter(|c| c.kind == ComponentKind::Transform)
            .filter(|c| {
                args.transform
                    .as_ref()
                    .map_or(c.type_name != "filter", |id| *id == c.id)
            })
            .collect();
        if candidates.len() != 1 {
            let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
            bail!(
                "{}: say which transform judges with --transform (candidates: {})",
                path.display(),
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            );
        }
        let c = candidates.remove(0);
        match c.config {
            Some(AnyConfig::Transform(t)) => (format!("{} ({})", c.id, c.type_name), t),
            _ => bail!("`{}` is not a transform", c.id),
        }
    } else {
        let d = registry::find(ComponentKind::Transform, &args.detector).ok_or_else(|| {
            let known: Vec<&str> = tidegauge_components::transforms::detector::all()
                .iter()
                .map(|d| d.name)
                .collect();
            anyhow!(
                "no detector called `{}` (detectors: {})",
                args.detector,
                known.join(", ")
            )
        })?;
        let mut table = Vec::new();
        for s in set {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("--set wants key=value, got `{s}`"))?;
            // A TOML value when it parses as one (numbers, booleans, arrays), else text.
            let value = if toml::from_str::<toml::Table>(&format!("v = {v}")).is_ok() {
                v.to_string()
            } else {
                format!("{:?}", v)
            };
            table.push(format!("{} = {value}", k.trim()));
        }
        let parse = |extra: Option<String>| -> anyhow::Result<Box<dyn ErasedTransformConfig>> {
            let inline = format!(
                "{{ {} }}",
                table
                    .iter()
                    .chain(&extra)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let de =
                toml::de::DeValue::parse(&inline).map_err(|e| anyhow!("--set: {}", e.message()))?;
            match d.parse(de) {
                Ok(AnyConfig::Transform(t)) => Ok(t),
                Ok(_) => bail!("`{}` is not a transform", args.detector),
                Err(e) => bail!("--set {}: {}", e.path, e.message),
            }
        };
        let config = parse(None)?;
        // A file holds a few channels (or keys), yet a detector's default `max_keys` sizes
        // its memory bound for a live fleet: with a long window the two together can pass
        // the bound a stage may hold. Unless --set chose `max_keys`, take the most that fit.
        let chose_max_keys = table.iter().any(|t| t.starts_with("max_keys "));
        let too_many_keys = |c: &dyn ErasedTransformConfig| {
            c.validate(&input)
                .is_err_and(|e| e.iter().any(|e| e.path == "max_keys"))
        };
        if !chose_max_keys && too_many_keys(config.as_ref()) {
            // The top of `max_keys`' range fails too (the default, below it, did).
            let (mut fits, mut fails) = (0usize, 100_000_000usize);
            while fails - fits > 1 {
                let mid = fits + (fails - fits) / 2;
                if too_many_keys(parse(Some(format!("max_keys = {mid}")))?.as_ref()) {
                    fails = mid;
                } else {
                    fits = mid;
                }
            }
            if fits > 0 {
                let name = format!("{} (max_keys {fits}: the most that fit)", args.detector);
                (name, parse(Some(format!("max_keys = {fits}")))?)
            } else {
                (args.detector.clone(), config)
            }
        } else {
            (args.detector.clone(), config)
        }
    };
    let output = config
        .validate(&input)
        .map_err(|e| anyhow!("{name}: {}", ConfigError::join(&e)))?;
    for needed in ["anomaly_score", "is_anomaly"] {
        if output.index_of(needed).is_err() {
            bail!("{name} is not a detector: its output has no `{needed}`");
        }
    }
    Ok(Detector {
        name,
        config,
        input,
        output,
    })
}

const CHUNK_ROWS: usize = 4096;

/// The channels one detector instance judges, and the verdicts it gave that are not yet
/// written (in row order, then channel order).
struct Group<'a> {
    detector: &'a Detector,
    /// Positions in `Layout::values`.
    channels: Vec<usize>,
    transform: Box<dyn tidegauge_core::Transform>,
    cx: TransformContext,
    verdicts: VecDeque<(f64, bool)>,
}

impl Group<'_> {
    /// Moves the verdicts of the batches the transform emitted into the queue.
    fn collect(&mut self) -> anyhow::Result<()> {
        let score_col = self.detector.output.index_of("anomaly_score")?;
        let flag_col = self.detector.output.index_of("is_anomaly")?;
        for (batch, _) in self.cx.take_emitted() {
            let scores = batch.column(score_col).as_primitive::<Float64Type>();
            let flags = batch.column(flag_col).as_boolean();
            for i in 0..batch.num_rows() {
                let s = if scores.is_valid(i) {
                    scores.value(i)
                } else {
                    0.0
                };
                self.verdicts
                    .push_back((s, flags.is_valid(i) && flags.value(i)));
            }
        }
        Ok(())
    }
}

/// Splits a file's channels between the detector every channel gets and those that
/// `--channel-set` gives settings of their own.
fn groups<'a>(
    detector: &'a Result<Detector, String>,
    per_channel: &'a [(String, Detector)],
    layout: &Layout,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<Group<'a>>> {
    for (name, _) in per_channel {
        if !layout.values.iter().any(|(_, c)| c == name) {
            let names: Vec<&str> = layout.values.iter().map(|(_, c)| c.as_str()).collect();
            bail!(
                "--channel-set names `{name}`, which is not a value column (value columns: {})",
                names.join(", ")
            );
        }
    }
    let mut plan: Vec<(&Detector, Vec<usize>)> = Vec::new();
    let mut shared = Vec::new();
    for (c, (_, name)) in layout.values.iter().enumerate() {
        match per_channel.iter().find(|(n, _)| n == name) {
            Some((_, d)) => plan.push((d, vec![c])),
            None => shared.push(c),
        }
    }
    if !shared.is_empty() {
        // Without settings of their own, channels need the detector --set describes.
        let detector = detector.as_ref().map_err(|e| anyhow!("{e}"))?;
        plan.insert(0, (detector, shared));
    }
    plan.into_iter()
        .map(|(detector, channels)| {
            let (transform, cx) = detector.build(runtime)?;
            Ok(Group {
                detector,
                channels,
                transform,
                cx,
                verdicts: VecDeque::new(),
            })
        })
        .collect()
}

/// Creates the output file (and its directory) with the header line: the time column,
/// then the score and the flag.
fn create_output(out: &Path, time_name: &str) -> anyhow::Result<BufWriter<File>> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = BufWriter::new(file);
    csv_field(&mut w, time_name)?;
    writeln!(w, ",anomaly_score,is_anomaly")?;
    Ok(w)
}

/// Scores one file into `out`. Returns (rows, anomalous rows).
fn score_file(
    args: &ScoreArgs,
    detectors: (&Result<Detector, String>, &[(String, Detector)]),
    input: &Path,
    out: &Path,
    runtime: &tokio::runtime::Handle,
    progress: &Option<indicatif::ProgressBar>,
    dead: &DeadLetter,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut reader = Reader::open(input, args.delimiter_byte, dead.clone())?;
    let columns = reader.columns()?;
    let mut rows: Vec<Row> = Vec::new();
    let first = reader.next_fields()?;
    let layout = layout(args, &columns, first.as_deref())?;
    let mut groups = groups(detectors.0, detectors.1, &layout, runtime)?;
    let mut w = create_output(out, &layout.time_name)?;

    // Rows judged but not yet written.
    let mut waiting: VecDeque<Row> = VecDeque::new();
    let (mut total, mut flagged) = (0u64, 0u64);
    let mut index = 0u64;
    let mut next = first;
    loop {
        read_chunk(&mut reader, &layout, &mut next, &mut index, &mut rows)?;
        let done = rows.is_empty();
        for g in &mut groups {
            if done {
                g.transform
                    .flush(&mut g.cx)
                    .map_err(|e| anyhow!("{}: {e}", g.detector.name))?;
            } else {
                let mut keys = StringBuilder::new();
                let mut ts = Int64Builder::new();
                let mut values = Float64Builder::new();
                for row in &rows {
                    for &c in &g.channels {
                        let name = &layout.values[c].1;
                        if layout.key.is_some() {
                            keys.append_value(format!("{}/{name}", row.key));
                        } else {
                            keys.append_value(name);
                        }
                        ts.append_value(row.ts);
                        values.append_option(row.values[c]);
                    }
                }
                let batch = RecordBatch::try_new(
                    g.detector.input.clone(),
                    vec![
                        Arc::new(keys.finish()),
                        Arc::new(ts.finish()),
                        Arc::new(values.finish()),
                    ],
                )?;
                g.transform
                    .process(batch, &mut g.cx)
                    .map_err(|e| anyhow!("{}: {e}", g.detector.name))?;
            }
            g.collect()?;
        }
        if !done {
            if let Some(p) = progress {
                p.inc(rows.len() as u64);
            }
            waiting.extend(rows.drain(..));
        }
        // Write every row whose channels all have their verdicts.
        while !waiting.is_empty() && groups.iter().all(|g| g.verdicts.len() >= g.channels.len()) {
            let Some(row) = waiting.pop_front() else {
                break;
            };
            let (mut score, mut votes) = (0.0f64, 0usize);
            for g in &mut groups {
                for (s, flag) in g.verdicts.drain(..g.channels.len()) {
                    score = score.max(s);
                    votes += usize::from(flag);
                }
            }
            let anomalous = votes >= args.min_channels;
            csv_field(&mut w, &row.time_text)?;
            writeln!(
                w,
                ",{},{}",
                ryu::Buffer::new().format(score),
                u8::from(anomalous)
            )?;
            total += 1;
            flagged += u64::from(anomalous);
        }
        if groups
            .iter()
            .any(|g| g.verdicts.len() > g.channels.len() * waiting.len())
        {
            bail!("the detector emitted more events than it was given");
        }
        if done {
            break;
        }
    }
    if !waiting.is_empty() {
        bail!("the detector emitted fewer events than it was given");
    }
    w.flush()?;
    Ok((total, flagged, reader.skipped))
}

/// The schema of a row event: `sensor_id`, `ts` and one Float64 field per value column.
fn row_schema(layout: &Layout) -> SchemaRef {
    let mut fields = vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ];
    fields.extend(
        layout
            .values
            .iter()
            .map(|(_, name)| Field::new(name, DataType::Float64, true)),
    );
    Arc::new(Schema::new(fields))
}

/// Scores one file with `--rows`: one event per row, every value column a field.
/// Returns (rows, anomalous rows).
fn score_file_rows(
    args: &ScoreArgs,
    input: &Path,
    out: &Path,
    runtime: &tokio::runtime::Handle,
    dead: &DeadLetter,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut reader = Reader::open(input, args.delimiter_byte, dead.clone())?;
    let columns = reader.columns()?;
    let first = reader.next_fields()?;
    let layout = layout(args, &columns, first.as_deref())?;
    let mut set = args.set.clone();
    if !set
        .iter()
        .any(|s| s.trim_start().starts_with("value_fields"))
    {
        let names: Vec<String> = layout
            .values
            .iter()
            .map(|(_, n)| format!("{n:?}"))
            .collect();
        set.push(format!("value_fields=[{}]", names.join(", ")));
    }
    if !set.iter().any(|s| s.trim_start().starts_with("key_field")) {
        set.push("key_field=sensor_id".into());
    }
    let detector = resolve_detector_for(args, &set, row_schema(&layout))?;
    let (mut transform, mut cx) = detector.build(runtime)?;
    let score_col = detector.output.index_of("anomaly_score")?;
    let flag_col = detector.output.index_of("is_anomaly")?;
    let mut w = create_output(out, &layout.time_name)?;
    let (mut total, mut flagged) = (0u64, 0u64);
    let mut index = 0u64;
    let mut next = first;
    loop {
        let mut rows: Vec<Row> = Vec::new();
        read_chunk(&mut reader, &layout, &mut next, &mut index, &mut rows)?;
        if rows.is_empty() {
            transform
                .flush(&mut cx)
                .map_err(|e| anyhow!("{}: {e}", detector.name))?;
            if cx.take_emitted().next().is_some() {
                bail!("the detector emitted more events than it was given");
            }
            break;
        }
        let mut keys = StringBuilder::new();
        let mut ts = Int64Builder::new();
        let mut values: Vec<Float64Builder> = layout
            .values
            .iter()
            .map(|_| Float64Builder::new())
            .collect();
        for row in &rows {
            keys.append_value(&row.key);
            ts.append_value(row.ts);
            for (b, v) in values.iter_mut().zip(&row.values) {
                b.append_option(*v);
            }
        }
        let mut arrays: Vec<arrow_array::ArrayRef> =
            vec![Arc::new(keys.finish()), Arc::new(ts.finish())];
        arrays.extend(
            values
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as arrow_array::ArrayRef),
        );
        let batch = RecordBatch::try_new(detector.input.clone(), arrays)?;
        transform
            .process(batch, &mut cx)
            .map_err(|e| anyhow!("{}: {e}", detector.name))?;
        let mut judged = 0usize;
        for (batch, _) in cx.take_emitted() {
            let scores = batch.column(score_col).as_primitive::<Float64Type>();
            let flags = batch.column(flag_col).as_boolean();
            for i in 0..batch.num_rows() {
                let row = rows
                    .get(judged)
                    .ok_or_else(|| anyhow!("the detector emitted more events than it was given"))?;
                let anomalous = flags.is_valid(i) && flags.value(i);
                csv_field(&mut w, &row.time_text)?;
                writeln!(
                    w,
                    ",{},{}",
                    ryu::Buffer::new().format(if scores.is_valid(i) {
                        scores.value(i)
                    } else {
                        0.0
                    }),
                    u8::from(anomalous)
                )?;
                judged += 1;
                total += 1;
                flagged += u64::from(anomalous);
            }
        }
        if judged != rows.len() {
            bail!(
                "the detector emitted {judged} events for {} rows",
                rows.len()
            );
        }
    }
    w.flush()?;
    Ok((total, flagged, reader.skipped))
}

/// The detectors of the channels `--channel-set` gives settings of their own: each gets
/// the `--set` settings, but those it sets itself.
fn channel_detectors(args: &ScoreArgs) -> anyhow::Result<Vec<(String, Detector)>> {
    let mut per_channel: Vec<(String, Vec<String>)> = Vec::new();
    for spec in &args.channel_set {
        let (head, value) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--channel-set wants CHANNEL:NAME=VALUE, got `{spec}`"))?;
        let (channel, key) = head
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--channel-set wants CHANNEL:NAME=VALUE, got `{spec}`"))?;
        let setting = format!("{key}={value}");
        match per_channel.iter_mut().find(|(c, _)| c == channel) {
            Some((_, set)) => set.push(setting),
            None => per_channel.push((channel.to_string(), vec![setting])),
        }
    }
    per_channel
        .into_iter()
        .map(|(channel, own)| {
            let key = |s: &String| s.split_once('=').map(|(k, _)| k.trim().to_string());
            let overridden: Vec<Option<String>> = own.iter().map(key).collect();
            let set: Vec<String> = args
                .set
                .iter()
                .filter(|s| !overridden.contains(&key(s)))
                .cloned()
                .chain(own)
                .collect();
            let mut d = resolve_detector(args, &set)
                .with_context(|| format!("--channel-set for `{channel}`"))?;
            d.name = format!("{} [{channel}]", d.name);
            Ok((channel, d))
        })
        .collect()
}

/// The dead-letter output of `--dead-letter`, or standard error.
fn open_dead_letters(args: &ScoreArgs) -> anyhow::Result<DeadLetter> {
    match &args.dead_letter {
        None => Ok(DeadLetter::stderr()),
        Some(path) => DeadLetter::open(&tidegauge_core::dead_letter::DeadLetterConfig {
            path: Some(path.clone()),
            ..Default::default()
        })
        .with_context(|| format!("cannot open {}", path.display())),
    }
}

/// What the summary says of skipped lines.
fn skipped_note(args: &ScoreArgs, skipped: u64) -> String {
    if skipped == 0 {
        return String::new();
    }
    let place = match &args.dead_letter {
        Some(p) => p.display().to_string(),
        None => "standard error".into(),
    };
    format!("; {skipped} line(s) skipped, each with its place and reason in {place}")
}

/// Scores every input file (path, path under the input given) into its CSV under `--out`
/// (third argument) with `score`, which returns the
/// rows, anomalies and skipped lines of one file; sums them, then writes the dead letters
/// out.
fn score_each(
    args: &ScoreArgs,
    files: &[(PathBuf, PathBuf)],
    dead: &DeadLetter,
    mut score: impl FnMut(&Path, &Path, &Path) -> anyhow::Result<(u64, u64, u64)>,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut totals = (0, 0, 0);
    for (input, rel) in files {
        let out = args.out.join(rel).with_extension("csv");
        let (r, a, s) = score(input, rel, &out).with_context(|| input.display().to_string())?;
        totals = (totals.0 + r, totals.1 + a, totals.2 + s);
    }
    dead.flush()
        .with_context(|| "cannot write the dead letters".to_string())?;
    Ok(totals)
}

/// `tidegauge score --rows`.
fn run_rows(args: ScoreArgs) -> anyhow::Result<()> {
    if !args.channel_set.is_empty() || args.min_channels != 1 {
        bail!("--rows judges whole rows: --channel-set and --min-channels do not apply");
    }
    let files = collect_inputs(&args.inputs)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dead = open_dead_letters(&args)?;
    let (rows, anomalies, skipped) = score_each(&args, &files, &dead, |input, _, out| {
        score_file_rows(&args, input, out, runtime.handle(), &dead)
    })?;
    ewriteln!(
        "tidegauge: scored {} file(s), {rows} rows, {anomalies} anomalous, with {} on whole rows; results in {}{}",
        files.len(),
        args.detector,
        args.out.display(),
        skipped_note(&args, skipped)
    );
    Ok(())
}

/// Runs `tidegauge score`.
pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    if args.rows {
        return run_rows(args);
    }
    let per_channel = channel_detectors(&args)?;
    // With --channel-set, the --set settings alone may be incomplete (a required setting
    // given per channel); that is an error only for a file with a channel left without.
    let detector = match resolve_detector(&args, &args.set) {
        Ok(d) => Ok(d),
        Err(e) if !per_channel.is_empty() => Err(format!("{e:#}")),
        Err(e) => return Err(e),
    };
    let mut name = match &detector {
        Ok(d) => d.name.clone(),
        Err(_) => args.detector.clone(),
    };
    if !per_channel.is_empty() {
        name.push_str(" (with settings per channel)");
    }
    let files = collect_inputs(&args.inputs)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let progress = args.progress.then(|| {
        let total: u64 = files
            .iter()
            .map(|(f, _)| count_lines(f).saturating_sub(1))
            .sum();
        let p = indicatif::ProgressBar::new(total);
        p.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rows {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        p
    });
    let dead = open_dead_letters(&args)?;
    let (rows, anomalies, skipped) = score_each(&args, &files, &dead, |input, rel, out| {
        if let Some(p) = &progress {
            p.set_message(rel.display().to_string());
        }
        score_file(
            &args,
            (&detector, &per_channel),
            input,
            out,
            runtime.handle(),
            &progress,
            &dead,
        )
    })?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    ewriteln!(
        "tidegauge: scored {} file(s), {rows} rows, {anomalies} anomalous, with {}; results in {}{}",
        files.len(),
        name,
        args.out.display(),
        skipped_note(&args, skipped)
    );
    Ok(())
}
