//! The condition language of rules and formats (DESIGN §4): one test on one
//! field value (equality, any-of, `not`, `exists`, `prefix`, `suffix`,
//! `contains`, `re`, `cidr`), compiled from TOML once and evaluated without
//! allocating. What a field *is* belongs to the caller: rules test event
//! fields (`engine::condition`), formats test input paths
//! (`decode::format`), both through [`Path`] where the value is JSON.
//!
//! Semantics: a value that is absent (or null) satisfies only
//! `{ exists = false }` and negations (`not`). On a list, a test holds when
//! it holds for any element.

mod path;

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;

pub use path::{Node, Path, PathError};

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
    pub fn from_json(v: &'e Value) -> Option<Val<'e>> {
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

/// Visits the values a path reaches: called with a predicate, it applies
/// it to each value until one holds, and says whether one did.
pub type Reach<'r, N> = dyn FnMut(&mut dyn FnMut(&N) -> bool) -> bool + 'r;

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    fn holds(self, v: f64, bound: f64) -> bool {
        match self {
            CmpOp::Gt => v > bound,
            CmpOp::Gte => v >= bound,
            CmpOp::Lt => v < bound,
            CmpOp::Lte => v <= bound,
        }
    }
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
    /// A numeric comparison (`gt`, `gte`, `lt`, `lte`); a string that reads
    /// as a number compares as that number.
    Cmp(CmpOp, f64),
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

    /// Evaluates on every value a path reaches: `reach(pred)` calls `pred`
    /// on each reached value until it returns true, and says whether it did.
    /// Nothing reached reads as absent.
    pub fn eval_reached<N: Node>(&self, reach: &mut Reach<'_, N>) -> bool {
        match self {
            Test::Not(inner) => !inner.eval_reached(reach),
            Test::Exists(want) => reach(&mut |v: &N| !v.is_null()) == *want,
            Test::All(tests) => tests.iter().all(|t| t.eval_reached(reach)),
            _ => reach(&mut |v: &N| self.eval_node(v)),
        }
    }

    /// A value test on one reached node: on an array, any element.
    fn eval_node<N: Node>(&self, n: &N) -> bool {
        match n.items() {
            Some(items) => items
                .iter()
                .any(|i| i.val().is_some_and(|v| self.eval_one(v))),
            None => n.val().is_some_and(|v| self.eval_one(v)),
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
            (Test::Cmp(op, bound), Val::Num(n)) => op.holds(n, *bound),
            (Test::Cmp(op, bound), Val::Str(s)) => {
                s.trim().parse::<f64>().is_ok_and(|n| op.holds(n, *bound))
            }
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

const OPERATORS: &str = "eq, not, exists, prefix, suffix, contains, re, cidr, gt, gte, lt, lte";

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

pub fn compile_test(field: &str, value: &toml::Value, errors: &mut Vec<String>) -> Option<Test> {
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
                    "gt" | "gte" | "lt" | "lte" => {
                        let op = match op.as_str() {
                            "gt" => CmpOp::Gt,
                            "gte" => CmpOp::Gte,
                            "lt" => CmpOp::Lt,
                            _ => CmpOp::Lte,
                        };
                        match arg {
                            toml::Value::Integer(i) => Some(Test::Cmp(op, *i as f64)),
                            toml::Value::Float(f) => Some(Test::Cmp(op, *f)),
                            other => {
                                errors.push(format!(
                                    "field `{field}`: `{}` takes a number, found {}",
                                    op_name(op),
                                    other.type_str()
                                ));
                                None
                            }
                        }
                    }
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

fn op_name(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Gt => "gt",
        CmpOp::Gte => "gte",
        CmpOp::Lt => "lt",
        CmpOp::Lte => "lte",
    }
}
