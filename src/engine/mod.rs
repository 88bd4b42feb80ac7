//! The detection engine (DESIGN §3–§5): a pure, deterministic state machine.
//!
//! [`Engine::advance_to`] moves the engine clock (never back) and fires the
//! timers it passes; [`Engine::on_event`] applies one event to every rule.
//! Both append [`Detection`]s to a caller-owned vector (rendered into alerts
//! by `alert::render`, after detection). The engine never reads the wall
//! clock and never does I/O; the caller owns time (watermarks) and
//! delivery. Its whole state is serializable ([`Engine::snapshot`]).
//!
//! Invariants (all in event-time milliseconds):
//! - `clock` only grows; timers fire when `clock > deadline`, in order of
//!   (deadline, rule id, key), before the event that moved the clock.
//! - State is keyed per rule by the joined key values (tenant first),
//!   capped at `max_keys_per_rule`: at the cap the oldest keys are evicted
//!   and an internal `state_pressure` detection says so.
//! - Each kind's state and semantics are in `kinds/` (threshold windows
//!   and lifetimes, absence deadlines); keys in `keys`; the snapshot format
//!   in `snapshot`.

pub mod clock;
pub mod condition;
mod changes;
mod keys;
mod kinds;
pub mod rules;
mod sessions;
mod snapshot;

use std::sync::Arc;

pub use changes::TableChanges;
pub use condition::{Cond, FieldRef};
pub use rules::{CountCondition, CountOp, Rule, RuleError, RuleKind, RuleSet, RuleSetError};
pub use snapshot::{Restoring, SnapshotError, StateChanges};

use crate::alert::{self, Detection, EventRef, RuleInfo, Severity, What};
use crate::event::{Event, FieldId, Position};
use keys::build_key;
use kinds::absence;
use kinds::membership::{self, Verdict};
use kinds::threshold;
use kinds::{RuleState, Trigger};

/// The rule id of internal alerts raised when state is evicted at the cap.
pub use crate::alert::daemon::STATE_PRESSURE as STATE_PRESSURE_RULE;

pub use crate::alert::KEY_SEP;

/// A shared, immutable rule set.
pub type Rules = Arc<RuleSet>;

/// Engine limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Live keys per rule before the oldest are evicted.
    pub max_keys_per_rule: usize,
    /// The allowed lateness of the clock (DESIGN §3): how long a sequence
    /// keeps its `then` events for `first` events that arrive late.
    pub lateness_ms: i64,
    /// How long (engine time) the state of a rule removed by a reload, or
    /// missing from the rules at a restart, is kept in case the rule comes
    /// back with the same id and kind.
    pub removed_rule_grace_ms: i64,
}

/// Default grace of a removed rule's state: a day.
pub const DEFAULT_REMOVED_RULE_GRACE_MS: i64 = 24 * 3_600_000;

/// Default cap of live keys per rule.
pub const DEFAULT_MAX_KEYS_PER_RULE: usize = 1_000_000;
/// Default allowed lateness (DESIGN §3).
pub const DEFAULT_LATENESS_MS: i64 = 5_000;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_keys_per_rule: DEFAULT_MAX_KEYS_PER_RULE,
            lateness_ms: DEFAULT_LATENESS_MS,
            removed_rule_grace_ms: DEFAULT_REMOVED_RULE_GRACE_MS,
        }
    }
}

/// The share of the keys an engine holds when several engines, one per
/// thread, see the same events: rule `r`'s key `k` belongs to the engine
/// whose `index` is `hash(k) % count`, a rule in an alert chain to the one
/// of its chain group (so a rule sees every alert it names). Every
/// engine sees every event, so clocks, timers and derived sessions move
/// alike, and together they raise exactly the alerts of one engine
/// holding all keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// One engine holding every key.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The `count` shares.
    pub fn all(count: u32) -> impl Iterator<Item = Shard> {
        let count = count.max(1);
        (0..count).map(move |index| Shard { index, count })
    }

    /// Whether this share holds `key` (of a rule outside any chain).
    pub fn holds_key(self, key: &str) -> bool {
        self.count <= 1
            || shard_hash(key.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether this share holds the rules of chain group `group`.
    fn holds_group(self, group: usize) -> bool {
        self.count <= 1 || group % self.count as usize == self.index as usize
    }

    /// The first share: it reports what every share counts alike (late
    /// events, derived-session evictions).
    fn first(self) -> bool {
        self.index == 0
    }
}

/// A hash of a key, eight bytes at a time (multiply and fold, as FxHash,
/// with a final mix): defined here, so a key's share never depends on a
/// crate's version or the platform.
fn shard_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = (h.rotate_left(26) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(26) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(K);
    h ^ (h >> 29)
}

/// The state of a rule that is not in the rule set any more, kept until
/// `until` (engine time) in case it comes back.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Parked {
    id: String,
    kind: String,
    state: RuleState,
    until: i64,
}

