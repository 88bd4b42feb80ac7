//! The engine's snapshot: its whole state as postcard with a format
//! version, so a daemon restarts (or a Kafka partition moves) exactly where
//! it left off. State of a rule is restored only into a rule of the same id
//! and kind; a snapshot of another version is refused, never guessed at.
//!
//! Two forms: the whole state in one value ([`Engine::snapshot`], version
//! 4), and the incremental form the daemon saves ([`Engine::save_changes`],
//! version 5): a head with everything but the keys and logs (clock,
//! counters, each rule's kind of state, parked rules) and, per table (a
//! rule's keys, its short-lived log, the derived sessions), the rows
//! changed since the last save. [`Restoring`] reads either back.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::changes::{SESSIONS_TABLE, TableChanges};
use super::kinds::{Part, RuleState};
use super::sessions::Sessions;
use super::{Engine, EngineConfig, Parked, RuleSet};

/// Snapshot format version; bump on any change of the serialized state.
/// Version 2 added derived sessions; version 3 the correlation kinds'
/// state and the tenant of kept triggers; version 4 the parked state of
/// removed rules; version 5 is the head of an incremental save. Version 3
/// is read (with nothing parked); older snapshots are refused.
const SNAPSHOT_VERSION: u32 = 4;
/// The oldest version this build reads.
const OLDEST_READ: u32 = 3;
/// The head of an incremental save (keys in rows of their own).
const HEAD_VERSION: u32 = 5;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot encoding failed: {0}")]
    Encode(postcard::Error),
    #[error("snapshot is corrupt or truncated: {0}")]
    Decode(postcard::Error),
    #[error("saved row {key:?} of table `{table}` is corrupt or truncated: {source}")]
    Row {
        table: String,
        key: String,
        source: postcard::Error,
    },
    #[error("saved state of an unknown kind `{found}`")]
    UnknownState { found: String },
    #[error("saved rows of a table the snapshot does not list (index {index})")]
    UnknownTable { index: usize },
    #[error("snapshot is the head of an incremental save: its rows are read with `Restoring`")]
    Incomplete,
    #[error(
        "snapshot format version {found} is not supported (this build reads version {HEAD_VERSION}); \
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

/// The head of an incremental save.
#[derive(Serialize)]
struct HeadRef<'a> {
    version: u32,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    /// Each rule's id, kind and kind of state (its keys and log are rows).
    rules: Vec<(&'a str, &'a str, &'a str)>,
    parked: &'a [Parked],
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "version")]
    _version: u32,
    clock: Option<i64>,
    next_sweep: i64,
    late: u64,
    evicted: u64,
    rules: Vec<(String, String, String)>,
    parked: Vec<Parked>,
}

/// What an incremental save writes: the head, and every keyed table with
/// the rows changed since the last save (a table not listed any more is
/// dropped from the store).
#[derive(Debug)]
pub struct StateChanges {
    pub head: Vec<u8>,
    pub tables: Vec<TableChanges>,
}

impl StateChanges {
    /// Rows changed, and their value bytes.
    pub fn size(&self) -> (usize, usize) {
        self.tables.iter().fold((0, self.head.len()), |(n, b), t| {
            (n + t.len(), b + t.value_bytes())
        })
    }
}

/// An engine being read back: from a whole snapshot, or from the head of
/// an incremental save whose tables' rows are then given with
/// [`Restoring::row`]; [`Restoring::finish`] makes the engine.
pub struct Restoring {
    /// The state read so far (from a head: no keys, logs or sessions yet).
    saved: Snapshot,
    /// The tables to read (name, the rule's index and which of its
    /// tables, or `None` for the sessions); empty for a whole snapshot.
    tables: Vec<(String, Option<(usize, Part)>)>,
}

