//! Stream framing of syslog over TCP/TLS (RFC 6587), pure: octet counting
//! (`LEN SP MSG`) or LF-delimited, detected on a connection's first byte.
//! The framer never holds more than one record's bound of bytes: an
//! oversize octet-counted frame is skipped by its length, an oversize line
//! is skipped to its newline, and both are reported as `TooLarge`.
//!
//! Every byte ends up accounted: NUL delimits records like LF (some
//! senders terminate messages with it), a blank record (whitespace only)
//! is no record on any source, and at the end of a stream
//! ([`Framer::finish`]) an unterminated last line is a record, a partial
//! octet-counted frame is `Truncated`, and a framing error is `BadFraming`.

use std::ops::Range;

/// One framed record inside a [`Batch`](super::Batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRef {
    /// Bytes of `Batch::data`.
    Record(Range<usize>),
    /// A record over the bound, dropped unread; its length in bytes.
    TooLarge(usize),
    /// An octet-counted frame the stream ended inside of; the bytes it had.
    Truncated(usize),
    /// The stream stopped being framable here (a bad octet-counting
    /// header); the connection is closed after it.
    BadFraming,
}

/// Records framed from one read, sharing one buffer.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    pub data: Vec<u8>,
    pub frames: Vec<FrameRef>,
    /// With offset tracking (newline framing): the stream offset just past
    /// each frame's newline, parallel to `frames`.
    pub ends: Vec<u64>,
}

