//! The normalized MCP audit event (DESIGN §2) and the position of the record
//! it came from. This is vocabulary shared by every stage: it holds data and
//! field access, never parsing (see `decode`) or detection (see `engine`).
//!
//! An [`Event`] borrows from the record it was decoded from wherever the JSON
//! text allows (no escapes), so decoding allocates only for unknown fields.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Identifies an input partition (a connection, a UDP sender, a file):
/// the unit of the engine clock's watermarks.
pub type PartitionId = u64;

/// The tenant used when an event carries none (absent, null or empty).
pub const DEFAULT_TENANT: &str = "default";
/// The identity read for an `auth.failure` that claims none.
pub const UNKNOWN_AGENT: &str = "unknown";

/// The event types of the native schema; anything else is `Other`, which only
/// custom rules see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    AuthSuccess,
    AuthFailure,
    SessionStart,
    SessionEnd,
    ToolInvoke,
    ToolDenied,
    CredentialIssued,
    CredentialUsed,
    CredentialRevoked,
    Other,
}

impl EventKind {
    /// Every known kind, in schema order (for summaries).
    pub const KNOWN: [EventKind; 9] = [
        EventKind::AuthSuccess,
        EventKind::AuthFailure,
        EventKind::SessionStart,
        EventKind::SessionEnd,
        EventKind::ToolInvoke,
        EventKind::ToolDenied,
        EventKind::CredentialIssued,
        EventKind::CredentialUsed,
        EventKind::CredentialRevoked,
    ];

    /// Kinds including `Other`: the size of a table indexed by kind.
    pub const COUNT: usize = 10;

    /// The kind's place in a table of [`COUNT`](Self::COUNT) entries.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> EventKind {
        match name {
            "auth.success" => EventKind::AuthSuccess,
            "auth.failure" => EventKind::AuthFailure,
            "session.start" => EventKind::SessionStart,
            "session.end" => EventKind::SessionEnd,
            "tool.invoke" => EventKind::ToolInvoke,
            "tool.denied" => EventKind::ToolDenied,
            "credential.issued" => EventKind::CredentialIssued,
            "credential.used" => EventKind::CredentialUsed,
            "credential.revoked" => EventKind::CredentialRevoked,
            _ => EventKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::AuthSuccess => "auth.success",
            EventKind::AuthFailure => "auth.failure",
            EventKind::SessionStart => "session.start",
            EventKind::SessionEnd => "session.end",
            EventKind::ToolInvoke => "tool.invoke",
            EventKind::ToolDenied => "tool.denied",
            EventKind::CredentialIssued => "credential.issued",
            EventKind::CredentialUsed => "credential.used",
            EventKind::CredentialRevoked => "credential.revoked",
            EventKind::Other => "other",
        }
    }

    /// The fields this kind requires beyond `ts` and `event` (DESIGN §2).
    pub fn required(self) -> &'static [FieldId] {
        use FieldId::*;
        match self {
            EventKind::AuthSuccess => &[AgentId],
            EventKind::AuthFailure | EventKind::Other => &[],
            EventKind::SessionStart | EventKind::SessionEnd => &[AgentId, SessionId],
            EventKind::ToolInvoke | EventKind::ToolDenied => &[AgentId, SessionId, Tool],
            EventKind::CredentialIssued
            | EventKind::CredentialUsed
            | EventKind::CredentialRevoked => &[AgentId, CredentialId],
        }
    }
}

/// The string fields of the native schema, addressable without a string
/// comparison on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FieldId {
    Event,
    Tenant,
    AgentId,
    SessionId,
    CredentialId,
    Tool,
    Reason,
    Role,
    DeclaredTask,
    Server,
    SourceIp,
    TraceId,
    Replaces,
    OperationTokenId,
}

