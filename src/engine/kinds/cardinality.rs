//! The `cardinality` kind (DESIGN §4): a windowed threshold whose measure
//! is the number of distinct values of the field `distinct` among a key's
//! matching events in `(t - W, t]`; candidate window ends, conditions and
//! suppression exactly as for `threshold`. Events without the field do not
//! count.
//!
//! Per key: the (time, value) pairs seen, sorted, each pair once; each
//! value's latest time; the fire times. Times at or below `clock - W` are
//! stale (never counted) and removed in batches. A key that holds many
//! more pairs than values is compacted: of the pairs the clock has passed
//! only each value's latest is kept. Counts and candidates of every event
//! at or above the clock stay exact (its windows see only a value's latest
//! time below the clock); a late event is judged against what remains.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::super::condition::FieldRef;
use super::super::rules::{
    CountCondition, RuleKind, condition, count_condition, key_fields, positive_duration,
};
use super::threshold::suppressed;

/// A key is compacted when it holds twice as many pairs as after its last
/// compaction, and at least this many.
const COMPACT_FLOOR: usize = 1024;

type ValueMap = HashMap<Box<str>, i64, foldhash::fast::RandomState>;

/// Up to this many values a key keeps its latest times in a vector (no
/// hash table per key); beyond, in a map.
const FEW_VALUES: usize = 16;

/// Each value's latest time.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Latest {
    Few(Vec<(Box<str>, i64)>),
    Many(ValueMap),
}

impl Default for Latest {
    fn default() -> Self {
        Latest::Few(Vec::new())
    }
}

impl Latest {
    fn get(&self, value: &str) -> Option<i64> {
        match self {
            Latest::Few(v) => v.iter().find(|(k, _)| &**k == value).map(|(_, t)| *t),
            Latest::Many(m) => m.get(value).copied(),
        }
    }

    /// Raises `value`'s latest time to `t` (adding the value if new).
    fn raise(&mut self, value: &str, t: i64) {
        match self {
            Latest::Few(v) => match v.iter().position(|(k, _)| &**k == value) {
                Some(i) => v[i].1 = v[i].1.max(t),
                None if v.len() < FEW_VALUES => v.push((value.into(), t)),
                None => {
                    let mut m: ValueMap = v.drain(..).collect();
                    m.insert(value.into(), t);
                    *self = Latest::Many(m);
                }
            },
            Latest::Many(m) => match m.get_mut(value) {
                Some(at) => *at = (*at).max(t),
                None => {
                    m.insert(value.into(), t);
                }
            },
        }
    }

    fn remove(&mut self, value: &str) {
        match self {
            Latest::Few(v) => v.retain(|(k, _)| &**k != value),
            Latest::Many(m) => {
                m.remove(value);
            }
        }
    }

    /// How many values have their latest time above `lower`.
    fn above(&self, lower: i64) -> u64 {
        match self {
            Latest::Few(v) => v.iter().filter(|(_, t)| *t > lower).count() as u64,
            Latest::Many(m) => m.values().filter(|&&t| t > lower).count() as u64,
        }
    }
}

/// `kind = "cardinality"`: the rule's own keys as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    #[serde(rename = "match")]
    match_: Option<toml::Table>,
    group_by: Option<Vec<String>>,
    distinct: Option<String>,
    window: Option<String>,
    condition: Option<toml::Table>,
    suppress: Option<String>,
}

impl Raw {
    pub fn compile(self, errors: &mut Vec<String>) -> Option<RuleKind> {
        let group_by = key_fields(self.group_by.as_deref(), "group_by", errors);
        let when = condition("match", self.match_.as_ref(), errors);
        let counted = count_condition(self.condition.as_ref(), errors);
        let window = positive_duration("window", self.window.as_deref(), errors);
        if self.window.is_none() {
            errors.push(
                "`window` is required (distinct values are counted in a sliding window)".to_owned(),
            );
        }
        let suppress = positive_duration("suppress", self.suppress.as_deref(), errors);
        let distinct = match self.distinct.as_deref() {
            None | Some("") => {
                errors.push(
                    "`distinct` is required: the field whose distinct values are counted"
                        .to_owned(),
                );
                None
            }
            Some(name) if group_by.iter().any(|f| f.name() == name) => {
                errors.push(format!(
                    "`distinct`: `{name}` is also a `group_by` field (a key has one value of it)"
                ));
                None
            }
            Some(name) => Some(FieldRef::parse(name)),
        };
        let (when, condition, window, distinct) = (when?, counted?, window?, distinct?);
        Some(RuleKind::Cardinality {
            when,
            group_by,
            distinct,
            condition,
            condition_text: condition.to_string().into(),
            window: (window, suppress.unwrap_or(window)),
        })
    }
}

/// An arriving event at `e` for a rule of window `w` and suppression `s`,
/// with the stale cutoff (`clock - w`) and whether `e` is itself stale.
#[derive(Clone, Copy)]
struct Arrival {
    e: i64,
    w: i64,
    s: i64,
    cutoff: i64,
    own_stale: bool,
    condition: CountCondition,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DistinctKey {
    /// (time, value) of matching events, sorted, each pair once.
    seen: Vec<(i64, Box<str>)>,
    /// Each value's latest time in `seen`.
    latest: Latest,
    /// Fire times, sorted, all `> clock - W - S`.
    fired: SmallVec<[i64; 1]>,
    /// Pairs held after the last compaction (at least the floor).
    floor: u32,
}

impl DistinctKey {
    /// The latest event time held (the key's age for eviction).
    pub fn last_seen(&self) -> i64 {
        self.seen.last().map_or(i64::MIN, |(t, _)| *t)
    }

