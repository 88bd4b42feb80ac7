//! The native JSON event object (DESIGN §2), decoded with a hand-written
//! serde visitor so that known fields borrow from the record, unknown fields
//! are kept, and secret-looking fields are skipped without ever being
//! materialized.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::DecodeError;
use crate::event::{Event, EventKind, FieldId};

/// Field names that carry credential values (compared ASCII
/// case-insensitively), and suffixes that do.
const SECRET_NAMES: [&str; 12] = [
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "private_key",
];
const SECRET_SUFFIXES: [&str; 4] = ["_token", "_secret", "_password", "_api_key"];

/// Whether a field of this name looks like it holds a credential value. Such
/// fields are dropped at decode time, at any depth, and never stored, logged
/// or forwarded.
pub fn is_secret_field(name: &str) -> bool {
    let ends_with = |suffix: &str| {
        name.len() >= suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    SECRET_NAMES.iter().any(|s| name.eq_ignore_ascii_case(s))
        || SECRET_SUFFIXES.iter().any(|s| ends_with(s))
}

/// Removes secret-looking fields from nested objects of an unknown field.
pub(super) fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !is_secret_field(k));
            map.values_mut().for_each(scrub);
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// `ts` as found, validated after the object is read so the rejection
/// reason is `bad_timestamp` rather than a type error.
enum RawTs<'a> {
    Text(Cow<'a, str>),
    Millis(i64),
    Invalid(&'static str),
}

/// Decodes the JSON object text of one native event (the tenant default
/// and required fields are the decoder's `finish`).
pub(super) fn decode_event(text: &str) -> Result<Event<'_>, DecodeError> {
    if !text.starts_with('{') {
        return Err(DecodeError::NotJson("expected a JSON object".to_owned()));
    }
    // The visitor fills the event in place: no intermediate struct is moved.
    let mut event = Event::new(0, EventKind::Other);
    event.payload = text;
    let mut ts = None;
    let mut name = None;
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(EventVisitor {
        event: &mut event,
        ts: &mut ts,
        name: &mut name,
    })
    .map_err(classify)?;
    de.end().map_err(classify)?;

    let name = name
        .filter(|e: &Cow<'_, str>| !e.is_empty())
        .ok_or(DecodeError::MissingField("event"))?;
    event.ts = match ts.ok_or(DecodeError::MissingField("ts"))? {
        RawTs::Millis(ms) => check_range(ms)?,
        RawTs::Text(text) => parse_rfc3339(&text)?,
        RawTs::Invalid(what) => {
            return Err(DecodeError::BadTimestamp(format!(
                "`ts` is {what}; expected an RFC 3339 string or epoch milliseconds"
            )));
        }
    };
    event.kind = EventKind::from_name(&name);
    event.event = name;
    Ok(event)
}

fn classify(err: serde_json::Error) -> DecodeError {
    match err.classify() {
        serde_json::error::Category::Data => DecodeError::BadField(err.to_string()),
        _ => DecodeError::NotJson(err.to_string()),
    }
}

fn check_range(ms: i64) -> Result<i64, DecodeError> {
    jiff::Timestamp::from_millisecond(ms)
        .map(|_| ms)
        .map_err(|_| DecodeError::BadTimestamp(format!("{ms} ms is out of range")))
}

fn parse_rfc3339(text: &str) -> Result<i64, DecodeError> {
    text.parse::<jiff::Timestamp>()
        .map(jiff::Timestamp::as_millisecond)
        .map_err(|e| DecodeError::BadTimestamp(format!("`ts`: {e}")))
}

struct EventVisitor<'v, 'de> {
    event: &'v mut Event<'de>,
    ts: &'v mut Option<RawTs<'de>>,
    name: &'v mut Option<Cow<'de, str>>,
}

impl<'de> Visitor<'de> for EventVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ev = self.event;
        // Known fields seen so far (bit per field): a key given twice is
        // ambiguous (a second `tenant` would move the event to another
        // tenant), so the event is rejected as `bad_field`.
        let mut seen = 0u32;
        let mut once = |bit: u32, key: &str| {
            if seen & (1 << bit) != 0 {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            seen |= 1 << bit;
            Ok(())
        };
        const TS: u32 = FieldId::ALL.len() as u32;
        while let Some(key) = map.next_key_seed(CowStr)? {
            let field = match key.as_ref() {
                "ts" => {
                    once(TS, &key)?;
                    *self.ts = Some(map.next_value_seed(TsSeed)?);
                    continue;
                }
                "event" => {
                    once(FieldId::Event as u32, &key)?;
                    *self.name = map.next_value_seed(OptStr("event"))?;
                    continue;
                }
                "tenant" => {
                    once(FieldId::Tenant as u32, &key)?;
                    ev.tenant = map
                        .next_value_seed(OptStr("tenant"))?
                        .unwrap_or(Cow::Borrowed(""));
                    continue;
                }
                "allowed_tools" => {
                    once(TS + 1, &key)?;
                    ev.allowed_tools = map.next_value_seed(StrList)?;
                    continue;
                }
                "expected_runtime_s" => {
                    once(TS + 2, &key)?;
                    ev.expected_runtime_s = map.next_value_seed(OptNumber("expected_runtime_s"))?;
                    continue;
                }
                "agent_id" => FieldId::AgentId,
                "session_id" => FieldId::SessionId,
                "credential_id" => FieldId::CredentialId,
                "tool" => FieldId::Tool,
                "reason" => FieldId::Reason,
                "role" => FieldId::Role,
                "declared_task" => FieldId::DeclaredTask,
                "server" => FieldId::Server,
                "source_ip" => FieldId::SourceIp,
                "trace_id" => FieldId::TraceId,
                "replaces" => FieldId::Replaces,
                "operation_token_id" => FieldId::OperationTokenId,
                name if is_secret_field(name) => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                _ => {
                    if ev.extra.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    let mut value: Value = map.next_value()?;
                    scrub(&mut value);
                    ev.extra.push((key, value));
                    continue;
                }
            };
            once(field as u32, &key)?;
            let value = map.next_value_seed(OptStr(field.name()))?;
            if let Some(slot) = ev.slot_mut(field) {
                *slot = value;
            }
        }
        Ok(())
    }
}

