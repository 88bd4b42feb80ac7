//! Self-monitoring: alerts the daemon raises about itself, rendered and
//! routed like any alert (tenant `_daemon`, so one route can take
//! them all), each a default the user can turn off (`[self_monitoring]`):
//!
//! - `source_silent`: a source that delivered records (before a restart
//!   too: the names are saved with the state) has sent none for its
//!   `silent_after`; once per silence.
//! - `delivery_dead_letter`: alerts became dead letters on a sink; at most
//!   one alert per sink per interval, counting what died meanwhile.
//! - `store_unavailable`: the store refused writes for longer than a bound;
//!   once per outage (an alert waits in memory with the rest until the
//!   store takes it, so it may arrive when the outage is over).
//! - `clock_stalled`: an engine clock lags the wall clock by more than a
//!   bound while records arrive (deadlines fire that late); once per
//!   episode, one for the `main` unit and one for all the partitions of a
//!   Kafka source.
//! - `state_pressure` (raised by the engine) can be turned off here too.
//!
//! The monitor is a state machine over what the engine thread observes:
//! it reads no clock and does no I/O, so it is tested with made-up times.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::alert::{self, Detection, EventRef, KEY_SEP, RuleInfo, daemon};
use crate::alert::{Severity, What, format_ts};
use crate::duration::{display_ms, display_span, millis};
use crate::outbox::watch::{DeadTally, Outage};

/// `[self_monitoring]`: each alert with its bound, `None` when turned off.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    /// `source_silent`: the silence of a source without a `silent_after`
    /// of its own.
    pub source_silent: Option<Duration>,
    /// `delivery_dead_letter`: at most one alert per sink per this.
    pub delivery_dead_letter: Option<Duration>,
    /// `store_unavailable`: how long the store refuses writes first.
    pub store_unavailable: Option<Duration>,
    /// `clock_stalled`: how far an engine clock may lag the wall clock
    /// while records arrive.
    pub clock_stalled: Option<Duration>,
    /// Whether the engine's `state_pressure` alerts are delivered.
    pub state_pressure: bool,
}

/// The default bounds (what `true` gives in `[self_monitoring]`).
pub const SOURCE_SILENT_AFTER: Duration = Duration::from_secs(15 * 60);
pub const DEAD_LETTER_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const STORE_UNAVAILABLE_AFTER: Duration = Duration::from_secs(30);
pub const CLOCK_STALLED_LAG: Duration = Duration::from_secs(5 * 60);

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            source_silent: Some(SOURCE_SILENT_AFTER),
            delivery_dead_letter: Some(DEAD_LETTER_INTERVAL),
            store_unavailable: Some(STORE_UNAVAILABLE_AFTER),
            clock_stalled: Some(CLOCK_STALLED_LAG),
            state_pressure: true,
        }
    }
}

