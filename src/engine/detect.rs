//! Keyed detector state and the exact semantics of DESIGN §3–§4.
//!
//! Invariants (all in event-time milliseconds):
//! - `clock` only grows; timers fire when `clock > deadline`, in order of
//!   (deadline, rule id, key), before the event that moved the clock.
//! - Windowed threshold: per key, the sorted multiset `ts` of matching event
//!   times with every element `> clock - W` (pruned on access), and the
//!   sorted fire times with every element `> clock - W - S`. Pruning on
//!   access equals pruning at every clock move because the clock is monotone.
//! - Lifetime threshold: a key's life ends when `clock > last + key_ttl`.
//! - Absence: one pending deadline per key, mirrored in an ordered timer set.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::condition::FieldRef;
use super::rules::{DeadlineSpec, Rule, RuleKind, RuleSet};
use super::{KEY_SEP, STATE_PRESSURE_RULE};
use crate::alert::{self, Detection, EventRef, Fingerprint, RuleInfo, Severity, What};
use crate::event::{Event, Position, UNKNOWN_AGENT};

/// Engine limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Live keys per rule before the oldest are evicted.
    pub max_keys_per_rule: usize,
}

/// Default cap of live keys per rule.
pub const DEFAULT_MAX_KEYS_PER_RULE: usize = 1_000_000;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_keys_per_rule: DEFAULT_MAX_KEYS_PER_RULE,
        }
    }
}

/// How often (event time) expired keys are swept out of memory. Expiry is
/// also checked on access, so the sweep affects memory, never results.
const SWEEP_EVERY_MS: i64 = 60_000;
/// At the cap, evict this fraction (1/N) of a rule's keys at once, so the
/// O(n) selection is amortized over many insertions.
const EVICT_FRACTION: usize = 16;
/// Snapshot format version; bump on any change of the serialized state.
const SNAPSHOT_VERSION: u32 = 1;

/// The triggering event of a pending deadline, kept in state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Trigger {
    ts: i64,
    event: Box<str>,
    tool: Option<Box<str>>,
    reason: Option<Box<str>>,
    server: Option<Box<str>>,
    position: Option<Box<str>>,
    fingerprint: Fingerprint,
}

impl Trigger {
    fn of(ev: &Event<'_>, pos: Option<&Position>) -> Trigger {
        Trigger {
            ts: ev.ts,
            event: ev.event.as_ref().into(),
            tool: ev.tool.as_deref().map(Into::into),
            reason: ev.reason.as_deref().map(Into::into),
            server: ev.server.as_deref().map(Into::into),
            position: pos.map(|p| p.to_string().into()),
            fingerprint: alert::fingerprint(ev.payload),
        }
    }

    fn event_ref(&self) -> EventRef {
        EventRef {
            ts: self.ts,
            event: self.event.to_string(),
            tool: self.tool.as_deref().map(str::to_owned),
            reason: self.reason.as_deref().map(str::to_owned),
            server: self.server.as_deref().map(str::to_owned),
            position: self.position.as_deref().map(str::to_owned),
        }
    }
}

