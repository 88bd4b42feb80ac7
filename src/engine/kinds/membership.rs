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
use super::super::keys::{HashKeyMap, KeyMap};
use super::super::rules::{DEFAULT_KEY_TTL_MS, RuleKind, condition, key_fields, positive_duration};
use super::Trigger;
use super::log::{TimeLog, serialize_with_log};
use crate::condition::Val;
use crate::event::Event;

/// Bounds per key: defines and untils kept (the oldest go first).
pub const MAX_DEFINES_PER_KEY: usize = 16;
pub const MAX_UNTILS_PER_KEY: usize = 16;

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

/// The state of a membership rule: the sets (defines and untils) by key,
/// and the checks held while their key has no set, of every key in one log
/// by time.
///
/// Saved as it always was (per key, its defines, untils and held checks),
/// so snapshots of earlier builds read back unchanged.
#[derive(Debug, Clone, Default)]
pub struct MembershipState {
    pub keys: KeyMap<MemberKey>,
    /// Held while `clock <= ts`.
    held: TimeLog<Held>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberKey {
    /// Sorted by `ts`.
    defines: Vec<Define>,
    /// Times of until events, sorted.
    untils: Vec<i64>,
}

impl MembershipState {
    /// Held checks (live keys are the keys with defines or untils).
    pub fn held_checks(&self) -> usize {
        self.held.len()
    }

    /// Drops what the clock has passed.
    pub fn expire(&mut self, clock: i64, key_ttl_ms: i64) {
        self.held.expire_before(clock);
        self.keys.retain(|_, k| !k.expire(clock, key_ttl_ms));
    }

    /// Holds a check of `key` that found no set (its clock has not passed
    /// it); returns how many held checks went to stay under `cap`.
    pub fn hold(
        &mut self,
        key: &str,
        value: &str,
        trigger: Trigger,
        clock: i64,
        cap: usize,
    ) -> usize {
        self.held.expire_before(clock);
        let ts = trigger.ts;
        let held = Held {
            value: value.into(),
            trigger,
        };
        self.held.push(key, ts, held, cap)
    }

    /// After a define of `key` at `ts`: the held checks of the key at or
    /// after it, each with its verdict.
    pub fn judge_held(&mut self, key: &str, ts: i64, clock: i64) -> Vec<(Held, Verdict)> {
        self.held.expire_before(clock);
        let Some(k) = self.keys.get(key) else {
            return Vec::new();
        };
        self.held
            .take_from(key, ts)
            .into_iter()
            .map(|h| {
                let verdict = k.judge(h.trigger.ts, &h.value);
                (h, verdict)
            })
            .collect()
    }
}

/// The saved form of a key: its defines, untils and held checks.
#[derive(Serialize)]
struct SavedKeyRef<'a> {
    defines: &'a [Define],
    untils: &'a [i64],
    held: Vec<&'a Held>,
}

#[derive(Deserialize)]
struct SavedKey {
    defines: Vec<Define>,
    untils: Vec<i64>,
    held: Vec<Held>,
}

impl Serialize for MembershipState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_with_log(s, &self.keys, &self.held, |k, held| SavedKeyRef {
            defines: k.map_or(&[], |k| &k.defines),
            untils: k.map_or(&[], |k| &k.untils),
            held,
        })
    }
}

impl<'de> Deserialize<'de> for MembershipState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MembershipState, D::Error> {
        let saved = HashKeyMap::<SavedKey>::deserialize(d)?;
        let mut state = MembershipState::default();
        let mut held = Vec::new();
        for (k, v) in saved {
            held.extend(v.held.into_iter().map(|h| (h.trigger.ts, k.clone(), h)));
            if !(v.defines.is_empty() && v.untils.is_empty()) {
                let key = MemberKey {
                    defines: v.defines,
                    untils: v.untils,
                };
                state.keys.insert(k, key);
            }
        }
        state.held = TimeLog::from_entries(held);
        Ok(state)
    }
}

impl MembershipState {
    /// The held checks (saved as a table of their own).
    pub(super) fn log_mut(&mut self) -> &mut TimeLog<Held> {
        &mut self.held
    }
}

impl MemberKey {
    /// The latest event time held (the key's age for eviction).
    pub fn last_seen(&self) -> i64 {
        let d = self.defines.last().map_or(i64::MIN, |d| d.ts);
        let u = self.untils.last().copied().unwrap_or(i64::MIN);
        d.max(u)
    }

    /// Drops what the clock has passed; says whether nothing is left.
    pub fn expire(&mut self, clock: i64, key_ttl_ms: i64) -> bool {
        self.defines
            .retain(|d| clock <= d.ts.saturating_add(key_ttl_ms));
        self.untils
            .retain(|u| clock <= u.saturating_add(key_ttl_ms));
        self.defines.is_empty() && self.untils.is_empty()
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

    /// A define at `ts`: keeps its set.
    pub fn define(&mut self, ts: i64, set: Vec<Box<str>>) {
        if self.defines.len() >= MAX_DEFINES_PER_KEY {
            self.defines.remove(0);
        }
        let at = self.defines.partition_point(|d| d.ts <= ts);
        self.defines.insert(at, Define { ts, set });
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
