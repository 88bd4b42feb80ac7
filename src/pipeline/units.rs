//! Units of engine state: an engine with its clock (the syslog and file
//! sources share `main`; each Kafka partition has its own, so its state can
//! move between daemons), restored from the store at start or when a
//! partition is assigned, and saved with the alerts raised before them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use super::{EngineSettings, Pipeline, PipelineError};
use crate::engine::clock::LiveClock;
use crate::engine::{Engine, EngineConfig, RuleSet};
use crate::outbox::writer::{OutboxMsg, StateWrite};
use crate::source::KafkaPartition;
use crate::source::file::SavedPosition;
use crate::store::state::{
    self as checkpoint, EngineUnit, MAIN_UNIT, MONITOR_UNIT, ROUTER_UNIT, RowsError, Saved,
    engine_state,
};
use crate::store::{Store, UnitState};

/// Saved state found in the store at start, validated.
pub struct Restored {
    pub(super) main: Option<(Engine, EngineUnit)>,
    pub(super) router: Vec<(u32, String, i64)>,
    /// The sources that delivered records before (self-monitoring).
    pub(super) delivering: Vec<String>,
}

impl Restored {
    /// Where each file source resumes (by source name).
    pub fn file_positions(&self) -> BTreeMap<String, SavedPosition> {
        self.main
            .as_ref()
            .map(|(_, u)| u.files.clone())
            .unwrap_or_default()
    }

    /// The restored clock of the `main` unit (`None` when nothing was
    /// saved; `Some(None)` for a unit saved before any event).
    pub fn main_clock(&self) -> Option<Option<i64>> {
        self.main.as_ref().map(|(engine, _)| engine.clock())
    }
}

/// Reads and checks every saved unit: one this build cannot read stops the
/// start with a message naming it (state is never silently dropped).
pub fn restore(
    store: &Store,
    rules: &Arc<RuleSet>,
    settings: &EngineSettings,
) -> Result<Restored, PipelineError> {
    let mut restored = Restored {
        main: None,
        router: Vec::new(),
        delivering: Vec::new(),
    };
    let states = store.states().map_err(PipelineError::Store)?;
    for (unit, bytes) in states {
        let saved = checkpoint::decode(&unit, &bytes)?;
        match saved {
            Saved::Router(rows) if unit == ROUTER_UNIT => restored.router = rows,
            Saved::Sources(names) if unit == MONITOR_UNIT => restored.delivering = names,
            Saved::Engine(e) => {
                let engine = restore_engine(store, &unit, rules, settings, &e.engine)?;
                if unit == MAIN_UNIT {
                    restored.main = Some((engine, e));
                }
            }
            Saved::Router(_) | Saved::Sources(_) => return Err(PipelineError::Corrupt(unit)),
        }
    }
    Ok(restored)
}

/// A unit's engine read back: its head (or whole snapshot) from the
/// `state` row, and the rows of its tables.
fn restore_engine(
    store: &Store,
    unit: &str,
    rules: &Arc<RuleSet>,
    settings: &EngineSettings,
    saved: &[u8],
) -> Result<Engine, PipelineError> {
    store
        .restore_engine(unit, saved, rules.clone(), engine_config(settings))
        .map_err(|e| match e {
            RowsError::Store(e) => PipelineError::Store(e),
            RowsError::Row(source) => PipelineError::Restore {
                unit: unit.to_owned(),
                source,
            },
        })
}

pub(super) fn engine_config(s: &EngineSettings) -> EngineConfig {
    EngineConfig {
        max_keys_per_rule: s.max_keys_per_rule,
        lateness_ms: s.allowed_lateness_ms,
        removed_rule_grace_ms: s.removed_rule_grace_ms,
    }
}

/// An engine with its clock: the syslog and file sources share one; each
/// Kafka partition has its own, so its state can move between daemons.
pub(super) struct Unit {
    pub(super) engine: Engine,
    pub(super) clock: LiveClock,
    /// Changed since it was last saved.
    pub(super) dirty: bool,
    pub(super) late_reported: u64,
    pub(super) evicted_reported: u64,
    /// Wall ms of the last record that reached it (self-monitoring).
    pub(super) last_record_ms: Option<i64>,
}

impl Unit {
    pub(super) fn new(engine: Engine, s: &EngineSettings, now: i64) -> Unit {
        let mut clock = LiveClock::new(s.allowed_lateness_ms, s.idle_after.as_millis() as i64)
            .with_max_past_skew(s.max_past_skew_ms);
        if let Some(c) = engine.clock() {
            clock.resume(c, now);
        }
        Unit {
            late_reported: engine.late_events(),
            evicted_reported: engine.evicted_keys(),
            engine,
            clock,
            dirty: false,
            last_record_ms: None,
        }
    }
}

/// A Kafka partition's unit and how far it has read.
pub(super) struct KafkaUnit {
    pub(super) unit: Unit,
    /// The offset after the last record applied.
    pub(super) next_offset: Option<i64>,
}

