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

use super::super::changes::TableChanges;
use super::super::keys::{Key, KeyMap};

/// At the cap, this fraction (1/N) of the entries goes at once.
const EVICT_FRACTION: usize = 16;

#[derive(Debug, Clone)]
struct Entry<T> {
    key: Key,
    ts: i64,
    /// Order of arrival: the entry's row in an incremental save.
    seq: u64,
    /// `None` once taken.
    item: Option<T>,
}

/// Entries sorted by `ts`, ties in arrival order.
///
/// Saved incrementally like a key map (`KeyMap`): once synced, a save
/// writes the entries added since the last one and removes the saved ones
/// that went (expired, taken, evicted); past twice the entries (plus a
/// floor) of removals listed, it is written whole at the next save.
#[derive(Debug, Clone)]
pub struct TimeLog<T> {
    entries: VecDeque<Entry<T>>,
    next_seq: u64,
    /// Entries below this `seq` are saved (when synced).
    saved_upto: u64,
    /// Saved entries that went since the last save.
    gone: Vec<u64>,
    synced: bool,
}

impl<T> Default for TimeLog<T> {
    fn default() -> Self {
        TimeLog {
            entries: VecDeque::new(),
            next_seq: 0,
            saved_upto: 0,
            gone: Vec::new(),
            synced: false,
        }
    }
}

/// Removals listed beyond twice the entries before a log is written whole.
const GONE_FLOOR: usize = 4096;

impl<T> TimeLog<T> {
    /// Entries held (taken ones until they expire).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// A saved entry went (not listed twice: a taken one is listed when
    /// taken, not again when it expires).
    fn went(&mut self, seq: u64, had_item: bool) {
        if self.synced && had_item && seq < self.saved_upto {
            self.gone.push(seq);
            if self.gone.len() > 2 * self.entries.len() + GONE_FLOOR {
                self.unsync();
            }
        }
    }

    /// Drops the entries with `ts < cutoff`.
    pub fn expire_before(&mut self, cutoff: i64) {
        while self.entries.front().is_some_and(|e| e.ts < cutoff) {
            if let Some(e) = self.entries.pop_front() {
                self.went(e.seq, e.item.is_some());
            }
        }
    }

    /// Adds an entry in time order (after those of its `ts`); at `cap` the
    /// oldest sixteenth goes first, and how many went is returned.
    pub fn push(&mut self, key: &str, ts: i64, item: T, cap: usize) -> usize {
        let mut evicted = 0;
        if self.entries.len() >= cap.max(1) {
            evicted = (cap / EVICT_FRACTION).clamp(1, self.entries.len());
            let gone: Vec<(u64, bool)> = self
                .entries
                .drain(..evicted)
                .map(|e| (e.seq, e.item.is_some()))
                .collect();
            gone.into_iter().for_each(|(seq, had)| self.went(seq, had));
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
            seq: self.next_seq,
            item: Some(item),
        };
        self.next_seq += 1;
        self.entries.insert(at, entry);
        evicted
    }

    /// Written whole at the next save.
    pub fn unsync(&mut self) {
        self.synced = false;
        self.gone = Vec::new();
    }

    /// Restored from saved rows: synced, entries put in time order (ties
    /// in arrival order).
    pub fn restored(&mut self) {
        self.entries
            .make_contiguous()
            .sort_by_key(|e| (e.ts, e.seq));
        self.next_seq = self.entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        self.saved_upto = self.next_seq;
        self.gone.clear();
        self.synced = true;
    }

    /// An entry read back from a saved row (see [`TimeLog::restored`]).
    pub fn restore_row(&mut self, seq: &str, value: &[u8]) -> Result<(), postcard::Error>
    where
        T: serde::de::DeserializeOwned,
    {
        let seq =
            u64::from_str_radix(seq, 16).map_err(|_| postcard::Error::DeserializeBadEncoding)?;
        let (ts, key, item): (i64, Key, T) = postcard::from_bytes(value)?;
        self.entries.push_back(Entry {
            key,
            ts,
            seq,
            item: Some(item),
        });
        Ok(())
    }

    /// Drains the entries added and gone since the last save into `t` (all
    /// of them, `t.reset`, when not synced). Rows are keyed by `seq` in
    /// fixed-width hex, so a table lists them in arrival order.
    pub fn drain_changes(&mut self, t: &mut TableChanges) -> Result<(), postcard::Error>
    where
        T: Serialize,
    {
        let from = if self.synced { self.saved_upto } else { 0 };
        t.reset = !self.synced;
        for e in &self.entries {
            if let Some(item) = e.item.as_ref().filter(|_| e.seq >= from) {
                t.set(format!("{:016x}", e.seq).into(), &(e.ts, &e.key, item))?;
            }
        }
        // Each gone entry is listed once (see `went`); the store sorts rows.
        for seq in std::mem::take(&mut self.gone) {
            t.remove(format!("{seq:016x}").into());
        }
        self.saved_upto = self.next_seq;
        self.synced = true;
        Ok(())
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
        let mut taken = Vec::new();
        let mut seqs = Vec::new();
        for e in self.entries.range_mut(at..).filter(|e| *e.key == *key) {
            if let Some(item) = e.item.take() {
                taken.push(item);
                seqs.push(e.seq);
            }
        }
        seqs.into_iter().for_each(|seq| self.went(seq, true));
        taken
    }

    /// The entries not taken, in time order, with their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries
            .iter()
            .filter_map(|e| e.item.as_ref().map(|item| (&*e.key, item)))
    }

    /// A log of `entries` (`ts`, key, item) in any order (unsynced).
    pub fn from_entries(mut entries: Vec<(i64, Key, T)>) -> TimeLog<T> {
        entries.sort_by_key(|(ts, _, _)| *ts);
        let entries: VecDeque<Entry<T>> = entries
            .into_iter()
            .zip(0..)
            .map(|((ts, key, item), seq)| Entry {
                key,
                ts,
                seq,
                item: Some(item),
            })
            .collect();
        TimeLog {
            next_seq: entries.len() as u64,
            entries,
            ..TimeLog::default()
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
