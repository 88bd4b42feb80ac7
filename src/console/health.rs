//! The pipeline's health for the console (`/api/health`), read off the
//! daemon's own metrics (the numbers `/metrics` and `status` show), with
//! each source's rate over the last minute of samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::telemetry::metrics::Metrics;
use crate::telemetry::scrape::{Sample, parse};

/// Samples closer together than this are not kept (rates need a span).
const MIN_SPACING: Duration = Duration::from_secs(1);
/// Rates are taken over the samples of this span.
const RATE_SPAN: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, PartialEq)]
pub struct Health {
    pub ready: bool,
    pub store_available: bool,
    /// Wall clock minus the engine clock.
    pub engine_lag_seconds: Option<f64>,
    pub sources: Vec<SourceHealth>,
    pub events_total: u64,
    pub alerts_total: u64,
    pub alerts_by_rule: BTreeMap<String, u64>,
    pub live_keys: BTreeMap<String, u64>,
    pub outbox: OutboxHealth,
    pub state: StateHealth,
    /// Ingest-to-alert latency by quantile ("0.5", "0.99", ...).
    pub latency_seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SourceHealth {
    pub name: String,
    pub received: u64,
    pub decoded: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Unmapped records by format.
    pub unmapped: BTreeMap<String, u64>,
    /// Records per second over the last minute (`None` until two samples
    /// a second apart exist).
    pub rate_per_s: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct OutboxHealth {
    pub pending: u64,
    pub dead_letters: u64,
    pub sinks: Vec<SinkHealth>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SinkHealth {
    pub name: String,
    pub sent: u64,
    pub errors: u64,
    pub dead: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StateHealth {
    pub saves: u64,
    /// RFC 3339, wall clock.
    pub last_save: Option<String>,
    pub last_snapshot_bytes: u64,
    pub last_snapshot_seconds: f64,
}

/// Received records per source over time, for rates.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, BTreeMap<String, f64>)>>,
}

impl Rates {
    /// Keeps this sample (when a second has passed since the last one) and
    /// returns each source's rate over the kept span.
    fn observe(&self, now: Instant, received: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= MIN_SPACING)
        {
            samples.push_back((now, received.clone()));
        }
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_SPAN)
        {
            samples.pop_front();
        }
        let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else {
            return BTreeMap::new();
        };
        let secs = t1.duration_since(*t0).as_secs_f64();
        if secs <= 0.0 {
            return BTreeMap::new();
        }
        last.iter()
            .map(|(s, n)| {
                let before = first.get(s).copied().unwrap_or(0.0);
                (s.clone(), ((n - before) / secs).max(0.0))
            })
            .collect()
    }
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Sums `name` by the value of `label` (and a second label, when given).
fn by(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(v) = s.labels.get(label) {
            *out.entry(v.clone()).or_default() += s.value;
        }
    }
    out
}

fn count(v: f64) -> u64 {
    v.max(0.0) as u64
}

fn counts(m: BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    m.into_iter().map(|(k, v)| (k, count(v))).collect()
}

/// The health of the daemon whose metrics are `metrics`.
pub fn health(metrics: &Metrics, rates: &Rates, now: Instant) -> Health {
    let samples = parse(&metrics.render());
    let received = by(&samples, "mcp_alertd_records_received_total", "source");
    let decoded = by(&samples, "mcp_alertd_records_decoded_total", "source");
    let rate = rates.observe(now, received.clone());
    let sources = received
        .keys()
        .map(|name| {
            let of = |metric: &str, label: &str| -> BTreeMap<String, u64> {
                let mut out = BTreeMap::new();
                for s in samples.iter().filter(|s| {
                    s.name == metric && s.labels.get("source").is_some_and(|v| v == name)
                }) {
                    if let Some(v) = s.labels.get(label) {
                        *out.entry(v.clone()).or_default() += count(s.value);
                    }
                }
                out
            };
            let rejected_by_reason = of("mcp_alertd_records_rejected_total", "reason");
            SourceHealth {
                name: name.clone(),
                received: count(received[name]),
                decoded: count(decoded.get(name).copied().unwrap_or(0.0)),
                rejected: rejected_by_reason.values().sum(),
                rejected_by_reason,
                unmapped: of("mcp_alertd_records_unmapped_total", "format"),
                rate_per_s: rate.get(name).copied(),
            }
        })
        .collect();
    let sent = by(&samples, "mcp_alertd_alerts_sent_total", "sink");
    let errors = by(&samples, "mcp_alertd_alert_send_errors_total", "sink");
    let dead = by(&samples, "mcp_alertd_alerts_dead_total", "sink");
    let mut sinks: Vec<String> = sent.keys().chain(errors.keys()).cloned().collect();
    sinks.sort();
    sinks.dedup();
    let at = |m: &BTreeMap<String, f64>, k: &str| count(m.get(k).copied().unwrap_or(0.0));
    let sinks = sinks
        .into_iter()
        .map(|name| SinkHealth {
            sent: at(&sent, &name),
            errors: at(&errors, &name),
            dead: at(&dead, &name),
            name,
        })
        .collect();
    let saves = count(sum(&samples, "mcp_alertd_state_saves_total"));
    let last_save = count(sum(
        &samples,
        "mcp_alertd_state_last_save_timestamp_seconds",
    ));
    let has_lag = samples
        .iter()
        .any(|s| s.name == "mcp_alertd_engine_lag_seconds" && s.value != 0.0);
    Health {
        ready: metrics.is_ready(),
        store_available: metrics.store_available.get() == 1,
        engine_lag_seconds: has_lag.then(|| sum(&samples, "mcp_alertd_engine_lag_seconds")),
        sources,
        events_total: count(sum(&samples, "mcp_alertd_events_total")),
        alerts_total: count(sum(&samples, "mcp_alertd_alerts_total")),
        alerts_by_rule: counts(by(&samples, "mcp_alertd_alerts_total", "rule")),
        live_keys: counts(by(&samples, "mcp_alertd_live_keys", "rule")),
        outbox: OutboxHealth {
            pending: count(sum(&samples, "mcp_alertd_outbox_pending_deliveries")),
            dead_letters: count(sum(&samples, "mcp_alertd_outbox_dead_letters")),
            sinks,
        },
        state: StateHealth {
            saves,
            last_save: (saves > 0 && last_save > 0)
                .then(|| crate::alert::format_ts(last_save as i64 * 1000)),
            last_snapshot_bytes: count(sum(&samples, "mcp_alertd_state_snapshot_bytes")),
            last_snapshot_seconds: sum(&samples, "mcp_alertd_state_snapshot_seconds"),
        },
        latency_seconds: by(
            &samples,
            "mcp_alertd_ingest_to_alert_latency_seconds",
            "quantile",
        ),
    }
}