/// A string that borrows from the input when it has no escapes.
pub(super) struct CowStr;

impl<'de> DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A string field that may be null; the name makes type errors precise.
struct OptStr(&'static str);

impl<'de> DeserializeSeed<'de> for OptStr {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptStr {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string for `{}`", self.0)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A number field that may be null.
struct OptNumber(&'static str);

impl<'de> DeserializeSeed<'de> for OptNumber {
    type Value = Option<f64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptNumber {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a number for `{}`", self.0)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// `allowed_tools`: a list of strings, or null.
struct StrList;

impl<'de> DeserializeSeed<'de> for StrList {
    type Value = Option<Vec<Cow<'de, str>>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrList {
    type Value = Option<Vec<Cow<'de, str>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of strings for `allowed_tools`")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tools = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while let Some(tool) = seq.next_element_seed(CowStr)? {
            tools.push(tool);
        }
        Ok(Some(tools))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// `ts`: a string or an integer of milliseconds; anything else is kept as
/// invalid so the rejection says `bad_timestamp`.
struct TsSeed;

impl<'de> DeserializeSeed<'de> for TsSeed {
    type Value = RawTs<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TsSeed {
    type Value = RawTs<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an RFC 3339 string or epoch milliseconds for `ts`")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(RawTs::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawTs::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(RawTs::Invalid("out of range"), RawTs::Millis))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(RawTs::Millis(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // Whole milliseconds written with a fraction or exponent are fine.
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(RawTs::Millis(v as i64))
        } else {
            Ok(RawTs::Invalid("a fractional number"))
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawTs::Invalid("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawTs::Invalid("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawTs::Invalid("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawTs::Invalid("an object"))
    }
}
