//! State keys: the joined key of an event (tenant first, then the key
//! fields, `KEY_SEP` apart) built into a reused buffer, the per-rule key
//! maps, and the choice of the oldest keys to evict at the cap.

use std::collections::HashMap;

use super::KEY_SEP;
use super::condition::FieldRef;
use crate::alert::BY_SOURCE_IP;
use crate::event::{Event, FieldId, UNKNOWN_AGENT};

/// Per-rule key maps. foldhash is a fast non-cryptographic hasher with a
/// per-process random seed (flooding resistance); iteration order is never
/// relied on (eviction sorts by age and key).
/// Keys of up to 24 bytes are held inline (no allocation, and compared
/// where the table stores them, without a pointer to follow).
pub type KeyMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;

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
