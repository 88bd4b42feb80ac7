//! Pure record → [`Event`] decoding (DESIGN §2): JSON lines, and RFC 5424 /
//! RFC 3164 syslog lines whose MSG is the event JSON (optionally behind the
//! CEE cookie `@cee:`). Decoding knows nothing of rules or state, does no
//! I/O, and drops secret-looking fields before anything else sees the event.
//!
//! Every rejection is a typed [`DecodeError`] with a stable
//! [`reason`](DecodeError::reason) that callers count and log.

pub mod format;
mod json;
mod syslog;

use std::str::FromStr;
use std::sync::Arc;

use serde_json::Value;

use crate::event::{DEFAULT_TENANT, Event, EventKind, FieldId, UNKNOWN_AGENT};
pub use format::{Format, FormatError, FormatSet, FormatSetError};
pub use json::is_secret_field;

/// Default upper bound of one record, in bytes (DESIGN §2).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

/// How records are framed around the JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Framing {
    /// Per record: a JSON object is JSON, anything else is parsed as syslog.
    #[default]
    Auto,
    /// One JSON object per record.
    Jsonl,
    /// RFC 5424 or RFC 3164 syslog whose MSG is the JSON object.
    Syslog,
}

impl FromStr for Framing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Framing::Auto),
            "jsonl" | "json" => Ok(Framing::Jsonl),
            "syslog" => Ok(Framing::Syslog),
            other => Err(format!("unknown framing `{other}` (auto, jsonl, syslog)")),
        }
    }
}

/// Which schema the JSON object is in (DESIGN §2b).
#[derive(Debug, Clone)]
pub enum Selector {
    /// The native event schema (§2).
    Native,
    /// One declarative format.
    Format(Arc<Format>),
    /// Per record: native when the object has a string `event`, else the
    /// first format whose signature holds.
    Auto(Arc<FormatSet>),
}

impl Selector {
    /// The selector a source or command names: `native`, `auto`, or a
    /// format of `set`.
    pub fn named(name: &str, set: &Arc<FormatSet>) -> Result<Selector, String> {
        match name {
            format::NATIVE => Ok(Selector::Native),
            format::AUTO => Ok(Selector::Auto(set.clone())),
            "jsonl" | "json" | "syslog" => Err(format!(
                "`{name}` is a framing, not a format: write `framing = \"{name}\"` (formats: {})",
                set.names().join(", ")
            )),
            other => set
                .get(other)
                .map(|f| Selector::Format(f.clone()))
                .ok_or_else(|| {
                    format!(
                        "unknown format `{other}` (formats: {})",
                        set.names().join(", ")
                    )
                }),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Selector::Native => format::NATIVE,
            Selector::Format(f) => &f.name,
            Selector::Auto(_) => format::AUTO,
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
    #[error("the stream ended inside an octet-counted frame ({len} bytes of it)")]
    Truncated { len: usize },
    #[error(
        "octet-counting frame header is not a length followed by a space; the connection was closed"
    )]
    BadFraming,
    #[error("timestamp is more than {max_skew_ms} ms ahead of the wall clock")]
    FutureTimestamp { max_skew_ms: i64 },
    /// No mapping of the format applies: not an error (a product may write
    /// other records on the same stream), counted as `unmapped`.
    #[error("no mapping of format `{0}` applies to the record")]
    Unmapped(Arc<str>),
}

impl DecodeError {
    /// Every reason, in the order summaries print them.
    pub const REASONS: [&'static str; 10] = [
        "not_json",
        "not_syslog",
        "not_utf8",
        "missing_field",
        "bad_field",
        "bad_timestamp",
        "too_large",
        "truncated",
        "bad_framing",
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
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadFraming => "bad_framing",
            DecodeError::FutureTimestamp { .. } => "future_timestamp",
            DecodeError::Unmapped(_) => "unmapped",
        }
    }
}

/// A configured decoder. Holds no state between records.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub framing: Framing,
    pub max_record_bytes: usize,
    pub format: Selector,
    /// The tenant of events that carry none (else `default`).
    pub tenant: Option<Arc<str>>,
    /// Sessions are derived downstream (DESIGN §2b) after this idle time:
    /// `session_id` is then not required here.
    pub derive_sessions_ms: Option<i64>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Framing::Auto, DEFAULT_MAX_RECORD_BYTES)
    }
}

