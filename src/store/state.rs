//! Durable engine state (DESIGN §6): what one *unit* of state saves in the
//! store, and how it is versioned.
//!
//! A unit is an engine with its own clock and the source positions its
//! state covers: `main` (the syslog and file sources, with the files'
//! positions) and one unit per Kafka partition (with the next offset to
//! read), so a partition's state can be saved and released when the
//! partition moves to another daemon. The router's repeat-suppression state
//! is the unit `router`. Units are written together with the alerts they
//! raised, in one store transaction.
//!
//! The self-monitoring's unit `monitor` lists the sources that delivered
//! records, so a source silent since before a restart is still reported.
//!
//! Format: postcard of `(STATE_VERSION, Saved)`. The engine's own bytes
//! carry the engine snapshot version. Version 2 (no `monitor` unit) is read
//! as it is; version 1 (file positions without a fingerprint) is read and
//! upgraded; a unit of any other version is refused with a message that
//! names it; it is never silently dropped.

use std::collections::BTreeMap;

use std::sync::Arc;

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::UnitState;
use crate::engine::{Engine, EngineConfig, Restoring, RuleSet, SnapshotError};
use crate::source::file::SavedPosition;
pub use crate::source::{DurableOffsets, KafkaPartition};

/// The unit format this build reads and writes.
pub const STATE_VERSION: u32 = 3;

/// The unit of the syslog and file sources.
pub const MAIN_UNIT: &str = "main";
/// The unit of the router's repeat-suppression state.
pub const ROUTER_UNIT: &str = "router";
/// The unit of the self-monitoring: the sources that delivered records.
pub const MONITOR_UNIT: &str = "monitor";

/// The unit name of a Kafka partition consumed by a source.
pub fn kafka_unit(source: &str, topic: &str, partition: i32) -> String {
    format!("kafka/{source}/{topic}/{partition}")
}

/// The saved state of an engine unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineUnit {
    /// File sources (by source name): where reading resumes.
    pub files: BTreeMap<String, SavedPosition>,
    /// A Kafka partition: the next offset to read (every record before it
    /// is in `engine`, and its alerts are in the outbox).
    pub next_offset: Option<i64>,
    /// The engine snapshot (`Engine::snapshot`).
    pub engine: Vec<u8>,
}

/// What a unit saves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Saved {
    Engine(EngineUnit),
    /// Repeat suppression: (route index, alert key) → last passed (wall ms).
    Router(Vec<(u32, String, i64)>),
    /// The sources (by name) that delivered records: each is expected to
    /// deliver within its `silent_after` of the next start.
    Sources(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("saved state `{unit}` is corrupt or truncated: {reason}")]
    Corrupt { unit: String, reason: String },
    #[error(
        "saved state `{unit}` was written in format version {found}; this build reads version {STATE_VERSION}. \
         Start the build that wrote it, or drop the saved state with `mcp-alertd state reset` \
         (pending timers and windows are then lost)"
    )]
    Version { unit: String, found: u32 },
    #[error("cannot encode the state of `{unit}`: {reason}")]
    Encode { unit: String, reason: String },
    #[error("cannot save the engine state of `{unit}`: {source}")]
    Engine {
        unit: String,
        source: crate::engine::SnapshotError,
    },
}

pub fn encode(unit: &str, saved: &Saved) -> Result<Vec<u8>, CheckpointError> {
    postcard::to_allocvec(&(STATE_VERSION, saved)).map_err(|e| CheckpointError::Encode {
        unit: unit.to_owned(),
        reason: e.to_string(),
    })
}

pub fn decode(unit: &str, bytes: &[u8]) -> Result<Saved, CheckpointError> {
    let corrupt = |e: postcard::Error| CheckpointError::Corrupt {
        unit: unit.to_owned(),
        reason: e.to_string(),
    };
    let (version, _): (u32, &[u8]) = postcard::take_from_bytes(bytes).map_err(corrupt)?;
    if version == 1 {
        let (_, saved): (u32, v1::Saved) = postcard::from_bytes(bytes).map_err(corrupt)?;
        return Ok(saved.into());
    }
    // Version 2 is version 3 without the `Sources` variant.
    if version != STATE_VERSION && version != 2 {
        return Err(CheckpointError::Version {
            unit: unit.to_owned(),
            found: version,
        });
    }
    let (_, saved): (u32, Saved) = postcard::from_bytes(bytes).map_err(corrupt)?;
    Ok(saved)
}

