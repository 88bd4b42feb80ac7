//! State keys: the joined key of an event (tenant first, then the key
//! fields, `KEY_SEP` apart) built into a reused buffer, the per-rule key
//! maps, and the choice of the oldest keys to evict at the cap.

use std::collections::HashMap;

use super::KEY_SEP;
use super::condition::FieldRef;
use crate::alert::BY_SOURCE_IP;
use crate::event::{Event, FieldId, UNKNOWN_AGENT};

/// The hash maps of state keys. foldhash is a fast non-cryptographic
/// hasher with a per-process random seed (flooding resistance); iteration
/// order is never relied on (eviction sorts by age and key).
/// Keys of up to 24 bytes are held inline (no allocation, and compared
/// where the table stores them, without a pointer to follow).
pub type HashKeyMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;

/// A per-rule key map that knows which keys changed since its state was
/// last saved, so a save writes only those (incremental state, DESIGN §6).
///
/// A map is *synced* once [`KeyMap::drain_changes`] has handed out all of
/// it (or it was restored from saved rows): from then on every key changed
/// through `get_mut`, `get_or_default`, `insert`, `remove` or `retain` is
/// listed once (a flag in its slot) until the next drain. An unsynced map
/// (new, replaced, read from a whole snapshot) lists nothing and is handed
/// out whole at its next drain, so a daemon that never saves (`replay`)
/// keeps no list. The list is bounded:
/// grown past twice the keys (plus a floor), the map turns unsynced and is
/// written whole once more.
#[derive(Debug, Clone)]
pub struct KeyMap<V> {
    map: HashKeyMap<Slot<V>>,
    /// Keys changed since the last drain, each once while its slot is
    /// flagged; removed keys (possibly twice).
    changed: Vec<Key>,
    synced: bool,
}

#[derive(Debug, Clone)]
struct Slot<V> {
    value: V,
    /// Listed in `changed` since the last drain.
    dirty: bool,
}

/// Keys listed beyond twice the live ones before a map is written whole.
const CHANGED_FLOOR: usize = 4096;

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            map: HashKeyMap::default(),
            changed: Vec::new(),
            synced: false,
        }
    }
}

impl<V> KeyMap<V> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|s| &s.value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.map.iter().map(|(k, s)| (k, &s.value))
    }

    /// The value of `key`, to change (the key is listed as changed).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let slot = self.map.get_mut(key)?;
        if self.synced && !slot.dirty {
            slot.dirty = true;
            self.changed.push(key.into());
        }
        Some(&mut slot.value)
    }

    /// Sets `key`, returning its previous value.
    pub fn insert(&mut self, key: Key, value: V) -> Option<V> {
        if self.synced {
            self.listed(key.clone());
        }
        let slot = Slot {
            value,
            dirty: self.synced,
        };
        self.map.insert(key, slot).map(|s| s.value)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let (k, slot) = self.map.remove_entry(key)?;
        if self.synced {
            self.listed(k);
        }
        Some(slot.value)
    }

    /// Keeps the keys `keep` says to; the removed ones are listed. What
    /// `keep` changes in a kept value is not: it may drop only what the
    /// clock has passed (expiry is checked on access too, so saved rows
    /// that still hold it restore the same results).
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut V) -> bool) {
        if !self.synced {
            self.map.retain(|k, s| keep(k, &mut s.value));
            return;
        }
        let changed = &mut self.changed;
        self.map.retain(|k, s| {
            let kept = keep(k, &mut s.value);
            if !kept {
                changed.push(k.clone());
            }
            kept
        });
        self.bound_changes();
    }

    fn listed(&mut self, key: Key) {
        self.changed.push(key);
        self.bound_changes();
    }

    /// Past the bound the list goes and the map is written whole.
    fn bound_changes(&mut self) {
        if self.changed.len() > 2 * self.map.len() + CHANGED_FLOOR {
            self.unsync();
        }
    }

    /// Hands out all of the map at the next drain (its saved rows are to
    /// be replaced).
    pub fn unsync(&mut self) {
        self.synced = false;
        self.changed = Vec::new();
        self.map.values_mut().for_each(|s| s.dirty = false);
    }

    /// Whether the saved rows match the map up to the listed changes.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Room for `n` more keys.
    pub fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
    }

    /// Inserts a key read back from saved rows (the map is synced once
    /// they are all in: see [`KeyMap::restored`]).
    pub fn restore(&mut self, key: Key, value: V) {
        self.map.insert(
            key,
            Slot {
                value,
                dirty: false,
            },
        );
    }

    /// The map holds what its saved rows hold: changes are listed from now.
    pub fn restored(&mut self) {
        self.synced = true;
        self.changed.clear();
    }

    /// Hands out what changed since the last drain, or all of the map when
    /// it is not synced (then returns `true`: the saved rows are to be
    /// replaced): `row(key, Some(value))` for a changed key, `row(key,
    /// None)` for a removed one. Afterwards the map is synced.
    pub fn drain_changes<E>(
        &mut self,
        mut row: impl FnMut(&Key, Option<&V>) -> Result<(), E>,
    ) -> Result<bool, E> {
        if !self.synced {
            for (k, s) in &self.map {
                row(k, Some(&s.value))?;
            }
            self.synced = true;
            self.changed.clear();
            return Ok(true);
        }
        // A key removed more than once is listed (and removed) more than
        // once, which is harmless; the store sorts the rows.
        for k in std::mem::take(&mut self.changed) {
            match self.map.get_mut(k.as_str()) {
                Some(s) if s.dirty => {
                    s.dirty = false;
                    row(&k, Some(&s.value))?;
                }
                Some(_) => {}
                None => row(&k, None)?,
            }
        }
        Ok(false)
    }
}

