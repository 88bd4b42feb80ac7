//! Applying a compiled [`Format`] to one parsed input record.

use std::borrow::Cow;
use std::net::SocketAddr;

use regex::Regex;
use serde_json::Value;

use super::tree::{J, float_text};
use super::{Conds, Const, Entry, EventName, FieldSpec, Format, Src, Target};
use crate::condition::{Node, Val};
use crate::decode::DecodeError;
use crate::event::{Event, EventKind, Kept};

/// What one record became: its events (each may be rejected on its own,
/// e.g. a fan-out element without a required field), numbered when there
/// are several or they came through `each`.
pub struct Mapped<'a> {
    pub events: Vec<Result<Event<'a>, DecodeError>>,
}

impl Src {
    fn any<'a>(
        &self,
        root: &J<'a>,
        item: Option<&J<'a>>,
        pred: &mut dyn FnMut(&J<'a>) -> bool,
    ) -> bool {
        match self {
            Src::Record(p) => p.any(root, pred),
            Src::Item(None) => item.is_some_and(pred),
            Src::Item(Some(p)) => item.is_some_and(|v| p.any(v, pred)),
        }
    }

    fn first<'v, 'a>(&self, root: &'v J<'a>, item: Option<&'v J<'a>>) -> Option<&'v J<'a>> {
        match self {
            Src::Record(p) => p.first(root),
            Src::Item(None) => item.filter(|v| !Node::is_null(*v)),
            Src::Item(Some(p)) => item.and_then(|v| p.first(v)),
        }
    }
}