/// How often (event time) expired keys are swept out of memory. Expiry is
/// also checked on access, so the sweep affects memory, never results.
const SWEEP_EVERY_MS: i64 = 60_000;
/// At the cap, evict this fraction (1/N) of a rule's keys at once, so the
/// O(n) selection is amortized over many insertions.
const EVICT_FRACTION: usize = 16;

/// The detection engine. See the module docs of `engine`.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    states: Vec<RuleState>,
    /// State of removed rules within their grace period.
    parked: Vec<Parked>,
    config: EngineConfig,
    clock: Option<i64>,
    next_sweep: i64,
    /// Keys per rule after its last sweep: a periodic sweep visits a rule
    /// only once it has grown by a quarter since, so sweeping costs O(1)
    /// per inserted key however many keys are live.
    swept_len: Vec<usize>,
    late: u64,
    evicted: u64,
    /// Reused buffers for building state keys and distinct values: no
    /// allocation per event.
    key_buf: String,
    value_buf: String,
    /// Derived sessions of sources that ask for them.
    sessions: sessions::Sessions,
    /// The event being applied, as rules keep it: built the first time a
    /// rule keeps it, shared by the others.
    trigger: Option<Trigger>,
    /// The keys this engine holds.
    shard: Shard,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, config: EngineConfig) -> Engine {
        let states = rules.rules().iter().map(RuleState::for_rule).collect();
        Engine {
            rules,
            states,
            parked: Vec::new(),
            config,
            clock: None,
            next_sweep: i64::MIN,
            swept_len: Vec::new(),
            late: 0,
            evicted: 0,
            key_buf: String::with_capacity(128),
            value_buf: String::with_capacity(64),
            sessions: sessions::Sessions::default(),
            trigger: None,
            shard: Shard::WHOLE,
        }
    }

    /// This engine holding only `shard`'s keys (see [`Shard`]); its cap of
    /// keys per rule is its share of `max_keys_per_rule`.
    pub fn with_shard(mut self, shard: Shard) -> Engine {
        self.shard = shard;
        self
    }

    /// Live keys of rule `i` before the oldest are evicted: this engine's
    /// share of the cap (all of it for a rule of a chain group, which one
    /// engine holds whole).
    fn rule_cap(&self, i: usize) -> usize {
        let cap = self.config.max_keys_per_rule.max(1);
        match self.rules.chain_group(i) {
            Some(_) => cap,
            None => cap.div_ceil(self.shard.count.max(1) as usize),
        }
    }

    /// Whether rule `i`'s key in `key_buf` is this engine's.
    fn holds(&self, i: usize) -> bool {
        if self.shard.count <= 1 {
            return true;
        }
        match self.rules.chain_group(i) {
            Some(group) => self.shard.holds_group(group),
            None => self.shard.holds_key(&self.key_buf),
        }
    }

    /// The derived session (DESIGN §2b) of an event without a session id,
    /// `idle_ms` being the source's idle time; `None` when it gets none.
    /// Give it the event before [`on_event`](Self::on_event).
    pub fn derive_session(&mut self, ev: &Event<'_>, idle_ms: i64) -> Option<String> {
        let (derived, evicted) = self.sessions.assign(
            &mut self.key_buf,
            ev,
            idle_ms,
            self.config.max_keys_per_rule,
        );
        // Every share derives every session: the first one counts.
        if self.shard.first() {
            self.evicted += evicted as u64;
        }
        derived
    }

    /// Live derived sessions.
    pub fn derived_sessions(&self) -> usize {
        self.sessions.len()
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
            .map(|(r, s)| (r.id.clone(), s.held()))
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
                    && let Some(d) = a.due(clock)
                    && best.is_none_or(|(_, bd)| d < bd)
                {
                    best = Some((i, d));
                }
            }
            let Some((i, _)) = best else { break };
            let rule = &self.rules.rules()[i];
            let RuleState::Absence(a) = &mut self.states[i] else {
                break;
            };
            let Some((deadline, key, pending)) = a.pop_first() else {
                break;
            };
            if let Some(p) = pending {
                let from = out.len();
                let what = What::Absence {
                    since: p.trigger.ts,
                };
                out.push(kept_detection(rule, &key, deadline, what, &p.trigger));
                self.chain(from, out);
            }
        }
        if clock >= self.next_sweep {
            self.sweep(clock, false);
            self.next_sweep = clock.saturating_add(SWEEP_EVERY_MS);
        }
    }

    /// Applies one event to every rule whose conditions its kind can
    /// match, then the alerts it raised to the rules that name them. Call
    /// [`advance_to`](Self::advance_to) first with the time this event's
    /// arrival moved the clock to.
    pub fn on_event(&mut self, ev: &Event<'_>, pos: Option<&Position>, out: &mut Vec<Detection>) {
        let clock = match self.clock {
            Some(c) => c,
            None => {
                self.clock = Some(ev.ts);
                ev.ts
            }
        };
        // Every share sees every event: the first one counts.
        if ev.ts < clock && self.shard.first() {
            self.late += 1;
        }
        let rules = Arc::clone(&self.rules);
        let from = out.len();
        self.trigger = None;
        for &i in rules.for_kind(ev.kind) {
            self.apply(i, &rules.rules()[i], clock, ev, pos, out);
        }
        self.chain(from, out);
    }

    /// Applies the alerts of `out[from..]` (and those they raise in turn)
    /// as `alert.<rule id>` events to the rules that name them, each right
    /// after the one that raised it. Chains are acyclic (checked at load),
    /// so this ends.
    fn chain(&mut self, mut from: usize, out: &mut Vec<Detection>) {
        if !self.rules.has_chains() {
            return;
        }
        let rules = Arc::clone(&self.rules);
        let clock = self.clock.unwrap_or(i64::MIN);
        while from < out.len() {
            let raised = match rules.index_of(&out[from].rule.id) {
                Some(i) if !rules.consumers(i).is_empty() => Some((i, Raised::of(&out[from]))),
                _ => None,
            };
            from += 1;
            let Some((i, raised)) = raised else { continue };
            let ev = raised.event();
            self.trigger = None;
            for &c in rules.consumers(i) {
                self.apply(c, &rules.rules()[c], clock, &ev, None, out);
            }
        }
    }

    /// The event being applied as rules keep it (built once per event).
    fn kept(&mut self, ev: &Event<'_>, pos: Option<&Position>) -> Trigger {
        self.trigger
            .get_or_insert_with(|| Trigger::of(ev, pos))
            .clone()
    }

    /// Applies one event to rule `i`.
    fn apply(
        &mut self,
        i: usize,
        rule: &Rule,
        clock: i64,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let scoped = rule.tenant_scoped;
        match &rule.kind {
            RuleKind::Match { when, group_by } => {
                if when.matches(ev) {
                    build_key(&mut self.key_buf, ev, group_by, false, scoped);
                    if !self.holds(i) {
                        return;
                    }
                    let key = alert_key(rule, &self.key_buf, &ev.tenant);
                    out.push(detection(rule, &key, ev.ts, 1, What::Match, ev, pos));
                }
            }
            RuleKind::Threshold { when, group_by, .. } => {
                if when.matches(ev) {
                    build_key(&mut self.key_buf, ev, group_by, false, scoped);
                    if !self.holds(i) {
                        return;
                    }
                    self.make_room(i, ev, pos, out);
                    self.threshold(i, rule, clock, ev, pos, out);
                }
            }
            RuleKind::Absence { .. } => self.absence(i, rule, ev, pos, out),
            RuleKind::Sequence { .. } => self.sequence(i, rule, clock, ev, pos, out),
            RuleKind::Cardinality { .. } => self.cardinality(i, rule, clock, ev, pos, out),
            RuleKind::Membership { .. } => self.membership(i, rule, clock, ev, pos, out),
        }
    }

    /// A matching event of threshold rule `i` (its key in `key_buf`).
    fn threshold(
        &mut self,
        i: usize,
        rule: &Rule,
        clock: i64,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let RuleKind::Threshold {
            condition,
            condition_text,
            window,
            key_ttl_ms,
            ..
        } = &rule.kind
        else {
            return;
        };
        let key = self.key_buf.as_str();
        let shown = alert_key(rule, key, &ev.tenant);
        match (&mut self.states[i], window) {
            (RuleState::Window(keys), Some(ws)) => {
                if let Some((t, count)) =
                    threshold::window_event(keys, key, ev.ts, clock, *ws, *condition)
                {
                    let what = What::Window {
                        window_ms: ws.0,
                        condition: condition_text.clone(),
                    };
                    out.push(detection(rule, &shown, t, count, what, ev, pos));
                }
            }
            (RuleState::Lifetime(keys), None) => {
                if let Some(count) =
                    threshold::lifetime_event(keys, key, ev.ts, clock, *key_ttl_ms, *condition)
                {
                    let what = What::Lifetime {
                        condition: condition_text.clone(),
                    };
                    out.push(detection(rule, &shown, ev.ts, count, what, ev, pos));
                }
            }
            _ => {}
        }
    }

    /// An event for absence rule `i`: a stop closes its key's deadline in
    /// time, a start (re)opens it.
    fn absence(
        &mut self,
        i: usize,
        rule: &Rule,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let RuleKind::Absence {
            start,
            stop,
            key,
            deadline,
        } = &rule.kind
        else {
            return;
        };
        let is_stop = stop.matches(ev);
        let is_start = start.matches(ev);
        if !(is_stop || is_start)
            || !build_key(&mut self.key_buf, ev, key, true, rule.tenant_scoped)
            || !self.holds(i)
        {
            return;
        }
        if is_stop && let RuleState::Absence(a) = &mut self.states[i] {
            a.stop(&self.key_buf, ev.ts);
        }
        if is_start {
            if !self.states[i].contains(&self.key_buf) {
                self.make_room(i, ev, pos, out);
            }
            let d = ev.ts.saturating_add(absence::deadline_ms(deadline, ev));
            let t = self.kept(ev, pos);
            if let RuleState::Absence(a) = &mut self.states[i] {
                a.start(&self.key_buf, d, t);
            }
        }
    }

    /// An event for sequence rule `i`: as a `then`, it completes the
    /// waiting `first`s it is in time for; as a `first`, it is completed by
    /// the earliest kept `then` in its range, or waits; a `then` is kept
    /// for `first`s that arrive late.
    fn sequence(
        &mut self,
        i: usize,
        rule: &Rule,
        clock: i64,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let RuleKind::Sequence {
            first,
            then,
            first_key,
            then_key,
            within_ms,
            after_ms,
        } = &rule.kind
        else {
            return;
        };
        let (is_first, is_then) = (first.matches(ev), then.matches(ev));
        let (scoped, lateness) = (rule.tenant_scoped, self.config.lateness_ms);
        let what = |a: i64| What::Sequence {
            start: a.saturating_add(*after_ms),
            end: a.saturating_add(*within_ms),
        };
        let is_then =
            is_then && build_key(&mut self.key_buf, ev, then_key, true, scoped) && self.holds(i);
        if is_then && let RuleState::Sequence(s) = &mut self.states[i] {
            let done = s.complete(&self.key_buf, ev.ts, clock, *after_ms, *within_ms);
            if !done.is_empty() {
                let shown = alert_key(rule, &self.key_buf, &ev.tenant);
                for a in done {
                    let mut d = detection(rule, &shown, a.ts, 1, what(a.ts), ev, pos);
                    d.earlier = Some(a.event_ref());
                    out.push(d);
                }
            }
        }
        if is_first && build_key(&mut self.key_buf, ev, first_key, true, scoped) && self.holds(i) {
            let a = ev.ts;
            let waits = clock <= a.saturating_add(*within_ms);
            let completed = match &mut self.states[i] {
                RuleState::Sequence(s) => s
                    .completed_by(&self.key_buf, a, clock, (*after_ms, *within_ms, lateness))
                    .cloned(),
                _ => None,
            };
            if let Some(b) = completed {
                let mut d = kept_detection(rule, &self.key_buf, a, what(a), &b);
                d.earlier = Some(event_ref(ev, pos));
                out.push(d);
            } else if waits {
                let t = self.kept(ev, pos);
                if let Some(k) = self.keyed(i, ev, pos, out, RuleState::sequence) {
                    k.wait(t, clock, *within_ms);
                }
            }
            // The key of the `then` side again, for keeping this event.
            if is_then {
                build_key(&mut self.key_buf, ev, then_key, true, scoped);
            }
        }
        if is_then && clock <= ev.ts.saturating_add(lateness) {
            let t = self.kept(ev, pos);
            let cap = self.rule_cap(i);
            if let RuleState::Sequence(s) = &mut self.states[i] {
                let evicted = s.keep(&self.key_buf, t, clock, lateness, cap);
                if evicted > 0 {
                    self.evicted += evicted as u64;
                    out.push(pressure(rule, evicted, cap.max(1), ev, pos));
                }
            }
        }
    }

    /// The state of the key in `key_buf` of rule `i` (picked out of its
    /// [`RuleState`] by `map`), made if new, after making room at the cap.
    fn keyed<V: Default>(
        &mut self,
        i: usize,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
        map: fn(&mut RuleState) -> Option<&mut keys::KeyMap<V>>,
    ) -> Option<&mut V> {
        if !map(&mut self.states[i])?.contains_key(self.key_buf.as_str()) {
            self.make_room(i, ev, pos, out);
            let keys = map(&mut self.states[i])?;
            keys.insert(self.key_buf.as_str().into(), V::default());
        }
        map(&mut self.states[i])?.get_mut(self.key_buf.as_str())
    }

    /// A matching event of cardinality rule `i` that has its `distinct`
    /// field.
    fn cardinality(
        &mut self,
        i: usize,
        rule: &Rule,
        clock: i64,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let RuleKind::Cardinality {
            when,
            group_by,
            distinct,
            condition,
            condition_text,
            window,
        } = &rule.kind
        else {
            return;
        };
        if !when.matches(ev) {
            return;
        }
        // An unclaimed identity reads `unknown`: it is no distinct value.
        let claimed = !(ev.unclaimed && *distinct == FieldRef::Known(FieldId::AgentId));
        self.value_buf.clear();
        if !claimed || !distinct.key_text(ev, &mut self.value_buf) || self.value_buf.is_empty() {
            return;
        }
        build_key(&mut self.key_buf, ev, group_by, false, rule.tenant_scoped);
        if !self.holds(i) {
            return;
        }
        let value = std::mem::take(&mut self.value_buf);
        let fired = self
            .keyed(i, ev, pos, out, RuleState::distinct)
            .and_then(|state| state.arrive(ev.ts, &value, clock, *window, *condition));
        self.value_buf = value;
        if let Some((t, count)) = fired {
            let what = What::Distinct {
                window_ms: window.0,
                condition: condition_text.clone(),
                field: distinct.name().into(),
            };
            let key = alert_key(rule, &self.key_buf, &ev.tenant);
            out.push(detection(rule, &key, t, count, what, ev, pos));
        }
    }

    /// An event for membership rule `i`: judged as a check (held while its
    /// key has no set), then as a define (judging the held checks it
    /// covers), then as an until.
    fn membership(
        &mut self,
        i: usize,
        rule: &Rule,
        clock: i64,
        ev: &Event<'_>,
        pos: Option<&Position>,
        out: &mut Vec<Detection>,
    ) {
        let RuleKind::Membership {
            define,
            check,
            until,
            key,
            set,
            field,
            key_ttl_ms,
        } = &rule.kind
        else {
            return;
        };
        let is_check = check.matches(ev);
        let is_define = define.matches(ev);
        let is_until = until.as_ref().is_some_and(|u| u.matches(ev));
        if !(is_check || is_define || is_until)
            || !build_key(&mut self.key_buf, ev, key, true, rule.tenant_scoped)
            || !self.holds(i)
        {
            return;
        }
        let outside = |since: i64| What::Outside {
            field: field.name().into(),
            set: set.name().into(),
            since,
        };
        self.value_buf.clear();
        if is_check && field.key_text(ev, &mut self.value_buf) {
            let verdict = match &mut self.states[i] {
                RuleState::Membership(s) => match s.keys.get_mut(self.key_buf.as_str()) {
                    Some(k) => {
                        k.expire(clock, *key_ttl_ms);
                        k.judge(ev.ts, &self.value_buf)
                    }
                    None => Verdict::NoSet,
                },
                _ => Verdict::Inside,
            };
            match verdict {
                Verdict::Outside { since } => {
                    let shown = alert_key(rule, &self.key_buf, &ev.tenant);
                    out.push(detection(rule, &shown, ev.ts, 1, outside(since), ev, pos));
                }
                Verdict::NoSet if clock <= ev.ts => {
                    let t = self.kept(ev, pos);
                    let cap = self.rule_cap(i);
                    if let RuleState::Membership(s) = &mut self.states[i] {
                        let evicted = s.hold(&self.key_buf, &self.value_buf, t, clock, cap);
                        if evicted > 0 {
                            self.evicted += evicted as u64;
                            out.push(pressure(rule, evicted, cap.max(1), ev, pos));
                        }
                    }
                }
                _ => {}
            }
        }
        if is_define && let Some(members) = membership::members(set, ev) {
            if let Some(k) = self.keyed(i, ev, pos, out, RuleState::membership) {
                k.expire(clock, *key_ttl_ms);
                k.define(ev.ts, members);
            }
            let judged = match &mut self.states[i] {
                RuleState::Membership(s) => s.judge_held(&self.key_buf, ev.ts, clock),
                _ => Vec::new(),
            };
            for (held, verdict) in judged {
                if let Verdict::Outside { since } = verdict {
                    let t = &held.trigger;
                    out.push(kept_detection(rule, &self.key_buf, t.ts, outside(since), t));
                }
            }
        }
        if is_until && let Some(k) = self.keyed(i, ev, pos, out, RuleState::membership) {
            k.until(ev.ts);
        }
    }

    /// Drops expired keys (memory only: expiry is also checked on access):
    /// of every rule when `all`, else of the rules
    /// grown by a quarter since their last sweep.
    fn sweep(&mut self, clock: i64, all: bool) {
        self.swept_len.resize(self.states.len(), 0);
        let rules = self.rules.rules().iter().zip(&mut self.states);
        for ((rule, state), swept) in rules.zip(&mut self.swept_len) {
            let len = state.len();
            if all || len == 0 || len >= *swept + *swept / 4 {
                state.sweep(rule, clock, self.config.lateness_ms);
                *swept = state.len();
            }
        }
        self.parked.retain(|p| p.until > clock);
        self.sessions.sweep(clock);
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
        let cap = self.rule_cap(i);
        let key = self.key_buf.as_str();
        let state = &mut self.states[i];
        // The length check first: the lookup runs only at the cap.
        if state.len() < cap {
            return;
        }
        if state.contains(key) {
            return;
        }
        if let Some(clock) = self.clock {
            self.sweep(clock, true);
        }
        let state = &mut self.states[i];
        if state.len() < cap {
            return;
        }
        let n = (cap / EVICT_FRACTION).max(1).min(state.len());
        let evicted = state.evict_oldest(n);
        self.evicted += evicted as u64;
        let rule = &self.rules.rules()[i];
        out.push(pressure(rule, evicted, cap, ev, pos));
    }

    /// Swaps in a new rule set. The state of every rule whose id and
    /// definition are unchanged is kept; new or changed rules start empty,
    /// except a rule that comes back (same id and kind) within the grace of
    /// its removal, which gets its state back; removed rules' state is
    /// parked for `removed_rule_grace_ms`. Returns how many rules kept
    /// state.
    pub fn reload(&mut self, rules: Arc<RuleSet>, config: EngineConfig) -> usize {
        let mut old: Vec<(Arc<str>, String, &'static str, RuleState)> = self
            .rules
            .rules()
            .iter()
            .zip(std::mem::take(&mut self.states))
            .map(|(r, s)| (r.id.clone(), r.definition.clone(), r.kind.name(), s))
            .collect();
        let mut kept = 0;
        self.swept_len.clear();
        self.states = rules
            .rules()
            .iter()
            .map(|rule| {
                if let Some(i) = old
                    .iter()
                    .position(|(id, def, _, _)| *id == rule.id && *def == rule.definition)
                {
                    kept += 1;
                    return old.swap_remove(i).3;
                }
                match self.unpark(rule) {
                    Some(state) => {
                        kept += 1;
                        state
                    }
                    None => RuleState::for_rule(rule),
                }
            })
            .collect();
        let until = self
            .clock
            .unwrap_or(0)
            .saturating_add(config.removed_rule_grace_ms);
        for (id, _, kind, state) in old {
            if !rules.rules().iter().any(|r| r.id == id) {
                self.park(id.to_string(), kind.to_owned(), state, until);
            }
        }
        self.rules = rules;
        self.config = config;
        kept
    }

    /// Keeps a removed rule's state (when it has any) until `until`.
    /// Parked state is saved whole in the head: should it come back, its
    /// table is written whole again.
    fn park(&mut self, id: String, kind: String, mut state: RuleState, until: i64) {
        if state.len() > 0 && self.config.removed_rule_grace_ms > 0 {
            state.set_synced(false);
            self.parked.retain(|p| p.id != id);
            self.parked.push(Parked {
                id,
                kind,
                state,
                until,
            });
        }
    }

    /// The parked state of a rule that came back with the same id and kind.
    fn unpark(&mut self, rule: &Rule) -> Option<RuleState> {
        let fresh = RuleState::for_rule(rule);
        let i = self.parked.iter().position(|p| {
            *p.id == *rule.id
                && p.kind == rule.kind.name()
                && std::mem::discriminant(&p.state) == std::mem::discriminant(&fresh)
        })?;
        Some(self.parked.swap_remove(i).state)
    }

    /// Removed rules whose state is kept: (id, live keys, until).
    pub fn parked_rules(&self) -> Vec<(&str, usize, i64)> {
        self.parked
            .iter()
            .map(|p| (p.id.as_str(), p.state.len(), p.until))
            .collect()
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
        earlier: None,
        fingerprint: alert::fingerprint(ev.payload, ev.part),
    }
}

