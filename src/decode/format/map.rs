//! Applying a compiled [`Format`] to one parsed input record.

use std::borrow::Cow;
use std::net::SocketAddr;

use regex::Regex;
use serde_json::Value;

use super::{Conds, Const, Entry, EventName, FieldSpec, Format, Src, Target};
use crate::decode::DecodeError;
use crate::event::{Event, EventKind};

/// What one record became: its events (each may be rejected on its own,
/// e.g. a fan-out element without a required field), numbered when there
/// are several or they came through `each`.
pub struct Mapped<'a> {
    pub events: Vec<Result<Event<'a>, DecodeError>>,
}

impl Src {
    fn any(
        &self,
        root: &Value,
        item: Option<&Value>,
        pred: &mut dyn FnMut(&Value) -> bool,
    ) -> bool {
        match self {
            Src::Record(p) => p.any(root, pred),
            Src::Item(None) => item.is_some_and(pred),
            Src::Item(Some(p)) => item.is_some_and(|v| p.any(v, pred)),
        }
    }

    fn first<'v>(&self, root: &'v Value, item: Option<&'v Value>) -> Option<&'v Value> {
        match self {
            Src::Record(p) => p.first(root),
            Src::Item(None) => item.filter(|v| !v.is_null()),
            Src::Item(Some(p)) => item.and_then(|v| p.first(v)),
        }
    }
}

impl Conds {
    fn holds(&self, root: &Value, item: Option<&Value>) -> bool {
        self.tests.iter().all(|(src, test)| {
            test.eval_reached(&mut |pred: &mut dyn FnMut(&Value) -> bool| src.any(root, item, pred))
        })
    }
}

/// A scalar's text: strings as they are, numbers and booleans as JSON
/// writes them; lists, objects and null have none.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn capture<'t>(re: &Regex, text: &'t str) -> Option<&'t str> {
    let caps = re.captures(text)?;
    caps.name("v")
        .or_else(|| caps.get(1))
        .or_else(|| caps.get(0))
        .map(|m| m.as_str())
}

/// `192.0.2.1:443` and `[2001:db8::1]:443` → the address; anything else
/// (a bare address, a name) unchanged.
fn strip_port(text: &str) -> Cow<'_, str> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Cow::Owned(addr.ip().to_string()),
        Err(_) => Cow::Borrowed(text),
    }
}

fn num_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

impl FieldSpec {
    /// The field as text, through the capture, port stripping and value
    /// map; the first source that yields a non-empty text wins.
    fn string(&self, root: &Value, item: Option<&Value>) -> Option<String> {
        for src in &self.sources {
            let Some(t) = src.first(root, item).and_then(text) else {
                continue;
            };
            let t: &str = match &self.re {
                Some(re) => match capture(re, &t) {
                    Some(c) => c,
                    None => continue,
                },
                None => &t,
            };
            let t = if self.strip_port {
                strip_port(t)
            } else {
                Cow::Borrowed(t)
            };
            let t = match self.map.as_ref().and_then(|m| m.get(&*t)) {
                Some(mapped) => mapped.clone(),
                None => t.into_owned(),
            };
            let t = match &self.prefix {
                Some(p) if !t.is_empty() => format!("{p}{t}"),
                _ => t,
            };
            if !t.is_empty() {
                return Some(t);
            }
        }
        match &self.value {
            Some(Const::Str(s)) => Some(s.clone()),
            Some(Const::Num(n)) => Some(num_text(*n)),
            Some(Const::Bool(b)) => Some(b.to_string()),
            Some(Const::List(_)) | None => None,
        }
    }

    /// The first value a source reaches, as it is.
    fn raw<'v>(&self, root: &'v Value, item: Option<&'v Value>) -> Option<&'v Value> {
        self.sources.iter().find_map(|s| s.first(root, item))
    }

    fn ts(&self, root: &Value, item: Option<&Value>) -> Result<Option<i64>, DecodeError> {
        match self.raw(root, item) {
            Some(v) => self
                .time
                .parse(v)
                .map(Some)
                .map_err(|e| DecodeError::BadTimestamp(format!("`ts`: {e}"))),
            None => match &self.value {
                Some(Const::Num(n)) => self
                    .time
                    .parse(&Value::from(*n))
                    .map(Some)
                    .map_err(DecodeError::BadTimestamp),
                _ => Ok(None),
            },
        }
    }

    fn number(&self, root: &Value, item: Option<&Value>) -> Option<f64> {
        let found = self.raw(root, item).and_then(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        found.or(match self.value {
            Some(Const::Num(n)) => Some(n),
            _ => None,
        })
    }

    fn list(&self, root: &Value, item: Option<&Value>) -> Option<Vec<String>> {
        let found = self.raw(root, item).and_then(|v| match v {
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|i| text(i).map(Cow::into_owned))
                    .collect(),
            ),
            Value::String(s) => Some(match &self.split {
                Some(sep) => s
                    .split(sep.as_str())
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                None => vec![s.clone()],
            }),
            _ => None,
        });
        found.or_else(|| match &self.value {
            Some(Const::List(l)) => Some(l.clone()),
            _ => None,
        })
    }

    /// A custom field: the value as found (or as text when a capture or a
    /// map applies).
    fn json(&self, root: &Value, item: Option<&Value>) -> Option<Value> {
        if self.re.is_some() || self.map.is_some() || self.strip_port || self.prefix.is_some() {
            return self.string(root, item).map(Value::String);
        }
        if let Some(v) = self.raw(root, item) {
            return Some(v.clone());
        }
        self.value.as_ref().map(|c| match c {
            Const::Str(s) => Value::String(s.clone()),
            Const::Num(n) => Value::from(*n),
            Const::Bool(b) => Value::Bool(*b),
            Const::List(l) => Value::from(l.clone()),
        })
    }
}

