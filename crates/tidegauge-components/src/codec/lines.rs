//! Line framing with limits: splits a byte stream into lines, never holding more than
//! `max_line_bytes` of one line in memory. An over-long line is reported (with its first
//! bytes and full length) and skipped to its end; the stream goes on after it.

use std::io::{self, Read};

/// One framed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Complete(&'a [u8]),
    /// A line longer than the limit: its first bytes and its total length.
    TooLong {
        /// The first bytes of the line (up to 1 KiB).
        head: &'a [u8],
        /// Total length in bytes (not counting the newline).
        len: u64,
    },
}

/// What one call to [`LineReader::poll`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Read this many bytes; call again.
    Read(usize),
    /// At the end of the input for now (a followed file may grow).
    Eof,
}

/// Keeps the first bytes of an over-long line for the report.
const HEAD_BYTES: usize = 1024;

/// Splits a reader into lines of at most `max_line_bytes`.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_line: usize,
    /// Line number of the next line (1-based).
    line_no: u64,
    /// Skipping the rest of an over-long line: bytes seen so far and its first bytes.
    skipping: Option<(u64, Vec<u8>)>,
    /// The last poll stopped at the caller's request with lines still in the buffer:
    /// the next one hands them over before reading (rather than moving them to the
    /// front of the buffer to make room, which copied the input once more).
    halted: bool,
}

