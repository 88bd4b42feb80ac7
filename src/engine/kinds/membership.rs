//! The `membership` kind (DESIGN §4): a `define` event gives its key a set
//! (the values of its `set` field); a `check` event of the key fires when
//! its `field` is not a member. A set holds from its define until an
//! `until` event of the key, and while the clock has not passed the
//! define's time + `key_ttl`.
//!
//! A check at `t` is judged against the latest define with `ts <= t`: it
//! fires iff no `until` with `define.ts <= ts <= t` has arrived and the
//! value is not in the set. A check whose key has no define at or before
//! `t` is held until the clock passes `t` (a define arriving meanwhile
//! judges it), then dropped without alert. An event that is several of
//! define, check and until is judged as a check first, then defines, then
//! ends.

use serde::{Deserialize, Serialize};

use super::super::condition::FieldRef;
use super::super::rules::{DEFAULT_KEY_TTL_MS, RuleKind, condition, key_fields, positive_duration};
use super::Trigger;
use crate::condition::Val;
use crate::event::Event;

/// Bounds per key: defines and untils kept (the oldest go first), and
/// checks held while their key has no set.
pub const MAX_DEFINES_PER_KEY: usize = 16;
pub const MAX_UNTILS_PER_KEY: usize = 16;
pub const MAX_HELD_PER_KEY: usize = 256;

/// `kind = "membership"`: the rule's own keys as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    define: Option<toml::Table>,
    check: Option<toml::Table>,
    until: Option<toml::Table>,
    key: Option<Vec<String>>,
    set: Option<String>,
    field: Option<String>,
    key_ttl: Option<String>,
}

impl Raw {
    pub fn compile(self, errors: &mut Vec<String>) -> Option<RuleKind> {
        let key = key_fields(self.key.as_deref(), "key", errors);
        if self.key.as_ref().is_none_or(Vec::is_empty) {
            errors.push(
                "`key` is required: the fields that tie a check to its set (e.g. [\"session_id\"])"
                    .to_owned(),
            );
        }
        let define = condition("define", self.define.as_ref(), errors);
        let check = condition("check", self.check.as_ref(), errors);
        let until = match self.until.as_ref() {
            None => Some(None),
            Some(t) => condition("until", Some(t), errors).map(Some),
        };
        let mut named = |name: &str, value: Option<&str>, what: &str| match value {
            None | Some("") => {
                errors.push(format!("`{name}` is required: {what}"));
                None
            }
            Some(f) => Some(FieldRef::parse(f)),
        };
        let set = named(
            "set",
            self.set.as_deref(),
            "the field of a define event holding the members (e.g. \"allowed_tools\")",
        );
        let field = named(
            "field",
            self.field.as_deref(),
            "the field of a check event tested for membership (e.g. \"tool\")",
        );
        let key_ttl = positive_duration("key_ttl", self.key_ttl.as_deref(), errors);
        Some(RuleKind::Membership {
            define: define?,
            check: check?,
            until: until?,
            key,
            set: set?,
            field: field?,
            key_ttl_ms: key_ttl.unwrap_or(DEFAULT_KEY_TTL_MS),
        })
    }
}

/// The members of a define event's set field: a list, a JSON array of
/// scalars, or one scalar. `None` when the event has no such field (it
/// then defines nothing).
pub fn members(field: &FieldRef, ev: &Event<'_>) -> Option<Vec<Box<str>>> {
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.as_str().into()),
        serde_json::Value::Number(n) => Some(n.to_string().into()),
        serde_json::Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    };
    Some(match field.lookup(ev)? {
        Val::List(items) => items.iter().map(|s| s.as_ref().into()).collect(),
        Val::JsonList(items) => items.iter().filter_map(scalar).collect(),
        Val::Str(s) => vec![s.into()],
        Val::Num(n) => vec![n.to_string().into()],
        Val::Bool(b) => vec![b.to_string().into()],
        Val::Object => return None,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Define {
    ts: i64,
    set: Vec<Box<str>>,
}

/// A check waiting for its key's set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    value: Box<str>,
    pub trigger: Trigger,
}

/// What a check was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a member of the set defined at `since`.
    Outside { since: i64 },
    /// A member, or the set had ended.
    Inside,
    /// No set yet: held (or dropped when the clock has passed it).
    NoSet,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberKey {
    /// Sorted by `ts`.
    defines: Vec<Define>,
    /// Times of until events, sorted.
    untils: Vec<i64>,
    /// Checks without a set, sorted by `ts`.
    held: Vec<Held>,
}

impl MemberKey {
    /// The latest event time held (the key's age for eviction).
    pub fn last_seen(&self) -> i64 {
        let d = self.defines.last().map_or(i64::MIN, |d| d.ts);
        let u = self.untils.last().copied().unwrap_or(i64::MIN);
        let h = self.held.last().map_or(i64::MIN, |h| h.trigger.ts);
        d.max(u).max(h)
    }

    /// Drops what the clock has passed; says whether nothing is left.
    pub fn expire(&mut self, clock: i64, key_ttl_ms: i64) -> bool {
        self.defines
            .retain(|d| clock <= d.ts.saturating_add(key_ttl_ms));
        self.untils
            .retain(|u| clock <= u.saturating_add(key_ttl_ms));
        self.held.retain(|h| clock <= h.trigger.ts);
        self.defines.is_empty() && self.untils.is_empty() && self.held.is_empty()
    }

    /// Judges a check at `t` of `value` against the sets received so far.
    pub fn judge(&self, t: i64, value: &str) -> Verdict {
        let at = self.defines.partition_point(|d| d.ts <= t);
        let Some(define) = at.checked_sub(1).and_then(|i| self.defines.get(i)) else {
            return Verdict::NoSet;
        };
        let ended = self.untils.iter().any(|&u| define.ts <= u && u <= t);
        if ended || define.set.iter().any(|m| &**m == value) {
            Verdict::Inside
        } else {
            Verdict::Outside { since: define.ts }
        }
    }

    /// Holds a check that found no set (its clock has not passed it).
    pub fn hold(&mut self, value: &str, trigger: Trigger) {
        if self.held.len() >= MAX_HELD_PER_KEY {
            self.held.remove(0);
        }
        let at = self.held.partition_point(|h| h.trigger.ts <= trigger.ts);
        self.held.insert(
            at,
            Held {
                value: value.into(),
                trigger,
            },
        );
    }

    /// A define at `ts`: keeps its set, and returns the held checks it
    /// now judges (those at or after it), each with its verdict.
    pub fn define(&mut self, ts: i64, set: Vec<Box<str>>) -> Vec<(Held, Verdict)> {
        if self.defines.len() >= MAX_DEFINES_PER_KEY {
            self.defines.remove(0);
        }
        let at = self.defines.partition_point(|d| d.ts <= ts);
        self.defines.insert(at, Define { ts, set });
        let from = self.held.partition_point(|h| h.trigger.ts < ts);
        let judged: Vec<Held> = self.held.drain(from..).collect();
        judged
            .into_iter()
            .map(|h| {
                let verdict = self.judge(h.trigger.ts, &h.value);
                (h, verdict)
            })
            .collect()
    }

    /// An until event at `ts`.
    pub fn until(&mut self, ts: i64) {
        if self.untils.len() >= MAX_UNTILS_PER_KEY {
            self.untils.remove(0);
        }
        let at = self.untils.partition_point(|&u| u <= ts);
        self.untils.insert(at, ts);
    }
}
