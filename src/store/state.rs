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

use serde::{Deserialize, Serialize};

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

/// Why the saved rows of a unit could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Store(#[from] super::StoreError),
    #[error(transparent)]
    Row(#[from] crate::engine::SnapshotError),
}

impl super::Store {
    /// Gives `restoring` the saved rows of every table its head lists.
    pub fn read_rows(
        &self,
        unit: &str,
        restoring: &mut crate::engine::Restoring,
    ) -> Result<(), RowsError> {
        for (i, table) in restoring.tables().iter().enumerate() {
            let rows = self.state_table_len(unit, table)?;
            restoring.reserve(i, usize::try_from(rows).unwrap_or(0));
            self.for_each_state_row(unit, table, |key, value| {
                restoring.row(i, key, value).map_err(RowsError::from)
            })?;
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
