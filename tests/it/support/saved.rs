//! What a store holds of an engine saved incrementally, modelled in
//! memory from the store's contract (a save replaces the head, drops the
//! tables it no longer lists, empties a table it writes whole, then sets
//! and removes rows), to check the engine's side of incremental saves
//! over many random streams without a database file per case.

use std::collections::BTreeMap;
use std::sync::Arc;

use mcp_alertd::alert::{Alert, render};
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, Restoring, RuleSet, StateChanges};
use mcp_alertd::replay::Replayer;

#[derive(Debug, Default)]
pub struct SavedRows {
    head: Vec<u8>,
    tables: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Saves that wrote a table whole (besides a table's first).
    pub resets: usize,
}

impl SavedRows {
    /// Applies one save.
    pub fn apply(&mut self, changes: StateChanges) {
        self.head = changes.head;
        self.tables
            .retain(|name, _| changes.tables.iter().any(|t| t.name == *name));
        for t in &changes.tables {
            let rows = self.tables.entry(t.name.clone()).or_default();
            if t.reset {
                if !rows.is_empty() {
                    self.resets += 1;
                }
                rows.clear();
            }
            for (k, v) in t.rows() {
                match v {
                    Some(v) => rows.insert(k.to_owned(), v.to_vec()),
                    None => rows.remove(k),
                };
            }
        }
    }

    /// Saves the engine's changes.
    pub fn save(&mut self, engine: &mut Engine) {
        self.apply(engine.save_changes().unwrap());
    }

    /// Rows held in all.
    pub fn rows(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// The engine read back from the head and rows.
    pub fn restore(&self, rules: Arc<RuleSet>, config: EngineConfig) -> Engine {
        let mut restoring = Restoring::new(&self.head).unwrap();
        for (i, name) in restoring.tables().iter().enumerate() {
            for (k, v) in self.tables.get(name).into_iter().flatten() {
                restoring.row(i, k, v).unwrap();
            }
        }
        restoring.finish(rules, config)
    }
}

/// Replays `lines` saving the engine's changes at a third of `cut`,
/// restarting from the saved rows at half of it (the restored engine keeps
/// saving changes only), saving again at two thirds and restarting once
/// more at `cut`; returns the alerts.
pub fn run_with_saves(
    r: &Arc<RuleSet>,
    cfg: EngineConfig,
    lateness_ms: i64,
    lines: &[String],
    cut: usize,
) -> Vec<Alert> {
    let decoder = Decoder::default();
    let mut out = Vec::new();
    let mut saved = SavedRows::default();
    let mut replayer = Replayer::new(Engine::new(r.clone(), cfg), lateness_ms);
    let cut = cut.min(lines.len());
    let (save1, restart1, save2) = (cut / 3, cut / 2, 2 * cut / 3);
    for (i, l) in lines.iter().enumerate() {
        if i == save1 || i == save2 {
            saved.save(replayer.engine_mut());
        }
        if i == restart1 || i == cut {
            saved.save(replayer.engine_mut());
            replayer = Replayer::new(saved.restore(r.clone(), cfg), lateness_ms);
        }
        replayer.on_event(&decoder.decode(l.as_bytes()).unwrap(), None, &mut out);
    }
    replayer.finish(&mut out);
    out.into_iter().map(|d| render(d, None)).collect()
}