    /// Whether nothing is left that can count or suppress.
    pub fn is_spent(&self, clock: i64, w: i64, s: i64) -> bool {
        let cutoff = clock.saturating_sub(w);
        self.seen.last().is_none_or(|(t, _)| *t <= cutoff)
            && self
                .fired
                .last()
                .is_none_or(|&f| f <= cutoff.saturating_sub(s))
    }

    /// DESIGN §4 cardinality: adds the event (`e`, `value`), then returns
    /// the smallest candidate window end that meets the condition and is
    /// not suppressed, with its distinct count.
    pub fn arrive(
        &mut self,
        e: i64,
        value: &str,
        clock: i64,
        (w, s): (i64, i64),
        condition: CountCondition,
    ) -> Option<(i64, u64)> {
        let cutoff = self.prune(clock, w, s);
        // In order for this key: the only candidate is `e` itself.
        let newest = self.seen.last().is_none_or(|(t, _)| *t <= e);
        self.insert(e, value);
        if self.seen.len() >= (self.floor as usize).max(COMPACT_FLOOR) * 2 {
            self.compact(clock);
        }
        let arrival = Arrival {
            e,
            w,
            s,
            cutoff,
            own_stale: e <= cutoff,
            condition,
        };
        let found = if newest {
            self.newest(&arrival)
        } else {
            self.scan(&arrival, value)
        };
        if let Some((t, _)) = found {
            let at = self.fired.partition_point(|&f| f <= t);
            self.fired.insert(at, t);
        }
        found
    }

    /// The one candidate `e` of an event at or after all the key holds.
    fn newest(&self, a: &Arrival) -> Option<(i64, u64)> {
        let Arrival {
            e,
            w,
            s,
            cutoff,
            own_stale,
            condition,
        } = *a;
        if suppressed(&self.fired, e, s) {
            return None;
        }
        let lower = e.saturating_sub(w).max(cutoff);
        let count = self.latest.above(lower) + u64::from(own_stale);
        condition.holds(count).then_some((e, count))
    }

    /// Every candidate end in `[e, e + W)`, ascending, with a sliding count
    /// of the values in each window.
    fn scan(&self, a: &Arrival, value: &str) -> Option<(i64, u64)> {
        let Arrival {
            e,
            w,
            s,
            cutoff,
            own_stale,
            condition,
        } = *a;
        let seen = &self.seen;
        let end = e.saturating_add(w);
        let mut i = seen.partition_point(|(t, _)| *t < e);
        let start = seen.get(i).map_or(e, |(t, _)| *t);
        let mut lo = seen.partition_point(|(t, _)| *t <= start.saturating_sub(w).max(cutoff));
        let mut hi = lo;
        let mut counts: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
        while i < seen.len() && seen[i].0 < end {
            let t = seen[i].0;
            i = seen.partition_point(|(x, _)| *x <= t);
            if t <= cutoff && t != e {
                continue; // a stale time is no candidate
            }
            while hi < seen.len() && seen[hi].0 <= t {
                *counts.entry(&seen[hi].1).or_default() += 1;
                hi += 1;
            }
            let lower = t.saturating_sub(w).max(cutoff);
            while lo < hi && seen[lo].0 <= lower {
                if let Some(c) = counts.get_mut(&*seen[lo].1) {
                    *c -= 1;
                    if *c == 0 {
                        counts.remove(&*seen[lo].1);
                    }
                }
                lo += 1;
            }
            let own = own_stale && !counts.contains_key(value);
            let count = counts.len() as u64 + u64::from(own);
            if condition.holds(count) && !suppressed(&self.fired, t, s) {
                return Some((t, count));
            }
        }
        None
    }

    fn insert(&mut self, e: i64, value: &str) {
        // In order (the common case): after everything held.
        let after_all = self
            .seen
            .last()
            .is_none_or(|(t, v)| (*t, &**v) < (e, value));
        let at = if after_all {
            self.seen.len()
        } else {
            self.seen.partition_point(|(t, v)| (*t, &**v) < (e, value))
        };
        if self
            .seen
            .get(at)
            .is_some_and(|(t, v)| *t == e && &**v == value)
        {
            return;
        }
        self.seen.insert(at, (e, value.into()));
        self.latest.raise(value, e);
    }

    /// Forgets stale fire times, removes stale pairs when they are at least
    /// half, and returns the cutoff (`clock - W`).
    fn prune(&mut self, clock: i64, w: i64, s: i64) -> i64 {
        let cutoff = clock.saturating_sub(w);
        let stale = self
            .fired
            .partition_point(|&f| f <= cutoff.saturating_sub(s));
        if stale > 0 {
            self.fired.drain(..stale);
        }
        // At least half stale: one probe at the middle says so, without a
        // search on every arrival.
        let half = self.seen.len().div_ceil(2);
        let mostly_stale = half > 0 && self.seen[half - 1].0 <= cutoff;
        if mostly_stale {
            let stale = self.seen.partition_point(|(t, _)| *t <= cutoff);
            for (t, v) in self.seen.drain(..stale) {
                if self.latest.get(&v) == Some(t) {
                    self.latest.remove(&v);
                }
            }
        }
        cutoff
    }

    /// Of the pairs below the clock, keeps each value's latest.
    fn compact(&mut self, clock: i64) {
        let mut last_below: HashMap<&str, i64, foldhash::fast::RandomState> = HashMap::default();
        for (t, v) in self.seen.iter().take_while(|(t, _)| *t < clock) {
            last_below.insert(v, *t);
        }
        let keep: Vec<bool> = self
            .seen
            .iter()
            .map(|(t, v)| *t >= clock || last_below.get(&**v) == Some(t))
            .collect();
        let mut keep = keep.into_iter();
        self.seen.retain(|_| keep.next().unwrap_or(true));
        self.floor = u32::try_from(self.seen.len()).unwrap_or(u32::MAX);
    }
}
