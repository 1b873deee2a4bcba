//! CSV: one record per line (quoted fields may hold the delimiter, not a newline). With a
//! header the declared fields are found by column name, otherwise by position.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

use super::{Row, ascii_str};

/// What a CSV line turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum CsvLine {
    /// The header; nothing to emit.
    Header,
    /// A record, now in the row.
    Record,
}

/// Why a CSV line could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum CsvError {
    /// The header lacks declared fields: the whole file cannot be read with this config.
    Header(String),
    /// This record is malformed; the next one may be fine.
    Record(String),
}

const DELIMITER: u8 = 1;
const NOT_PLAIN: u8 = 2;

/// Decodes CSV lines into rows of the declared fields.
pub struct CsvDecoder {
    names: Vec<String>,
    delimiter: u8,
    has_header: bool,
    reader: Reader,
    out: Vec<u8>,
    /// Where each field of the last line ends: in the line itself (the position of the
    /// delimiter after it) when it was `plain`, else in `out`.
    ends: Vec<usize>,
    /// Whether the last line was split in place (no quotes, no carriage return).
    plain: bool,
    /// Whether the last line split in place is all ASCII (so valid UTF-8).
    ascii: bool,
    /// For each byte: `DELIMITER`, `NOT_PLAIN` (a quote or carriage return) or 0.
    classes: [u8; 256],
    /// For each CSV column, the declared field it feeds (if any).
    columns: Option<Vec<Option<usize>>>,
    header_width: usize,
}

impl CsvDecoder {
    /// A decoder for fields `names`; `has_header` says whether each input starts with a
    /// header line.
    pub fn new(names: Vec<String>, delimiter: u8, has_header: bool) -> Self {
        let positional = (!has_header).then(|| (0..names.len()).map(Some).collect());
        CsvDecoder {
            reader: ReaderBuilder::new().delimiter(delimiter).build(),
            header_width: names.len(),
            names,
            delimiter,
            has_header,
            out: vec![0; 1024],
            ends: vec![0; 64],
            plain: false,
            ascii: false,
            classes: {
                let mut classes = [0; 256];
                classes[delimiter as usize] = DELIMITER;
                classes[b'"' as usize] = NOT_PLAIN;
                classes[b'\r' as usize] = NOT_PLAIN;
                classes
            },
            columns: positional,
        }
    }

    /// Whether the next line that is not blank is taken as the input's header.
    pub fn awaits_header(&self) -> bool {
        self.columns.is_none()
    }

    /// Call at the start of each new input: the next line is its header again.
    pub fn start_input(&mut self) {
        if self.has_header {
            self.columns = None;
        }
        self.reader = ReaderBuilder::new().delimiter(self.delimiter).build();
    }

    /// Splits `line` into its fields (see `ends`); returns how many.
    fn split(&mut self, line: &[u8]) -> Result<usize, String> {
        // Most lines have no quotes and no carriage return: their fields are what lies
        // between delimiters, found in one pass (the CSV state machine skips blank lines
        // and ends a record at a `\r`; both go its way, as do quotes).
        if let Some((n, ascii)) = self.split_plain(line) {
            self.plain = true;
            self.ascii = ascii;
            return Ok(n);
        }
        self.plain = false;
        self.split_quoted(line)
    }

