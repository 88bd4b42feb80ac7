//! The rule kinds' state: one variant per kind (a `match` rule keeps
//! none), with what the engine asks of every kind: its size, whether a key
//! is live, eviction of the oldest keys, and the sweep of expired ones.
//! Each kind's semantics live in its file.

pub mod absence;
pub mod matching;
pub mod threshold;

use serde::{Deserialize, Serialize};

use super::keys::{KeyMap, oldest};
use super::rules::{Rule, RuleKind};
use absence::AbsenceState;
use threshold::{LifetimeKey, WindowKey};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RuleState {
    Match,
    Window(KeyMap<WindowKey>),
    Lifetime(KeyMap<LifetimeKey>),
    Absence(AbsenceState),
}

impl RuleState {
    pub fn for_rule(rule: &Rule) -> RuleState {
        match &rule.kind {
            RuleKind::Match { .. } => RuleState::Match,
            RuleKind::Threshold {
                window: Some(_), ..
            } => RuleState::Window(KeyMap::default()),
            RuleKind::Threshold { window: None, .. } => RuleState::Lifetime(KeyMap::default()),
            RuleKind::Absence { .. } => RuleState::Absence(AbsenceState::default()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RuleState::Match => 0,
            RuleState::Window(m) => m.len(),
            RuleState::Lifetime(m) => m.len(),
            RuleState::Absence(a) => a.pending.len(),
        }
    }

    /// Whether `key` has state.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            RuleState::Window(m) => m.contains_key(key),
            RuleState::Lifetime(m) => m.contains_key(key),
            RuleState::Absence(a) => a.pending.contains_key(key),
            RuleState::Match => true,
        }
    }

    /// Evicts the `n` keys with the oldest activity (ties by key),
    /// returning how many went.
    pub fn evict_oldest(&mut self, n: usize) -> usize {
        match self {
            RuleState::Match => 0,
            RuleState::Window(m) => {
                let victims = oldest(m, n, WindowKey::last_seen);
                victims.iter().for_each(|k| {
                    m.remove(k);
                });
                victims.len()
            }
            RuleState::Lifetime(m) => {
                let victims = oldest(m, n, LifetimeKey::last_seen);
                victims.iter().for_each(|k| {
                    m.remove(k);
                });
                victims.len()
            }
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
    pub fn sweep(&mut self, rule: &Rule, clock: i64) {
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
            _ => {}
        }
    }
}