impl Frames {
    pub fn push_record(&mut self, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.frames.push(FrameRef::Record(start..self.data.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn get(&self, frame: &FrameRef) -> Option<&[u8]> {
        match frame {
            FrameRef::Record(r) => self.data.get(r.clone()),
            FrameRef::TooLarge(_) | FrameRef::Truncated(_) | FrameRef::BadFraming => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Unknown,
    OctetCounting,
    NewLine,
}

/// Why a stream cannot be framed any further (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("octet-counting frame header is not a length followed by a space")]
    BadOctetHeader,
}

/// The longest length prefix accepted (10 digits).
const MAX_HEADER: usize = 11;

#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    max_record_bytes: usize,
    /// Unconsumed bytes: at most one partial record (plus a header).
    pending: Vec<u8>,
    /// Bytes still to drop of an oversize octet-counted frame.
    skip_bytes: usize,
    /// Dropping an oversize line up to its newline; bytes dropped so far.
    skip_line: Option<usize>,
    /// Track stream offsets of frame ends (`Frames::ends`).
    track: bool,
    /// Stream bytes consumed so far.
    offset: u64,
}

impl Framer {
    pub fn new(max_record_bytes: usize) -> Framer {
        Framer::with_mode(max_record_bytes, Mode::Unknown)
    }

    pub fn with_mode(max_record_bytes: usize, mode: Mode) -> Framer {
        Framer {
            mode,
            max_record_bytes,
            pending: Vec::new(),
            skip_bytes: 0,
            skip_line: None,
            track: false,
            offset: 0,
        }
    }

    /// Newline framing that records each frame's end offset in the stream,
    /// starting at `offset` (for files resumed mid-way).
    pub fn lines_at(max_record_bytes: usize, offset: u64) -> Framer {
        Framer {
            track: true,
            offset,
            ..Framer::with_mode(max_record_bytes, Mode::NewLine)
        }
    }

    /// The stream offset after the last complete frame: where to resume.
    pub fn resume_offset(&self) -> u64 {
        self.offset - self.pending.len() as u64 - self.skip_line.map_or(0, |n| n as u64)
    }

    fn end_at(&self, out: &mut Frames, end: u64) {
        if self.track {
            while out.ends.len() < out.frames.len() {
                out.ends.push(end);
            }
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bytes held for a partial record.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Whether a record has begun and not ended (held, or an oversize one
    /// being skipped).
    pub fn in_record(&self) -> bool {
        !self.pending.is_empty() || self.skip_bytes > 0 || self.skip_line.is_some()
    }

    /// Frames as many records as `input` completes into `out`. On an error
    /// `out` ends with [`FrameRef::BadFraming`] and the stream cannot be
    /// framed further.
    pub fn push(&mut self, mut input: &[u8], out: &mut Frames) -> Result<(), FramingError> {
        while !input.is_empty() {
            let before = input.len();
            input = match self.step(input, out) {
                Ok(rest) => rest,
                Err(e) => {
                    self.pending.clear();
                    out.frames.push(FrameRef::BadFraming);
                    self.end_at(out, self.offset);
                    return Err(e);
                }
            };
            self.offset += (before - input.len()) as u64;
            let end = self.offset;
            self.end_at(out, end);
        }
        Ok(())
    }

    /// The stream ended: what it still held becomes a frame. An
    /// unterminated line is a record (unless blank), the rest of an
    /// oversize line is `TooLarge`, a partial octet-counted frame is
    /// `Truncated`. The framer is empty after it.
    pub fn finish(&mut self, out: &mut Frames) {
        self.end(out, false);
    }

    /// The daemon stops reading a stream the sender has not ended: a
    /// partial record is `Truncated` in either framing (its sender did not
    /// finish it).
    pub fn abandon(&mut self, out: &mut Frames) {
        self.end(out, true);
    }

    fn end(&mut self, out: &mut Frames, abandoned: bool) {
        if let Some(dropped) = self.skip_line.take() {
            out.frames.push(FrameRef::TooLarge(dropped));
        }
        // The rest of an oversize frame was counted when its header came.
        self.skip_bytes = 0;
        let pending = std::mem::take(&mut self.pending);
        if !pending.iter().all(|b| is_separator(*b)) {
            match self.mode {
                Mode::NewLine if !abandoned => push_line(out, &pending),
                _ => out.frames.push(FrameRef::Truncated(pending.len())),
            }
        }
        self.end_at(out, self.offset);
    }

    fn step<'i>(
        &mut self,
        mut input: &'i [u8],
        out: &mut Frames,
    ) -> Result<&'i [u8], FramingError> {
        if self.skip_bytes > 0 {
            let n = self.skip_bytes.min(input.len());
            self.skip_bytes -= n;
            return Ok(&input[n..]);
        }
        if let Some(dropped) = self.skip_line {
            match memchr::memchr2(b'\n', 0, input) {
                Some(i) => {
                    out.frames.push(FrameRef::TooLarge(dropped + i));
                    self.skip_line = None;
                    input = &input[i + 1..];
                }
                None => {
                    self.skip_line = Some(dropped + input.len());
                    input = &[];
                }
            }
            return Ok(input);
        }
        if self.mode == Mode::Unknown {
            // Whitespace before the first frame is dropped, however the
            // reads split it (found by fuzzing: it used to be kept when it
            // arrived with the first record and dropped when it arrived
            // alone).
            match input.iter().position(|b| !is_separator(*b)) {
                None => return Ok(&[]),
                Some(i) => {
                    self.mode = if input[i].is_ascii_digit() {
                        Mode::OctetCounting
                    } else {
                        Mode::NewLine
                    };
                    return Ok(&input[i..]);
                }
            }
        }
        match self.mode {
            Mode::NewLine => Ok(self.push_lines(input, out)),
            _ => self.push_octets(input, out),
        }
    }

    fn push_lines<'i>(&mut self, input: &'i [u8], out: &mut Frames) -> &'i [u8] {
        match memchr::memchr2(b'\n', 0, input) {
            Some(i) => {
                let line = &input[..i];
                if self.pending.len() + line.len() > self.max_record_bytes {
                    out.frames
                        .push(FrameRef::TooLarge(self.pending.len() + line.len()));
                    self.pending.clear();
                } else if self.pending.is_empty() {
                    push_line(out, line);
                } else {
                    self.pending.extend_from_slice(line);
                    let whole = std::mem::take(&mut self.pending);
                    push_line(out, &whole);
                    self.pending = whole;
                    self.pending.clear();
                }
                &input[i + 1..]
            }
            None => {
                if self.pending.len() + input.len() > self.max_record_bytes {
                    self.skip_line = Some(self.pending.len() + input.len());
                    self.pending.clear();
                } else {
                    self.pending.extend_from_slice(input);
                }
                &[]
            }
        }
    }

    fn push_octets<'i>(
        &mut self,
        input: &'i [u8],
        out: &mut Frames,
    ) -> Result<&'i [u8], FramingError> {
        // Gather the header (and the frame, if small enough) in `pending`
        // only when a read splits it; otherwise frame straight from input.
        let (buf, from_pending): (&[u8], bool) = if self.pending.is_empty() {
            (input, false)
        } else {
            (&[], true)
        };
        if from_pending {
            // Take just enough to complete a header or the frame.
            let need = self.octet_need();
            let take = need
                .saturating_sub(self.pending.len())
                .max(1)
                .min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            let pending = std::mem::take(&mut self.pending);
            let consumed = self.frame_octets(&pending, out)?;
            match consumed {
                Some(mut used) => {
                    // What is left of `pending` may hold whole frames already
                    // (a header read ahead): frame them now, not at the next
                    // read, which may never come. The rest waits.
                    while used < pending.len() && self.skip_bytes == 0 {
                        match self.frame_octets(&pending[used..], out)? {
                            Some(n) => used += n,
                            None => break,
                        }
                    }
                    self.pending = pending[used..].to_vec();
                }
                None => self.pending = pending,
            }
            return Ok(&input[take..]);
        }
        match self.frame_octets(buf, out)? {
            Some(used) => Ok(&input[used..]),
            None => {
                if input.len() > MAX_HEADER + self.max_record_bytes {
                    return Err(FramingError::BadOctetHeader);
                }
                self.pending.extend_from_slice(input);
                Ok(&[])
            }
        }
    }

