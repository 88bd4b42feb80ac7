//! The `sequence` kind (DESIGN §4): a `first` event A at `a`, then a
//! `then` event B of the same key with `a + after <= b <= a + within`,
//! fires once per A, dated `a`, its trigger the B that completed it.
//!
//! Per key: the A's that have not fired, sorted by `a`, kept while
//! `clock <= a + within`; the B's, sorted by `b` (one per millisecond: the
//! first to arrive), kept while `clock <= b + lateness` so an A arriving
//! late still finds them. Expiry is checked on access, so the sweep only
//! frees memory. An event that is both a `first` and a `then` never
//! completes its own sequence.

use serde::{Deserialize, Serialize};

use super::super::rules::{RuleKind, condition, key_fields, positive_duration};
use super::Trigger;
use crate::duration;

/// A B of the same millisecond as one already kept is dropped: the first
/// one to arrive is the one an A chooses. Beyond this many B's per key,
/// the oldest go (they can complete only A's that arrive very late).
pub const MAX_THENS_PER_KEY: usize = 4096;
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SequenceKey {
    /// A's waiting for their B, sorted by `ts` (ties in arrival order).
    firsts: Vec<Trigger>,
    /// B's kept for late A's, sorted by `ts`, one per millisecond.
    thens: Vec<Trigger>,
}

impl SequenceKey {
    /// The latest event time held (the key's age for eviction).
    pub fn last_seen(&self) -> i64 {
        let last = |v: &[Trigger]| v.last().map_or(i64::MIN, |t| t.ts);
        last(&self.firsts).max(last(&self.thens))
    }

    /// The A's the clock has passed (`clock > a + within`): a prefix.
    fn expired_firsts(&self, clock: i64, within_ms: i64) -> usize {
        self.firsts
            .partition_point(|a| clock > a.ts.saturating_add(within_ms))
    }

    /// The B's the clock has passed (`clock > b + lateness`): a prefix.
    fn expired_thens(&self, clock: i64, lateness_ms: i64) -> usize {
        self.thens
            .partition_point(|b| clock > b.ts.saturating_add(lateness_ms))
    }

    /// Drops what the clock has passed; says whether nothing is left.
    pub fn expire(&mut self, clock: i64, within_ms: i64, lateness_ms: i64) -> bool {
        let (a, b) = (
            self.expired_firsts(clock, within_ms),
            self.expired_thens(clock, lateness_ms),
        );
        self.firsts.drain(..a);
        self.thens.drain(..b);
        self.firsts.is_empty() && self.thens.is_empty()
    }

    /// On access: drops what the clock has passed once it is at least half
    /// of what is held (amortized; expired entries are skipped meanwhile).
    pub fn tidy(&mut self, clock: i64, within_ms: i64, lateness_ms: i64) {
        let a = self.expired_firsts(clock, within_ms);
        if a > 0 && a * 2 >= self.firsts.len() {
            self.firsts.drain(..a);
        }
        let b = self.expired_thens(clock, lateness_ms);
        if b > 0 && b * 2 >= self.thens.len() {
            self.thens.drain(..b);
        }
    }

    /// A `then` event at `b`: takes every waiting A it completes
    /// (`a + after <= b <= a + within`, not yet passed by the clock), in
    /// order of `a`.
    pub fn complete(&mut self, b: i64, clock: i64, after_ms: i64, within_ms: i64) -> Vec<Trigger> {
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

    /// A `first` event at `a`: the earliest kept B (not yet passed by the
    /// clock) it is completed by.
    pub fn completed_by(
        &self,
        a: i64,
        clock: i64,
        (after_ms, within_ms, lateness_ms): (i64, i64, i64),
    ) -> Option<&Trigger> {
        let from = a.saturating_add(after_ms);
        let at = self
            .thens
            .partition_point(|b| b.ts < from)
            .max(self.expired_thens(clock, lateness_ms));
        self.thens
            .get(at)
            .filter(|b| b.ts <= a.saturating_add(within_ms))
    }

    /// Keeps an A that found no B.
    pub fn wait(&mut self, a: Trigger) {
        if self.firsts.len() >= MAX_FIRSTS_PER_KEY {
            self.firsts.remove(0);
        }
        let at = self.firsts.partition_point(|x| x.ts <= a.ts);
        self.firsts.insert(at, a);
    }

    /// Keeps a B for A's that arrive late (not when one of its millisecond
    /// is already kept).
    pub fn keep(&mut self, b: Trigger) {
        let at = self.thens.partition_point(|x| x.ts < b.ts);
        if self.thens.get(at).is_some_and(|x| x.ts == b.ts) {
            return;
        }
        if self.thens.len() >= MAX_THENS_PER_KEY {
            if at == 0 {
                return; // older than every kept B
            }
            self.thens.remove(0);
            self.thens.insert(at - 1, b);
        } else {
            self.thens.insert(at, b);
        }
    }
}