impl MonitorSettings {
    /// Each alert and what raises it, one line each (`check`).
    pub fn describe(&self) -> [(&'static str, String); 5] {
        let bound = |d: Option<Duration>, on: &str| {
            d.map_or_else(
                || "off".to_owned(),
                |d| format!("{on} {}", display_ms(millis(d))),
            )
        };
        [
            (
                SOURCE_SILENT.rule,
                bound(
                    self.source_silent,
                    "a source that delivered sends nothing for",
                ),
            ),
            (
                DEAD_LETTER.rule,
                bound(
                    self.delivery_dead_letter,
                    "dead letters on a sink, at most once per",
                ),
            ),
            (
                STORE_UNAVAILABLE.rule,
                bound(self.store_unavailable, "the store refuses writes for"),
            ),
            (
                CLOCK_STALLED.rule,
                bound(
                    self.clock_stalled,
                    "records arrive with the clock behind by more than",
                ),
            ),
            (
                daemon::STATE_PRESSURE,
                if self.state_pressure {
                    "a rule evicts keys at max_keys_per_rule".to_owned()
                } else {
                    "off".to_owned()
                },
            ),
        ]
    }
}

/// What an alert of the monitor says about itself.
struct Kind {
    rule: &'static str,
    title: &'static str,
    severity: Severity,
}

const SOURCE_SILENT: Kind = Kind {
    rule: daemon::SOURCE_SILENT,
    title: "Audit source silent",
    severity: Severity::High,
};
const DEAD_LETTER: Kind = Kind {
    rule: daemon::DEAD_LETTER,
    title: "Alerts could not be delivered",
    severity: Severity::High,
};
const STORE_UNAVAILABLE: Kind = Kind {
    rule: daemon::STORE_UNAVAILABLE,
    title: "Store refused writes",
    severity: Severity::Critical,
};
const CLOCK_STALLED: Kind = Kind {
    rule: daemon::CLOCK_STALLED,
    title: "Engine clock behind the wall clock",
    severity: Severity::Medium,
};

/// One engine unit as the monitor sees it at a check.
#[derive(Debug, Clone, Copy)]
pub struct UnitView<'a> {
    /// `main`, or a Kafka partition's unit name.
    pub name: &'a str,
    /// What its alert names: `main`, or `kafka/<source>` for all the
    /// partitions of a Kafka source.
    pub group: &'a str,
    /// The engine clock (`None` before any event).
    pub clock: Option<i64>,
    /// Wall ms of the last record that reached it.
    pub last_record_ms: Option<i64>,
}

/// What the engine thread observed since the last check.
pub struct Observed<'a> {
    pub now_ms: i64,
    /// A unit received records within this long: records "arrive".
    pub arriving_ms: i64,
    pub units: &'a [UnitView<'a>],
    pub dead_letters: BTreeMap<String, DeadTally>,
    pub outage: Option<Outage>,
}

struct Source {
    name: Arc<str>,
    silent_after_ms: Option<i64>,
    /// Wall ms of its last record (`None`: none since the start).
    last_ms: Option<i64>,
    /// This silence was reported.
    reported: bool,
}

#[derive(Default)]
struct Sink {
    /// Dead letters not reported yet.
    pending: Option<DeadTally>,
    /// Wall ms of the last alert about this sink.
    raised_ms: Option<i64>,
}

/// The self-monitoring state.
pub struct Monitor {
    settings: MonitorSettings,
    sources: Vec<Source>,
    sinks: BTreeMap<String, Sink>,
    /// The start of the outage last reported.
    store_reported: Option<i64>,
    /// Units stalled now: their group and their clock.
    stalled: BTreeMap<String, (String, i64)>,
    /// Groups whose stall was reported (until all their units catch up).
    stalled_groups: BTreeSet<String>,
    /// A source delivered its first record since the last save.
    delivering_changed: bool,
}

impl Monitor {
    /// `sources`: each source's name and silence bound (`None`: never
    /// reported), in configuration order.
    pub fn new(settings: MonitorSettings, sources: Vec<(Arc<str>, Option<Duration>)>) -> Monitor {
        Monitor {
            settings,
            sources: sources
                .into_iter()
                .map(|(name, silent)| Source {
                    name,
                    silent_after_ms: silent.map(millis),
                    last_ms: None,
                    reported: false,
                })
                .collect(),
            sinks: BTreeMap::new(),
            store_reported: None,
            stalled: BTreeMap::new(),
            stalled_groups: BTreeSet::new(),
            delivering_changed: false,
        }
    }

    /// Whether the engine's `state_pressure` alerts are delivered.
    pub fn state_pressure(&self) -> bool {
        self.settings.state_pressure
    }

    /// The sources of `names` delivered records before a restart at wall
    /// ms `now_ms`: each is expected to deliver within its bound of it.
    pub fn resume(&mut self, names: &[String], now_ms: i64) {
        for s in &mut self.sources {
            if names.iter().any(|n| **n == *s.name) {
                s.last_ms.get_or_insert(now_ms);
            }
        }
    }