/// Per-rule key maps. foldhash is a fast non-cryptographic hasher with a
/// per-process random seed (flooding resistance); iteration order is never
/// relied on (eviction sorts by age and key).
type KeyMap<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WindowKey {
    /// Matching event times, sorted. Times at or below `clock - W` are
    /// stale: never counted, and removed in batches once they are at least
    /// half of the vector (amortized O(1) per event even in a storm).
    /// Two times fit inline, so most keys allocate nothing here.
    ts: SmallVec<[i64; 2]>,
    /// Fire times, sorted, all `> clock - W - S`; usually none or one.
    fired: SmallVec<[i64; 1]>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LifetimeKey {
    count: u64,
    last: i64,
    fired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    deadline: i64,
    trigger: Trigger,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AbsenceState {
    pending: KeyMap<Pending>,
    timers: BTreeSet<(i64, Box<str>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum RuleState {
    Match,
    Window(KeyMap<WindowKey>),
    Lifetime(KeyMap<LifetimeKey>),
    Absence(AbsenceState),
}

impl RuleState {
    fn for_rule(rule: &Rule) -> RuleState {
        match &rule.kind {
            RuleKind::Match { .. } => RuleState::Match,
            RuleKind::Threshold {
                window: Some(_), ..
            } => RuleState::Window(KeyMap::default()),
            RuleKind::Threshold { window: None, .. } => RuleState::Lifetime(KeyMap::default()),
            RuleKind::Absence { .. } => RuleState::Absence(AbsenceState::default()),
        }
    }

    fn len(&self) -> usize {
        match self {
            RuleState::Match => 0,
            RuleState::Window(m) => m.len(),
            RuleState::Lifetime(m) => m.len(),
            RuleState::Absence(a) => a.pending.len(),
        }
    }
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot encoding failed: {0}")]
    Encode(postcard::Error),
    #[error("snapshot is corrupt or truncated: {0}")]
    Decode(postcard::Error),
    #[error(
        "snapshot format version {found} is not supported (this build reads version {SNAPSHOT_VERSION})"
    )]
    Version { found: u32 },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    rules: Vec<(String, String, RuleState)>,
}

/// The detection engine. See the module docs of `engine`.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    states: Vec<RuleState>,
    config: EngineConfig,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    /// Reused buffer for building state keys: no allocation per event.
    key_buf: String,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, config: EngineConfig) -> Engine {
        let states = rules.rules().iter().map(RuleState::for_rule).collect();
        Engine {
            rules,
            states,
            config,
            clock: None,
            next_sweep: i64::MIN,
            late: 0,
            evicted: 0,
            key_buf: String::with_capacity(128),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The engine clock, once any time was given.
    pub fn clock(&self) -> Option<i64> {
        self.clock
    }

    /// Events that arrived with `ts` below the clock.
    pub fn late_events(&self) -> u64 {
        self.late
    }

    /// Keys evicted at the cap, in total.
    pub fn evicted_keys(&self) -> u64 {
        self.evicted
    }

    /// Live keys per rule id (match rules keep none).
    pub fn live_keys(&self) -> Vec<(Arc<str>, usize)> {
        self.rules
            .rules()
            .iter()
            .zip(&self.states)
            .map(|(r, s)| (r.id.clone(), s.len()))
            .collect()
    }

    /// Moves the clock to `t` (never back) and fires every timer it passed,
    /// in order of (deadline, rule id, key). Calling it again with the same
    /// time fires timers added since (e.g. by a late start event).
    pub fn advance_to(&mut self, t: i64, out: &mut Vec<Detection>) {
        let clock = self.clock.map_or(t, |c| c.max(t));
        self.clock = Some(clock);
        loop {
            // The earliest due timer over all absence rules; rules are
            // sorted by id, so the first minimum wins ties on the deadline.
            let mut best: Option<(usize, i64)> = None;
            for (i, state) in self.states.iter().enumerate() {
                if let RuleState::Absence(a) = state
                    && let Some((d, _)) = a.timers.first()
                    && *d < clock
                    && best.is_none_or(|(_, bd)| *d < bd)
                {
                    best = Some((i, *d));
                }
            }
            let Some((i, _)) = best else { break };
            let rule = &self.rules.rules()[i];
            let RuleState::Absence(a) = &mut self.states[i] else {
                break;
            };
            let Some((deadline, key)) = a.timers.pop_first() else {
                break;
            };
            if let Some(p) = a.pending.remove(&key) {
                out.push(Detection {
                    rule: rule.info.clone(),
                    key,
                    ts: deadline,
                    count: 1,
                    what: What::Absence {
                        since: p.trigger.ts,
                    },
                    event: p.trigger.event_ref(),
                    fingerprint: p.trigger.fingerprint,
                });
            }
        }
        if clock >= self.next_sweep {
            self.sweep(clock);
            self.next_sweep = clock.saturating_add(SWEEP_EVERY_MS);
        }
    }

    /// Applies one event to every rule. Call [`advance_to`](Self::advance_to)
    /// first with the time this event's arrival moved the clock to.
    pub fn on_event(&mut self, ev: &Event<'_>, pos: Option<&Position>, out: &mut Vec<Detection>) {
        let clock = match self.clock {
            Some(c) => c,
            None => {
                self.clock = Some(ev.ts);
                ev.ts
            }
        };
        if ev.ts < clock {
            self.late += 1;
        }
        let rules = Arc::clone(&self.rules);
        for (i, rule) in rules.rules().iter().enumerate() {
            match &rule.kind {
                RuleKind::Match { when, group_by } => {
                    if when.matches(ev) {
                        build_key(&mut self.key_buf, ev, group_by, false);
                        out.push(detection(
                            rule,
                            &self.key_buf,
                            ev.ts,
                            1,
                            What::Match,
                            ev,
                            pos,
                        ));
                    }
                }
                RuleKind::Threshold {
                    when,
                    group_by,
                    condition,
                    condition_text,
                    window,
                    key_ttl_ms,
                } => {
                    if !when.matches(ev) {
                        continue;
                    }
                    build_key(&mut self.key_buf, ev, group_by, false);
                    self.make_room(i, ev, pos, out);
                    let key = self.key_buf.as_str();
                    match (&mut self.states[i], window) {
                        (RuleState::Window(keys), Some((w, s))) => {
                            let state = match keys.get_mut(key) {
                                Some(state) => state,
                                None => keys.entry(key.into()).or_default(),
                            };
                            if let Some((t, count)) =
                                window_arrival(state, ev.ts, clock, *w, *s, |c| condition.holds(c))
                            {
                                let what = What::Window {
                                    window_ms: *w,
                                    condition: condition_text.clone(),
                                };
                                out.push(detection(rule, key, t, count, what, ev, pos));
                            }
                        }
                        (RuleState::Lifetime(keys), None) => {
                            let state = match keys.get_mut(key) {
                                Some(state) => state,
                                None => keys.entry(key.into()).or_default(),
                            };
                            if state.count > 0 && clock > state.last.saturating_add(*key_ttl_ms) {
                                *state = LifetimeKey::default();
                            }
                            state.count += 1;
                            state.last = if state.count == 1 {
                                ev.ts
                            } else {
                                state.last.max(ev.ts)
                            };
                            if !state.fired && condition.holds(state.count) {
                                state.fired = true;
                                let what = What::Lifetime {
                                    condition: condition_text.clone(),
                                };
                                out.push(detection(rule, key, ev.ts, state.count, what, ev, pos));
                            }
                        }
                        _ => {}
                    }
                }
                RuleKind::Absence {
                    start,
                    stop,
                    key: key_fields,
                    deadline,
                } => {
                    let is_stop = stop.matches(ev);
                    let is_start = start.matches(ev);
                    if !(is_stop || is_start) || !build_key(&mut self.key_buf, ev, key_fields, true)
                    {
                        continue;
                    }
                    if is_stop
                        && let RuleState::Absence(a) = &mut self.states[i]
                        && let Some(p) = a.pending.get(self.key_buf.as_str())
                        && p.trigger.ts <= ev.ts
                        && ev.ts <= p.deadline
                    {
                        let d = p.deadline;
                        a.pending.remove(self.key_buf.as_str());
                        a.timers.remove(&(d, Box::from(self.key_buf.as_str())));
                    }
                    if is_start {
                        let exists = match &self.states[i] {
                            RuleState::Absence(a) => a.pending.contains_key(self.key_buf.as_str()),
                            _ => true,
                        };
                        if !exists {
                            self.make_room(i, ev, pos, out);
                        }
                        let d = ev.ts.saturating_add(deadline_ms(deadline, ev));
                        if let RuleState::Absence(a) = &mut self.states[i] {
                            let key: Box<str> = self.key_buf.as_str().into();
                            let pending = Pending {
                                deadline: d,
                                trigger: Trigger::of(ev, pos),
                            };
                            if let Some(old) = a.pending.insert(key.clone(), pending) {
                                a.timers.remove(&(old.deadline, key.clone()));
                            }
                            a.timers.insert((d, key));
                        }
                    }
                }
            }
        }
    }

    /// Drops expired keys (memory only: expiry is also checked on access).
    fn sweep(&mut self, clock: i64) {
        for (rule, state) in self.rules.rules().iter().zip(&mut self.states) {
            match (&rule.kind, state) {
                (
                    RuleKind::Threshold {
                        window: Some((w, s)),
                        ..
                    },
                    RuleState::Window(keys),
                ) => {
                    keys.retain(|_, k| !is_spent(k, clock, *w, *s));
                }
                (RuleKind::Threshold { key_ttl_ms, .. }, RuleState::Lifetime(keys)) => {
                    keys.retain(|_, k| clock <= k.last.saturating_add(*key_ttl_ms));
                }
                _ => {}
            }
        }
    }

    /// Before inserting a new key into rule `i`: at the cap, sweep, then
    /// evict the oldest keys and raise one `state_pressure` alert.
    fn make_room(
        &mut self,
        i: usize,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let cap = self.config.max_keys_per_rule.max(1);
        let key = self.key_buf.as_str();
        let state = &mut self.states[i];
        // The length check first: the lookup runs only at the cap.
        if state.len() < cap {
            return;
        }
        let present = match state {
            RuleState::Window(m) => m.contains_key(key),
            RuleState::Lifetime(m) => m.contains_key(key),
            RuleState::Absence(a) => a.pending.contains_key(key),
            RuleState::Match => true,
        };
        if present {
            return;
        }
        if let Some(clock) = self.clock {
            self.sweep(clock);
        }
        let state = &mut self.states[i];
        if state.len() < cap {
            return;
        }
        let n = (cap / EVICT_FRACTION).max(1).min(state.len());
        let evicted = evict_oldest(state, n);
        self.evicted += evicted as u64;
        let rule = &self.rules.rules()[i];
        out.push(pressure(rule, evicted, cap, ev, pos));
    }

    /// Swaps in a new rule set. The state of every rule whose id and
    /// definition are unchanged is kept; new or changed rules start empty;
    /// removed rules' state is dropped. Returns how many rules kept state.
    pub fn reload(&mut self, rules: Arc<RuleSet>, config: EngineConfig) -> usize {
        let mut old: Vec<(Arc<str>, String, RuleState)> = self
            .rules
            .rules()
            .iter()
            .zip(std::mem::take(&mut self.states))
            .map(|(r, s)| (r.id.clone(), r.definition.clone(), s))
            .collect();
        let mut kept = 0;
        self.states = rules
            .rules()
            .iter()
            .map(|rule| {
                match old
                    .iter()
                    .position(|(id, def, _)| *id == rule.id && *def == rule.definition)
                {
                    Some(i) => {
                        kept += 1;
                        old.swap_remove(i).2
                    }
                    None => RuleState::for_rule(rule),
                }
            })
            .collect();
        self.rules = rules;
        self.config = config;
        kept
    }

    /// Serializes the whole state (postcard, with a format version).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let snap = SnapshotRef {
            version: SNAPSHOT_VERSION,
            clock: self.clock,
            next_sweep: self.next_sweep,
            late: self.late,
            evicted: self.evicted,
            rules: self
                .rules
                .rules()
                .iter()
                .zip(&self.states)
                .map(|(r, s)| (&*r.id, r.kind.name(), s))
                .collect(),
        };
        postcard::to_allocvec(&snap).map_err(SnapshotError::Encode)
    }

    /// The engine clock recorded in a snapshot, if it can be read.
    pub fn snapshot_clock(bytes: &[u8]) -> Option<i64> {
        #[derive(Deserialize)]
        struct Head {
            version: u32,
            clock: Option<i64>,
        }
        let (head, _): (Head, _) = postcard::take_from_bytes(bytes).ok()?;
        (head.version == SNAPSHOT_VERSION).then_some(head.clock)?
    }

    /// Rebuilds an engine from a snapshot under `rules`. State of a rule is
    /// kept when a rule of the same id and kind exists; other state is
    /// dropped (the rule was removed or changed kind).
    pub fn restore(
        rules: Arc<RuleSet>,
        config: EngineConfig,
        bytes: &[u8],
    ) -> Result<Engine, SnapshotError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = postcard::take_from_bytes(bytes)
            .map(|(v, _)| v)
            .map_err(SnapshotError::Decode)?;
        if v.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: v.version });
        }
        let snap: Snapshot = postcard::from_bytes(bytes).map_err(SnapshotError::Decode)?;
        let mut engine = Engine::new(rules, config);
        engine.clock = snap.clock;
        engine.next_sweep = snap.next_sweep;
        engine.late = snap.late;
        engine.evicted = snap.evicted;
        for (id, kind, state) in snap.rules {
            if let Some(i) = engine
                .rules
                .rules()
                .iter()
                .position(|r| *r.id == *id && r.kind.name() == kind)
                && std::mem::discriminant(&engine.states[i]) == std::mem::discriminant(&state)
            {
                engine.states[i] = state;
            }
        }
        Ok(engine)
    }
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    rules: Vec<(&'a str, &'a str, &'a RuleState)>,
}

