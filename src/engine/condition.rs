//! Field conditions of rule `match`, `start` and `stop` tables: compiled
//! from TOML once, evaluated per event without allocating.
//!
//! Semantics: every field of a table must hold. A field that is absent (or
//! null) satisfies only `{ exists = false }` and negations (`not`).
//! On a list field (`allowed_tools`, or a JSON array), a test holds when it
//! holds for any element.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;

use crate::event::{Event, EventKind, FieldId};

/// A reference to one event field, resolved at rule load time.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldRef {
    Known(FieldId),
    AllowedTools,
    ExpectedRuntime,
    Timestamp,
    Extra(Box<str>),
}

impl FieldRef {
    pub fn parse(name: &str) -> FieldRef {
        match name {
            "allowed_tools" => FieldRef::AllowedTools,
            "expected_runtime_s" => FieldRef::ExpectedRuntime,
            "ts" => FieldRef::Timestamp,
            _ => FieldId::from_name(name)
                .map_or_else(|| FieldRef::Extra(name.into()), FieldRef::Known),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            FieldRef::Known(f) => f.name(),
            FieldRef::AllowedTools => "allowed_tools",
            FieldRef::ExpectedRuntime => "expected_runtime_s",
            FieldRef::Timestamp => "ts",
            FieldRef::Extra(name) => name,
        }
    }

    /// The field's value on an event, if present and not null.
    pub fn lookup<'e>(&self, ev: &'e Event<'_>) -> Option<Val<'e>> {
        match self {
            FieldRef::Known(f) => ev.get(*f).map(Val::Str),
            FieldRef::AllowedTools => ev.allowed_tools.as_deref().map(Val::List),
            FieldRef::ExpectedRuntime => ev.expected_runtime_s.map(Val::Num),
            FieldRef::Timestamp => Some(Val::Num(ev.ts as f64)),
            FieldRef::Extra(name) => ev.extra(name).and_then(Val::from_json),
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

/// A borrowed field value.
#[derive(Debug, Clone, Copy)]
pub enum Val<'e> {
    Str(&'e str),
    Num(f64),
    Bool(bool),
    List(&'e [Cow<'e, str>]),
    JsonList(&'e [Value]),
    Object,
}

impl<'e> Val<'e> {
    fn from_json(v: &'e Value) -> Option<Val<'e>> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64()?),
            Value::String(s) => Val::Str(s),
            Value::Array(items) => Val::JsonList(items),
            Value::Object(_) => Val::Object,
        })
    }
}

/// A literal a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// One test on one field.
#[derive(Debug, Clone)]
pub enum Test {
    Eq(Scalar),
    AnyOf(Vec<Scalar>),
    Not(Box<Test>),
    Exists(bool),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Re(Regex),
    Cidr(IpNet),
    All(Vec<Test>),
}

impl Test {
    /// Evaluates on a field value (`None`: absent).
    pub fn eval(&self, val: Option<Val<'_>>) -> bool {
        match self {
            Test::Not(inner) => !inner.eval(val),
            Test::Exists(want) => val.is_some() == *want,
            Test::All(tests) => tests.iter().all(|t| t.eval(val)),
            _ => match val {
                None => false,
                Some(Val::List(items)) => items.iter().any(|s| self.eval_one(Val::Str(s))),
                Some(Val::JsonList(items)) => items
                    .iter()
                    .filter_map(Val::from_json)
                    .any(|v| self.eval_one(v)),
                Some(v) => self.eval_one(v),
            },
        }
    }

    fn eval_one(&self, val: Val<'_>) -> bool {
        match (self, val) {
            (Test::Eq(want), v) => scalar_eq(want, v),
            (Test::AnyOf(wants), v) => wants.iter().any(|w| scalar_eq(w, v)),
            (Test::Prefix(p), Val::Str(s)) => s.starts_with(p.as_str()),
            (Test::Suffix(p), Val::Str(s)) => s.ends_with(p.as_str()),
            (Test::Contains(p), Val::Str(s)) => s.contains(p.as_str()),
            (Test::Re(re), Val::Str(s)) => re.is_match(s),
            (Test::Cidr(net), Val::Str(s)) => s.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
            (Test::Not(_) | Test::Exists(_) | Test::All(_), v) => self.eval(Some(v)),
            _ => false,
        }
    }
}

fn scalar_eq(want: &Scalar, val: Val<'_>) -> bool {
    match (want, val) {
        (Scalar::Str(w), Val::Str(s)) => w == s,
        (Scalar::Num(w), Val::Num(n)) => *w == n,
        (Scalar::Bool(w), Val::Bool(b)) => *w == b,
        _ => false,
    }
}