    /// [`CsvDecoder::split`] by the CSV state machine (any line).
    fn split_quoted(&mut self, line: &[u8]) -> Result<usize, String> {
        let mut input = line;
        let (mut nout, mut nend) = (0, 0);
        let mut fed_newline = false;
        loop {
            let (res, nin, o, e) =
                self.reader
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]);
            input = &input[nin..];
            nout += o;
            nend += e;
            match res {
                ReadRecordResult::Record => return Ok(nend),
                ReadRecordResult::OutputFull => {
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                ReadRecordResult::InputEmpty if !fed_newline => {
                    input = b"\n";
                    fed_newline = true;
                }
                ReadRecordResult::InputEmpty | ReadRecordResult::End => {
                    self.reader.reset();
                    return Err("unterminated quoted field".into());
                }
            }
        }
    }

    /// [`CsvDecoder::split`] of a non-empty line without quotes or carriage returns, in
    /// place, and whether the line is all ASCII; `None` for any other line.
    ///
    /// Eight bytes at a time: a word with none of the bytes that matter (the delimiter, a
    /// quote, a carriage return, a byte above 0x7f) is passed over with a few operations;
    /// those it has are looked at one by one.
    fn split_plain(&mut self, line: &[u8]) -> Option<(usize, bool)> {
        if line.is_empty() {
            return None;
        }
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        const LOW: u64 = 0x7F7F_7F7F_7F7F_7F7F;
        // 0x80 in each byte of `x` that is zero, and nowhere else (no carry crosses a byte).
        let zeros = |x: u64| !(((x & LOW).wrapping_add(LOW)) | x | LOW);
        let (delim, quote, cr) = (
            ONES * u64::from(self.delimiter),
            ONES * u64::from(b'"'),
            ONES * u64::from(b'\r'),
        );
        let mut n = 0;
        let mut ascii = true;
        let mut i = 0;
        while let Some(chunk) = line[i..].first_chunk::<8>() {
            let v = u64::from_le_bytes(*chunk);
            let mut marks = zeros(v ^ delim) | zeros(v ^ quote) | zeros(v ^ cr) | (v & HIGH);
            while marks != 0 {
                let k = (marks.trailing_zeros() / 8) as usize;
                if !self.see(chunk[k], i + k, &mut n, &mut ascii) {
                    return None;
                }
                marks &= marks - 1;
            }
            i += 8;
        }
        for (k, &c) in line[i..].iter().enumerate() {
            if !self.see(c, i + k, &mut n, &mut ascii) {
                return None;
            }
        }
        self.end_field(n, line.len());
        Some((n + 1, ascii))
    }

    /// One byte of a line being split in place, at `at`: a delimiter ends field `n`;
    /// `false` for a byte that keeps the line from being split in place.
    #[inline]
    fn see(&mut self, c: u8, at: usize, n: &mut usize, ascii: &mut bool) -> bool {
        *ascii &= c < 0x80;
        match self.classes[c as usize] {
            DELIMITER => {
                self.end_field(*n, at);
                *n += 1;
                true
            }
            NOT_PLAIN => false,
            _ => true,
        }
    }

    fn end_field(&mut self, n: usize, end: usize) {
        if n == self.ends.len() {
            self.ends.resize(n * 2, 0);
        }
        self.ends[n] = end;
    }

    /// The bytes of field `i` of `line`, the line last split.
    fn field_bytes<'a>(&'a self, line: &'a [u8], i: usize) -> &'a [u8] {
        if self.plain {
            let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
            &line[start..self.ends[i]]
        } else {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.out[start..self.ends[i]]
        }
    }

    /// Field `i` of `line`, the line last split, as text. `text` is the line when it is
    /// known to be UTF-8 and split in place.
    fn field<'a>(
        &'a self,
        line: &'a [u8],
        text: Option<&'a str>,
        i: usize,
    ) -> Result<&'a str, String> {
        if let (true, Some(text)) = (self.plain, text) {
            let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
            // A delimiter above 0x7f may fall inside a character: checked below then.
            if let Some(field) = text.get(start..self.ends[i]) {
                return Ok(field);
            }
        }
        std::str::from_utf8(self.field_bytes(line, i))
            .map_err(|_| format!("column {} is not valid UTF-8", i + 1))
    }

    /// Every field of one line as text (for readers that discover the columns).
    pub fn fields(&mut self, line: &[u8]) -> Result<Vec<String>, String> {
        let n = self.split(line)?;
        (0..n)
            .map(|i| self.field(line, None, i).map(str::to_string))
            .collect()
    }

    /// Decodes one line (without its newline).
    pub fn decode(&mut self, line: &[u8], row: &mut Row) -> Result<CsvLine, CsvError> {
        let n = self.split(line).map_err(CsvError::Record)?;
        if self.columns.is_none() {
            let mut header = Vec::with_capacity(n);
            for i in 0..n {
                header.push(
                    self.field(line, None, i)
                        .map_err(CsvError::Header)?
                        .trim()
                        .to_string(),
                );
            }
            let missing: Vec<&str> = self
                .names
                .iter()
                .filter(|name| !header.contains(name))
                .map(|s| s.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(CsvError::Header(format!(
                    "header lacks column(s) `{}` (header has: {})",
                    missing.join("`, `"),
                    crate::expr::excerpt(&header.join(", "))
                )));
            }
            self.columns = Some(
                header
                    .iter()
                    .map(|h| self.names.iter().position(|n| n == h))
                    .collect(),
            );
            self.header_width = n;
            return Ok(CsvLine::Header);
        }
        if self.has_header && n != self.header_width {
            return Err(CsvError::Record(format!(
                "expected {} columns as in the header, got {n}",
                self.header_width
            )));
        }
        row.reset();
        let columns = self.columns.as_ref().map(|c| c.len()).unwrap_or(0);
        if self.plain && self.ascii {
            // Split in place and all ASCII: each field is its bytes between delimiters.
            for col in 0..n.min(columns) {
                let Some(Some(field)) = self.columns.as_ref().map(|c| c[col]) else {
                    continue;
                };
                let start = if col == 0 { 0 } else { self.ends[col - 1] + 1 };
                row.set_text(field, ascii_str(&line[start..self.ends[col]]), false);
            }
            return Ok(CsvLine::Record);
        }
        // One UTF-8 check for the line rather than one per field; a line that fails it
        // is checked field by field, so only the fields read are judged.
        let text = if self.plain {
            std::str::from_utf8(line).ok()
        } else {
            None
        };
        for col in 0..n.min(columns) {
            let Some(Some(field)) = self.columns.as_ref().map(|c| c[col]) else {
                continue;
            };
            let value = self.field(line, text, col).map_err(CsvError::Record)?;
            row.set_text(field, value, false);
        }
        Ok(CsvLine::Record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_fields(d: &mut CsvDecoder, plain: bool, line: &[u8]) -> Vec<Vec<u8>> {
        let n = if plain {
            d.plain = true;
            d.split_plain(line).unwrap().0
        } else {
            d.plain = false;
            d.split_quoted(line).unwrap()
        };
        (0..n).map(|i| d.field_bytes(line, i).to_vec()).collect()
    }

    proptest! {
        #[test]
        fn plain_lines_split_as_the_csv_machine_splits_them(
            line in prop::collection::vec(
                prop_oneof![Just(b','), Just(b';'), Just(b' '), Just(b'a'), Just(b'7'), any::<u8>()],
                1..300,
            ),
            semicolon in any::<bool>(),
        ) {
            prop_assume!(!line.contains(&b'"') && !line.contains(&b'\r') && !line.contains(&b'\n'));
            let delimiter = if semicolon { b';' } else { b',' };
            let mut ascii_check = CsvDecoder::new(names(), delimiter, true);
            prop_assert_eq!(
                ascii_check.split_plain(&line).map(|(_, ascii)| ascii),
                Some(line.is_ascii())
            );
            let mut fast = CsvDecoder::new(names(), delimiter, true);
            let mut slow = CsvDecoder::new(names(), delimiter, true);
            // Twice: buffers grown by the first line are reused by the second.
            for _ in 0..2 {
                prop_assert_eq!(
                    split_fields(&mut fast, true, &line),
                    split_fields(&mut slow, false, &line)
                );
            }
        }
    }
    use crate::codec::Slot;

    fn names() -> Vec<String> {
        vec!["ts".into(), "value".into()]
    }

    #[test]
    fn header_maps_columns_by_name() {
        let mut d = CsvDecoder::new(names(), b';', true);
        let mut row = Row::new(2);
        assert_eq!(d.decode(b"value;other;ts", &mut row), Ok(CsvLine::Header));
        assert_eq!(
            d.decode(b"1.5;\"x;y\";2020-01-01 00:00:00", &mut row),
            Ok(CsvLine::Record)
        );
        match (row.slots[0], row.slots[1]) {
            (Slot::Text(a, b), Slot::Text(c, e)) => {
                assert_eq!(&row.scratch[a as usize..b as usize], "2020-01-01 00:00:00");
                assert_eq!(&row.scratch[c as usize..e as usize], "1.5");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            d.decode(b"1;2", &mut row),
            Err(CsvError::Record(_))
        ));
    }

    #[test]
    fn header_without_declared_fields_is_a_file_error() {
        let mut d = CsvDecoder::new(names(), b',', true);
        let mut row = Row::new(2);
        let e = d.decode(b"time,val", &mut row).unwrap_err();
        assert_eq!(
            e,
            CsvError::Header("header lacks column(s) `ts`, `value` (header has: time, val)".into())
        );
    }

    #[test]
    fn a_long_header_is_quoted_by_its_start() {
        // A garbage first line (one long field of 70,000 bytes) is taken as the header:
        // the error names what is missing and quotes the line's start, not all of it.
        let mut d = CsvDecoder::new(names(), b',', true);
        let mut row = Row::new(2);
        let line = format!("ts,{}", "x".repeat(70_000));
        let CsvError::Header(e) = d.decode(line.as_bytes(), &mut row).unwrap_err() else {
            panic!("a header error");
        };
        assert!(
            e.starts_with("header lacks column(s) `value` (header has: ts, xxx"),
            "{e}"
        );
        assert!(e.ends_with("… (70004 bytes))"), "{e}");
        assert!(e.len() < 300, "{} bytes", e.len());
    }

    #[test]
    fn positional_without_header() {
        let mut d = CsvDecoder::new(names(), b',', false);
        let mut row = Row::new(2);
        assert_eq!(d.decode(b"17,2.5", &mut row), Ok(CsvLine::Record));
        assert!(matches!(row.slots[1], Slot::Text(_, _)));
        assert!(matches!(
            d.decode(b"\"unterminated,2", &mut row),
            Err(CsvError::Record(_))
        ));
        // The decoder recovers for the next line.
        assert_eq!(d.decode(b"18,3", &mut row), Ok(CsvLine::Record));
    }

    #[test]
    fn text_beyond_ascii_is_read_when_valid_and_refused_when_not() {
        let mut d = CsvDecoder::new(names(), b',', false);
        let mut row = Row::new(2);
        // Longer than a word, so the eight-byte scan meets the non-ASCII bytes.
        assert_eq!(
            d.decode("17,température-élevée".as_bytes(), &mut row),
            Ok(CsvLine::Record)
        );
        match row.slots[1] {
            Slot::Text(a, b) => {
                assert_eq!(&row.scratch[a as usize..b as usize], "température-élevée")
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut bad = "17,température-élevée".as_bytes().to_vec();
        let at = bad.iter().rposition(|&b| b == 0xc3).unwrap();
        bad[at + 1] = b'x';
        assert_eq!(
            d.decode(&bad, &mut row),
            Err(CsvError::Record("column 2 is not valid UTF-8".into()))
        );
        assert_eq!(d.decode(b"18,plain", &mut row), Ok(CsvLine::Record));
    }
}