/// What one record decoded to.
// The common case (one event) stays unboxed: no allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded<'a> {
    One(Event<'a>),
    /// A record a format fanned out; each event may be rejected on its own.
    Many(Vec<Result<Event<'a>, DecodeError>>),
}

impl Decoder {
    /// A native-schema decoder.
    pub fn new(framing: Framing, max_record_bytes: usize) -> Decoder {
        Decoder {
            framing,
            max_record_bytes,
            format: Selector::Native,
            tenant: None,
            derive_sessions_ms: None,
        }
    }

    /// Decodes a record that yields one event (the native schema, or a
    /// format's record of one event); the first of several otherwise.
    pub fn decode<'a>(&self, record: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        match self.decode_record(record)? {
            Decoded::One(ev) => Ok(ev),
            Decoded::Many(events) => events
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(DecodeError::Unmapped(self.format.name().into()))),
        }
    }

    /// Decodes one record (without its line terminator).
    pub fn decode_record<'a>(&self, record: &'a [u8]) -> Result<Decoded<'a>, DecodeError> {
        if record.len() > self.max_record_bytes {
            return Err(DecodeError::TooLarge {
                len: record.len(),
                max: self.max_record_bytes,
            });
        }
        let text = std::str::from_utf8(record).map_err(|_| DecodeError::NotUtf8)?;
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\u{feff}');
        let payload = match self.framing {
            Framing::Jsonl => text,
            Framing::Syslog => syslog::payload(text)?,
            Framing::Auto if text.starts_with('{') => text,
            Framing::Auto => syslog::payload(text)?,
        };
        let format = match &self.format {
            Selector::Native => return self.finish(json::decode_event(payload)?).map(Decoded::One),
            Selector::Format(f) => {
                let root = format::tree::parse(payload, f.need())?;
                if !f.recognizes(&root) {
                    return Err(DecodeError::Unmapped(f.name.clone()));
                }
                return self.mapped(f, root, payload);
            }
            Selector::Auto(set) => set,
        };
        let root = format::tree::parse(payload, format.auto_need())?;
        if matches!(
            crate::condition::Node::get(&root, "event"),
            Some(format::tree::J::Str(_))
        ) {
            return self.finish(json::decode_event(payload)?).map(Decoded::One);
        }
        match format
            .detection_order()
            .iter()
            .find(|f| f.recognizes(&root))
        {
            Some(f) => self.mapped(f, root, payload),
            None => Err(DecodeError::Unmapped(format::AUTO.into())),
        }
    }

    fn mapped<'a>(
        &self,
        format: &Format,
        root: format::tree::J<'a>,
        payload: &'a str,
    ) -> Result<Decoded<'a>, DecodeError> {
        let mapped = format
            .map(root, payload, kept_fields)
            .ok_or_else(|| DecodeError::Unmapped(format.name.clone()))?;
        let mut events = mapped.events;
        if events.len() == 1 && events[0].as_ref().is_ok_and(|e| e.part == 0) {
            return events.pop().map_or_else(
                || Err(DecodeError::Unmapped(format.name.clone())),
                |ev| self.finish(ev?).map(Decoded::One),
            );
        }
        Ok(Decoded::Many(
            events
                .into_iter()
                .map(|ev| ev.and_then(|ev| self.finish(ev)))
                .collect(),
        ))
    }

    /// What every event gets whatever its format: the tenant default, the
    /// `unknown` identity of an auth failure that claims none, and the
    /// required fields of its kind.
    fn finish<'a>(&self, mut event: Event<'a>) -> Result<Event<'a>, DecodeError> {
        if event.tenant.is_empty() {
            event.tenant = match &self.tenant {
                Some(t) => std::borrow::Cow::Owned(t.to_string()),
                None => std::borrow::Cow::Borrowed(DEFAULT_TENANT),
            };
        }
        if event.kind == EventKind::AuthFailure
            && event.agent_id.as_deref().is_none_or(str::is_empty)
        {
            event.agent_id = Some(std::borrow::Cow::Borrowed(UNKNOWN_AGENT));
            event.unclaimed = true;
        }
        for &field in event.kind.required() {
            if field == FieldId::SessionId && self.derive_sessions_ms.is_some() {
                continue;
            }
            if event.get(field).is_none_or(str::is_empty) {
                return Err(DecodeError::MissingField(field.name()));
            }
        }
        Ok(event)
    }
}

/// The top-level fields of a record's JSON object, secret-looking ones
/// dropped at any depth: the kept input fields of a mapped event, parsed
/// when a rule first reads one (the record was valid JSON when mapped).
fn kept_fields(text: &str) -> Vec<(String, Value)> {
    match serde_json::from_str::<serde_json::Map<String, Value>>(text) {
        Ok(map) => {
            let mut v = Value::Object(map);
            json::scrub(&mut v);
            match v {
                Value::Object(map) => map.into_iter().collect(),
                _ => Vec::new(),
            }
        }
        Err(_) => Vec::new(),
    }
}