impl Conds {
    fn holds_any(list: &[Conds], root: &Value) -> bool {
        list.iter().any(|c| c.holds(root, None))
    }
}

impl Format {
    /// Whether a record is this format's (a format without a signature
    /// takes every record). An envelope (`unwrap`) is when any of its
    /// elements is.
    pub fn recognizes(&self, root: &Value) -> bool {
        let Some(sig) = &self.signature else {
            return true;
        };
        Conds::holds_any(sig, root)
            || self
                .envelope(root)
                .is_some_and(|items| items.iter().any(|it| Conds::holds_any(sig, it)))
    }

    fn envelope<'v>(&self, root: &'v Value) -> Option<&'v [Value]> {
        match self.unwrap.as_ref()?.first(root)? {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Maps one record (secrets already dropped). `None`: no entry applies.
    pub fn map<'a>(&self, root: Value, payload: &'a str) -> Option<Mapped<'a>> {
        let mut events = Vec::new();
        let numbered = match self.envelope(&root) {
            Some(items) => {
                for item in items {
                    if self
                        .signature
                        .as_ref()
                        .is_none_or(|sig| Conds::holds_any(sig, item))
                    {
                        self.map_one(item.clone(), payload, &mut events);
                    }
                }
                true
            }
            None => self.map_one(root, payload, &mut events) || events.len() > 1,
        };
        if events.is_empty() {
            return None;
        }
        if numbered {
            for (i, ev) in events.iter_mut().enumerate() {
                if let Ok(ev) = ev {
                    ev.part = i as u32 + 1;
                }
            }
        }
        Some(Mapped { events })
    }

    /// Maps one record into `events`; says whether any came through `each`.
    fn map_one<'a>(
        &self,
        root: Value,
        payload: &'a str,
        events: &mut Vec<Result<Event<'a>, DecodeError>>,
    ) -> bool {
        let first = events.len();
        let mut fanned = false;
        for group in &self.groups {
            match &group.each {
                None => {
                    if let Some(e) = group.entries.iter().find(|e| e.when.holds(&root, None)) {
                        events.push(build(e, &root, None, payload));
                    }
                }
                Some(path) => {
                    let Some(v) = path.first(&root) else {
                        continue;
                    };
                    let items = match v {
                        Value::Array(items) => items.as_slice(),
                        other => std::slice::from_ref(other),
                    };
                    for it in items {
                        if let Some(e) =
                            group.entries.iter().find(|e| e.when.holds(&root, Some(it)))
                        {
                            fanned = true;
                            events.push(build(e, &root, Some(it), payload));
                        }
                    }
                }
            }
        }
        // Every input field is kept (custom fields of the mapping after
        // them, so they win a lookup); the last event takes the record's.
        let mut kept: Vec<(Cow<'a, str>, Value)> = match root {
            Value::Object(map) => map.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect(),
            _ => Vec::new(),
        };
        let n = events.len();
        for (i, ev) in events[first..].iter_mut().enumerate() {
            if let Ok(ev) = ev {
                let custom = std::mem::take(&mut ev.extra);
                ev.extra = if first + i + 1 == n {
                    std::mem::take(&mut kept)
                } else {
                    kept.clone()
                };
                ev.extra.extend(custom);
            }
        }
        fanned
    }
}

fn build<'a>(
    entry: &Entry,
    root: &Value,
    item: Option<&Value>,
    payload: &'a str,
) -> Result<Event<'a>, DecodeError> {
    let mut ev = match &entry.event {
        EventName::Fixed(name, kind) => {
            let mut ev = Event::new(0, *kind);
            if *kind == EventKind::Other {
                ev.event = Cow::Owned(name.to_string());
            }
            ev
        }
        EventName::From(spec) => {
            let name = spec
                .string(root, item)
                .ok_or(DecodeError::MissingField("event"))?;
            let mut ev = Event::new(0, EventKind::from_name(&name));
            ev.event = Cow::Owned(name);
            ev
        }
    };
    ev.payload = payload;
    ev.tenant = Cow::Borrowed("");
    let mut ts = None;
    for (target, spec) in &entry.fields {
        match target {
            Target::Ts => ts = spec.ts(root, item)?,
            Target::Tenant => {
                if let Some(t) = spec.string(root, item) {
                    ev.tenant = Cow::Owned(t);
                }
            }
            Target::Str(field) => {
                if let (Some(t), Some(slot)) = (spec.string(root, item), ev.slot_mut(*field)) {
                    *slot = Some(Cow::Owned(t));
                }
            }
            Target::AllowedTools => {
                ev.allowed_tools = spec
                    .list(root, item)
                    .map(|l| l.into_iter().map(Cow::Owned).collect());
            }
            Target::ExpectedRuntime => ev.expected_runtime_s = spec.number(root, item),
            Target::Extra(name) => {
                if let Some(v) = spec.json(root, item) {
                    ev.extra.push((Cow::Owned(name.to_string()), v));
                }
            }
        }
    }
    ev.ts = ts.ok_or(DecodeError::MissingField("ts"))?;
    Ok(ev)
}