/// A detection of `rule` whose trigger was kept in state (`count` 1).
fn kept_detection(rule: &Rule, state_key: &str, ts: i64, what: What, t: &Trigger) -> Detection {
    Detection {
        rule: rule.info.clone(),
        key: alert_key(rule, state_key, t.tenant()),
        ts,
        count: 1,
        what,
        event: t.event_ref(),
        earlier: None,
        fingerprint: t.fingerprint,
    }
}

/// The key an alert shows: the state key, or for a rule that is not
/// tenant-scoped (whose state keys begin with an empty tenant) the
/// trigger's tenant in front.
fn alert_key(rule: &Rule, state_key: &str, tenant: &str) -> Box<str> {
    if rule.tenant_scoped {
        state_key.into()
    } else {
        format!("{tenant}{state_key}").into()
    }
}

/// An alert as an event (DESIGN §4): `alert.<rule id>` with the alert's
/// tenant, key fields and time; its text (the trigger fingerprint of what
/// it raises) is the alert's id.
struct Raised {
    ts: i64,
    name: String,
    tenant: String,
    fields: Vec<(String, String)>,
    id: String,
}

impl Raised {
    fn of(d: &Detection) -> Raised {
        let mut parts = d.key.split(KEY_SEP);
        let tenant = parts.next().unwrap_or_default().to_owned();
        let fields = d
            .rule
            .key_fields
            .iter()
            .zip(parts)
            .map(|(f, v)| match v.strip_prefix(alert::BY_SOURCE_IP) {
                Some(ip) => ("source_ip".to_owned(), ip.to_owned()),
                None => (f.clone(), v.to_owned()),
            })
            .collect();
        Raised {
            ts: d.ts,
            name: format!("{}{}", condition::ALERT_EVENT_PREFIX, d.rule.id),
            id: alert::alert_id(&d.rule.id, &tenant, &d.key, d.ts, &d.fingerprint),
            tenant,
            fields,
        }
    }

    fn event(&self) -> Event<'_> {
        let mut ev = Event::new(self.ts, crate::event::EventKind::Other);
        ev.event = self.name.as_str().into();
        ev.tenant = self.tenant.as_str().into();
        ev.payload = &self.id;
        ev.is_alert = true;
        for (name, value) in &self.fields {
            match FieldId::from_name(name).and_then(|f| ev.slot_mut(f)) {
                Some(slot) => *slot = Some(value.as_str().into()),
                None => ev.extra.push((
                    name.as_str().into(),
                    serde_json::Value::from(value.as_str()),
                )),
            }
        }
        ev
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
    let key = format!("{}{KEY_SEP}{}", alert::daemon::TENANT, rule.id);
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
        earlier: None,
        fingerprint: alert::fingerprint(ev.payload, ev.part),
    }
}