/// Writes `tenant SEP v1 SEP v2 ...` into `buf`. A missing field reads
/// `unknown`, or with `require_all` makes the key (and the event) not count.
fn build_key(buf: &mut String, ev: &Event<'_>, fields: &[FieldRef], require_all: bool) -> bool {
    buf.clear();
    buf.push_str(&ev.tenant);
    for field in fields {
        buf.push(KEY_SEP);
        let before = buf.len();
        if !field.key_text(ev, buf) || buf.len() == before {
            if require_all {
                return false;
            }
            buf.truncate(before);
            buf.push_str(UNKNOWN_AGENT);
        }
    }
    true
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
fn is_spent(k: &WindowKey, clock: i64, w: i64, s: i64) -> bool {
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
fn suppressed(fired: &[i64], t: i64, s: i64) -> bool {
    let at = fired.partition_point(|&f| f <= t);
    (at > 0 && t - fired[at - 1] < s) || (at < fired.len() && fired[at] - t < s)
}

fn deadline_ms(spec: &DeadlineSpec, ev: &Event<'_>) -> i64 {
    if let Some(field) = &spec.field
        && let Some(super::condition::Val::Num(secs)) = field.lookup(ev)
        && secs.is_finite()
        && secs > 0.0
        && secs < 1.0e12
    {
        return (secs * 1000.0).round() as i64;
    }
    if let Some(tasks) = &spec.tasks
        && let Some(task) = ev.declared_task.as_deref()
        && let Some(ms) = tasks.get(task)
    {
        return *ms;
    }
    spec.default_ms
}

/// Evicts the `n` keys with the oldest activity (ties by key), returning
/// how many went.
fn evict_oldest(state: &mut RuleState, n: usize) -> usize {
    fn select<V>(map: &KeyMap<V>, n: usize, age: impl Fn(&V) -> i64) -> Vec<Box<str>> {
        let mut all: Vec<(i64, &Box<str>)> = map.iter().map(|(k, v)| (age(v), k)).collect();
        if n < all.len() {
            all.select_nth_unstable(n);
            all.truncate(n);
        }
        all.into_iter().map(|(_, k)| k.clone()).collect()
    }
    match state {
        RuleState::Match => 0,
        RuleState::Window(m) => {
            let victims = select(m, n, |k| k.ts.last().copied().unwrap_or(i64::MIN));
            victims.iter().for_each(|k| {
                m.remove(k);
            });
            victims.len()
        }
        RuleState::Lifetime(m) => {
            let victims = select(m, n, |k| k.last);
            victims.iter().for_each(|k| {
                m.remove(k);
            });
            victims.len()
        }
        RuleState::Absence(a) => {
            let victims = select(&a.pending, n, |p| p.trigger.ts);
            for k in &victims {
                if let Some(p) = a.pending.remove(k) {
                    a.timers.remove(&(p.deadline, k.clone()));
                }
            }
            victims.len()
        }
    }
}

fn event_ref(ev: &Event<'_>, pos: Option<&Position>) -> EventRef {
    EventRef {
        ts: ev.ts,
        event: ev.event.to_string(),
        tool: ev.tool.as_deref().map(str::to_owned),
        reason: ev.reason.as_deref().map(str::to_owned),
        server: ev.server.as_deref().map(str::to_owned),
        position: pos.map(ToString::to_string),
    }
}

/// A detection of `rule` for the joined `key`, triggered by `ev`.
fn detection(
    rule: &Rule,
    key: &str,
    ts: i64,
    count: u64,
    what: What,
    ev: &Event<'_>,
    pos: Option<&Position>,
) -> Detection {
    Detection {
        rule: rule.info.clone(),
        key: key.into(),
        ts,
        count,
        what,
        event: event_ref(ev, pos),
        fingerprint: alert::fingerprint(ev.payload),
    }
}

/// The internal `state_pressure` detection: `rule` reached its key cap.
fn pressure(
    rule: &Rule,
    evicted: usize,
    cap: usize,
    ev: &Event<'_>,
    pos: Option<&Position>,
) -> Detection {
    let info = RuleInfo {
        id: STATE_PRESSURE_RULE.into(),
        title: "Rule state at capacity: oldest keys evicted".into(),
        severity: Severity::High,
        key_fields: vec!["rule".to_owned()],
    };
    let key = format!("{}{KEY_SEP}{}", crate::event::DEFAULT_TENANT, rule.id);
    Detection {
        rule: Arc::new(info),
        key: key.into(),
        ts: ev.ts,
        count: evicted as u64,
        what: What::Pressure {
            rule: rule.id.clone(),
            cap,
        },
        event: event_ref(ev, pos),
        fingerprint: alert::fingerprint(ev.payload),
    }
}