impl Conds {
    fn holds<'a>(&self, root: &J<'a>, item: Option<&J<'a>>) -> bool {
        self.tests.iter().all(|(src, test)| {
            test.eval_reached(&mut |pred: &mut dyn FnMut(&J<'a>) -> bool| src.any(root, item, pred))
        })
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

impl FieldSpec {
    /// The field as text, through the capture, port stripping and value
    /// map; the first source that yields a non-empty text wins.
    fn string(&self, root: &J, item: Option<&J>) -> Option<String> {
        self.cow(root, item).map(Cow::into_owned)
    }

    /// [`FieldSpec::string`] borrowing from the record where the value is
    /// used as written (no capture, map, prefix or port to strip).
    fn cow<'a>(&self, root: &J<'a>, item: Option<&J<'a>>) -> Option<Cow<'a, str>> {
        let plain =
            self.re.is_none() && self.map.is_none() && self.prefix.is_none() && !self.strip_port;
        for src in &self.sources {
            let Some(v) = src.first(root, item) else {
                continue;
            };
            if plain {
                match v {
                    J::Str(Cow::Borrowed(s)) if !s.is_empty() => return Some(Cow::Borrowed(s)),
                    J::Str(Cow::Borrowed(_)) => continue,
                    _ => {}
                }
            }
            let Some(t) = v.text() else {
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
                return Some(Cow::Owned(t));
            }
        }
        match &self.value {
            Some(Const::Str(s)) => Some(Cow::Owned(s.clone())),
            Some(Const::Num(n)) => Some(Cow::Owned(float_text(*n))),
            Some(Const::Bool(b)) => Some(Cow::Owned(b.to_string())),
            Some(Const::List(_)) | None => None,
        }
    }

    /// The first value a source reaches, as it is.
    fn raw<'v, 'a>(&self, root: &'v J<'a>, item: Option<&'v J<'a>>) -> Option<&'v J<'a>> {
        self.sources.iter().find_map(|s| s.first(root, item))
    }

    fn ts(&self, root: &J, item: Option<&J>) -> Result<Option<i64>, DecodeError> {
        let bad = |e: String| DecodeError::BadTimestamp(format!("`ts`: {e}"));
        match self.raw(root, item) {
            Some(v) => match v.val() {
                Some(val) => self.time.parse(val).map(Some).map_err(bad),
                None => Ok(None),
            },
            None => match &self.value {
                Some(Const::Num(n)) => self.time.parse(Val::Num(*n)).map(Some).map_err(bad),
                _ => Ok(None),
            },
        }
    }

    fn number(&self, root: &J, item: Option<&J>) -> Option<f64> {
        let found = self.raw(root, item).and_then(|v| match v {
            J::Int(i) => Some(*i as f64),
            J::Float(f) => Some(*f),
            J::Str(s) => s.trim().parse().ok(),
            _ => None,
        });
        found.or(match self.value {
            Some(Const::Num(n)) => Some(n),
            _ => None,
        })
    }

    fn list(&self, root: &J, item: Option<&J>) -> Option<Vec<String>> {
        let found = self.raw(root, item).and_then(|v| match v {
            J::Arr(items) => Some(
                items
                    .iter()
                    .filter_map(|i| i.text().map(Cow::into_owned))
                    .collect(),
            ),
            J::Str(s) => Some(match &self.split {
                Some(sep) => s
                    .split(sep.as_str())
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                None => vec![s.to_string()],
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
    fn json(&self, root: &J, item: Option<&J>) -> Option<Value> {
        if self.re.is_some() || self.map.is_some() || self.strip_port || self.prefix.is_some() {
            return self.string(root, item).map(Value::String);
        }
        if let Some(v) = self.raw(root, item) {
            return Some(v.to_value());
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
    fn holds_any(list: &[Conds], root: &J) -> bool {
        list.iter().any(|c| c.holds(root, None))
    }
}

impl Format {
    /// Whether a record is this format's (a format without a signature
    /// takes every record). An envelope (`unwrap`) is when any of its
    /// elements is.
    pub fn recognizes(&self, root: &J) -> bool {
        let Some(sig) = &self.signature else {
            return true;
        };
        Conds::holds_any(sig, root)
            || self
                .envelope(root)
                .is_some_and(|items| items.iter().any(|it| Conds::holds_any(sig, it)))
    }

    fn envelope<'v, 'a>(&self, root: &'v J<'a>) -> Option<&'v [J<'a>]> {
        self.unwrap.as_ref()?.first(root)?.items()
    }

    /// Maps one record (secrets already dropped); `payload` is its JSON
    /// object text, whose fields are kept on each event. `None`: no entry
    /// applies.
    pub fn map<'a>(
        &self,
        root: J<'a>,
        payload: &'a str,
        kept: fn(&str) -> Vec<(String, Value)>,
    ) -> Option<Mapped<'a>> {
        let mut events = Vec::with_capacity(2);
        let numbered = match self.envelope(&root) {
            Some(items) => {
                for item in items {
                    if self
                        .signature
                        .as_ref()
                        .is_none_or(|sig| Conds::holds_any(sig, item))
                    {
                        let fields = match item.to_value() {
                            Value::Object(m) => m.into_iter().collect(),
                            _ => Vec::new(),
                        };
                        self.map_one(item, payload, || Kept::parsed(fields.clone()), &mut events);
                    }
                }
                true
            }
            None => {
                self.map_one(&root, payload, || Kept::new(payload, kept), &mut events)
                    || events.len() > 1
            }
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
        root: &J<'a>,
        payload: &'a str,
        kept: impl Fn() -> Kept<'a>,
        events: &mut Vec<Result<Event<'a>, DecodeError>>,
    ) -> bool {
        let first = events.len();
        let mut fanned = false;
        for group in &self.groups {
            match &group.each {
                None => {
                    if let Some(e) = group.entries.iter().find(|e| e.when.holds(root, None)) {
                        events.push(build(e, root, None, payload));
                    }
                }
                Some(path) => {
                    let Some(v) = path.first(root) else {
                        continue;
                    };
                    let items = match v.items() {
                        Some(items) => items,
                        None => std::slice::from_ref(v),
                    };
                    for it in items {
                        if let Some(e) = group.entries.iter().find(|e| e.when.holds(root, Some(it)))
                        {
                            fanned = true;
                            events.push(build(e, root, Some(it), payload));
                        }
                    }
                }
            }
        }
        // Every input field is kept, parsed only if a rule asks; the
        // mapping's custom fields (in `extra`) win a lookup.
        for ev in events[first..].iter_mut().flatten() {
            ev.kept = Some(kept());
        }
        fanned
    }
}

fn build<'a>(
    entry: &Entry,
    root: &J<'a>,
    item: Option<&J<'a>>,
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
                if let Some(t) = spec.cow(root, item) {
                    ev.tenant = t;
                }
            }
            Target::Str(field) => {
                if let (Some(t), Some(slot)) = (spec.cow(root, item), ev.slot_mut(*field)) {
                    *slot = Some(t);
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
