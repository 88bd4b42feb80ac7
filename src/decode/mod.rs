//! Pure record → [`Event`] decoding (DESIGN §2): JSON lines, and RFC 5424 /
//! RFC 3164 syslog lines whose MSG is the event JSON (optionally behind the
//! CEE cookie `@cee:`). Decoding knows nothing of rules or state, does no
//! I/O, and drops secret-looking fields before anything else sees the event.
//!
//! Every rejection is a typed [`DecodeError`] with a stable
//! [`reason`](DecodeError::reason) that callers count and log.

mod json;
mod syslog;

use std::str::FromStr;

use crate::event::Event;

pub use json::is_secret_field;

/// Default upper bound of one record, in bytes (DESIGN §2).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

/// How records are framed around the event JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Per record: a JSON object is JSON, anything else is parsed as syslog.
    #[default]
    Auto,
    /// One JSON object per record.
    Jsonl,
    /// RFC 5424 or RFC 3164 syslog whose MSG is the JSON object.
    Syslog,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Format::Auto),
            "jsonl" | "json" => Ok(Format::Jsonl),
            "syslog" => Ok(Format::Syslog),
            other => Err(format!("unknown format `{other}` (auto, jsonl, syslog)")),
        }
    }
}

/// Why a record was rejected. The record itself is never part of the error,
/// so logging an error can never leak what the record carried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is not valid JSON: {0}")]
    NotJson(String),
    #[error("record is not a syslog message with a JSON MSG")]
    NotSyslog,
    #[error("record is not valid UTF-8")]
    NotUtf8,
    #[error("required field `{0}` is missing or empty")]
    MissingField(&'static str),
    #[error("field has the wrong type: {0}")]
    BadField(String),
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    #[error("record of {len} bytes exceeds max_record_bytes = {max}")]
    TooLarge { len: usize, max: usize },
    #[error("timestamp is more than {max_skew_ms} ms ahead of the wall clock")]
    FutureTimestamp { max_skew_ms: i64 },
}

impl DecodeError {
    /// Every reason, in the order summaries print them.
    pub const REASONS: [&'static str; 8] = [
        "not_json",
        "not_syslog",
        "not_utf8",
        "missing_field",
        "bad_field",
        "bad_timestamp",
        "too_large",
        "future_timestamp",
    ];

    /// The stable counter label of this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotSyslog => "not_syslog",
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::BadField(_) => "bad_field",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::FutureTimestamp { .. } => "future_timestamp",
        }
    }
}

/// A configured decoder. Cheap to copy; holds no state between records.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    pub format: Format,
    pub max_record_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            format: Format::Auto,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl Decoder {
    pub fn new(format: Format, max_record_bytes: usize) -> Decoder {
        Decoder {
            format,
            max_record_bytes,
        }
    }

    /// Decodes one record (without its line terminator).
    pub fn decode<'a>(&self, record: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        if record.len() > self.max_record_bytes {
            return Err(DecodeError::TooLarge {
                len: record.len(),
                max: self.max_record_bytes,
            });
        }
        let text = std::str::from_utf8(record).map_err(|_| DecodeError::NotUtf8)?;
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\u{feff}');
        let payload = match self.format {
            Format::Jsonl => text,
            Format::Syslog => syslog::payload(text)?,
            Format::Auto if text.starts_with('{') => text,
            Format::Auto => syslog::payload(text)?,
        };
        json::decode_event(payload)
    }
}
