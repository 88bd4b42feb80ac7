//! Derived sessions (DESIGN §2b): for formats with no session id, each
//! (tenant, agent) has a current session that starts at an event whose
//! predecessor is more than the source's idle time earlier, or at a
//! session-start event, and ends at a session-end event. Its id is
//! `<agent_id>@<start ts, RFC 3339 UTC with milliseconds>`, so a replay of
//! the same input derives the same ids. Part of the engine's state: saved
//! in its snapshot, bounded by the key cap, swept once idle.

use serde::{Deserialize, Serialize};

use super::KEY_SEP;
use super::changes::{TableChanges, restore_row};
use super::keys::{KeyMap, oldest};
use crate::event::{Event, EventKind};

/// The current derived session of one (tenant, agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Current {
    start: i64,
    last: i64,
    idle_ms: i64,
    /// The session id, made once (not saved: it follows from the key and
    /// `start`).
    #[serde(skip)]
    id: String,
}

/// Every (tenant, agent)'s current derived session.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    current: KeyMap<Current>,
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// The derived session of `ev`'s agent when `ev` has no session id
    /// (`None`: it has one, or claims no identity, and gets none). At `cap`
    /// sessions, the longest idle are dropped first (returned as the
    /// number evicted).
    pub fn assign(
        &mut self,
        key: &mut String,
        ev: &Event<'_>,
        idle_ms: i64,
        cap: usize,
    ) -> (Option<String>, usize) {
        if ev.session_id.as_deref().is_some_and(|s| !s.is_empty()) || ev.unclaimed {
            return (None, 0);
        }
        let Some(agent) = ev.agent_id.as_deref().filter(|a| !a.is_empty()) else {
            return (None, 0);
        };
        key.clear();
        key.push_str(&ev.tenant);
        key.push(KEY_SEP);
        key.push_str(agent);
        let mut evicted = 0;
        let id = match self.current.get_mut(key.as_str()) {
            Some(c)
                if ev.kind != EventKind::SessionStart
                    && ev.ts - c.last <= c.idle_ms.max(idle_ms) =>
            {
                c.last = c.last.max(ev.ts);
                c.idle_ms = idle_ms;
                if c.id.is_empty() {
                    c.id = session_id(agent, c.start);
                }
                c.id.clone()
            }
            found => {
                if found.is_none() && self.current.len() >= cap.max(1) {
                    let n = (cap / 16).max(1).min(self.current.len());
                    for k in oldest(&self.current, n, |c| c.last) {
                        self.current.remove(&k);
                    }
                    evicted = n;
                }
                let id = session_id(agent, ev.ts);
                self.current.insert(
                    key.as_str().into(),
                    Current {
                        start: ev.ts,
                        last: ev.ts,
                        idle_ms,
                        id: id.clone(),
                    },
                );
                id
            }
        };
        if ev.kind == EventKind::SessionEnd {
            self.current.remove(key.as_str());
        }
        (Some(id), evicted)
    }

    /// Drains the sessions changed since the last save into `t`.
    pub fn drain_changes(&mut self, t: &mut TableChanges) -> Result<(), postcard::Error> {
        t.drain(&mut self.current)
    }

    /// Room for `n` more sessions.
    pub fn reserve(&mut self, n: usize) {
        self.current.reserve(n);
    }

    /// Puts a saved session back.
    pub fn restore_row(&mut self, key: &str, value: &[u8]) -> Result<(), postcard::Error> {
        restore_row(&mut self.current, key, value)
    }

    /// The sessions are written whole at the next save.
    pub fn unsync(&mut self) {
        self.current.unsync();
    }

    /// The sessions hold what their saved rows hold.
    pub fn restored(&mut self) {
        self.current.restored();
    }

    /// Drops sessions idle for longer than their idle time at `clock`: the
    /// next event of that agent starts a new one anyway.
    pub fn sweep(&mut self, clock: i64) {
        self.current
            .retain(|_, c| c.last.saturating_add(c.idle_ms) >= clock);
    }
}

/// `<agent_id>@<start, RFC 3339 UTC with milliseconds>`.
fn session_id(agent: &str, start: i64) -> String {
    format!("{agent}@{}", crate::alert::format_ts(start))
}
