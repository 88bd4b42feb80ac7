//! Detection → alert. The engine returns compact [`Detection`]s (the rule,
//! the joined state key, the time, the count and the triggering event);
//! the pipeline renders them here after detection, with one `detected_at`
//! per flush: the key split into fields, the summary a person reads, the
//! deterministic id. Nothing here reads state or the clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use super::{Alert, EventRef, Fingerprint, KEY_SEP, Severity, alert_id, format_ts};
use crate::duration::display_ms;

/// What alerts of a rule say about it, made once when the rule compiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: Arc<str>,
    pub title: Arc<str>,
    pub severity: Severity,
    /// The names of the key fields, in key order (tenant excluded).
    pub key_fields: Vec<String>,
}

/// What fired.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// A matching event.
    Match,
    /// A windowed threshold: the window `(ts - window_ms, ts]` holds
    /// `count` events, meeting `condition`.
    Window { window_ms: i64, condition: Arc<str> },
    /// A lifetime threshold met by `count` events over the key's life.
    Lifetime { condition: Arc<str> },
    /// No stop event between the start at `since` and the deadline `ts`.
    Absence { since: i64 },
    /// A `then` event in `[start, end]` after the `first` event at `ts`.
    Sequence { start: i64, end: i64 },
    /// The window `(ts - window_ms, ts]` holds `count` distinct values of
    /// `field`, meeting `condition`.
    Distinct {
        window_ms: i64,
        condition: Arc<str>,
        field: Arc<str>,
    },
    /// The check event's `field` is not in the `set` defined at `since`.
    Outside {
        field: Arc<str>,
        set: Arc<str>,
        since: i64,
    },
    /// The rule `rule` reached its cap of `cap` keys; `count` were evicted.
    Pressure { rule: Arc<str>, cap: usize },
    /// A self-monitoring alert about the daemon, with its sentence and the
    /// time the condition began.
    Daemon { summary: Box<str>, since: i64 },
}

/// One detection, rendered into an alert by [`render`].
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub rule: Arc<RuleInfo>,
    /// The joined state key: tenant, then the key values, `KEY_SEP` apart.
    pub key: Box<str>,
    /// Event time of the alert (`t*`, the event's, or the deadline).
    pub ts: i64,
    pub count: u64,
    pub what: What,
    /// The triggering event.
    pub event: EventRef,
    /// An earlier event the alert is about (a sequence's `first`), listed
    /// before the trigger.
    pub earlier: Option<EventRef>,
    /// Its fingerprint (the id's basis).
    pub fingerprint: Fingerprint,
}

/// The alert of a detection; `detected_at` is the wall clock of the flush.
pub fn render(d: Detection, detected_at: Option<i64>) -> Alert {
    let (tenant, key) = key_map(&d.rule, &d.key);
    // The state-pressure alert is keyed by the rule that hit its cap.
    let id_key = match &d.what {
        What::Pressure { rule, .. } => &**rule,
        _ => &*d.key,
    };
    let (window_start, window_end) = match &d.what {
        What::Window { window_ms, .. } | What::Distinct { window_ms, .. } => {
            (Some(d.ts - window_ms), Some(d.ts))
        }
        What::Absence { since } | What::Daemon { since, .. } => (Some(*since), Some(d.ts)),
        What::Sequence { start, end } => (Some(*start), Some(*end)),
        _ => (None, None),
    };
    Alert {
        id: alert_id(&d.rule.id, &tenant, id_key, d.ts, &d.fingerprint),
        rule: d.rule.id.to_string(),
        title: d.rule.title.to_string(),
        severity: d.rule.severity,
        tenant,
        key,
        ts: d.ts,
        detected_at,
        count: d.count,
        window_start,
        window_end,
        summary: summary(&d),
        events: d.earlier.into_iter().chain([d.event]).collect(),
    }
}

