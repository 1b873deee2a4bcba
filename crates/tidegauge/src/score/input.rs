//! The input side of `tidegauge score`: which files, their rows (CSV or JSON Lines),
//! and which columns hold the time, the key and the values.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tidegauge_components::codec::csv::CsvDecoder;
use tidegauge_components::codec::lines::{Line, LineReader, Poll};
use tidegauge_components::codec::parse_timestamp_ms;
use tidegauge_core::dead_letter::DeadLetter;

use super::ScoreArgs;

/// Files to score with the path each gets under the output directory.
pub(super) fn collect_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort();
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            bail!("{}: no such file or directory", input.display());
        }
    }
    if files.is_empty() {
        bail!("no .csv or .jsonl files among the inputs");
    }
    let absolute: Vec<PathBuf> = files
        .iter()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .collect();
    // Relative to the deepest directory holding every input.
    let mut base: PathBuf = absolute[0]
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    while !absolute.iter().all(|f| f.starts_with(&base)) {
        if !base.pop() {
            break;
        }
    }
    Ok(files
        .into_iter()
        .zip(absolute)
        .map(|(f, a)| {
            let rel = a
                .strip_prefix(&base)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| PathBuf::from(a.file_name().unwrap_or_default()));
            (f, rel)
        })
        .collect())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("csv" | "jsonl" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// One input row: its time text and its fields.
pub(super) struct Row {
    pub(super) time_text: String,
    pub(super) ts: i64,
    pub(super) key: String,
    pub(super) values: Vec<Option<f64>>,
}

/// Longest line read; a longer one is skipped (dead-lettered).
const MAX_LINE_BYTES: usize = 16 << 20;

/// Reads rows of a CSV or JSON Lines file. A line that is not a record (malformed CSV,
/// not a JSON object, too long) is skipped: counted, and written to the dead letters
/// with its place (`file:line`) and reason, as the `file` source does.
pub(super) struct Reader {
    lines: LineReader<File>,
    csv: bool,
    splitter: CsvDecoder,
    header: Option<Vec<String>>,
    /// Lines read ahead: their text, or the length of one too long to keep.
    pending: VecDeque<(u64, Result<Vec<u8>, u64>)>,
    eof: bool,
    origin: String,
    dead: DeadLetter,
    /// The line the last row came from (for [`Reader::reject`]).
    last: (u64, Vec<u8>),
    /// Lines skipped so far.
    pub(super) skipped: u64,
}

impl Reader {
    pub(super) fn open(path: &Path, delimiter: u8, dead: DeadLetter) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let csv = path.extension().and_then(|e| e.to_str()) == Some("csv");
        Ok(Reader {
            lines: LineReader::new(file, MAX_LINE_BYTES),
            csv,
            splitter: CsvDecoder::new(Vec::new(), delimiter, false),
            header: None,
            pending: VecDeque::new(),
            eof: false,
            origin: path.display().to_string(),
            dead,
            last: (0, Vec::new()),
            skipped: 0,
        })
    }

    /// Skips line `n`: counted and dead-lettered with `reason`.
    fn skip(&mut self, n: u64, reason: &str, raw: &[u8]) {
        self.skipped += 1;
        self.dead
            .write("score", &format!("{}:{n}", self.origin), reason, raw);
    }

    /// Skips the line the last row came from (its values cannot be used).
    pub(super) fn reject(&mut self, reason: &str) {
        let (n, raw) = std::mem::take(&mut self.last);
        self.skip(n, reason, &raw);
    }

    /// The next non-empty line with its number.
    fn next_line(&mut self) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        while self.pending.is_empty() && !self.eof {
            let pending = &mut self.pending;
            let polled = self.lines.poll::<()>(true, |n, line| {
                match line {
                    Line::Complete(l) if !l.iter().all(|b| b.is_ascii_whitespace()) => {
                        pending.push_back((n, Ok(l.to_vec())))
                    }
                    Line::Complete(_) => {}
                    Line::TooLong { len, .. } => pending.push_back((n, Err(len))),
                }
                Ok(())
            })?;
            if let Ok(Poll::Eof) = polled {
                self.eof = true;
            }
        }
        loop {
            match self.pending.pop_front() {
                None => return Ok(None),
                Some((n, Ok(line))) => return Ok(Some((n, line))),
                Some((n, Err(len))) => self.skip(
                    n,
                    &format!("line of {len} bytes exceeds {MAX_LINE_BYTES} bytes; skipped"),
                    b"",
                ),
            }
        }
    }

    fn split_csv(&mut self, line: &[u8]) -> Vec<String> {
        // A malformed line (an unterminated quote) keeps its place with no values.
        self.splitter
            .fields(line)
            .map(|f| f.into_iter().map(|v| v.trim().to_string()).collect())
            .unwrap_or_default()
    }

    /// The column names (CSV header, or the keys of the first JSON object).
    pub(super) fn columns(&mut self) -> anyhow::Result<Vec<String>> {
        if let Some(h) = &self.header {
            return Ok(h.clone());
        }
        let Some((n, first)) = self.next_line()? else {
            bail!("the file is empty");
        };
        let header = if self.csv {
            self.split_csv(&first)
        } else {
            let v: serde_json::Value =
                serde_json::from_slice(&first).map_err(|e| anyhow!("line {n}: {e}"))?;
            let obj = v
                .as_object()
                .ok_or_else(|| anyhow!("line {n}: expected a JSON object"))?;
            // The first object is data too: put it back.
            self.pending.push_front((n, Ok(first)));
            obj.keys().cloned().collect()
        };
        self.header = Some(header.clone());
        Ok(header)
    }

    /// The fields of the next row as text (missing ones empty), or `None` at the end.
    /// Lines that are not records are skipped (see [`Reader`]).
    pub(super) fn next_fields(&mut self) -> anyhow::Result<Option<Vec<Option<String>>>> {
        let columns = self.columns()?;
        loop {
            let Some((n, line)) = self.next_line()? else {
                return Ok(None);
            };
            let fields = if self.csv {
                match self.splitter.fields(&line) {
                    Ok(f) if f.len() <= columns.len() => {
                        let mut f: Vec<Option<String>> =
                            f.into_iter().map(|v| Some(v.trim().to_string())).collect();
                        f.resize(columns.len(), None);
                        Ok(f)
                    }
                    Ok(f) => Err(format!(
                        "expected {} columns as in the header, got {}",
                        columns.len(),
                        f.len()
                    )),
                    Err(e) => Err(format!("malformed CSV record: {e}")),
                }
            } else {
                match serde_json::from_slice::<serde_json::Value>(&line) {
                    Ok(v) if v.is_object() => Ok(columns
                        .iter()
                        .map(|c| match v.get(c) {
                            Some(serde_json::Value::String(s)) => Some(s.clone()),
                            Some(serde_json::Value::Null) | None => None,
                            Some(other) => Some(other.to_string()),
                        })
                        .collect()),
                    Ok(_) => Err("expected a JSON object".to_string()),
                    Err(e) => Err(format!("invalid JSON: {e}")),
                }
            };
            match fields {
                Ok(f) => {
                    self.last = (n, line);
                    return Ok(Some(f));
                }
                Err(reason) => self.skip(n, &reason, &line),
            }
        }
    }
}

