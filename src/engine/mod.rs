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
mod keys;
mod kinds;
pub mod rules;
mod sessions;
mod snapshot;

use std::sync::Arc;

pub use condition::{Cond, FieldRef};
pub use rules::{CountCondition, CountOp, Rule, RuleError, RuleKind, RuleSet, RuleSetError};
pub use snapshot::SnapshotError;

use crate::alert::{self, Detection, EventRef, RuleInfo, Severity, What};
use crate::event::{Event, Position};
use keys::build_key;
use kinds::RuleState;
use kinds::absence::{self, Trigger};
use kinds::threshold;

/// The rule id of internal alerts raised when state is evicted at the cap.
pub const STATE_PRESSURE_RULE: &str = "state_pressure";

pub use crate::alert::KEY_SEP;

/// A shared, immutable rule set.
pub type Rules = Arc<RuleSet>;

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
    /// Derived sessions of sources that ask for them.
    sessions: sessions::Sessions,
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
            sessions: sessions::Sessions::default(),
        }
    }

    /// Gives an event without a session id its agent's derived session
    /// (DESIGN §2b), `idle_ms` being the source's idle time; says whether
    /// it did. Call before [`on_event`](Self::on_event).
    pub fn derive_session(&mut self, ev: &mut Event<'_>, idle_ms: i64) -> bool {
        let (derived, evicted) = self.sessions.assign(
            &mut self.key_buf,
            ev,
            idle_ms,
            self.config.max_keys_per_rule,
        );
        self.evicted += evicted as u64;
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
                RuleKind::Threshold { when, group_by, .. } => {
                    if when.matches(ev) {
                        build_key(&mut self.key_buf, ev, group_by, false);
                        self.make_room(i, ev, pos, out);
                        self.threshold(i, rule, clock, ev, pos, out);
                    }
                }
                RuleKind::Absence { .. } => self.absence(i, rule, ev, pos, out),
            }
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
        match (&mut self.states[i], window) {
            (RuleState::Window(keys), Some(ws)) => {
                if let Some((t, count)) =
                    threshold::window_event(keys, key, ev.ts, clock, *ws, *condition)
                {
                    let what = What::Window {
                        window_ms: ws.0,
                        condition: condition_text.clone(),
                    };
                    out.push(detection(rule, key, t, count, what, ev, pos));
                }
            }
            (RuleState::Lifetime(keys), None) => {
                if let Some(count) =
                    threshold::lifetime_event(keys, key, ev.ts, clock, *key_ttl_ms, *condition)
                {
                    let what = What::Lifetime {
                        condition: condition_text.clone(),
                    };
                    out.push(detection(rule, key, ev.ts, count, what, ev, pos));
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
        if !(is_stop || is_start) || !build_key(&mut self.key_buf, ev, key, true) {
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
            if let RuleState::Absence(a) = &mut self.states[i] {
                a.start(&self.key_buf, d, Trigger::of(ev, pos));
            }
        }
    }

    /// Drops expired keys (memory only: expiry is also checked on access).
    fn sweep(&mut self, clock: i64) {
        for (rule, state) in self.rules.rules().iter().zip(&mut self.states) {
            state.sweep(rule, clock);
        }
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
        let cap = self.config.max_keys_per_rule.max(1);
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
            self.sweep(clock);
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
        fingerprint: alert::fingerprint(ev.payload, ev.part),
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
        fingerprint: alert::fingerprint(ev.payload, ev.part),
    }
}
