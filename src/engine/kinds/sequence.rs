//! The `sequence` kind (DESIGN §4): a `first` event A at `a`, then a
//! `then` event B of the same key with `a + after <= b <= a + within`,
//! fires once per A, dated `a`, its trigger the B that completed it.
//!
//! Per key: the A's that have not fired, sorted by `a`, kept while
//! `clock <= a + within`. The B's of all keys, in one log sorted by `b`
//! (ties in arrival order: an A takes the first to arrive), kept while
//! `clock <= b + lateness` so an A arriving late still finds them. Expiry
//! is checked on access, so the sweep only frees memory. An event that is
//! both a `first` and a `then` never completes its own sequence.

use serde::{Deserialize, Serialize};

use super::super::keys::{HashKeyMap, KeyMap};
use super::super::rules::{RuleKind, condition, key_fields, positive_duration};
use super::Trigger;
use super::log::{TimeLog, serialize_with_log};
use crate::duration;

/// Beyond this many waiting A's per key the oldest go.
pub const MAX_FIRSTS_PER_KEY: usize = 4096;

/// `kind = "sequence"`: the rule's own keys as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    first: Option<toml::Table>,
    then: Option<toml::Table>,
    key: Option<Vec<String>>,
    first_key: Option<Vec<String>>,
    then_key: Option<Vec<String>>,
    within: Option<String>,
    after: Option<String>,
}

impl Raw {
    pub fn compile(self, errors: &mut Vec<String>) -> Option<RuleKind> {
        let first = condition("first", self.first.as_ref(), errors);
        let then = condition("then", self.then.as_ref(), errors);
        let (first_key, then_key) = match (&self.key, &self.first_key, &self.then_key) {
            (Some(key), None, None) => {
                let key = key_fields(Some(key), "key", errors);
                (key.clone(), key)
            }
            (None, Some(f), Some(t)) => {
                let f = key_fields(Some(f), "first_key", errors);
                let t = key_fields(Some(t), "then_key", errors);
                if f.len() != t.len() {
                    errors.push(format!(
                        "`first_key` and `then_key` must name as many fields ({} vs {})",
                        f.len(),
                        t.len()
                    ));
                }
                (f, t)
            }
            _ => {
                errors
                    .push("give `key` (both sides), or both `first_key` and `then_key`".to_owned());
                (Vec::new(), Vec::new())
            }
        };
        if first_key.is_empty() && errors.is_empty() {
            errors.push("`key` must name at least one field".to_owned());
        }
        let within = positive_duration("within", self.within.as_deref(), errors);
        if self.within.is_none() {
            errors
                .push("`within` is required (how long after a `first` a `then` counts)".to_owned());
        }
        let after = match self.after.as_deref().map(duration::parse_ms) {
            None => Some(0),
            Some(Ok(ms)) if ms >= 0 => Some(ms),
            Some(Ok(_)) => {
                errors.push("`after` must not be negative".to_owned());
                None
            }
            Some(Err(e)) => {
                errors.push(format!("`after`: {e}"));
                None
            }
        };
        let (within_ms, after_ms) = (within?, after?);
        if after_ms > within_ms {
            errors.push("`after` must not exceed `within`".to_owned());
            return None;
        }
        Some(RuleKind::Sequence {
            first: first?,
            then: then?,
            first_key,
            then_key,
            within_ms,
            after_ms,
        })
    }
}

/// The state of a sequence rule: the waiting A's by key, and the recent
/// B's of every key in one log by time.
///
/// Saved as it always was (per key, its A's and its B's), so snapshots of
/// earlier builds read back unchanged.
#[derive(Debug, Clone, Default)]
pub struct SequenceState {
    pub keys: KeyMap<SequenceKey>,
    /// The B's kept for A's that arrive late, while `clock <= b + lateness`.
    thens: TimeLog<Trigger>,
}

/// A's waiting for their B, sorted by `ts` (ties in arrival order).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SequenceKey {
    firsts: Vec<Trigger>,
}

impl SequenceState {
    /// Kept B's (live keys are the A's keys).
    pub fn kept_thens(&self) -> usize {
        self.thens.len()
    }

    /// Drops what the clock has passed.
    pub fn expire(&mut self, clock: i64, within_ms: i64, lateness_ms: i64) {
        self.thens.expire_before(clock.saturating_sub(lateness_ms));
        self.keys.retain(|_, k| !k.expire(clock, within_ms));
    }