impl<R: Read> LineReader<R> {
    /// A reader with a line limit of `max_line_bytes` (at least 1).
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        let max_line = max_line_bytes.max(1);
        let cap = (max_line + 1).clamp(64 * 1024, 1024 * 1024);
        LineReader {
            inner,
            buf: vec![0; cap],
            start: 0,
            end: 0,
            max_line,
            line_no: 1,
            skipping: None,
            halted: false,
        }
    }

    /// The line number the next line will have.
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes of a started, unfinished line held back.
    pub fn pending_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes read from the input that belong to lines not handed out yet: held in the
    /// buffer, or seen of an over-long line being skipped. Bytes read minus this is the
    /// offset just after the last line handed out.
    pub fn unfinished_bytes(&self) -> u64 {
        (self.end - self.start) as u64 + self.skipping.as_ref().map_or(0, |(seen, _)| *seen)
    }

    /// Reads once and hands every complete line to `on_line` (with its line number).
    /// At end of input, if `final_eof`, a last line without newline is handed over too;
    /// otherwise it is kept until more data arrives (a growing file).
    pub fn poll<E>(
        &mut self,
        final_eof: bool,
        mut on_line: impl FnMut(u64, Line<'_>) -> Result<(), E>,
    ) -> Result<Result<Poll, E>, io::Error> {
        if std::mem::take(&mut self.halted) {
            if let Err(e) = self.hand_over(&mut on_line) {
                return Ok(Err(e));
            }
            return Ok(Ok(Poll::Read(0)));
        }
        if self.start > 0 && (self.start == self.end || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Full of one unfinished line that is still within the limit (beyond it we would
            // be skipping): grow, never past what the limit needs.
            let grown = (self.buf.len() * 2)
                .min(self.max_line + 1)
                .max(self.buf.len() + 1);
            self.buf.resize(grown, 0);
        }
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.end += n;

        if let Err(e) = self.hand_over(&mut on_line) {
            return Ok(Err(e));
        }

        if n > 0 {
            return Ok(Ok(Poll::Read(n)));
        }
        if final_eof {
            if let Some((seen, head)) = self.skipping.take() {
                let line_no = self.line_no;
                self.line_no += 1;
                if let Err(e) = on_line(
                    line_no,
                    Line::TooLong {
                        head: &head,
                        len: seen,
                    },
                ) {
                    return Ok(Err(e));
                }
            } else if self.start < self.end {
                let line_no = self.line_no;
                self.line_no += 1;
                let mut line = &self.buf[self.start..self.end];
                if let Some(l) = line.strip_suffix(b"\r") {
                    line = l;
                }
                let r = on_line(line_no, Line::Complete(line));
                self.start = self.end;
                if let Err(e) = r {
                    return Ok(Err(e));
                }
            }
        }
        Ok(Ok(Poll::Eof))
    }

    /// Hands every complete line in the buffer to `on_line`, until it says stop.
    fn hand_over<E>(
        &mut self,
        on_line: &mut impl FnMut(u64, Line<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.start < self.end {
            let window = &self.buf[self.start..self.end];
            match memchr::memchr(b'\n', window) {
                Some(pos) => {
                    let line_no = self.line_no;
                    self.line_no += 1;
                    let line_end = self.start + pos;
                    let r = if let Some((seen, head)) = self.skipping.take() {
                        on_line(
                            line_no,
                            Line::TooLong {
                                head: &head,
                                len: seen + pos as u64,
                            },
                        )
                    } else if pos > self.max_line {
                        let head = &self.buf[self.start..self.start + HEAD_BYTES.min(pos)];
                        on_line(
                            line_no,
                            Line::TooLong {
                                head,
                                len: pos as u64,
                            },
                        )
                    } else {
                        let mut line = &self.buf[self.start..line_end];
                        if let Some(l) = line.strip_suffix(b"\r") {
                            line = l;
                        }
                        on_line(line_no, Line::Complete(line))
                    };
                    self.start = line_end + 1;
                    if let Err(e) = r {
                        self.halted = self.start < self.end;
                        return Err(e);
                    }
                }
                None => {
                    let held = window.len();
                    if let Some((seen, _)) = &mut self.skipping {
                        *seen += held as u64;
                        self.start = self.end;
                    } else if held > self.max_line {
                        let head = window[..HEAD_BYTES.min(held)].to_vec();
                        self.skipping = Some((held as u64, head));
                        self.start = self.end;
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(data: &[u8], max: usize) -> Vec<(u64, String)> {
        let mut r = LineReader::new(data, max);
        let mut out = Vec::new();
        loop {
            let p = r
                .poll::<()>(true, |n, l| {
                    out.push((
                        n,
                        match l {
                            Line::Complete(b) => String::from_utf8_lossy(b).into_owned(),
                            Line::TooLong { head, len } => {
                                format!("TOO LONG {len} {}", head.len())
                            }
                        },
                    ));
                    Ok(())
                })
                .unwrap()
                .unwrap();
            if p == Poll::Eof {
                break;
            }
        }
        out
    }

    #[test]
    fn a_caller_stopping_after_every_line_loses_none_and_reads_each_byte_once() {
        let data: Vec<u8> = (0..1000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        struct Reads<'a>(&'a [u8], usize);
        impl Read for Reads<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        let mut r = LineReader::new(Reads(&data, 0), 100);
        let mut got = Vec::new();
        loop {
            let p = r
                .poll(true, |n, l| {
                    if let Line::Complete(b) = l {
                        got.push((n, String::from_utf8_lossy(b).into_owned()));
                    }
                    Err(())
                })
                .unwrap();
            if p == Ok(Poll::Eof) {
                break;
            }
            // What is held is never more than what was read minus what was handed out.
            let handed: usize = got.iter().map(|(_, l)| l.len() + 1).sum();
            assert_eq!(r.get_mut().1 - handed, r.unfinished_bytes() as usize);
        }
        assert_eq!(got.len(), 1000);
        for (i, (n, l)) in got.iter().enumerate() {
            assert_eq!(
                (*n, l.as_str()),
                (i as u64 + 1, format!("line {i}").as_str())
            );
        }
        assert_eq!(r.get_mut().1, data.len());
    }

    #[test]
    fn splits_lines_and_keeps_the_unterminated_last_one() {
        assert_eq!(
            collect(b"a\r\nbb\n\nccc", 10),
            vec![
                (1, "a".into()),
                (2, "bb".into()),
                (3, "".into()),
                (4, "ccc".into())
            ]
        );
    }

    #[test]
    fn over_long_lines_are_reported_and_skipped() {
        let mut data = b"ok\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 300_000));
        data.extend(b"\nafter\n");
        data.extend(std::iter::repeat_n(b'y', 200_000));
        let got = collect(&data, 100_000);
        assert_eq!(
            got,
            vec![
                (1, "ok".into()),
                (2, "TOO LONG 300000 1024".into()),
                (3, "after".into()),
                (4, "TOO LONG 200000 1024".into()),
            ]
        );
    }

    #[test]
    fn lines_longer_than_the_first_buffer_fit_up_to_the_limit() {
        let mut data = std::iter::repeat_n(b'z', 3_000_000).collect::<Vec<u8>>();
        data.extend(b"\nend\n");
        let got = collect(&data, 5_000_000);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.len(), 3_000_000);
        assert_eq!(got[1], (2, "end".into()));
    }

    #[test]
    fn a_growing_input_keeps_its_partial_line() {
        let mut r = LineReader::new(&b"a\nhal"[..], 100);
        let mut seen = Vec::new();
        while r
            .poll::<()>(false, |_, l| {
                if let Line::Complete(b) = l {
                    seen.push(b.to_vec());
                }
                Ok(())
            })
            .unwrap()
            .unwrap()
            != Poll::Eof
        {}
        assert_eq!(seen, vec![b"a".to_vec()]);
        assert_eq!(r.pending_bytes(), 3);
    }
}