/// Version 1 of a unit: file positions had no fingerprint.
mod v1 {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Position {
        pub dev: u64,
        pub ino: u64,
        pub offset: u64,
    }

    #[derive(Deserialize)]
    pub struct EngineUnit {
        pub files: BTreeMap<String, Position>,
        pub next_offset: Option<i64>,
        pub engine: Vec<u8>,
    }

    #[derive(Deserialize)]
    pub enum Saved {
        Engine(EngineUnit),
        Router(Vec<(u32, String, i64)>),
    }
}

impl From<v1::Saved> for Saved {
    fn from(old: v1::Saved) -> Saved {
        match old {
            v1::Saved::Engine(u) => Saved::Engine(EngineUnit {
                files: u
                    .files
                    .into_iter()
                    .map(|(name, p)| {
                        let position = SavedPosition {
                            dev: p.dev,
                            ino: p.ino,
                            offset: p.offset,
                            head: None,
                        };
                        (name, position)
                    })
                    .collect(),
                next_offset: u.next_offset,
                engine: u.engine,
            }),
            v1::Saved::Router(r) => Saved::Router(r),
        }
    }
}

/// An engine unit's state for the store: its head (with the files'
/// positions or the partition's next offset) in the unit's `state` row,
/// and the rows changed since the last save beside it. On an error the
/// engine writes every table whole at its next save.
pub fn engine_state(
    unit: String,
    engine: &mut Engine,
    files: BTreeMap<String, SavedPosition>,
    next_offset: Option<i64>,
) -> Result<UnitState, CheckpointError> {
    let changes = engine
        .save_changes()
        .map_err(|source| CheckpointError::Engine {
            unit: unit.clone(),
            source,
        })?;
    let saved = Saved::Engine(EngineUnit {
        files,
        next_offset,
        engine: changes.head,
    });
    match encode(&unit, &saved) {
        Ok(bytes) => Ok(UnitState {
            bytes,
            unit,
            tables: Some(changes.tables),
        }),
        Err(e) => {
            engine.unsync();
            Err(e)
        }
    }
}

/// Why a unit's engine could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Store(#[from] super::StoreError),
    #[error(transparent)]
    Row(#[from] SnapshotError),
}

impl super::Store {
    /// The engine of `unit` under `rules`, read back from `saved` (its
    /// `EngineUnit::engine`: a head, or a whole snapshot of an older
    /// build) and the rows of every table the head lists.
    pub fn restore_engine(
        &self,
        unit: &str,
        saved: &[u8],
        rules: Arc<RuleSet>,
        config: EngineConfig,
    ) -> Result<Engine, RowsError> {
        let mut restoring = Restoring::new(saved)?;
        self.read_rows(unit, &mut restoring)?;
        Ok(restoring.finish(rules, config))
    }

    /// Gives `restoring` the saved rows of every table it lists, in one
    /// read transaction.
    fn read_rows(&self, unit: &str, restoring: &mut Restoring) -> Result<(), RowsError> {
        let tables = restoring.tables();
        if tables.is_empty() {
            return Ok(());
        }
        let tx = self.begin_read()?;
        for (i, table) in tables.iter().enumerate() {
            let name = super::rows_table(unit, table);
            let t = match tx.open_table(super::rows_def(&name)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(self.err(e).into()),
            };
            let rows = t.len().map_err(|e| self.err(e))?;
            restoring.reserve(i, usize::try_from(rows).unwrap_or(0));
            for row in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                restoring.row(i, k.value(), v.value())?;
            }
        }
        Ok(())
    }

    /// The next offset a saved Kafka partition unit covers up to, if the
    /// store has the unit and can read it.
    pub fn saved_next_offset(&self, unit: &str) -> Option<i64> {
        let bytes = self.state(unit).ok()??;
        match decode(unit, &bytes).ok()? {
            Saved::Engine(e) => e.next_offset,
            Saved::Router(_) | Saved::Sources(_) => None,
        }
    }
}
