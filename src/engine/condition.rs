//! Field conditions of rule `match`, `start` and `stop` tables: compiled
//! from TOML once, evaluated per event without allocating.
//!
//! Semantics: every field of a table must hold. A field that is absent (or
//! null) satisfies only `{ exists = false }` and negations (`not`).
//! On a list field (`allowed_tools`, or a JSON array), a test holds when it
//! holds for any element.

use crate::condition::{Path, Scalar, Test, Val, compile_test};
use crate::event::{Event, EventKind, FieldId};

/// A reference to one event field, resolved at rule load time.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldRef {
    Known(FieldId),
    AllowedTools,
    ExpectedRuntime,
    Timestamp,
    /// A kept input field: a plain name, or a dotted path into it.
    Extra(Path),
}

impl FieldRef {
    pub fn parse(name: &str) -> FieldRef {
        match name {
            "allowed_tools" => FieldRef::AllowedTools,
            "expected_runtime_s" => FieldRef::ExpectedRuntime,
            "ts" => FieldRef::Timestamp,
            _ => FieldId::from_name(name)
                .map_or_else(|| FieldRef::Extra(Path::field(name)), FieldRef::Known),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            FieldRef::Known(f) => f.name(),
            FieldRef::AllowedTools => "allowed_tools",
            FieldRef::ExpectedRuntime => "expected_runtime_s",
            FieldRef::Timestamp => "ts",
            FieldRef::Extra(path) => path.text(),
        }
    }

    /// The field's value on an event, if present and not null.
    pub fn lookup<'e>(&self, ev: &'e Event<'_>) -> Option<Val<'e>> {
        match self {
            FieldRef::Known(f) => ev.get(*f).map(Val::Str),
            FieldRef::AllowedTools => ev.allowed_tools.as_deref().map(Val::List),
            FieldRef::ExpectedRuntime => ev.expected_runtime_s.map(Val::Num),
            FieldRef::Timestamp => Some(Val::Num(ev.ts as f64)),
            FieldRef::Extra(path) => path.first_in(&|k| ev.extra(k)).and_then(Val::from_json),
        }
    }

    /// The field as a string for keys: strings as is, numbers and booleans
    /// in JSON form; lists and objects have no key form.
    pub fn key_text(&self, ev: &Event<'_>, buf: &mut String) -> bool {
        use std::fmt::Write;
        match self.lookup(ev) {
            Some(Val::Str(s)) => buf.push_str(s),
            Some(Val::Num(n)) => {
                let _ = write!(buf, "{n}");
            }
            Some(Val::Bool(b)) => buf.push_str(if b { "true" } else { "false" }),
            _ => return false,
        }
        true
    }
}

/// The key of a condition table naming another rule's alerts.
pub const ALERT_KEY: &str = "alert";
/// The event name of a rule's alerts applied as events.
pub const ALERT_EVENT_PREFIX: &str = "alert.";

/// A compiled condition table: all fields must hold.
#[derive(Debug, Clone, Default)]
pub struct Cond {
    /// `alert = "<rule id>"`: the condition matches only that rule's
    /// alerts, as `alert.<rule id>` events; without it, it matches only
    /// input events.
    alert: Option<(Box<str>, Box<str>)>,
    /// A test of `event` against known event types, compiled to a check of
    /// the decoded kind (no string comparison per event).
    kinds: Option<Vec<EventKind>>,
    tests: Vec<(FieldRef, Test)>,
}

impl Cond {
    pub fn matches(&self, ev: &Event<'_>) -> bool {
        match &self.alert {
            None if ev.is_alert => return false,
            Some((_, name)) if !ev.is_alert || ev.event != **name => return false,
            _ => {}
        }
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&ev.kind)
        {
            return false;
        }
        self.tests.iter().all(|(field, test)| match field {
            FieldRef::Extra(path) if !path.is_plain() => {
                test.eval_reached(&mut |pred| path.any_in(&|k| ev.extra(k), pred))
            }
            _ => test.eval(field.lookup(ev)),
        })
    }

    /// The rule whose alerts this condition names, if it does.
    pub fn alert(&self) -> Option<&str> {
        self.alert.as_ref().map(|(rule, _)| &**rule)
    }

    /// The event kinds an input event must have to match (`None`: any).
    pub fn kinds(&self) -> Option<&[EventKind]> {
        self.kinds.as_deref()
    }

    /// Compiles a TOML condition table, appending every problem to `errors`.
    pub fn compile(table: &toml::Table, errors: &mut Vec<String>) -> Cond {
        let mut tests = Vec::with_capacity(table.len());
        let mut alert = None;
        for (name, value) in table {
            if name == ALERT_KEY {
                match value.as_str() {
                    Some(rule) if !rule.is_empty() => {
                        let event = format!("{ALERT_EVENT_PREFIX}{rule}");
                        alert = Some((rule.into(), event.into()));
                    }
                    _ => errors.push(format!(
                        "`{ALERT_KEY}` names the rule whose alerts are the events here: a rule id string"
                    )),
                }
                continue;
            }
            let field = FieldRef::parse(name);
            if let Some(test) = compile_test(name, value, errors) {
                tests.push((field, test));
            }
        }
        let mut kinds = None;
        if let Some(i) = tests
            .iter()
            .position(|(f, _)| *f == FieldRef::Known(FieldId::Event))
        {
            let known = |s: &Scalar| match s {
                Scalar::Str(name) => {
                    Some(EventKind::from_name(name)).filter(|k| *k != EventKind::Other)
                }
                _ => None,
            };
            let as_kinds: Option<Vec<EventKind>> = match &tests[i].1 {
                Test::Eq(s) => known(s).map(|k| vec![k]),
                Test::AnyOf(list) => list.iter().map(known).collect(),
                _ => None,
            };
            if as_kinds.is_some() {
                kinds = as_kinds;
                tests.remove(i);
            }
        }
        // Cheap equality on `event` first: most events fail there.
        tests.sort_by_key(|(field, _)| *field != FieldRef::Known(FieldId::Event));
        Cond {
            alert,
            kinds,
            tests,
        }
    }
}