impl<V: Default> KeyMap<V> {
    /// Makes `key` (absent) with the default value, listed as changed.
    pub fn insert_default(&mut self, key: &str) -> &mut V {
        let key = Key::from(key);
        if self.synced {
            self.listed(key.clone());
        }
        let dirty = self.synced;
        &mut self
            .map
            .entry(key)
            .or_insert_with(|| Slot {
                value: V::default(),
                dirty,
            })
            .value
    }
}

/// A state key: `tenant SEP v1 SEP v2 ...`.
pub type Key = compact_str::CompactString;

/// Writes `tenant SEP v1 SEP v2 ...` into `buf` (with an empty tenant for
/// a rule that is not tenant-scoped). A missing field reads
/// `unknown`, or with `require_all` makes the key (and the event) not count.
/// An auth failure that claims no identity is keyed by its `source_ip` in
/// place of `agent_id` when it has one (DESIGN §2b), marked so that the
/// alert names the field `source_ip`.
pub fn build_key(
    buf: &mut String,
    ev: &Event<'_>,
    fields: &[FieldRef],
    require_all: bool,
    tenant_scoped: bool,
) -> bool {
    buf.clear();
    if tenant_scoped {
        buf.push_str(&ev.tenant);
    }
    for field in fields {
        buf.push(KEY_SEP);
        if ev.unclaimed
            && *field == FieldRef::Known(FieldId::AgentId)
            && let Some(ip) = ev.source_ip.as_deref().filter(|ip| !ip.is_empty())
        {
            buf.push(BY_SOURCE_IP);
            buf.push_str(ip);
            continue;
        }
        let before = buf.len();
        if !field.key_text(ev, buf) || buf.len() == before {
            if require_all {
                return false;
            }
            buf.truncate(before);
            buf.push_str(UNKNOWN_AGENT);
        }
    }
    true
}

/// The `n` keys of `map` with the oldest activity (`age`), for eviction.
pub fn oldest<V>(map: &KeyMap<V>, n: usize, age: impl Fn(&V) -> i64) -> Vec<Key> {
    let mut all: Vec<(i64, &Key)> = map.iter().map(|(k, v)| (age(v), k)).collect();
    if n < all.len() {
        all.select_nth_unstable(n);
        all.truncate(n);
    }
    all.into_iter().map(|(_, k)| k.clone()).collect()
}

/// Saved as a map from key to value (the form of a plain map).
impl<V: serde::Serialize> serde::Serialize for KeyMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// Read back unsynced: a whole snapshot says nothing of saved rows.
impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for KeyMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyMap<V>, D::Error> {
        let plain = HashKeyMap::<V>::deserialize(d)?;
        let mut map = KeyMap::default();
        map.map.reserve(plain.len());
        for (k, v) in plain {
            map.restore(k, v);
        }
        Ok(map)
    }
}