impl FieldId {
    pub const ALL: [FieldId; 14] = [
        FieldId::Event,
        FieldId::Tenant,
        FieldId::AgentId,
        FieldId::SessionId,
        FieldId::CredentialId,
        FieldId::Tool,
        FieldId::Reason,
        FieldId::Role,
        FieldId::DeclaredTask,
        FieldId::Server,
        FieldId::SourceIp,
        FieldId::TraceId,
        FieldId::Replaces,
        FieldId::OperationTokenId,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FieldId::Event => "event",
            FieldId::Tenant => "tenant",
            FieldId::AgentId => "agent_id",
            FieldId::SessionId => "session_id",
            FieldId::CredentialId => "credential_id",
            FieldId::Tool => "tool",
            FieldId::Reason => "reason",
            FieldId::Role => "role",
            FieldId::DeclaredTask => "declared_task",
            FieldId::Server => "server",
            FieldId::SourceIp => "source_ip",
            FieldId::TraceId => "trace_id",
            FieldId::Replaces => "replaces",
            FieldId::OperationTokenId => "operation_token_id",
        }
    }

    pub fn from_name(name: &str) -> Option<FieldId> {
        FieldId::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// One normalized audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts: i64,
    pub kind: EventKind,
    /// The `event` field as written (also for `Other` kinds).
    pub event: Cow<'a, str>,
    /// Never empty: [`DEFAULT_TENANT`] when the record has none.
    pub tenant: Cow<'a, str>,
    pub agent_id: Option<Cow<'a, str>>,
    pub session_id: Option<Cow<'a, str>>,
    pub credential_id: Option<Cow<'a, str>>,
    pub tool: Option<Cow<'a, str>>,
    pub reason: Option<Cow<'a, str>>,
    pub role: Option<Cow<'a, str>>,
    pub declared_task: Option<Cow<'a, str>>,
    pub server: Option<Cow<'a, str>>,
    pub source_ip: Option<Cow<'a, str>>,
    pub trace_id: Option<Cow<'a, str>>,
    /// On `credential.issued`: the id of the credential it rotates.
    pub replaces: Option<Cow<'a, str>>,
    /// On `tool.invoke`: the id (never the value) of the operation token
    /// presented.
    pub operation_token_id: Option<Cow<'a, str>>,
    pub allowed_tools: Option<Vec<Cow<'a, str>>>,
    pub expected_runtime_s: Option<f64>,
    /// Unknown fields, in record order, with secret-looking ones removed
    /// (for an event read through a format: the mapping's custom fields).
    pub extra: Vec<(Cow<'a, str>, serde_json::Value)>,
    /// The input fields of a record read through a format, kept for rule
    /// conditions and parsed only when one asks.
    pub kept: Option<Kept<'a>>,
    /// The JSON object text the event was decoded from (the MSG of a syslog
    /// line): the basis of the trigger fingerprint in alert ids, so the same
    /// event yields the same ids whatever framing carried it.
    pub payload: &'a str,
    /// 0 for the one event of a record; n (from 1) for the n-th event of a
    /// record that a format fanned out (position `<record>#n`; part of the
    /// id fingerprint).
    pub part: u32,
    /// An `auth.failure` that claimed no identity: `agent_id` reads
    /// `unknown`, and keys by agent are made by `source_ip` instead when
    /// the event has one (DESIGN §2b).
    pub unclaimed: bool,
    /// An `alert.<rule id>` event: a rule's alert applied as an event to
    /// the rules that name it (DESIGN §4); only such rules see it.
    pub is_alert: bool,
}

impl<'a> Event<'a> {
    /// A minimal event of `kind` at `ts` (tests and generators fill the rest).
    pub fn new(ts: i64, kind: EventKind) -> Event<'static> {
        Event {
            ts,
            kind,
            event: Cow::Borrowed(kind.name()),
            tenant: Cow::Borrowed(DEFAULT_TENANT),
            agent_id: None,
            session_id: None,
            credential_id: None,
            tool: None,
            reason: None,
            role: None,
            declared_task: None,
            server: None,
            source_ip: None,
            trace_id: None,
            replaces: None,
            operation_token_id: None,
            allowed_tools: None,
            expected_runtime_s: None,
            extra: Vec::new(),
            payload: "",
            part: 0,
            unclaimed: false,
            is_alert: false,
            kept: None,
        }
    }

    /// The value of a string field of the schema.
    pub fn get(&self, field: FieldId) -> Option<&str> {
        let v = match field {
            FieldId::Event => return Some(&self.event),
            FieldId::Tenant => return Some(&self.tenant),
            FieldId::AgentId => &self.agent_id,
            FieldId::SessionId => &self.session_id,
            FieldId::CredentialId => &self.credential_id,
            FieldId::Tool => &self.tool,
            FieldId::Reason => &self.reason,
            FieldId::Role => &self.role,
            FieldId::DeclaredTask => &self.declared_task,
            FieldId::Server => &self.server,
            FieldId::SourceIp => &self.source_ip,
            FieldId::TraceId => &self.trace_id,
            FieldId::Replaces => &self.replaces,
            FieldId::OperationTokenId => &self.operation_token_id,
        };
        v.as_deref()
    }

    /// Mutable access to a string field (`event` and `tenant` excluded).
    pub fn slot_mut(&mut self, field: FieldId) -> Option<&mut Option<Cow<'a, str>>> {
        Some(match field {
            FieldId::Event | FieldId::Tenant => return None,
            FieldId::AgentId => &mut self.agent_id,
            FieldId::SessionId => &mut self.session_id,
            FieldId::CredentialId => &mut self.credential_id,
            FieldId::Tool => &mut self.tool,
            FieldId::Reason => &mut self.reason,
            FieldId::Role => &mut self.role,
            FieldId::DeclaredTask => &mut self.declared_task,
            FieldId::Server => &mut self.server,
            FieldId::SourceIp => &mut self.source_ip,
            FieldId::TraceId => &mut self.trace_id,
            FieldId::Replaces => &mut self.replaces,
            FieldId::OperationTokenId => &mut self.operation_token_id,
        })
    }

    /// An unknown field by name: an extra field, else a kept input field.
    pub fn extra(&self, name: &str) -> Option<&serde_json::Value> {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .or_else(|| {
                self.kept
                    .as_ref()?
                    .fields()
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v)
            })
    }

    /// Every unknown field: the extra ones, then the kept input fields.
    pub fn extras(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        let kept = self.kept.as_ref().map(Kept::fields).unwrap_or_default();
        self.extra
            .iter()
            .map(|(k, v)| (k.as_ref(), v))
            .chain(kept.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

/// The top-level fields of a record's JSON object, parsed the first time a
/// rule condition reads one (a format maps from a borrowed tree of its own;
/// most events are never asked for a product field).
#[derive(Clone)]
pub struct Kept<'a> {
    text: &'a str,
    /// The decoder's parser (which drops secret-looking fields).
    parse: fn(&str) -> Vec<(String, serde_json::Value)>,
    parsed: std::sync::OnceLock<Vec<(String, serde_json::Value)>>,
}

impl<'a> Kept<'a> {
    pub fn new(text: &'a str, parse: fn(&str) -> Vec<(String, serde_json::Value)>) -> Kept<'a> {
        Kept {
            text,
            parse,
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// Already parsed fields (for records that are not one JSON text).
    pub fn parsed(fields: Vec<(String, serde_json::Value)>) -> Kept<'a> {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(fields);
        Kept {
            text: "",
            parse: |_| Vec::new(),
            parsed: cell,
        }
    }

    pub fn fields(&self) -> &[(String, serde_json::Value)] {
        self.parsed.get_or_init(|| (self.parse)(self.text))
    }
}

impl fmt::Debug for Kept<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kept")
            .field("fields", &self.fields())
            .finish()
    }
}

impl PartialEq for Kept<'_> {
    fn eq(&self, other: &Kept<'_>) -> bool {
        self.fields() == other.fields()
    }
}