    /// Bytes needed in `pending` for the current frame (header included), or
    /// a header's worth while the length is not known yet.
    fn octet_need(&self) -> usize {
        match parse_header(&self.pending) {
            Ok(Some((len, header))) if len <= self.max_record_bytes => header + len,
            _ => MAX_HEADER,
        }
    }

    /// Frames one octet-counted record from the start of `buf`; returns the
    /// bytes consumed, or `None` when `buf` ends before the frame does.
    fn frame_octets(
        &mut self,
        buf: &[u8],
        out: &mut Frames,
    ) -> Result<Option<usize>, FramingError> {
        // Separators some senders put between frames.
        let lead = buf.iter().take_while(|b| is_separator(**b)).count();
        if lead == buf.len() {
            return Ok(Some(lead));
        }
        let Some((len, header)) = parse_header(&buf[lead..])? else {
            return Ok(None);
        };
        let start = lead + header;
        if len > self.max_record_bytes {
            out.frames.push(FrameRef::TooLarge(len));
            let available = buf.len() - start;
            if available >= len {
                return Ok(Some(start + len));
            }
            self.skip_bytes = len - available;
            return Ok(Some(buf.len()));
        }
        if buf.len() - start < len {
            return Ok(None);
        }
        push_record(out, &buf[start..start + len]);
        Ok(Some(start + len))
    }
}

/// Bytes between records: ASCII whitespace and NUL.
fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0
}

/// True for a record of nothing but whitespace: no record on any source.
pub fn is_blank(record: &[u8]) -> bool {
    record.iter().all(u8::is_ascii_whitespace)
}

/// Appends a record unless it is blank.
fn push_record(out: &mut Frames, record: &[u8]) {
    if !is_blank(record) {
        out.push_record(record);
    }
}

fn push_line(out: &mut Frames, line: &[u8]) {
    push_record(out, line.strip_suffix(b"\r").unwrap_or(line));
}

/// `LEN SP` at the start of `buf`: `Some((len, header bytes))`, `None` when
/// incomplete, an error when it is not a length.
fn parse_header(buf: &[u8]) -> Result<Option<(usize, usize)>, FramingError> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == buf.len() {
        return if digits < MAX_HEADER {
            Ok(None)
        } else {
            Err(FramingError::BadOctetHeader)
        };
    }
    if digits == 0 || digits >= MAX_HEADER || buf[digits] != b' ' {
        return Err(FramingError::BadOctetHeader);
    }
    let len = std::str::from_utf8(&buf[..digits])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or(FramingError::BadOctetHeader)?;
    Ok(Some((len, digits + 1)))
}
