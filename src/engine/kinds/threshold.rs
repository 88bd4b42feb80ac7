//! The `threshold` kind (DESIGN §4): a count of matching events per key,
//! in a sliding window with suppression, or over the key's life.
//!
//! - Windowed: per key, the sorted multiset `ts` of matching event times
//!   with every element `> clock - W` (pruned on access), and the sorted
//!   fire times with every element `> clock - W - S`. Pruning on access
//!   equals pruning at every clock move because the clock is monotone.
//! - Lifetime: a key's life ends when `clock > last + key_ttl`; it fires
//!   once per life.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::super::keys::KeyMap;
use super::super::rules::{
    CountCondition, DEFAULT_KEY_TTL_MS, RuleKind, condition, count_condition, key_fields,
    positive_duration,
};

/// `kind = "threshold"`: the rule's own keys as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    #[serde(rename = "match")]
    match_: Option<toml::Table>,
    group_by: Option<Vec<String>>,
    window: Option<String>,
    condition: Option<toml::Table>,
    suppress: Option<String>,
    key_ttl: Option<String>,
}

impl Raw {
    pub fn compile(self, errors: &mut Vec<String>) -> Option<RuleKind> {
        let group_by = key_fields(self.group_by.as_deref(), "group_by", errors);
        let when = condition("match", self.match_.as_ref(), errors);
        let counted = count_condition(self.condition.as_ref(), errors);
        let window = positive_duration("window", self.window.as_deref(), errors);
        let suppress = positive_duration("suppress", self.suppress.as_deref(), errors);
        let key_ttl = positive_duration("key_ttl", self.key_ttl.as_deref(), errors);
        if self.window.is_none() && self.suppress.is_some() {
            errors.push(
                "`suppress` needs a `window` (a lifetime threshold fires once per key)".to_owned(),
            );
        }
        if self.window.is_some() && self.key_ttl.is_some() {
            errors.push(
                "`key_ttl` applies only without `window` (windowed keys expire with their window)"
                    .to_owned(),
            );
        }
        let (when, condition) = (when?, counted?);
        Some(RuleKind::Threshold {
            when,
            group_by,
            condition,
            condition_text: condition.to_string().into(),
            window: window.map(|w| (w, suppress.unwrap_or(w))),
            key_ttl_ms: key_ttl.unwrap_or(DEFAULT_KEY_TTL_MS),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WindowKey {
    /// Matching event times, sorted. Times at or below `clock - W` are
    /// stale: never counted, and removed in batches once they are at least
    /// half of the vector (amortized O(1) per event even in a storm).
    /// Two times fit inline, so most keys allocate nothing here.
    ts: SmallVec<[i64; 2]>,
    /// Fire times, sorted, all `> clock - W - S`; usually none or one.
    fired: SmallVec<[i64; 1]>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LifetimeKey {
    count: u64,
    last: i64,
    fired: bool,
}

impl WindowKey {
    /// The latest event time held (the key's age for eviction).
    pub fn last_seen(&self) -> i64 {
        self.ts.last().copied().unwrap_or(i64::MIN)
    }
}

impl LifetimeKey {
    /// The latest event time counted.
    pub fn last_seen(&self) -> i64 {
        self.last
    }
}

/// A matching event at `e` for `key` of a windowed rule: the window end and
/// count when it fires.
pub fn window_event(
    keys: &mut KeyMap<WindowKey>,
    key: &str,
    e: i64,
    clock: i64,
    (w, s): (i64, i64),
    condition: CountCondition,
) -> Option<(i64, u64)> {
    let state = match keys.get_mut(key) {
        Some(state) => state,
        None => keys.insert_default(key),
    };
    window_arrival(state, e, clock, w, s, |c| condition.holds(c))
}

/// A matching event at `e` for `key` of a lifetime rule: the count when it
/// fires (once per key life).
pub fn lifetime_event(
    keys: &mut KeyMap<LifetimeKey>,
    key: &str,
    e: i64,
    clock: i64,
    key_ttl_ms: i64,
    condition: CountCondition,
) -> Option<u64> {
    let state = match keys.get_mut(key) {
        Some(state) => state,
        None => keys.insert_default(key),
    };
    if state.count > 0 && clock > state.last.saturating_add(key_ttl_ms) {
        *state = LifetimeKey::default();
    }
    state.count += 1;
    state.last = if state.count == 1 {
        e
    } else {
        state.last.max(e)
    };
    if !state.fired && condition.holds(state.count) {
        state.fired = true;
        return Some(state.count);
    }
    None
}

/// Forgets stale fire times, compacts stale event times when they are at
/// least half, and returns the cutoff (`clock - W`) at or below which times
/// are stale.
fn prune(k: &mut WindowKey, clock: i64, w: i64, s: i64) -> i64 {
    let cutoff = clock.saturating_sub(w);
    let stale = k.fired.partition_point(|&f| f <= cutoff.saturating_sub(s));
    if stale > 0 {
        k.fired.drain(..stale);
    }
    let stale = k.ts.partition_point(|&t| t <= cutoff);
    if stale > 0 && stale * 2 >= k.ts.len() {
        k.ts.drain(..stale);
    }
    cutoff
}

/// Whether a key holds nothing that can count or suppress any more.
pub fn is_spent(k: &WindowKey, clock: i64, w: i64, s: i64) -> bool {
    let cutoff = clock.saturating_sub(w);
    k.ts.last().is_none_or(|&t| t <= cutoff)
        && k.fired
            .last()
            .is_none_or(|&f| f <= cutoff.saturating_sub(s))
}

/// DESIGN §4 threshold with a window: adds `e`, then returns the smallest
/// candidate window end `t` (distinct values of T in `[e, e + W)`) whose
/// count satisfies the condition and is not suppressed, with its count.
fn window_arrival(
    k: &mut WindowKey,
    e: i64,
    clock: i64,
    w: i64,
    s: i64,
    holds: impl Fn(u64) -> bool,
) -> Option<(i64, u64)> {
    let cutoff = prune(k, clock, w, s);
    let at = k.ts.partition_point(|&t| t <= e);
    k.ts.insert(at, e);
    // The arriving event counts even when it is itself stale (very late):
    // it is added after pruning. Stale copies of other events never count.
    let own = u64::from(e <= cutoff);
    let end = e.saturating_add(w);
    let mut i = k.ts.partition_point(|&t| t < e);
    while i < k.ts.len() && k.ts[i] < end {
        let t = k.ts[i];
        let upper = k.ts.partition_point(|&x| x <= t);
        i = upper;
        if t <= cutoff && t != e {
            continue; // a stale time is no candidate
        }
        let lower = k.ts.partition_point(|&x| x <= (t - w).max(cutoff));
        let count = upper.saturating_sub(lower) as u64 + own;
        if holds(count) && !suppressed(&k.fired, t, s) {
            let at = k.fired.partition_point(|&f| f <= t);
            k.fired.insert(at, t);
            return Some((t, count));
        }
    }
    None
}

/// Whether some fire time `f` has `|t - f| < s`.
pub(super) fn suppressed(fired: &[i64], t: i64, s: i64) -> bool {
    let at = fired.partition_point(|&f| f <= t);
    (at > 0 && t - fired[at - 1] < s) || (at < fired.len() && fired[at] - t < s)
}