    /// The names of the sources that delivered records (saved, for
    /// [`resume`](Self::resume)).
    pub fn delivering(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|s| s.last_ms.is_some())
            .map(|s| s.name.to_string())
            .collect()
    }

    /// Whether a source delivered its first record since the last call
    /// (the saved list is then out of date).
    pub fn take_delivering_changed(&mut self) -> bool {
        std::mem::take(&mut self.delivering_changed)
    }

    /// Source `index` delivered a record at wall ms `now_ms`.
    pub fn arrived(&mut self, index: usize, now_ms: i64) {
        if let Some(s) = self.sources.get_mut(index) {
            self.delivering_changed |= s.last_ms.is_none();
            s.last_ms = Some(now_ms);
            s.reported = false;
        }
    }

    /// The alerts due now, appended to `out`.
    pub fn check(&mut self, seen: Observed<'_>, out: &mut Vec<Detection>) {
        let now = seen.now_ms;
        self.silent_sources(now, out);
        self.dead_letters(now, seen.dead_letters, out);
        self.store(now, seen.outage, out);
        self.clocks(now, seen.arriving_ms, seen.units, out);
    }

    fn silent_sources(&mut self, now: i64, out: &mut Vec<Detection>) {
        for s in &mut self.sources {
            let (Some(after), Some(last)) = (s.silent_after_ms, s.last_ms) else {
                continue;
            };
            if s.reported || now - last < after {
                continue;
            }
            s.reported = true;
            let summary = format!(
                "Source {} has delivered no record for {} (its last at {}): check the MCP servers and the path from them (a stopped server or forwarder, a network change, or audit logging turned off).",
                s.name,
                display_span(now - last),
                format_ts(last)
            );
            out.push(daemon_alert(
                &SOURCE_SILENT,
                ("source", &s.name),
                (last, now),
                1,
                summary,
            ));
        }
    }

    fn dead_letters(
        &mut self,
        now: i64,
        taken: BTreeMap<String, DeadTally>,
        out: &mut Vec<Detection>,
    ) {
        let Some(interval) = self.settings.delivery_dead_letter.map(millis) else {
            return;
        };
        for (name, t) in taken {
            let sink = self.sinks.entry(name).or_default();
            match &mut sink.pending {
                Some(p) => p.add(t),
                None => sink.pending = Some(t),
            }
        }
        for (name, sink) in &mut self.sinks {
            if sink.raised_ms.is_some_and(|r| now - r < interval) {
                continue;
            }
            let Some(t) = sink.pending.take() else {
                continue;
            };
            sink.raised_ms = Some(now);
            let error: String = t.last_error.chars().take(300).collect();
            let summary = format!(
                "{} alert{} became dead letters on sink {name} since {} (the last: {} of rule {}, error: {error}); see `mcp-alertd outbox list` and, once the sink is fixed, `mcp-alertd outbox retry`.",
                t.count,
                if t.count == 1 { "" } else { "s" },
                format_ts(t.first_ms),
                t.last_id,
                t.last_rule,
            );
            out.push(daemon_alert(
                &DEAD_LETTER,
                ("sink", name),
                (t.first_ms, now),
                t.count,
                summary,
            ));
        }
    }

    fn store(&mut self, now: i64, outage: Option<Outage>, out: &mut Vec<Detection>) {
        let (Some(after), Some(o)) = (self.settings.store_unavailable.map(millis), outage) else {
            return;
        };
        let end = o.until_ms.unwrap_or(now);
        if self.store_reported == Some(o.since_ms) || end - o.since_ms < after {
            return;
        }
        self.store_reported = Some(o.since_ms);
        let summary = match o.until_ms {
            None => format!(
                "The store has refused writes since {} ({}, {}): the daemon is not ready, and holds alerts and state in memory (backpressure up to the sources) until it can write; free space or fix the state directory.",
                format_ts(o.since_ms),
                display_span(end - o.since_ms),
                o.kind
            ),
            Some(until) => format!(
                "The store refused writes from {} to {} ({}, {}); it takes writes again and nothing was lost. Check the state directory's free space.",
                format_ts(o.since_ms),
                format_ts(until),
                display_span(until - o.since_ms),
                o.kind
            ),
        };
        out.push(daemon_alert(
            &STORE_UNAVAILABLE,
            ("kind", o.kind),
            (o.since_ms, end),
            1,
            summary,
        ));
    }

    fn clocks(
        &mut self,
        now: i64,
        arriving: i64,
        units: &[UnitView<'_>],
        out: &mut Vec<Detection>,
    ) {
        let Some(bound) = self.settings.clock_stalled.map(millis) else {
            return;
        };
        // Each unit on its own: stalled while it lags and receives, until
        // it catches up.
        for u in units {
            let lagging = u.clock.filter(|c| now - c > bound);
            let receiving = u.last_record_ms.is_some_and(|t| now - t <= arriving);
            match (lagging, receiving) {
                (Some(clock), true) => {
                    self.stalled
                        .insert(u.name.to_owned(), (u.group.to_owned(), clock));
                }
                (Some(clock), false) => {
                    if let Some(s) = self.stalled.get_mut(u.name) {
                        s.1 = clock;
                    }
                }
                (None, _) => {
                    self.stalled.remove(u.name);
                }
            }
        }
        // Units that are gone (a Kafka partition revoked) are forgotten.
        self.stalled
            .retain(|name, _| units.iter().any(|u| u.name == name));
        // One alert per group (a Kafka source's partitions are one) when
        // its first unit stalls; again once all of them caught up.
        let mut groups: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
        for (group, clock) in self.stalled.values() {
            let g = groups.entry(group).or_insert((0, *clock));
            g.0 += 1;
            g.1 = g.1.min(*clock);
        }
        self.stalled_groups
            .retain(|g| groups.contains_key(g.as_str()));
        for (group, (n, clock)) in groups {
            if !self.stalled_groups.insert(group.to_owned()) {
                continue;
            }
            let which = match n {
                1 => String::new(),
                n => format!(" ({n} partitions; the furthest behind)"),
            };
            let summary = format!(
                "The engine clock of `{group}`{which} is at {}, {} behind the wall clock, while records arrive: deadlines (session overrun, unused credentials) fire that late. A source sends old timestamps (a server clock behind, or a backlog being caught up).",
                format_ts(clock),
                display_span(now - clock)
            );
            out.push(daemon_alert(
                &CLOCK_STALLED,
                ("unit", group),
                (clock, now),
                n as u64,
                summary,
            ));
        }
    }
}

/// A self-monitoring detection keyed by one field, at wall ms `to`, about
/// what began at `from`.
fn daemon_alert(
    kind: &Kind,
    (field, value): (&str, &str),
    (from, to): (i64, i64),
    count: u64,
    summary: String,
) -> Detection {
    let rule = kind.rule;
    let info = RuleInfo {
        id: rule.into(),
        title: kind.title.into(),
        severity: kind.severity,
        key_fields: vec![field.to_owned()],
    };
    let key = format!("{}{KEY_SEP}{value}", daemon::TENANT);
    // Distinct per condition and per report: its key and both ends.
    let basis = format!("{rule}{KEY_SEP}{key}{KEY_SEP}{from}{KEY_SEP}{to}");
    Detection {
        rule: Arc::new(info),
        key: key.into(),
        ts: to,
        count,
        what: What::Daemon {
            summary: summary.into(),
            since: from,
        },
        event: EventRef {
            ts: to,
            event: format!("daemon.{rule}"),
            tool: None,
            reason: None,
            server: None,
            position: None,
        },
        earlier: None,
        fingerprint: alert::fingerprint(&basis, 0),
    }
}
