//! The rule kinds' state: one variant per kind (a `match` rule keeps
//! none), with what the engine asks of every kind: its size, whether a key
//! is live, eviction of the oldest keys, and the sweep of expired ones.
//! Each kind's semantics live in its file.

pub mod absence;
pub mod cardinality;
mod log;
pub mod matching;
pub mod membership;
pub mod sequence;
pub mod threshold;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::changes::{TableChanges, log_table_name, restore_row, table_name};
use super::keys::{KeyMap, oldest};
use super::rules::{Rule, RuleKind};
use crate::alert::{self, EventRef, Fingerprint};
use crate::event::{Event, Position};
use absence::AbsenceState;
use cardinality::DistinctKey;
use log::TimeLog;
use membership::{MemberKey, MembershipState};
use sequence::{SequenceKey, SequenceState};
use threshold::{LifetimeKey, WindowKey};

/// An event kept in state (a pending start, a sequence's sides, a held
/// check): what its alert says about it, its tenant and its fingerprint.
/// Shared: one event kept by several rules is built (and hashed) once.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger(Arc<TriggerData>);

/// A kept event's text fields live in one allocation: `event`, `tenant`,
/// then `tool`, `reason` and `server` when present, each ending at its
/// entry of `ends` (a missing one ends where the previous did and is
/// marked absent in `present`).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerData {
    pub ts: i64,
    text: Box<str>,
    ends: [u32; 5],
    present: u8,
    position: Option<KeptPosition>,
    pub fingerprint: Fingerprint,
}

const EVENT: usize = 0;
const TENANT: usize = 1;
const TOOL: usize = 2;
const REASON: usize = 3;
const SERVER: usize = 4;

/// A kept event's text fields in packing order: event, tenant, tool,
/// reason, server.
fn parts<'a, S: std::ops::Deref<Target = str>>(
    event: &'a str,
    tenant: &'a str,
    [tool, reason, server]: [&'a Option<S>; 3],
) -> [Option<&'a str>; 5] {
    [
        Some(event),
        Some(tenant),
        tool.as_deref(),
        reason.as_deref(),
        server.as_deref(),
    ]
}

impl TriggerData {
    fn pack(
        ts: i64,
        parts: [Option<&str>; 5],
        position: Option<KeptPosition>,
        fingerprint: Fingerprint,
    ) -> TriggerData {
        let mut text = String::with_capacity(parts.iter().flatten().map(|p| p.len()).sum());
        let (mut ends, mut present) = ([0u32; 5], 0u8);
        for (i, part) in parts.iter().enumerate() {
            if let Some(p) = part {
                text.push_str(p);
                present |= 1 << i;
            }
            // Kept fields come from one record, far below 4 GiB.
            ends[i] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        TriggerData {
            ts,
            text: text.into_boxed_str(),
            ends,
            present,
            position,
            fingerprint,
        }
    }

    fn part(&self, i: usize) -> Option<&str> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize)
    }

    pub fn event(&self) -> &str {
        self.part(EVENT).unwrap_or_default()
    }

    pub fn tenant(&self) -> &str {
        self.part(TENANT).unwrap_or_default()
    }
}

/// The saved form of a kept event (the snapshot format: field order and
/// names as written).
#[derive(Serialize, Deserialize)]
struct TriggerWire<'a> {
    ts: i64,
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    tool: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    server: Option<std::borrow::Cow<'a, str>>,
    position: Option<KeptPosition>,
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
    fingerprint: Fingerprint,
}

/// Where a kept event came from: the position itself while live (a clone
/// is cheap), its text once read back from a snapshot. Saved as text.
#[derive(Debug, Clone, PartialEq)]
enum KeptPosition {
    Live(Position),
    Text(Box<str>),
}

impl Serialize for KeptPosition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeptPosition::Live(p) => s.collect_str(p),
            KeptPosition::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for KeptPosition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeptPosition, D::Error> {
        Box::<str>::deserialize(d).map(KeptPosition::Text)
    }
}

impl std::ops::Deref for Trigger {
    type Target = TriggerData;
    fn deref(&self) -> &TriggerData {
        &self.0
    }
}

impl Serialize for Trigger {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = &self.0;
        TriggerWire {
            ts: t.ts,
            event: t.event().into(),
            tool: t.part(TOOL).map(Into::into),
            reason: t.part(REASON).map(Into::into),
            server: t.part(SERVER).map(Into::into),
            position: t.position.clone(),
            tenant: t.tenant().into(),
            fingerprint: t.fingerprint,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Trigger, D::Error> {
        let w = TriggerWire::deserialize(d)?;
        let parts = parts(&w.event, &w.tenant, [&w.tool, &w.reason, &w.server]);
        Ok(Trigger(Arc::new(TriggerData::pack(
            w.ts,
            parts,
            w.position,
            w.fingerprint,
        ))))
    }
}

impl Trigger {
    pub fn of(ev: &Event<'_>, pos: Option<&Position>) -> Trigger {
        let parts = parts(&ev.event, &ev.tenant, [&ev.tool, &ev.reason, &ev.server]);
        Trigger(Arc::new(TriggerData::pack(
            ev.ts,
            parts,
            pos.cloned().map(KeptPosition::Live),
            alert::fingerprint(ev.payload, ev.part),
        )))
    }

