//! The rule kinds' state: one variant per kind (a `match` rule keeps
//! none), with what the engine asks of every kind: its size, whether a key
//! is live, eviction of the oldest keys, and the sweep of expired ones.
//! Each kind's semantics live in its file.

pub mod absence;
pub mod cardinality;
pub mod matching;
pub mod membership;
pub mod sequence;
pub mod threshold;

use serde::{Deserialize, Serialize};

use super::keys::{KeyMap, oldest};
use super::rules::{Rule, RuleKind};
use crate::alert::{self, EventRef, Fingerprint};
use crate::event::{Event, Position};
use absence::AbsenceState;
use cardinality::DistinctKey;
use membership::MemberKey;
use sequence::SequenceKey;
use threshold::{LifetimeKey, WindowKey};

/// An event kept in state (a pending start, a sequence's sides, a held
/// check): what its alert says about it, its tenant and its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub ts: i64,
    event: Box<str>,
    tool: Option<Box<str>>,
    reason: Option<Box<str>>,
    server: Option<Box<str>>,
    position: Option<Box<str>>,
    pub tenant: Box<str>,
    pub fingerprint: Fingerprint,
}

impl Trigger {
    pub fn of(ev: &Event<'_>, pos: Option<&Position>) -> Trigger {
        Trigger {
            ts: ev.ts,
            event: ev.event.as_ref().into(),
            tool: ev.tool.as_deref().map(Into::into),
            reason: ev.reason.as_deref().map(Into::into),
            server: ev.server.as_deref().map(Into::into),
            position: pos.map(|p| p.to_string().into()),
            tenant: ev.tenant.as_ref().into(),
            fingerprint: alert::fingerprint(ev.payload, ev.part),
        }
    }

    pub fn event_ref(&self) -> EventRef {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RuleState {
    Match,
    Window(KeyMap<WindowKey>),
    Lifetime(KeyMap<LifetimeKey>),
    Absence(AbsenceState),
    Sequence(KeyMap<SequenceKey>),
    Distinct(KeyMap<DistinctKey>),
    Membership(KeyMap<MemberKey>),
}

/// Removes the `n` oldest keys of `map` by `age`, returning how many went.
fn evict<V>(map: &mut KeyMap<V>, n: usize, age: impl Fn(&V) -> i64) -> usize {
    let victims = oldest(map, n, age);
    victims.iter().for_each(|k| {
        map.remove(k);
    });
    victims.len()
}

impl RuleState {
    pub fn sequence(&mut self) -> Option<&mut KeyMap<SequenceKey>> {
        match self {
            RuleState::Sequence(m) => Some(m),
            _ => None,
        }
    }

    pub fn distinct(&mut self) -> Option<&mut KeyMap<DistinctKey>> {
        match self {
            RuleState::Distinct(m) => Some(m),
            _ => None,
        }
    }

    pub fn membership(&mut self) -> Option<&mut KeyMap<MemberKey>> {
        match self {
            RuleState::Membership(m) => Some(m),
            _ => None,
        }
    }

    pub fn for_rule(rule: &Rule) -> RuleState {
        match &rule.kind {
            RuleKind::Match { .. } => RuleState::Match,
            RuleKind::Threshold {
                window: Some(_), ..
            } => RuleState::Window(KeyMap::default()),
            RuleKind::Threshold { window: None, .. } => RuleState::Lifetime(KeyMap::default()),
            RuleKind::Absence { .. } => RuleState::Absence(AbsenceState::default()),
            RuleKind::Sequence { .. } => RuleState::Sequence(KeyMap::default()),
            RuleKind::Cardinality { .. } => RuleState::Distinct(KeyMap::default()),
            RuleKind::Membership { .. } => RuleState::Membership(KeyMap::default()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RuleState::Match => 0,
            RuleState::Window(m) => m.len(),
            RuleState::Lifetime(m) => m.len(),
            RuleState::Absence(a) => a.pending.len(),
            RuleState::Sequence(m) => m.len(),
            RuleState::Distinct(m) => m.len(),
            RuleState::Membership(m) => m.len(),
        }
    }

    /// Whether `key` has state.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            RuleState::Window(m) => m.contains_key(key),
            RuleState::Lifetime(m) => m.contains_key(key),
            RuleState::Absence(a) => a.pending.contains_key(key),
            RuleState::Sequence(m) => m.contains_key(key),
            RuleState::Distinct(m) => m.contains_key(key),
            RuleState::Membership(m) => m.contains_key(key),
            RuleState::Match => true,
        }
    }

    /// Evicts the `n` keys with the oldest activity (ties by key),
    /// returning how many went.
    pub fn evict_oldest(&mut self, n: usize) -> usize {
        match self {
            RuleState::Match => 0,
            RuleState::Window(m) => evict(m, n, WindowKey::last_seen),
            RuleState::Lifetime(m) => evict(m, n, LifetimeKey::last_seen),
            RuleState::Sequence(m) => evict(m, n, SequenceKey::last_seen),
            RuleState::Distinct(m) => evict(m, n, DistinctKey::last_seen),
            RuleState::Membership(m) => evict(m, n, MemberKey::last_seen),
            RuleState::Absence(a) => {
                let victims = oldest(&a.pending, n, |p| p.trigger.ts);
                for k in &victims {
                    if let Some(p) = a.pending.remove(k) {
                        a.timers.remove(&(p.deadline, k.clone()));
                    }
                }
                victims.len()
            }
        }
    }

    /// Drops expired keys (memory only: expiry is also checked on access).
    pub fn sweep(&mut self, rule: &Rule, clock: i64, lateness_ms: i64) {
        match (&rule.kind, self) {
            (
                RuleKind::Threshold {
                    window: Some((w, s)),
                    ..
                },
                RuleState::Window(keys),
            ) => keys.retain(|_, k| !threshold::is_spent(k, clock, *w, *s)),
            (RuleKind::Threshold { key_ttl_ms, .. }, RuleState::Lifetime(keys)) => {
                keys.retain(|_, k| clock <= k.last_seen().saturating_add(*key_ttl_ms));
            }
            (RuleKind::Sequence { within_ms, .. }, RuleState::Sequence(keys)) => {
                keys.retain(|_, k| !k.expire(clock, *within_ms, lateness_ms));
            }
            (RuleKind::Cardinality { window: (w, s), .. }, RuleState::Distinct(keys)) => {
                keys.retain(|_, k| !k.is_spent(clock, *w, *s))
            }
            (RuleKind::Membership { key_ttl_ms, .. }, RuleState::Membership(keys)) => {
                keys.retain(|_, k| !k.expire(clock, *key_ttl_ms));
            }
            _ => {}
        }
    }
}
