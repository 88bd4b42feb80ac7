//! What the outbox tells the daemon's self-monitoring (`pipeline::monitor`):
//! dead letters per sink since it last looked, and the latest period in
//! which the store refused writes. Both are shared between threads and
//! bounded (one entry per sink; one outage).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Dead letters of one sink since the monitor last took them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeadTally {
    pub count: u64,
    /// Wall ms of the first of them.
    pub first_ms: i64,
    /// The last one's alert id, rule and error.
    pub last_id: String,
    pub last_rule: String,
    pub last_error: String,
}

impl DeadTally {
    /// Adds the dead letters of `later` (the first time stays).
    pub fn add(&mut self, later: DeadTally) {
        self.count += later.count;
        self.last_id = later.last_id;
        self.last_rule = later.last_rule;
        self.last_error = later.last_error;
    }
}

/// Dead letters per sink, noted by the dispatchers and taken by the
/// monitor. A dead `delivery_dead_letter` alert is not noted: an alert
/// about a sink that refuses everything must not feed itself.
#[derive(Debug, Default)]
pub struct DeadLetters(Mutex<BTreeMap<String, DeadTally>>);

impl DeadLetters {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, DeadTally>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One alert (`json`, as stored) became a dead letter on `sink`.
    pub fn note(&self, sink: &str, id: &str, json: &[u8], error: &str, now_ms: i64) {
        #[derive(serde::Deserialize)]
        struct RuleOf {
            rule: String,
        }
        let rule =
            serde_json::from_slice::<RuleOf>(json).map_or_else(|_| String::new(), |r| r.rule);
        if rule == crate::alert::daemon::DEAD_LETTER {
            return;
        }
        let one = DeadTally {
            count: 1,
            first_ms: now_ms,
            last_id: id.to_owned(),
            last_rule: rule,
            last_error: error.to_owned(),
        };
        let mut map = self.lock();
        match map.get_mut(sink) {
            Some(tally) => tally.add(one),
            None => {
                map.insert(sink.to_owned(), one);
            }
        }
    }

    /// What was noted since the last call, per sink.
    pub fn take(&self) -> BTreeMap<String, DeadTally> {
        std::mem::take(&mut *self.lock())
    }
}

/// A period in which the store refused writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Wall ms of the first failed write.
    pub since_ms: i64,
    /// Wall ms of the first write that succeeded after it (`None`: still
    /// failing).
    pub until_ms: Option<i64>,
    /// The kind of the first failure (`no_space`, `io`, ...).
    pub kind: &'static str,
}

/// The latest store outage, kept by the outbox writer.
#[derive(Debug, Default)]
pub struct StoreOutage(Mutex<Option<Outage>>);

impl StoreOutage {
    fn lock(&self) -> MutexGuard<'_, Option<Outage>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write failed: an outage begins unless one is going on.
    pub fn failed(&self, kind: &'static str, now_ms: i64) {
        let mut o = self.lock();
        if o.is_none_or(|o| o.until_ms.is_some()) {
            *o = Some(Outage {
                since_ms: now_ms,
                until_ms: None,
                kind,
            });
        }
    }

    /// A write succeeded: the outage going on (if any) ends.
    pub fn recovered(&self, now_ms: i64) {
        if let Some(o) = self.lock().as_mut()
            && o.until_ms.is_none()
        {
            o.until_ms = Some(now_ms);
        }
    }

    /// The latest outage.
    pub fn latest(&self) -> Option<Outage> {
        *self.lock()
    }
}
