//! The metrics registry (Prometheus text format) and the HTTP endpoint
//! serving `/metrics`, `/healthz` and `/readyz`. Metric names follow
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
use tokio_util::sync::CancellationToken;

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

/// Every metric of the daemon. Cheap to share (`Arc`); updates are atomic.
pub struct Metrics {
    registry: Registry,
    pub records_received: Family<SourceLabel, Counter>,
    pub records_rejected: Family<RejectLabels, Counter>,
    pub udp_dropped: Family<SourceLabel, Counter>,
    pub connections_open: Family<SourceLabel, Gauge>,
    pub connections_refused: Family<SourceLabel, Counter>,
    pub events: Family<TypeName, Counter>,
    pub alerts: Family<AlertLabels, Counter>,
    pub live_keys: Family<RuleLabel, Gauge>,
    pub late_events: Counter,
    pub evicted_keys: Counter,
    pub partitions: Gauge,
    pub engine_lag_seconds: FloatGauge,
    pub latency_seconds: Family<QuantileLabel, FloatGauge>,
    pub latency_samples: Counter,
    pub reloads: Family<ResultLabel, Counter>,
    pub alerts_sent: Family<SinkLabel, Counter>,
    pub alert_send_errors: Family<SinkLabel, Counter>,
    pub alerts_dead: Family<SinkLabel, Counter>,
    pub outbox_pending: Gauge,
    pub outbox_dead: Gauge,
    pub alerts_suppressed: Counter,
    pub alerts_grouped: Counter,
    pub snapshot_bytes: Gauge,
    pub state_saves: Counter,
    pub snapshot_seconds: FloatGauge,
    pub kafka_lag: Family<PartitionLabels, Gauge>,
    pub kafka_rebalances: Family<SourceLabel, Counter>,
    ready: AtomicBool,
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
            records_rejected: Family::default(),
            udp_dropped: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            events: Family::default(),
            alerts: Family::default(),
            live_keys: Family::default(),
            late_events: Counter::default(),
            evicted_keys: Counter::default(),
            partitions: Gauge::default(),
            engine_lag_seconds: FloatGauge::default(),
            latency_seconds: Family::default(),
            latency_samples: Counter::default(),
            reloads: Family::default(),
            alerts_sent: Family::default(),
            alert_send_errors: Family::default(),
            alerts_dead: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_dead: Gauge::default(),
            alerts_suppressed: Counter::default(),
            alerts_grouped: Counter::default(),
            snapshot_bytes: Gauge::default(),
            state_saves: Counter::default(),
            snapshot_seconds: FloatGauge::default(),
            kafka_lag: Family::default(),
            kafka_rebalances: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "records_received",
            "Records read by sources",
            m.records_received.clone(),
        );
        registry.register(
            "records_rejected",
            "Records rejected, by reason",
            m.records_rejected.clone(),
        );
        registry.register(
            "udp_datagrams_dropped",
            "UDP datagrams dropped because the pipeline was full",
            m.udp_dropped.clone(),
        );
        registry.register(
            "connections_open",
            "Open TCP/TLS connections",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at max_connections or failing TLS",
            m.connections_refused.clone(),
        );
        registry.register("events", "Events decoded, by type", m.events.clone());
        registry.register(
            "alerts",
            "Alerts raised, by rule and severity",
            m.alerts.clone(),
        );
        registry.register("live_keys", "Live state keys per rule", m.live_keys.clone());
        registry.register(
            "late_events",
            "Events that arrived below the engine clock",
            m.late_events.clone(),
        );
        registry.register(
            "evicted_keys",
            "State keys evicted at the per-rule cap",
            m.evicted_keys.clone(),
        );
        registry.register(
            "input_partitions",
            "Input partitions (connections, senders, files) tracked by the clock",
            m.partitions.clone(),
        );
        registry.register(
            "engine_lag_seconds",
            "Wall clock minus engine clock",
            m.engine_lag_seconds.clone(),
        );
        registry.register(
            "ingest_to_alert_latency_seconds",
            "Latency from a record read off its source to its alert handed on, by quantile (all samples since start)",
            m.latency_seconds.clone(),
        );
        registry.register(
            "ingest_to_alert_latency_samples",
            "Alerts measured for the latency quantiles",
            m.latency_samples.clone(),
        );
        registry.register("reloads", "SIGHUP reloads, by result", m.reloads.clone());
        registry.register(
            "alerts_sent",
            "Alerts a sink accepted",
            m.alerts_sent.clone(),
        );
        registry.register(
            "alert_send_errors",
            "Failed delivery attempts, by sink",
            m.alert_send_errors.clone(),
        );
        registry.register(
            "alerts_dead",
            "Alerts moved to dead letters, by sink",
            m.alerts_dead.clone(),
        );
        registry.register(
            "outbox_pending_deliveries",
            "Deliveries waiting in the outbox",
            m.outbox_pending.clone(),
        );
        registry.register(
            "outbox_dead_letters",
            "Dead letters in the store",
            m.outbox_dead.clone(),
        );
        registry.register(
            "state_snapshot_bytes",
            "Size of the engine state last saved (units that changed)",
            m.snapshot_bytes.clone(),
        );
        registry.register(
            "state_saves",
            "Engine state saves committed to the store (with the positions they cover)",
            m.state_saves.clone(),
        );
        registry.register(
            "state_snapshot_seconds",
            "Time the engine spent serializing the last saved state",
            m.snapshot_seconds.clone(),
        );
        registry.register(
            "kafka_consumer_lag_records",
            "Records in a Kafka partition not yet read (high watermark minus position)",
            m.kafka_lag.clone(),
        );
        registry.register(
            "kafka_rebalances",
            "Kafka partition assignments and revocations, by source",
            m.kafka_rebalances.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn source(name: &str) -> SourceLabel {
        SourceLabel {
            source: name.to_owned(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
            "{} records, {} events, {} rejected, {} alerts, {} pending delivery, {} dead letters",
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

/// Serves `/metrics`, `/healthz` and `/readyz` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let render = metrics.clone();
    let ready = metrics.clone();
    let app = axum::Router::new()
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
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