    /// A `then` event at `b` of `key`: takes every waiting A it completes
    /// (`a + after <= b <= a + within`, not yet passed by the clock), in
    /// order of `a`.
    pub fn complete(
        &mut self,
        key: &str,
        b: i64,
        clock: i64,
        after_ms: i64,
        within_ms: i64,
    ) -> Vec<Trigger> {
        let Some(k) = self.keys.get_mut(key) else {
            return Vec::new();
        };
        let done = k.complete(b, clock, after_ms, within_ms);
        if k.expire(clock, within_ms) {
            self.keys.remove(key);
        }
        done
    }

    /// A `first` event at `a` of `key`: the earliest kept B (not yet passed
    /// by the clock) it is completed by.
    pub fn completed_by(
        &mut self,
        key: &str,
        a: i64,
        clock: i64,
        (after_ms, within_ms, lateness_ms): (i64, i64, i64),
    ) -> Option<&Trigger> {
        self.thens.expire_before(clock.saturating_sub(lateness_ms));
        let to = a.saturating_add(within_ms);
        self.thens.first(key, a.saturating_add(after_ms), to)
    }

    /// Keeps a B of `key` for A's that arrive late; returns how many kept
    /// B's went to stay under `cap`.
    pub fn keep(
        &mut self,
        key: &str,
        b: Trigger,
        clock: i64,
        lateness_ms: i64,
        cap: usize,
    ) -> usize {
        self.thens.expire_before(clock.saturating_sub(lateness_ms));
        self.thens.push(key, b.ts, b, cap)
    }
}

/// The saved form of a key: its A's and its B's.
#[derive(Serialize)]
struct SavedKeyRef<'a> {
    firsts: &'a [Trigger],
    thens: Vec<&'a Trigger>,
}

#[derive(Deserialize)]
struct SavedKey {
    firsts: Vec<Trigger>,
    thens: Vec<Trigger>,
}

impl Serialize for SequenceState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_with_log(s, &self.keys, &self.thens, |k, thens| SavedKeyRef {
            firsts: k.map_or(&[], |k| &k.firsts),
            thens,
        })
    }
}

impl<'de> Deserialize<'de> for SequenceState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SequenceState, D::Error> {
        let saved = HashKeyMap::<SavedKey>::deserialize(d)?;
        let mut state = SequenceState::default();
        let mut thens = Vec::new();
        for (k, v) in saved {
            thens.extend(v.thens.into_iter().map(|b| (b.ts, k.clone(), b)));
            if !v.firsts.is_empty() {
                state.keys.insert(k, SequenceKey { firsts: v.firsts });
            }
        }
        state.thens = TimeLog::from_entries(thens);
        Ok(state)
    }
}

impl SequenceState {
    /// The kept B's (saved as a table of their own).
    pub(super) fn log_mut(&mut self) -> &mut TimeLog<Trigger> {
        &mut self.thens
    }
}

impl SequenceKey {
    /// The latest event time held (the key's age for eviction).
    pub fn last_seen(&self) -> i64 {
        self.firsts.last().map_or(i64::MIN, |t| t.ts)
    }

    /// The A's the clock has passed (`clock > a + within`): a prefix.
    fn expired_firsts(&self, clock: i64, within_ms: i64) -> usize {
        self.firsts
            .partition_point(|a| clock > a.ts.saturating_add(within_ms))
    }

    /// Drops what the clock has passed; says whether nothing is left.
    fn expire(&mut self, clock: i64, within_ms: i64) -> bool {
        let a = self.expired_firsts(clock, within_ms);
        self.firsts.drain(..a);
        self.firsts.is_empty()
    }

    /// Takes every waiting A completed by a B at `b`.
    fn complete(&mut self, b: i64, clock: i64, after_ms: i64, within_ms: i64) -> Vec<Trigger> {
        let lo = self
            .firsts
            .partition_point(|a| a.ts.saturating_add(within_ms) < b)
            .max(self.expired_firsts(clock, within_ms));
        let hi = self
            .firsts
            .partition_point(|a| a.ts.saturating_add(after_ms) <= b);
        if lo >= hi {
            return Vec::new();
        }
        self.firsts.drain(lo..hi).collect()
    }

    /// Keeps an A that found no B (first dropping what the clock passed).
    pub fn wait(&mut self, a: Trigger, clock: i64, within_ms: i64) {
        self.expire(clock, within_ms);
        if self.firsts.len() >= MAX_FIRSTS_PER_KEY {
            self.firsts.remove(0);
        }
        let at = self.firsts.partition_point(|x| x.ts <= a.ts);
        self.firsts.insert(at, a);
    }
}
