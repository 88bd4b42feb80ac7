//! The engine's snapshot: its whole state as postcard with a format
//! version, so a daemon restarts (or a Kafka partition moves) exactly where
//! it left off. State of a rule is restored only into a rule of the same id
//! and kind; a snapshot of another version is refused, never guessed at.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::kinds::RuleState;
use super::sessions::Sessions;
use super::{Engine, EngineConfig, Parked, RuleSet};

/// Snapshot format version; bump on any change of the serialized state.
/// Version 2 added derived sessions; version 3 the correlation kinds'
/// state and the tenant of kept triggers; version 4 the parked state of
/// removed rules. Version 3 is read (with nothing parked); older snapshots
/// are refused.
const SNAPSHOT_VERSION: u32 = 4;
/// The oldest version this build reads.
const OLDEST_READ: u32 = 3;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot encoding failed: {0}")]
    Encode(postcard::Error),
    #[error("snapshot is corrupt or truncated: {0}")]
    Decode(postcard::Error),
    #[error(
        "snapshot format version {found} is not supported (this build reads version {SNAPSHOT_VERSION}); \
         start the build that wrote it, or drop the saved state with `mcp-alertd state reset` \
         (pending timers and windows are then lost)"
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
    sessions: Sessions,
    parked: Vec<Parked>,
}

/// Version 3: no parked state.
#[derive(Deserialize)]
struct Snapshot3 {
    version: u32,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    rules: Vec<(String, String, RuleState)>,
    sessions: Sessions,
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    rules: Vec<(&'a str, &'a str, &'a RuleState)>,
    sessions: &'a Sessions,
    parked: &'a [Parked],
}

impl Engine {
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
            sessions: &self.sessions,
            parked: &self.parked,
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
        (OLDEST_READ..=SNAPSHOT_VERSION)
            .contains(&head.version)
            .then_some(head.clock)?
    }

    /// Rebuilds an engine from a snapshot under `rules`. State of a rule is
    /// kept when a rule of the same id and kind exists; the state of a rule
    /// that is not in `rules` is parked for the removal grace (as a reload
    /// does), and a parked rule that is back gets its state.
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
        let snap: Snapshot = match v.version {
            SNAPSHOT_VERSION => postcard::from_bytes(bytes).map_err(SnapshotError::Decode)?,
            OLDEST_READ => {
                let s: Snapshot3 = postcard::from_bytes(bytes).map_err(SnapshotError::Decode)?;
                Snapshot {
                    version: s.version,
                    clock: s.clock,
                    next_sweep: s.next_sweep,
                    late: s.late,
                    evicted: s.evicted,
                    rules: s.rules,
                    sessions: s.sessions,
                    parked: Vec::new(),
                }
            }
            found => return Err(SnapshotError::Version { found }),
        };
        let mut engine = Engine::new(rules, config);
        engine.parked = snap.parked;
        engine.clock = snap.clock;
        engine.next_sweep = snap.next_sweep;
        engine.late = snap.late;
        engine.evicted = snap.evicted;
        engine.sessions = snap.sessions;
        let until = snap
            .clock
            .unwrap_or(0)
            .saturating_add(engine.config.removed_rule_grace_ms);
        for (id, kind, state) in snap.rules {
            match engine
                .rules
                .rules()
                .iter()
                .position(|r| *r.id == *id && r.kind.name() == kind)
            {
                Some(i)
                    if std::mem::discriminant(&engine.states[i])
                        == std::mem::discriminant(&state) =>
                {
                    engine.states[i] = state;
                }
                Some(_) => {}
                None => engine.park(id, kind, state, until),
            }
        }
        let rules = engine.rules.clone();
        for (i, rule) in rules.rules().iter().enumerate() {
            if engine.states[i].held() == 0
                && let Some(state) = engine.unpark(rule)
            {
                engine.states[i] = state;
            }
        }
        Ok(engine)
    }
}