/// The sentence a person reads first.
fn summary(d: &Detection) -> String {
    let ev = &d.event;
    match &d.what {
        What::Match => {
            let mut s = format!("{} for {}", ev.event, describe_key(&d.rule, &d.key));
            if let Some(tool) = ev.tool.as_deref() {
                let _ = write!(s, ": tool `{tool}`");
            }
            if let Some(reason) = ev.reason.as_deref() {
                let _ = write!(s, ", reason {reason}");
            }
            let _ = write!(s, " at {}.", format_ts(ev.ts));
            s
        }
        What::Window {
            window_ms,
            condition,
        } => format!(
            "{} matching events ({}) for {} within the {} window ending {} (threshold {condition}).",
            d.count,
            ev.event,
            describe_key(&d.rule, &d.key),
            display_ms(*window_ms),
            format_ts(d.ts)
        ),
        What::Lifetime { condition } => format!(
            "{} matching events ({}) for {} (threshold {condition}, counted over the key's life).",
            d.count,
            ev.event,
            describe_key(&d.rule, &d.key)
        ),
        What::Absence { since } => format!(
            "No stop event for {} within {} of its {} at {}.",
            describe_key(&d.rule, &d.key),
            display_ms(d.ts - since),
            ev.event,
            format_ts(*since)
        ),
        What::Sequence { start, end } => {
            let first = d
                .earlier
                .as_ref()
                .map_or("first event", |e| e.event.as_str());
            let range = if *start == d.ts {
                format!("within {}", display_ms(end - d.ts))
            } else {
                format!(
                    "between {} and {} after it",
                    display_ms(start - d.ts),
                    display_ms(end - d.ts)
                )
            };
            format!(
                "{first} at {} for {}, then {} at {} ({range}).",
                format_ts(d.ts),
                describe_key(&d.rule, &d.key),
                ev.event,
                format_ts(ev.ts),
            )
        }
        What::Distinct {
            window_ms,
            condition,
            field,
        } => format!(
            "{} distinct {field} values among matching events ({}) for {} within the {} window ending {} (threshold {condition}).",
            d.count,
            ev.event,
            describe_key(&d.rule, &d.key),
            display_ms(*window_ms),
            format_ts(d.ts)
        ),
        What::Outside { field, set, since } => {
            let value = match &**field {
                "tool" => ev.tool.as_deref(),
                _ => None,
            };
            let value = value.map_or_else(String::new, |v| format!(" `{v}`"));
            format!(
                "{} for {}: {field}{value} is not in the {set} set at {} (defined at {}).",
                ev.event,
                describe_key(&d.rule, &d.key),
                format_ts(ev.ts),
                format_ts(*since)
            )
        }
        What::Pressure { rule, cap } => format!(
            "Rule {rule} reached its cap of {cap} live keys; the {} oldest keys were evicted and their state lost. Raise max_keys_per_rule or narrow the rule.",
            d.count
        ),
        What::Daemon { summary, .. } => summary.to_string(),
    }
}

/// A key field and its value, with a source address standing in for an
/// unclaimed identity named `source_ip`.
fn key_field<'k>(field: &'k str, value: &'k str) -> (&'k str, &'k str) {
    match value.strip_prefix(super::BY_SOURCE_IP) {
        Some(ip) => ("source_ip", ip),
        None => (field, value),
    }
}

/// The tenant and the key fields of a joined key.
fn key_map(rule: &RuleInfo, key: &str) -> (String, BTreeMap<String, String>) {
    let mut parts = key.split(KEY_SEP);
    let tenant = parts.next().unwrap_or_default().to_owned();
    let map = rule
        .key_fields
        .iter()
        .zip(parts)
        .map(|(f, v)| key_field(f, v))
        .map(|(f, v)| (f.to_owned(), v.to_owned()))
        .collect();
    (tenant, map)
}

/// A joined key as `agent_id=a1, session_id=s1 (tenant acme)`.
fn describe_key(rule: &RuleInfo, key: &str) -> String {
    let mut parts = key.split(KEY_SEP);
    let tenant = parts.next().unwrap_or_default();
    let mut out = String::new();
    for (field, value) in rule.key_fields.iter().zip(parts) {
        let (field, value) = key_field(field, value);
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{field}={value}");
    }
    if out.is_empty() {
        out.push_str("all events");
    }
    let _ = write!(out, " (tenant {tenant})");
    out
}