/// Where a record came from, for error messages and alert event references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Line `line` (1-based) of a file.
    File { path: Arc<str>, line: u64 },
    /// Line `line` (1-based) of standard input.
    Stdin { line: u64 },
    /// A record received from a network peer by a named source.
    Peer {
        source: Arc<str>,
        peer: std::net::SocketAddr,
    },
    /// A record of a followed file, ending at byte `offset`.
    FileOffset { path: Arc<str>, offset: u64 },
    /// A Kafka record.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    /// The n-th event (from 1) of the record at `of`, fanned out by a
    /// format.
    Part { of: Box<Position>, n: u32 },
}

impl Position {
    /// The position of the `n`-th event of this record (itself for 0).
    pub fn part(&self, n: u32) -> Position {
        match n {
            0 => self.clone(),
            n => Position::Part {
                of: Box::new(self.clone()),
                n,
            },
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::File { path, line } => write!(f, "{path}:{line}"),
            Position::Stdin { line } => write!(f, "stdin:{line}"),
            Position::Peer { source, peer } => write!(f, "{source}/{peer}"),
            Position::FileOffset { path, offset } => write!(f, "{path}@{offset}"),
            Position::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}/{partition}@{offset}"),
            Position::Part { of, n } => write!(f, "{of}#{n}"),
        }
    }
}
