//! Incremental saves (DESIGN §6): what changed in a keyed table of the
//! engine's state since its last save, as rows for the store, and the
//! reading back of saved rows.

use std::ops::Range;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::{Key, KeyMap};

/// The changes of one keyed table (a rule's keys, or the derived sessions)
/// since its last save.
#[derive(Debug, Default)]
pub struct TableChanges {
    /// `<rule id>/<kind of state>`, or `sessions`.
    pub name: String,
    /// The saved rows are to be replaced by these: the table was written
    /// whole (new, replaced, or its change list outgrew it).
    pub reset: bool,
    /// Each changed key with its value's bytes in `values`, or `None` when
    /// it was removed.
    rows: Vec<(Key, Option<Range<usize>>)>,
    values: Vec<u8>,
}

impl TableChanges {
    pub fn new(name: String) -> TableChanges {
        TableChanges {
            name,
            ..TableChanges::default()
        }
    }

    /// The rows: (key, value bytes, or `None` for a removed key).
    pub fn rows(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.rows.iter().map(|(k, v)| {
            let value = v.as_ref().and_then(|r| self.values.get(r.clone()));
            (k.as_str(), value)
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes of the values written.
    pub fn value_bytes(&self) -> usize {
        self.values.len()
    }

    /// A row set to `value` (postcard).
    pub fn set(&mut self, key: Key, value: &impl Serialize) -> Result<(), postcard::Error> {
        let start = self.values.len();
        self.values = postcard::to_extend(value, std::mem::take(&mut self.values))?;
        self.rows.push((key, Some(start..self.values.len())));
        Ok(())
    }

    /// A row removed.
    pub fn remove(&mut self, key: Key) {
        self.rows.push((key, None));
    }

    /// Drains `map`'s changes into these rows.
    pub fn drain<V: Serialize>(&mut self, map: &mut KeyMap<V>) -> Result<(), postcard::Error> {
        self.reset = map.drain_changes(|k, v| match v {
            Some(v) => self.set(k.clone(), v),
            None => {
                self.remove(k.clone());
                Ok(())
            }
        })?;
        Ok(())
    }
}

/// Puts a saved row back into `map`.
pub fn restore_row<V: DeserializeOwned>(
    map: &mut KeyMap<V>,
    key: &str,
    value: &[u8],
) -> Result<(), postcard::Error> {
    map.restore(key.into(), postcard::from_bytes(value)?);
    Ok(())
}

/// The table name of a rule's keys.
pub fn table_name(rule: &str, state: &str) -> String {
    format!("{rule}/{state}")
}

/// The table of a rule's short-lived log (a sequence's kept `then`
/// events, a membership rule's held checks).
pub fn log_table_name(rule: &str, state: &str) -> String {
    format!("{rule}/{state}.log")
}

/// The table of the derived sessions.
pub const SESSIONS_TABLE: &str = "sessions";