impl Pipeline {
    /// A Kafka partition's unit: its saved state when the store has it,
    /// else a fresh engine (the source then decides where to start).
    pub(super) fn load_kafka_unit(&self, key: &KafkaPartition) -> KafkaUnit {
        let name = checkpoint::kafka_unit(&self.names[key.0], &key.1, key.2);
        let now = self.now_mono();
        let fresh = || KafkaUnit {
            unit: Unit::new(
                Engine::new(self.rules.clone(), engine_config(&self.settings)),
                &self.settings,
                now,
            ),
            next_offset: None,
        };
        let saved = match self.store.state(&name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return fresh(),
            Err(e) => {
                tracing::error!(unit = %name, "cannot read saved state, starting afresh: {e}");
                return fresh();
            }
        };
        let restored = checkpoint::decode(&name, &saved)
            .map_err(PipelineError::from)
            .and_then(|saved| match saved {
                Saved::Engine(e) => {
                    restore_engine(&self.store, &name, &self.rules, &self.settings, &e.engine)
                        .map(|engine| (engine, e.next_offset))
                }
                Saved::Router(_) | Saved::Sources(_) => Err(PipelineError::Corrupt(name.clone())),
            });
        match restored {
            Ok((engine, next_offset)) => {
                tracing::info!(unit = %name, next_offset, "restored partition state");
                KafkaUnit {
                    unit: Unit::new(engine, &self.settings, now),
                    next_offset,
                }
            }
            Err(e) => {
                tracing::error!(unit = %name, "saved state unusable, starting afresh: {e:#}");
                fresh()
            }
        }
    }

    pub(super) fn save_kafka_unit(
        &self,
        key: &KafkaPartition,
        ku: &mut KafkaUnit,
        states: &mut Vec<UnitState>,
        offsets: &mut Vec<(KafkaPartition, i64)>,
    ) -> Result<(), PipelineError> {
        if !ku.unit.dirty {
            return Ok(());
        }
        let name = checkpoint::kafka_unit(&self.names[key.0], &key.1, key.2);
        let state = engine_state(name, &mut ku.unit.engine, BTreeMap::new(), ku.next_offset)?;
        states.push(state);
        if let Some(next) = ku.next_offset {
            offsets.push((key.clone(), next));
        }
        ku.unit.dirty = false;
        Ok(())
    }

    /// Saves the state of every unit that changed (all with `all`) in
    /// the store, after the alerts raised so far, in one transaction.
    pub(super) fn checkpoint(
        &mut self,
        all: bool,
        done: Option<SyncSender<()>>,
    ) -> Result<(), PipelineError> {
        self.emit()?;
        let saved = self.save_units(all, done);
        if saved.is_err() {
            // Changes handed out by the units saved before the error never
            // reach the store: each engine writes its tables whole next.
            self.main.engine.unsync();
            self.kafka.values_mut().for_each(|k| k.unit.engine.unsync());
        }
        saved
    }

    fn save_units(&mut self, all: bool, done: Option<SyncSender<()>>) -> Result<(), PipelineError> {
        self.last_checkpoint = Instant::now();
        let started = Instant::now();
        let mut states = Vec::new();
        let mut offsets = Vec::new();
        if all || self.main.dirty {
            let files = self.positions.clone();
            let main = engine_state(MAIN_UNIT.to_owned(), &mut self.main.engine, files, None)?;
            states.push(main);
            self.main.dirty = false;
        }
        let mut kafka = std::mem::take(&mut self.kafka);
        for (key, ku) in &mut kafka {
            ku.unit.dirty |= all;
            let saved = self.save_kafka_unit(key, ku, &mut states, &mut offsets);
            if let Err(e) = saved {
                self.kafka = kafka;
                return Err(e);
            }
        }
        self.kafka = kafka;
        let router = checkpoint::encode(ROUTER_UNIT, &Saved::Router(self.routes.repeat_state()))?;
        if all || router != self.saved_router {
            self.saved_router = router.clone();
            states.push(UnitState::whole(ROUTER_UNIT, router));
        }
        if self.monitor.take_delivering_changed() || all {
            let saved = Saved::Sources(self.monitor.delivering());
            let bytes = checkpoint::encode(MONITOR_UNIT, &saved)?;
            states.push(UnitState::whole(MONITOR_UNIT, bytes));
        }
        if states.is_empty() && done.is_none() {
            // Nothing changed: no transaction (and no fsync) while idle.
            return Ok(());
        }
        let bytes: usize = states.iter().map(UnitState::size).sum();
        self.metrics.snapshot_bytes.set(bytes as i64);
        self.metrics
            .snapshot_seconds
            .set(started.elapsed().as_secs_f64());
        Ok(self.outbox.send(OutboxMsg::State(StateWrite {
            states,
            offsets,
            done,
        }))?)
    }
}
