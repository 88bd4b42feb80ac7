//! The metrics registry (Prometheus text format) and the routes of the
//! HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`. Metric names follow
//! `mcp_alertd_<noun>_<unit>`; labels are bounded (source names, reasons,
//! event types, rule ids, severities), never agent or session ids.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub source: String,
    pub format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    #[prometheus(flatten)]
    pub kind: TypeName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeName {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub rule: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabel {
    pub quantile: String,
}

/// A Kafka partition read by a source (bounded by the topics' partitions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub source: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The name a registered metric's samples carry.
fn series_name<M: prometheus_client::metrics::TypedMetric>(name: &str, _: &M) -> String {
    match M::TYPE {
        prometheus_client::metrics::MetricType::Counter => format!("mcp_alertd_{name}_total"),
        _ => format!("mcp_alertd_{name}"),
    }
}

/// Every metric of the daemon. Cheap to share (`Arc`); updates are atomic.
pub struct Metrics {
    registry: Registry,
    pub records_received: Family<SourceLabel, Counter>,
    pub records_decoded: Family<SourceLabel, Counter>,
    pub records_rejected: Family<RejectLabels, Counter>,
    pub records_unmapped: Family<FormatLabels, Counter>,
    pub udp_dropped: Family<SourceLabel, Counter>,
    pub udp_kernel_drops: Family<SourceLabel, Counter>,
    pub connections_open: Family<SourceLabel, Gauge>,
    pub connections_refused: Family<SourceLabel, Counter>,
    pub connections_closed: Family<RejectLabels, Counter>,
    pub events: Family<TypeName, Counter>,
    pub alerts: Family<AlertLabels, Counter>,
    pub live_keys: Family<RuleLabel, Gauge>,
    pub late_events: Counter,
    pub evicted_keys: Counter,
    pub partitions: Gauge,
    pub stale_partitions: Gauge,
    pub engine_lag_seconds: FloatGauge,
    pub latency_seconds: Family<QuantileLabel, FloatGauge>,
    pub latency_samples: Counter,
    pub reloads: Family<ResultLabel, Counter>,
    pub alerts_sent: Family<SinkLabel, Counter>,
    pub alert_send_errors: Family<SinkLabel, Counter>,
    pub alerts_dead: Family<SinkLabel, Counter>,
    pub outbox_pending: Gauge,
    /// 1 while the store takes writes, 0 after a failure until one
    /// succeeds again (the daemon is then not ready).
    pub store_available: Gauge,
    pub outbox_dead: Gauge,
    pub alerts_suppressed: Counter,
    pub alerts_grouped: Counter,
    pub snapshot_bytes: Gauge,
    pub state_saves: Counter,
    /// Wall clock of the last state save committed (epoch seconds).
    pub state_last_save: Gauge,
    pub snapshot_seconds: FloatGauge,
    pub kafka_lag: Family<PartitionLabels, Gauge>,
    pub kafka_rebalances: Family<SourceLabel, Counter>,
    ready: AtomicBool,
    /// Every series name the daemon exports (a counter with `_total`).
    exported: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mcp_alertd");
        let m = Metrics {
            records_received: Family::default(),
            records_decoded: Family::default(),
            records_rejected: Family::default(),
            records_unmapped: Family::default(),
            udp_dropped: Family::default(),
            udp_kernel_drops: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            events: Family::default(),
            alerts: Family::default(),
            live_keys: Family::default(),
            late_events: Counter::default(),
            evicted_keys: Counter::default(),
            partitions: Gauge::default(),
            stale_partitions: Gauge::default(),
            engine_lag_seconds: FloatGauge::default(),
            latency_seconds: Family::default(),
            latency_samples: Counter::default(),
            reloads: Family::default(),
            alerts_sent: Family::default(),
            alert_send_errors: Family::default(),
            alerts_dead: Family::default(),
            outbox_pending: Gauge::default(),
            store_available: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            outbox_dead: Gauge::default(),
            alerts_suppressed: Counter::default(),
            alerts_grouped: Counter::default(),
            snapshot_bytes: Gauge::default(),
            state_saves: Counter::default(),
            state_last_save: Gauge::default(),
            snapshot_seconds: FloatGauge::default(),
            kafka_lag: Family::default(),
            kafka_rebalances: Family::default(),
            ready: AtomicBool::new(false),
            exported: Vec::new(),
            registry: Registry::default(),
        };
        let mut exported = Vec::new();
        macro_rules! register {
            ($($field:ident => $name:literal, $help:literal;)*) => {
                $(
                    registry.register($name, $help, m.$field.clone());
                    exported.push(series_name($name, &m.$field));
                )*
            };
        }
        register! {
            records_received => "records_received", "Records read by sources (received = decoded + unmapped + rejected, per source)";
            records_decoded => "records_decoded", "Records that became events";
            records_rejected => "records_rejected", "Records rejected, by reason";
            records_unmapped => "records_unmapped", "Records no mapping of the source's format applies to (not errors), by format";
            udp_dropped => "udp_datagrams_dropped", "UDP datagrams dropped because the engine queue was full and the source held queue_bytes already";
            udp_kernel_drops => "udp_kernel_drops", "UDP datagrams the kernel dropped before the daemon read them (receive buffer full), from /proc/net/udp";
            connections_open => "connections_open", "Open TCP/TLS connections";
            connections_refused => "connections_refused", "Connections refused at max_connections_per_peer or failing TLS";
            connections_closed => "connections_closed", "Connections the daemon closed, by reason: idle (nothing for idle_timeout), slow (a record or handshake over record_timeout), evicted (replaced at max_connections)";
            events => "events", "Events decoded, by type";
            alerts => "alerts", "Alerts raised, by rule and severity";
            live_keys => "live_keys", "Live state keys per rule";
            late_events => "late_events", "Events that arrived below the engine clock";
            evicted_keys => "evicted_keys", "State keys evicted at the per-rule cap";
            partitions => "input_partitions", "Input partitions (connections, senders, files) tracked by the clock";
            stale_partitions => "stale_partitions", "Syslog partitions left out of the engine clock: their newest event lags the wall clock by more than max_past_skew";
            engine_lag_seconds => "engine_lag_seconds", "Wall clock minus engine clock";
            latency_seconds => "ingest_to_alert_latency_seconds", "Latency from a record read off its source to its alert handed on, by quantile (all samples since start)";
            latency_samples => "ingest_to_alert_latency_samples", "Alerts measured for the latency quantiles";
            reloads => "reloads", "SIGHUP reloads, by result";
            alerts_sent => "alerts_sent", "Alerts a sink accepted";
            alert_send_errors => "alert_send_errors", "Failed delivery attempts, by sink";
            alerts_dead => "alerts_dead", "Alerts moved to dead letters, by sink";
            outbox_pending => "outbox_pending_deliveries", "Deliveries waiting in the outbox";
            store_available => "store_available", "1 while the store takes writes; 0 after a write failed (a full disk) until one succeeds: the daemon is then not ready";
            outbox_dead => "outbox_dead_letters", "Dead letters in the store";
            snapshot_bytes => "state_snapshot_bytes", "Bytes the last save wrote: the heads of the units that changed and their changed keys";
            state_saves => "state_saves", "Engine state saves committed to the store (with the positions they cover)";
            state_last_save => "state_last_save_timestamp_seconds", "Wall clock (Unix seconds) of the last engine state save committed";
            snapshot_seconds => "state_snapshot_seconds", "Time the engine spent serializing the last saved state";
            kafka_lag => "kafka_consumer_lag_records", "Records in a Kafka partition not yet read (high watermark minus position)";
            kafka_rebalances => "kafka_rebalances", "Kafka partition assignments and revocations, by source";
            alerts_suppressed => "alerts_suppressed", "Alerts held back by a route's repeat_interval";
            alerts_grouped => "alerts_grouped", "Alerts folded into a group digest by a route's group_window";
        }
        Metrics {
            registry,
            exported,
            ..m
        }
    }

    /// Every series name the daemon exports, whether or not it has a
    /// sample yet (a family without labels yet is not rendered).
    pub fn exported(&self) -> &[String] {
        &self.exported
    }

    pub fn source(name: &str) -> SourceLabel {
        SourceLabel {
            source: name.to_owned(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Started, not stopping, and the store takes writes.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.store_available.get() == 1
    }

    /// A one-line summary for systemd's STATUS= and `status`.
    pub fn status_line(&self) -> String {
        let text = self.render();
        let sum = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        format!(
            "{}{} records, {} events, {} rejected, {} alerts, {} pending delivery, {} dead letters",
            if self.store_available.get() == 1 {
                ""
            } else {
                "STORE UNAVAILABLE (not ready): "
            },
            sum("mcp_alertd_records_received_total"),
            sum("mcp_alertd_events_total"),
            sum("mcp_alertd_records_rejected_total"),
            sum("mcp_alertd_alerts_total"),
            sum("mcp_alertd_outbox_pending_deliveries "),
            sum("mcp_alertd_outbox_dead_letters "),
        )
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The routes `/metrics`, `/healthz` and `/readyz`.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let render = metrics.clone();
    let ready = metrics;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = render.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = ready.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