/// The chosen columns of one file.
pub(super) struct Layout {
    pub(super) time: Option<usize>,
    pub(super) time_name: String,
    pub(super) key: Option<usize>,
    pub(super) values: Vec<(usize, String)>,
}

/// The separator a header read as one column seems to use instead of `delimiter`.
fn other_delimiter(columns: &[String], delimiter: u8) -> Option<char> {
    let [only] = columns else { return None };
    [';', '\t', '|', ',']
        .into_iter()
        .find(|&d| d != char::from(delimiter) && only.contains(d))
}

pub(super) fn layout(
    args: &ScoreArgs,
    columns: &[String],
    first: Option<&[Option<String>]>,
) -> anyhow::Result<Layout> {
    let find = |name: &str| columns.iter().position(|c| c == name);
    let time = match &args.time_column {
        Some(t) => Some(
            find(t)
                .ok_or_else(|| anyhow!("no time column `{t}` (columns: {})", columns.join(", ")))?,
        ),
        None => ["datetime", "timestamp", "time", "ts"]
            .iter()
            .find_map(|n| find(n)),
    };
    let key = match &args.key_column {
        Some(k) => Some(find(k).ok_or_else(|| anyhow!("no key column `{k}`"))?),
        None => None,
    };
    let values: Vec<(usize, String)> = match &args.value_columns {
        Some(v) => v
            .iter()
            .map(|c| {
                find(c).map(|i| (i, c.clone())).ok_or_else(|| {
                    anyhow!("no value column `{c}` (columns: {})", columns.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?,
        None => columns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                Some(*i) != time && Some(*i) != key && !args.ignore_columns.contains(c)
            })
            .filter(|(i, _)| {
                first
                    .and_then(|f| f.get(*i).cloned().flatten())
                    .is_some_and(|v| v.parse::<f64>().is_ok())
            })
            .map(|(i, c)| (i, c.clone()))
            .collect(),
    };
    if values.is_empty() {
        bail!(
            "no numeric value columns (columns: {}); name them with --value-columns{}",
            columns.join(", "),
            other_delimiter(columns, args.delimiter_byte)
                .map(|d| format!(", or the header looks separated by `{d}`: try --delimiter '{d}'"))
                .unwrap_or_default()
        );
    }
    Ok(Layout {
        time,
        time_name: time
            .map(|t| columns[t].clone())
            .unwrap_or_else(|| "row".into()),
        key,
        values,
    })
}

/// The fields of one row, as [`Reader::next_fields`] gives them.
pub(super) type Fields = Vec<Option<String>>;

/// Reads rows into `rows` until it holds [`super::CHUNK_ROWS`] or the input ends. `next`
/// is the row read ahead (the first is read before, to choose the layout); `index`
/// counts the rows kept. A row whose time is not one is skipped (dead-lettered).
pub(super) fn read_chunk(
    reader: &mut Reader,
    layout: &Layout,
    next: &mut Option<Fields>,
    index: &mut u64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    while rows.len() < super::CHUNK_ROWS {
        let Some(fields) = next.take() else { break };
        match to_row(fields, layout, *index) {
            Ok(row) => {
                rows.push(row);
                *index += 1;
            }
            Err(reason) => reader.reject(&reason),
        }
        *next = reader.next_fields()?;
    }
    Ok(())
}

/// The row of `fields`; an error (the row is skipped) when its time column holds no
/// time.
fn to_row(fields: Vec<Option<String>>, layout: &Layout, index: u64) -> Result<Row, String> {
    let get = |i: usize| fields.get(i).cloned().flatten();
    let (time_text, ts) = match layout.time {
        Some(t) => {
            let text = get(t).unwrap_or_default();
            match parse_timestamp_ms(&text) {
                Some(ts) => (text, ts),
                None if text.is_empty() => {
                    return Err(format!("field `{}`: missing", layout.time_name));
                }
                None => {
                    return Err(format!(
                        "field `{}`: not a timestamp: {text:?}",
                        layout.time_name
                    ));
                }
            }
        }
        None => (index.to_string(), index as i64),
    };
    Ok(Row {
        ts,
        time_text,
        key: layout.key.and_then(get).unwrap_or_default(),
        values: layout
            .values
            .iter()
            .map(|(i, _)| get(*i).and_then(|v| v.parse::<f64>().ok()))
            .collect(),
    })
}

/// Writes a CSV field, quoted when it must be.
pub(super) fn csv_field(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    if text.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", text.replace('"', "\"\""))
    } else {
        out.write_all(text.as_bytes())
    }
}

pub(super) fn count_lines(path: &Path) -> u64 {
    use std::io::Read;
    let Ok(mut f) = File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    while let Ok(read) = f.read(&mut buf) {
        if read == 0 {
            break;
        }
        n += buf[..read].iter().filter(|&&c| c == b'\n').count() as u64;
    }
    n
}