    pub fn event_ref(&self) -> EventRef {
        EventRef {
            ts: self.ts,
            event: self.event().to_owned(),
            tool: self.part(TOOL).map(str::to_owned),
            reason: self.part(REASON).map(str::to_owned),
            server: self.part(SERVER).map(str::to_owned),
            position: self.position.as_ref().map(|p| match p {
                KeptPosition::Live(p) => p.to_string(),
                KeptPosition::Text(t) => t.to_string(),
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RuleState {
    Match,
    Window(KeyMap<WindowKey>),
    Lifetime(KeyMap<LifetimeKey>),
    Absence(AbsenceState),
    Sequence(SequenceState),
    Distinct(KeyMap<DistinctKey>),
    Membership(MembershipState),
}

/// Which of a rule's saved tables a row is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Keys,
    Log,
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
            RuleState::Sequence(s) => Some(&mut s.keys),
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
            RuleState::Membership(s) => Some(&mut s.keys),
            _ => None,
        }
    }

    /// The kind of state, as named in saved tables.
    pub fn state_name(&self) -> &'static str {
        match self {
            RuleState::Match => "match",
            RuleState::Window(_) => "window",
            RuleState::Lifetime(_) => "lifetime",
            RuleState::Absence(_) => "absence",
            RuleState::Sequence(_) => "sequence",
            RuleState::Distinct(_) => "distinct",
            RuleState::Membership(_) => "membership",
        }
    }

    /// Whether it has keys (saved as a table of rows).
    pub fn is_keyed(&self) -> bool {
        !matches!(self, RuleState::Match)
    }

    /// An empty state of the kind named (rows are restored next).
    pub fn named(state: &str) -> Option<RuleState> {
        Some(match state {
            "match" => RuleState::Match,
            "window" => RuleState::Window(KeyMap::default()),
            "lifetime" => RuleState::Lifetime(KeyMap::default()),
            "absence" => RuleState::Absence(AbsenceState::default()),
            "sequence" => RuleState::Sequence(SequenceState::default()),
            "distinct" => RuleState::Distinct(KeyMap::default()),
            "membership" => RuleState::Membership(MembershipState::default()),
            _ => return None,
        })
    }

    /// Whether it keeps a short-lived log (saved as a table of its own).
    fn has_log(&self) -> bool {
        matches!(self, RuleState::Sequence(_) | RuleState::Membership(_))
    }

    /// Its saved tables: its keys, and its log when it has one.
    pub fn tables(&self, rule: &str) -> Vec<(String, Part)> {
        let mut tables = Vec::new();
        if self.is_keyed() {
            tables.push((table_name(rule, self.state_name()), Part::Keys));
        }
        if self.has_log() {
            tables.push((log_table_name(rule, self.state_name()), Part::Log));
        }
        tables
    }

    /// Drains what changed since the last save into its tables (in the
    /// order of [`RuleState::tables`]).
    pub fn drain_changes(
        &mut self,
        rule: &str,
        out: &mut Vec<TableChanges>,
    ) -> Result<(), postcard::Error> {
        let state = self.state_name();
        let mut keys = TableChanges::new(table_name(rule, state));
        let mut log = TableChanges::new(log_table_name(rule, state));
        match self {
            RuleState::Match => return Ok(()),
            RuleState::Window(m) => keys.drain(m)?,
            RuleState::Lifetime(m) => keys.drain(m)?,
            RuleState::Absence(a) => keys.drain(&mut a.pending)?,
            RuleState::Distinct(m) => keys.drain(m)?,
            RuleState::Sequence(s) => {
                keys.drain(&mut s.keys)?;
                s.log_mut().drain_changes(&mut log)?;
            }
            RuleState::Membership(s) => {
                keys.drain(&mut s.keys)?;
                s.log_mut().drain_changes(&mut log)?;
            }
        }
        out.push(keys);
        if self.has_log() {
            out.push(log);
        }
        Ok(())
    }

    /// Puts a saved row of one of its tables back.
    pub fn restore_row(
        &mut self,
        part: Part,
        key: &str,
        value: &[u8],
    ) -> Result<(), postcard::Error> {
        match (self, part) {
            (RuleState::Match, _) => Ok(()),
            (RuleState::Window(m), _) => restore_row(m, key, value),
            (RuleState::Lifetime(m), _) => restore_row(m, key, value),
            (RuleState::Absence(a), _) => restore_row(&mut a.pending, key, value),
            (RuleState::Distinct(m), _) => restore_row(m, key, value),
            (RuleState::Sequence(s), Part::Keys) => restore_row(&mut s.keys, key, value),
            (RuleState::Sequence(s), Part::Log) => s.log_mut().restore_row(key, value),
            (RuleState::Membership(s), Part::Keys) => restore_row(&mut s.keys, key, value),
            (RuleState::Membership(s), Part::Log) => s.log_mut().restore_row(key, value),
        }
    }

    /// After its rows are restored: room for `n` more keys.
    pub fn reserve(&mut self, n: usize) {
        match self {
            RuleState::Match => {}
            RuleState::Window(m) => m.reserve(n),
            RuleState::Lifetime(m) => m.reserve(n),
            RuleState::Absence(a) => a.pending.reserve(n),
            RuleState::Sequence(s) => s.keys.reserve(n),
            RuleState::Distinct(m) => m.reserve(n),
            RuleState::Membership(s) => s.keys.reserve(n),
        }
    }

    /// Once its rows are restored: rebuilds what is derived from them (an
    /// absence rule's deadlines in time order, built in one go).
    pub fn rows_restored(&mut self) {
        match self {
            RuleState::Absence(a) => {
                a.timers = a
                    .pending
                    .iter()
                    .map(|(k, p)| (p.deadline, k.clone()))
                    .collect();
            }
            RuleState::Sequence(s) => s.log_mut().restored(),
            RuleState::Membership(s) => s.log_mut().restored(),
            _ => {}
        }
    }

    /// Marks the keys as saved (`true`: restored from the rows) or as to
    /// be written whole at the next save (`false`).
    pub fn set_synced(&mut self, synced: bool) {
        fn log_synced<T>(log: &mut TimeLog<T>, synced: bool) {
            if synced { log.restored() } else { log.unsync() }
        }
        fn set<V>(m: &mut KeyMap<V>, synced: bool) {
            if synced { m.restored() } else { m.unsync() }
        }
        match self {
            RuleState::Match => {}
            RuleState::Window(m) => set(m, synced),
            RuleState::Lifetime(m) => set(m, synced),
            RuleState::Absence(a) => set(&mut a.pending, synced),
            RuleState::Distinct(m) => set(m, synced),
            RuleState::Sequence(s) => {
                set(&mut s.keys, synced);
                log_synced(s.log_mut(), synced);
            }
            RuleState::Membership(s) => {
                set(&mut s.keys, synced);
                log_synced(s.log_mut(), synced);
            }
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
            RuleKind::Sequence { .. } => RuleState::Sequence(SequenceState::default()),
            RuleKind::Cardinality { .. } => RuleState::Distinct(KeyMap::default()),
            RuleKind::Membership { .. } => RuleState::Membership(MembershipState::default()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RuleState::Match => 0,
            RuleState::Window(m) => m.len(),
            RuleState::Lifetime(m) => m.len(),
            RuleState::Absence(a) => a.pending.len(),
            RuleState::Sequence(s) => s.keys.len(),
            RuleState::Distinct(m) => m.len(),
            RuleState::Membership(s) => s.keys.len(),
        }
    }

    /// Live keys, and the short-lived events kept apart from them (a
    /// sequence's thens, a membership rule's held checks).
    pub fn held(&self) -> usize {
        match self {
            RuleState::Sequence(s) => s.keys.len() + s.kept_thens(),
            RuleState::Membership(s) => s.keys.len() + s.held_checks(),
            _ => self.len(),
        }
    }

    /// Whether `key` has state.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            RuleState::Window(m) => m.contains_key(key),
            RuleState::Lifetime(m) => m.contains_key(key),
            RuleState::Absence(a) => a.pending.contains_key(key),
            RuleState::Sequence(s) => s.keys.contains_key(key),
            RuleState::Distinct(m) => m.contains_key(key),
            RuleState::Membership(s) => s.keys.contains_key(key),
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
            RuleState::Sequence(s) => evict(&mut s.keys, n, SequenceKey::last_seen),
            RuleState::Distinct(m) => evict(m, n, DistinctKey::last_seen),
            RuleState::Membership(s) => evict(&mut s.keys, n, MemberKey::last_seen),
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
            (RuleKind::Sequence { within_ms, .. }, RuleState::Sequence(s)) => {
                s.expire(clock, *within_ms, lateness_ms);
            }
            (RuleKind::Cardinality { window: (w, s), .. }, RuleState::Distinct(keys)) => {
                keys.retain(|_, k| !k.is_spent(clock, *w, *s))
            }
            (RuleKind::Membership { key_ttl_ms, .. }, RuleState::Membership(s)) => {
                s.expire(clock, *key_ttl_ms);
            }
            _ => {}
        }
    }
}