/// A compiled condition table: all fields must hold.
#[derive(Debug, Clone, Default)]
pub struct Cond {
    /// A test of `event` against known event types, compiled to a check of
    /// the decoded kind (no string comparison per event).
    kinds: Option<Vec<EventKind>>,
    tests: Vec<(FieldRef, Test)>,
}

impl Cond {
    pub fn matches(&self, ev: &Event<'_>) -> bool {
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&ev.kind)
        {
            return false;
        }
        self.tests
            .iter()
            .all(|(field, test)| test.eval(field.lookup(ev)))
    }

    /// Compiles a TOML condition table, appending every problem to `errors`.
    pub fn compile(table: &toml::Table, errors: &mut Vec<String>) -> Cond {
        let mut tests = Vec::with_capacity(table.len());
        for (name, value) in table {
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
        Cond { kinds, tests }
    }
}

const OPERATORS: &str = "eq, not, exists, prefix, suffix, contains, re, cidr";

fn scalar(field: &str, value: &toml::Value, errors: &mut Vec<String>) -> Option<Scalar> {
    Some(match value {
        toml::Value::String(s) => Scalar::Str(s.clone()),
        toml::Value::Integer(i) => Scalar::Num(*i as f64),
        toml::Value::Float(f) => Scalar::Num(*f),
        toml::Value::Boolean(b) => Scalar::Bool(*b),
        other => {
            errors.push(format!(
                "field `{field}`: expected a string, number or boolean, found {}",
                other.type_str()
            ));
            return None;
        }
    })
}

fn string_arg(
    field: &str,
    op: &str,
    value: &toml::Value,
    errors: &mut Vec<String>,
) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        other => {
            errors.push(format!(
                "field `{field}`: `{op}` takes a string, found {}",
                other.type_str()
            ));
            None
        }
    }
}

fn compile_test(field: &str, value: &toml::Value, errors: &mut Vec<String>) -> Option<Test> {
    match value {
        toml::Value::Array(items) => {
            if items.is_empty() {
                errors.push(format!("field `{field}`: an any-of list must not be empty"));
                return None;
            }
            let scalars: Vec<Scalar> = items
                .iter()
                .filter_map(|v| scalar(field, v, errors))
                .collect();
            (scalars.len() == items.len()).then_some(Test::AnyOf(scalars))
        }
        toml::Value::Table(ops) => {
            if ops.is_empty() {
                errors.push(format!(
                    "field `{field}`: empty operator table (operators: {OPERATORS})"
                ));
                return None;
            }
            let mut tests = Vec::with_capacity(ops.len());
            let mut failed = false;
            for (op, arg) in ops {
                let test = match op.as_str() {
                    "eq" => scalar(field, arg, errors).map(Test::Eq),
                    "not" => compile_test(field, arg, errors).map(|t| Test::Not(Box::new(t))),
                    "exists" => match arg {
                        toml::Value::Boolean(b) => Some(Test::Exists(*b)),
                        other => {
                            errors.push(format!(
                                "field `{field}`: `exists` takes true or false, found {}",
                                other.type_str()
                            ));
                            None
                        }
                    },
                    "prefix" => string_arg(field, op, arg, errors).map(Test::Prefix),
                    "suffix" => string_arg(field, op, arg, errors).map(Test::Suffix),
                    "contains" => string_arg(field, op, arg, errors).map(Test::Contains),
                    "re" => {
                        string_arg(field, op, arg, errors).and_then(|re| match Regex::new(&re) {
                            Ok(re) => Some(Test::Re(re)),
                            Err(e) => {
                                errors.push(format!("field `{field}`: invalid regex: {e}"));
                                None
                            }
                        })
                    }
                    "cidr" => string_arg(field, op, arg, errors).and_then(|net| {
                        match net.parse::<IpNet>() {
                            Ok(net) => Some(Test::Cidr(net)),
                            Err(e) => {
                                errors.push(format!("field `{field}`: invalid CIDR `{net}`: {e}"));
                                None
                            }
                        }
                    }),
                    unknown => {
                        errors.push(format!(
                            "field `{field}`: unknown operator `{unknown}` (operators: {OPERATORS})"
                        ));
                        None
                    }
                };
                match test {
                    Some(test) => tests.push(test),
                    None => failed = true,
                }
            }
            if failed {
                return None;
            }
            Some(if tests.len() == 1 {
                tests.pop()?
            } else {
                Test::All(tests)
            })
        }
        other => scalar(field, other, errors).map(Test::Eq),
    }
}
