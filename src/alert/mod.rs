//! The alert (DESIGN §5): its fields, its deterministic id and its JSON form.
//! Alerts are built by the engine and read by everything to its right; this
//! module does no I/O.
//!
//! Times are carried as epoch milliseconds and written as RFC 3339 UTC with
//! millisecond precision (`2026-11-27T15:04:32.123Z`).

pub mod format;
pub mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use render::{Detection, RuleInfo, What, render};

/// Separator of key values inside a state key (a control character that
/// does not occur in identifiers).
pub const KEY_SEP: char = '\u{1f}';

/// The alerts the daemon raises about itself (self-monitoring and
/// `state_pressure`): their tenant, so one route can take them all, and
/// their rule ids, which no rule file may use.
pub mod daemon {
    pub const TENANT: &str = "_daemon";
    pub const STATE_PRESSURE: &str = "state_pressure";
    pub const SOURCE_SILENT: &str = "source_silent";
    pub const DEAD_LETTER: &str = "delivery_dead_letter";
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    pub const CLOCK_STALLED: &str = "clock_stalled";
    /// Every one of them (reserved).
    pub const RULES: [&str; 5] = [
        STATE_PRESSURE,
        SOURCE_SILENT,
        DEAD_LETTER,
        STORE_UNAVAILABLE,
        CLOCK_STALLED,
    ];
}

/// Marks a key value that is the `source_ip` of an auth failure claiming no
/// identity, standing in for `agent_id` (DESIGN §2b): the alert's key then
/// names the field `source_ip`.
pub const BY_SOURCE_IP: char = '\u{1e}';

/// Alert severity, in increasing order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A reference to an event that triggered an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRef {
    #[serde(with = "rfc3339")]
    pub ts: i64,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub position: Option<String>,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: see [`alert_id`].
    pub id: String,
    pub rule: String,
    pub title: String,
    pub severity: Severity,
    pub tenant: String,
    /// The rule's group-by or key fields and their values (tenant excluded).
    pub key: BTreeMap<String, String>,
    /// Event time of the alert (`t*`, the event's, or the deadline).
    #[serde(with = "rfc3339")]
    pub ts: i64,
    /// Wall clock when raised; set by the pipeline, never by the engine.
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub detected_at: Option<i64>,
    pub count: u64,
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub window_start: Option<i64>,
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub window_end: Option<i64>,
    pub summary: String,
    pub events: Vec<EventRef>,
}

/// Bytes of an event fingerprint.
pub type Fingerprint = [u8; 16];

/// A fingerprint of the event JSON text and, for the n-th event a format
/// fanned a record out to, of `n` (0: the record's one event): two distinct
/// events differ here.
pub fn fingerprint(payload: &str, part: u32) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(payload.as_bytes());
    if part > 0 {
        h.update(format!("#{part}").as_bytes());
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The alert id: a hash of (rule id, tenant, key, ts, trigger fingerprint)
/// shown as a UUID (version 8, "custom"). `key` is the joined key values.
pub fn alert_id(rule: &str, tenant: &str, key: &str, ts: i64, trigger: &Fingerprint) -> String {
    let mut h = Sha256::new();
    for part in [rule.as_bytes(), tenant.as_bytes(), key.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(ts.to_le_bytes());
    h.update(trigger);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    // 8-4-4-4-12 hex digits: a dash before bytes 4, 6, 8 and 10.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(x >> 4)]));
        id.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    id
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_ts(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => {
            // Fixed fields straight from the civil time, digit by digit:
            // several times faster than a pattern or `format!`, and alerts
            // carry three to nine.
            let dt = jiff::tz::Offset::UTC.to_datetime(ts);
            let mut text = String::with_capacity(24);
            match dt.year() {
                // Years before 0000 (jiff goes to -9999) as `{:04}` writes them.
                year if year < 0 => text = format!("{year:04}"),
                year => push_digits(&mut text, year.unsigned_abs().into(), 4),
            }
            let fields = [
                ('-', dt.month().unsigned_abs().into(), 2),
                ('-', dt.day().unsigned_abs().into(), 2),
                ('T', dt.hour().unsigned_abs().into(), 2),
                (':', dt.minute().unsigned_abs().into(), 2),
                (':', dt.second().unsigned_abs().into(), 2),
                ('.', dt.subsec_nanosecond().unsigned_abs() / 1_000_000, 3),
            ];
            for (sep, v, width) in fields {
                text.push(sep);
                push_digits(&mut text, v, width);
            }
            text.push('Z');
            text
        }
        Err(_) => ms.to_string(),
    }
}

/// Appends the last `width` decimal digits of `v`, zero-padded.
fn push_digits(text: &mut String, v: u32, width: u32) {
    for p in (0..width).rev() {
        let d = (v / 10_u32.pow(p)) % 10;
        text.push(char::from(b'0' + d as u8));
    }
}

/// serde adapters: epoch milliseconds <-> RFC 3339 strings.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ts(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<jiff::Timestamp>()
            .map(jiff::Timestamp::as_millisecond)
            .map_err(D::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => super::serialize(ms, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            #[derive(Deserialize)]
            struct W(#[serde(with = "super")] i64);
            Ok(Option::<W>::deserialize(d)?.map(|W(ms)| ms))
        }
    }
}

impl Alert {
    /// An alert with every field filled, on which `check` renders each
    /// configured format and template (and the docs show their output).
    pub fn sample() -> Alert {
        let ts = 1_795_858_816_339; // 2026-11-28T09:40:16.339Z
        Alert {
            id: "0b6f3c52-3f8e-8d3a-9c41-5e2a7d9b1f04".to_owned(),
            rule: "session_injection_incident".to_owned(),
            title: "Prompt injection incident: repeated unauthorized tool attempts in one session"
                .to_owned(),
            severity: Severity::Critical,
            tenant: "acme".to_owned(),
            key: BTreeMap::from([
                ("agent_id".to_owned(), "agent-build-7".to_owned()),
                ("session_id".to_owned(), "0c9d8e7f-6a5b".to_owned()),
            ]),
            ts,
            detected_at: Some(ts + 42),
            count: 5,
            window_start: Some(ts - 600_000),
            window_end: Some(ts),
            summary: "Agent agent-build-7 (tenant acme) tried 5 tools outside its allowlist in session 0c9d8e7f-6a5b within 10m (threshold: >= 5)."
                .to_owned(),
            events: vec![EventRef {
                ts,
                event: "tool.denied".to_owned(),
                tool: Some("delete_repository".to_owned()),
                reason: Some("not_in_allowlist".to_owned()),
                server: Some("github".to_owned()),
                position: Some("tcp 127.0.0.1:51922 line 418".to_owned()),
            }],
        }
    }
}