impl Restoring {
    /// Reads a whole snapshot or an incremental head.
    pub fn new(bytes: &[u8]) -> Result<Restoring, SnapshotError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = postcard::take_from_bytes(bytes)
            .map(|(v, _)| v)
            .map_err(SnapshotError::Decode)?;
        let whole = |saved: Snapshot| Restoring {
            saved,
            tables: Vec::new(),
        };
        Ok(match v.version {
            HEAD_VERSION => {
                let h: Head = postcard::from_bytes(bytes).map_err(SnapshotError::Decode)?;
                let mut rules = Vec::with_capacity(h.rules.len());
                for (id, kind, state) in h.rules {
                    let state = RuleState::named(&state)
                        .ok_or(SnapshotError::UnknownState { found: state })?;
                    rules.push((id, kind, state));
                }
                let mut tables: Vec<(String, Option<(usize, Part)>)> = Vec::new();
                for (i, (id, _, state)) in rules.iter().enumerate() {
                    let of_rule = state.tables(id).into_iter();
                    tables.extend(of_rule.map(|(name, part)| (name, Some((i, part)))));
                }
                tables.push((SESSIONS_TABLE.to_owned(), None));
                Restoring {
                    saved: Snapshot {
                        version: HEAD_VERSION,
                        clock: h.clock,
                        next_sweep: h.next_sweep,
                        late: h.late,
                        evicted: h.evicted,
                        rules,
                        sessions: Sessions::default(),
                        parked: h.parked,
                    },
                    tables,
                }
            }
            SNAPSHOT_VERSION => whole(postcard::from_bytes(bytes).map_err(SnapshotError::Decode)?),
            OLDEST_READ => {
                let s: Snapshot3 = postcard::from_bytes(bytes).map_err(SnapshotError::Decode)?;
                whole(Snapshot {
                    version: s.version,
                    clock: s.clock,
                    next_sweep: s.next_sweep,
                    late: s.late,
                    evicted: s.evicted,
                    rules: s.rules,
                    sessions: s.sessions,
                    parked: Vec::new(),
                })
            }
            found => return Err(SnapshotError::Version { found }),
        })
    }

    /// The tables whose rows are to be given, by index.
    pub fn tables(&self) -> Vec<String> {
        self.tables.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Room for `n` rows of table `table` (an index of
    /// [`Restoring::tables`]), before they are given.
    pub fn reserve(&mut self, table: usize, n: usize) {
        match self.tables.get(table) {
            Some((_, Some((i, _)))) => {
                if let Some((_, _, state)) = self.saved.rules.get_mut(*i) {
                    state.reserve(n);
                }
            }
            Some((_, None)) => self.saved.sessions.reserve(n),
            None => {}
        }
    }

    /// A saved row of table `table` (an index of [`Restoring::tables`]).
    pub fn row(&mut self, table: usize, key: &str, value: &[u8]) -> Result<(), SnapshotError> {
        let Some((name, rule)) = self.tables.get(table) else {
            return Err(SnapshotError::UnknownTable { index: table });
        };
        let restored = match rule {
            Some((i, part)) => match self.saved.rules.get_mut(*i) {
                Some((_, _, state)) => state.restore_row(*part, key, value),
                None => return Err(SnapshotError::UnknownTable { index: table }),
            },
            None => self.saved.sessions.restore_row(key, value),
        };
        restored.map_err(|source| SnapshotError::Row {
            table: name.clone(),
            key: key.to_owned(),
            source,
        })
    }

    /// The engine under `rules`. State of a rule is kept when a rule of
    /// the same id and kind exists; the state of a rule that is not in
    /// `rules` is parked for the removal grace (as a reload does), and a
    /// parked rule that is back gets its state.
    pub fn finish(self, rules: Arc<RuleSet>, config: EngineConfig) -> Engine {
        let from_rows = !self.tables.is_empty();
        let saved = self.saved;
        let mut states = saved.rules;
        if from_rows {
            states.iter_mut().for_each(|(_, _, s)| s.rows_restored());
        }
        let mut engine = Engine::new(rules, config);
        engine.parked = saved.parked;
        engine.clock = saved.clock;
        engine.next_sweep = saved.next_sweep;
        engine.late = saved.late;
        engine.evicted = saved.evicted;
        engine.sessions = saved.sessions;
        if from_rows {
            engine.sessions.restored();
        }
        let until = saved
            .clock
            .unwrap_or(0)
            .saturating_add(engine.config.removed_rule_grace_ms);
        for (id, kind, mut state) in states {
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
                    state.set_synced(from_rows);
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
        engine
    }
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
            rules: self.saved_rules(|s| s),
            sessions: &self.sessions,
            parked: &self.parked,
        };
        postcard::to_allocvec(&snap).map_err(SnapshotError::Encode)
    }

    /// Each rule's id, kind and what `saved` makes of its state.
    fn saved_rules<'a, T>(
        &'a self,
        saved: impl Fn(&'a RuleState) -> T,
    ) -> Vec<(&'a str, &'a str, T)> {
        let rules = self.rules.rules().iter().zip(&self.states);
        rules
            .map(|(r, s)| (&*r.id, r.kind.name(), saved(s)))
            .collect()
    }

    /// The engine clock recorded in a snapshot, if it can be read.
    pub fn snapshot_clock(bytes: &[u8]) -> Option<i64> {
        #[derive(Deserialize)]
        struct Head {
            version: u32,
            clock: Option<i64>,
        }
        let (head, _): (Head, _) = postcard::take_from_bytes(bytes).ok()?;
        (OLDEST_READ..=HEAD_VERSION)
            .contains(&head.version)
            .then_some(head.clock)?
    }

    /// Rebuilds an engine from a whole snapshot under `rules` (see
    /// [`Restoring::finish`]); the head of an incremental save is refused
    /// (its rows are read with [`Restoring`]).
    pub fn restore(
        rules: Arc<RuleSet>,
        config: EngineConfig,
        bytes: &[u8],
    ) -> Result<Engine, SnapshotError> {
        let restoring = Restoring::new(bytes)?;
        if !restoring.tables.is_empty() {
            return Err(SnapshotError::Incomplete);
        }
        Ok(restoring.finish(rules, config))
    }

    /// Saves incrementally: the head, and the rows changed since the last
    /// save (every row of a table not saved before): each rule's keys and
    /// short-lived log, the derived sessions. Parked rules are in the head,
    /// written whole each time.
    /// On an error every table is written whole at the next save (some
    /// changes may have been handed out already).
    pub fn save_changes(&mut self) -> Result<StateChanges, SnapshotError> {
        let saved = self.drain_changes();
        if saved.is_err() {
            self.unsync();
        }
        saved
    }

    /// Forgets which rows were saved: the next save writes every table
    /// whole (for changes handed out that never reached the store).
    pub fn unsync(&mut self) {
        self.states.iter_mut().for_each(|s| s.set_synced(false));
        self.sessions.unsync();
    }

    fn drain_changes(&mut self) -> Result<StateChanges, SnapshotError> {
        let mut tables = Vec::new();
        let rules = self.rules.rules().iter().zip(&mut self.states);
        for (rule, state) in rules {
            state
                .drain_changes(&rule.id, &mut tables)
                .map_err(SnapshotError::Encode)?;
        }
        let mut t = TableChanges::new(SESSIONS_TABLE.to_owned());
        self.sessions
            .drain_changes(&mut t)
            .map_err(SnapshotError::Encode)?;
        tables.push(t);
        let head = HeadRef {
            version: HEAD_VERSION,
            clock: self.clock,
            next_sweep: self.next_sweep,
            late: self.late,
            evicted: self.evicted,
            rules: self.saved_rules(RuleState::state_name),
            parked: &self.parked,
        };
        let head = postcard::to_allocvec(&head).map_err(SnapshotError::Encode)?;
        Ok(StateChanges { head, tables })
    }
}
