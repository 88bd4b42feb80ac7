//! Newline framing with a hard record-size bound: a line longer than
//! `max_record_bytes` is reported as too large and skipped to its end
//! without ever being held in memory, so one bad line cannot grow memory or
//! lose the lines after it. NUL ends a record like `\n` (as in the
//! daemon's stream framing), so `replay` of a file and `run` on it agree.

use std::io::{self, BufRead};

/// One framed line.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A line's bytes, without `\n` or a trailing `\r`.
    Record(&'a [u8]),
    /// A line over the bound: its full length, its bytes dropped.
    TooLarge { len: usize },
}

/// Reads newline-delimited records from a buffered reader.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_record_bytes: usize,
    line: u64,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_record_bytes: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: Vec::with_capacity(max_record_bytes.min(64 * 1024)),
            max_record_bytes,
            line: 0,
        }
    }

    /// The next non-blank line with its 1-based line number, or `None` at
    /// end of input. A last line without `\n` is still a record.
    pub fn next_frame(&mut self) -> io::Result<Option<(u64, Frame<'_>)>> {
        loop {
            self.buf.clear();
            let mut len = 0usize;
            let mut saw_any = false;
            loop {
                let avail = match self.inner.fill_buf() {
                    Ok(avail) => avail,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if avail.is_empty() {
                    if !saw_any {
                        return Ok(None);
                    }
                    break;
                }
                saw_any = true;
                let (chunk, found) = match memchr::memchr2(b'\n', 0, avail) {
                    Some(i) => (&avail[..i], true),
                    None => (avail, false),
                };
                len += chunk.len();
                if len <= self.max_record_bytes {
                    self.buf.extend_from_slice(chunk);
                }
                let used = chunk.len() + usize::from(found);
                self.inner.consume(used);
                if found {
                    break;
                }
            }
            self.line += 1;
            if len > self.max_record_bytes {
                return Ok(Some((self.line, Frame::TooLarge { len })));
            }
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            if super::framing::is_blank(&self.buf) {
                continue;
            }
            return Ok(Some((self.line, Frame::Record(&self.buf))));
        }
    }
}
