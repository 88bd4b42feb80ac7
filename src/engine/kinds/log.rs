//! A rule's short-lived events of every key in one log by time: the
//! `then` events a sequence keeps for `first` events that arrive late, the
//! checks a membership rule holds while their key has no set. Nearly every
//! such event is kept for the allowed lateness and almost none is ever
//! used, so keeping one is an append (an insert near the end when it is a
//! little late) and expiry pops the front, without a key of its own in the
//! rule's key map. A lookup looks only at the entries in its time range.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::super::keys::{Key, KeyMap};

/// At the cap, this fraction (1/N) of the entries goes at once.
const EVICT_FRACTION: usize = 16;

#[derive(Debug, Clone)]
struct Entry<T> {
    key: Key,
    ts: i64,
    /// `None` once taken.
    item: Option<T>,
}

/// Entries sorted by `ts`, ties in arrival order.
#[derive(Debug, Clone)]
pub struct TimeLog<T> {
    entries: VecDeque<Entry<T>>,
}

impl<T> Default for TimeLog<T> {
    fn default() -> Self {
        TimeLog {
            entries: VecDeque::new(),
        }
    }
}

impl<T> TimeLog<T> {
    /// Entries held (taken ones until they expire).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries with `ts < cutoff`.
    pub fn expire_before(&mut self, cutoff: i64) {
        while self.entries.front().is_some_and(|e| e.ts < cutoff) {
            self.entries.pop_front();
        }
    }

    /// Adds an entry in time order (after those of its `ts`); at `cap` the
    /// oldest sixteenth goes first, and how many went is returned.
    pub fn push(&mut self, key: &str, ts: i64, item: T, cap: usize) -> usize {
        let mut evicted = 0;
        if self.entries.len() >= cap.max(1) {
            evicted = (cap / EVICT_FRACTION).clamp(1, self.entries.len());
            self.entries.drain(..evicted);
        }
        // In order: at the end; late: after the entries of its `ts`, found
        // by a search (never a walk back over the log).
        let in_order = self.entries.back().is_none_or(|e| e.ts <= ts);
        let at = if in_order {
            self.entries.len()
        } else {
            self.entries.partition_point(|e| e.ts <= ts)
        };
        let entry = Entry {
            key: key.into(),
            ts,
            item: Some(item),
        };
        self.entries.insert(at, entry);
        evicted
    }

    /// The first entry of `key` with `from <= ts <= to`.
    pub fn first(&self, key: &str, from: i64, to: i64) -> Option<&T> {
        let at = self.entries.partition_point(|e| e.ts < from);
        self.entries
            .range(at..)
            .take_while(|e| e.ts <= to)
            .filter(|e| *e.key == *key)
            .find_map(|e| e.item.as_ref())
    }

    /// Takes every entry of `key` with `ts >= from`, in time order.
    pub fn take_from(&mut self, key: &str, from: i64) -> Vec<T> {
        let at = self.entries.partition_point(|e| e.ts < from);
        self.entries
            .range_mut(at..)
            .filter(|e| *e.key == *key)
            .filter_map(|e| e.item.take())
            .collect()
    }

    /// The entries not taken, in time order, with their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries
            .iter()
            .filter_map(|e| e.item.as_ref().map(|item| (&*e.key, item)))
    }

    /// A log of `entries` (`ts`, key, item) in any order.
    pub fn from_entries(mut entries: Vec<(i64, Key, T)>) -> TimeLog<T> {
        entries.sort_by_key(|(ts, _, _)| *ts);
        TimeLog {
            entries: entries
                .into_iter()
                .map(|(ts, key, item)| Entry {
                    key,
                    ts,
                    item: Some(item),
                })
                .collect(),
        }
    }
}

/// Writes a rule's keys and its log as one map from each key to its saved
/// form, `saved(its state if it has a key, its log entries)`: the form
/// earlier builds kept per key. Costs one pass over the keys and a map
/// the size of the log.
pub fn serialize_with_log<'a, S, V, T, R>(
    s: S,
    keys: &'a KeyMap<V>,
    log: &'a TimeLog<T>,
    saved: impl Fn(Option<&'a V>, Vec<&'a T>) -> R,
) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    R: Serialize,
{
    let mut groups: HashMap<&str, Vec<&'a T>, foldhash::fast::RandomState> = HashMap::default();
    for (k, item) in log.iter() {
        groups.entry(k).or_default().push(item);
    }
    let only_logged = groups.keys().filter(|k| !keys.contains_key(k)).count();
    let mut map = s.serialize_map(Some(keys.len() + only_logged))?;
    for (k, v) in keys.iter() {
        let items = groups.remove(k.as_str()).unwrap_or_default();
        map.serialize_entry(k.as_str(), &saved(Some(v), items))?;
    }
    for (k, items) in groups {
        map.serialize_entry(k, &saved(None, items))?;
    }
    map.end()
}
