//! The live console (`GET /` on the metrics address) and the JSON behind
//! it: the injection meter ([`meter`]), the recent alerts, and the
//! pipeline's health read off the metrics ([`health`]). Served by
//! [`http`], with a bearer token and TLS off loopback.
//!
//! The engine thread writes: every `tool.denied` event into the meter and
//! every alert it raises into the recent list, each under a short lock
//! (once per batch of alerts). The HTTP handlers read. Both are bounded:
//! the meter by `max_agents`/`max_sessions`, the list by `recent_alerts`.

pub mod health;
pub mod http;
pub mod meter;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::alert::Alert;
use crate::engine::RuleSet;
use crate::options::SecretRef;
use meter::{Denial, Meter};

/// Default length of the recent alerts list.
pub const DEFAULT_RECENT_ALERTS: usize = 500;

/// `[console]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSettings {
    /// Serve `/` and `/api/*` beside the metrics.
    pub enabled: bool,
    /// The bearer token the page and the API require (required off
    /// loopback).
    pub token: Option<SecretRef>,
    pub max_agents: usize,
    pub max_sessions: usize,
    pub recent_alerts: usize,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            token: None,
            max_agents: meter::DEFAULT_MAX_ENTRIES,
            max_sessions: meter::DEFAULT_MAX_ENTRIES,
            recent_alerts: DEFAULT_RECENT_ALERTS,
        }
    }
}

impl ConsoleSettings {
    /// The token the console requires, read from its file or credential:
    /// `None` when it requires none (or is off); an error naming the key
    /// when it cannot be read or is empty.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        let Some(secret) = self.token.as_ref().filter(|_| self.enabled) else {
            return Ok(None);
        };
        match secret.read() {
            Ok(t) if t.is_empty() => Err("console.token: the token is empty".to_owned()),
            Ok(t) => Ok(Some(t)),
            Err(e) => Err(format!("console.token: {e}")),
        }
    }
}

/// `[console]` as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    enabled: Option<bool>,
    token_file: Option<std::path::PathBuf>,
    token_credential: Option<String>,
    max_agents: Option<u64>,
    max_sessions: Option<u64>,
    recent_alerts: Option<u64>,
}

impl RawConsole {
    pub fn validate(self, errors: &mut Vec<String>) -> ConsoleSettings {
        use crate::options::count;
        let d = ConsoleSettings::default();
        ConsoleSettings {
            enabled: self.enabled.unwrap_or(true),
            token: SecretRef::from(
                self.token_file,
                self.token_credential,
                "console.token",
                errors,
            ),
            max_agents: count(
                errors,
                "console.max_agents",
                self.max_agents,
                d.max_agents,
                (1, 1_000_000),
            ),
            max_sessions: count(
                errors,
                "console.max_sessions",
                self.max_sessions,
                d.max_sessions,
                (1, 1_000_000),
            ),
            recent_alerts: count(
                errors,
                "console.recent_alerts",
                self.recent_alerts,
                d.recent_alerts,
                (1, 100_000),
            ),
        }
    }
}

/// An alert as the console lists it: the alert, a sequence number (for
/// `since_seq` polling) and its rule's description (what to check next).
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub seq: u64,
    #[serde(flatten)]
    pub alert: Alert,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<Arc<str>>,
}

#[derive(Debug)]
struct Recent {
    cap: usize,
    alerts: VecDeque<Arc<Listed>>,
    next_seq: u64,
    advice: HashMap<String, Arc<str>>,
}

/// What the console reads, shared by the engine thread (writer) and the
/// HTTP handlers (readers).
#[derive(Debug)]
pub struct Console {
    meter: Mutex<Meter>,
    recent: Mutex<Recent>,
}

/// A poisoned lock still holds consistent counts (no invariant spans a
/// panic here): take it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which alerts a listing wants.
#[derive(Debug, Default, Clone)]
pub struct AlertFilter {
    /// Alerts dated at or after (event time, ms).
    pub since_ms: Option<i64>,
    /// Alerts listed after this sequence number.
    pub after_seq: Option<u64>,
    pub rule: Option<String>,
    pub tenant: Option<String>,
    pub severity: Option<String>,
    pub limit: Option<usize>,
}

impl Console {
    pub fn new(settings: &ConsoleSettings, rules: &RuleSet) -> Console {
        let console = Console {
            meter: Mutex::new(Meter::new(settings.max_agents, settings.max_sessions)),
            recent: Mutex::new(Recent {
                cap: settings.recent_alerts.max(1),
                alerts: VecDeque::new(),
                next_seq: 1,
                advice: HashMap::new(),
            }),
        };
        console.set_rules(rules);
        console
    }

    /// Takes the rules' descriptions (at start and after a reload).
    pub fn set_rules(&self, rules: &RuleSet) {
        let advice = rules
            .rules()
            .iter()
            .filter_map(|r| {
                let text = r.description.as_deref()?.trim();
                Some((r.id.to_string(), Arc::from(text)))
            })
            .collect();
        lock(&self.recent).advice = advice;
    }

    /// Counts a denied tool call.
    pub fn deny(&self, d: Denial<'_>) {
        lock(&self.meter).deny(d);
    }

    /// Moves the meter's "now" to the engine clock.
    pub fn advance(&self, clock_ms: i64) {
        lock(&self.meter).advance(clock_ms);
    }

    /// Lists alerts just raised (the oldest leave beyond the cap; of a
    /// storm only the last `cap` are copied).
    pub fn raised(&self, alerts: &[Alert]) {
        let mut recent = lock(&self.recent);
        let skip = alerts.len().saturating_sub(recent.cap);
        recent.next_seq += skip as u64;
        for alert in &alerts[skip..] {
            let seq = recent.next_seq;
            recent.next_seq += 1;
            let advice = recent.advice.get(&alert.rule).cloned();
            if recent.alerts.len() >= recent.cap {
                recent.alerts.pop_front();
            }
            recent.alerts.push_back(Arc::new(Listed {
                seq,
                alert: alert.clone(),
                advice,
            }));
        }
    }

    /// The listed alerts `f` selects, newest first.
    pub fn alerts(&self, f: &AlertFilter) -> Vec<Arc<Listed>> {
        let recent = lock(&self.recent);
        recent
            .alerts
            .iter()
            .rev()
            .filter(|l| {
                let a = &l.alert;
                f.since_ms.is_none_or(|t| a.ts >= t)
                    && f.after_seq.is_none_or(|s| l.seq > s)
                    && f.rule.as_ref().is_none_or(|r| a.rule == *r)
                    && f.tenant.as_ref().is_none_or(|t| a.tenant == *t)
                    && f.severity.as_ref().is_none_or(|s| a.severity.name() == s)
            })
            .take(f.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    /// Reads the meter.
    pub fn meter<R>(&self, read: impl FnOnce(&Meter) -> R) -> R {
        read(&lock(&self.meter))
    }
}
