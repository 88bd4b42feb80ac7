//! The engine thread (DESIGN §1, §3): takes source batches from the one
//! bounded channel, runs each record through [`step::apply`] on its unit
//! (the syslog and file sources share one engine and clock; each Kafka
//! partition has its own), routes the alerts, hands them and the saved
//! state to the outbox writer in group commits, fires deadlines as time
//! passes and applies reloads. It reads the wall clock once per batch and
//! once per flush, and blocks on the outbox when it is full (backpressure
//! up to the sources).

pub mod monitor;
pub mod step;
mod units;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::alert::{self, Detection};
use crate::console::Console;
use crate::console::meter::Denial;
use crate::decode::{DecodeError, Decoder};
use crate::engine::clock::Wall;
use crate::engine::{DEFAULT_MAX_KEYS_PER_RULE, Engine, RuleSet};
use crate::event::{EventKind, Position};
use crate::outbox::watch::DeadLetters;
use crate::outbox::writer::{
    GROUP_COMMIT_ALERTS, OutboxHandle, OutboxMsg, StateWrite, WriterStopped,
};
use crate::router::{RouteState, Routed, Router};
use crate::source::file::SavedPosition;
use crate::source::{Batch, KafkaPartition, SourceMsg};
use crate::store::Store;
use crate::store::state::{self as checkpoint, CheckpointError, ROUTER_UNIT, Saved};
use crate::telemetry::RejectLog;
use crate::telemetry::metrics::{
    AlertLabels, FormatLabels, Metrics, QuantileLabel, RejectLabels, RuleLabel, TypeName,
};
use monitor::{Monitor, MonitorSettings, Observed, UnitView};
use step::{FutureBound, Record};
use units::{KafkaUnit, Unit, engine_config};
pub use units::{Restored, restore};

/// Records of a batch applied before the alerts raised so far are handed
/// on while the engine keeps up: ingest-to-alert latency is bounded by a
/// slice, not a batch.
const EMIT_EVERY_RECORDS: usize = 64;

/// Queued source batches taken before one outbox commit.
const GROUP_COMMIT_BATCHES: usize = 256;

/// Why the engine thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Snapshot(#[from] crate::engine::SnapshotError),
    #[error(transparent)]
    State(#[from] CheckpointError),
    #[error(transparent)]
    Outbox(#[from] WriterStopped),
    #[error("cannot serialize an alert: {0}")]
    Serialize(serde_json::Error),
    #[error("cannot read saved state: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("saved state `{unit}`: {source}")]
    Restore {
        unit: String,
        source: crate::engine::SnapshotError,
    },
    #[error("saved state `{0}` holds router state; the store is corrupt")]
    Corrupt(String),
    #[error("cannot start the engine runtime: {0}")]
    Runtime(std::io::Error),
}

/// Engine and pipeline settings (`[engine]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    pub allowed_lateness_ms: i64,
    pub idle_after: Duration,
    pub max_future_skew_ms: i64,
    pub max_keys_per_rule: usize,
    pub max_record_bytes: usize,
    /// Batches buffered between the sources and the engine.
    pub queue_capacity: usize,
    pub shutdown_grace: Duration,
    /// How often engine state is saved to the store (with the source
    /// positions it covers); also saved at shutdown.
    pub snapshot_interval: Duration,
    /// How long (engine time) a removed rule's state is kept in case the
    /// rule comes back.
    pub removed_rule_grace_ms: i64,
    /// A syslog partition whose newest event lags the wall clock more is
    /// left out of the engine clock (DESIGN §3, clock bounds).
    pub max_past_skew_ms: i64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            allowed_lateness_ms: 5_000,
            idle_after: Duration::from_secs(10),
            max_future_skew_ms: 5 * 60_000,
            max_keys_per_rule: DEFAULT_MAX_KEYS_PER_RULE,
            max_record_bytes: crate::decode::DEFAULT_MAX_RECORD_BYTES,
            queue_capacity: 1024,
            shutdown_grace: Duration::from_secs(10),
            snapshot_interval: Duration::from_secs(5),
            removed_rule_grace_ms: crate::engine::DEFAULT_REMOVED_RULE_GRACE_MS,
            max_past_skew_ms: 15 * 60_000,
        }
    }
}

/// The engine thread's settings: `[engine]`, the sources in configuration
/// order, the routes and the self-monitoring.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub engine: EngineSettings,
    pub sources: Vec<SourceInfo>,
    pub router: Router,
    pub monitor: MonitorSettings,
}

/// What the engine thread knows of a source: its name, its decoder,
/// whether it follows a file (whose position is saved with the state) and
/// how long it may be silent before `source_silent` (`None`: never).
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub name: String,
    pub decoder: Decoder,
    pub follows_file: bool,
    pub silent_after: Option<Duration>,
}

/// A request to the engine thread.
pub enum Control {
    Reload {
        rules: Arc<RuleSet>,
        /// The sources' decoders over the formats read again.
        decoders: Vec<Decoder>,
        settings: EngineSettings,
        done: oneshot::Sender<usize>,
    },
}

/// Latency histogram bounds: 1 µs to 60 s, 3 significant digits. `None`
/// only if hdrhistogram refused these constant bounds: latency is then
/// not exported, rather than the daemon panicking.
fn new_histogram() -> Option<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

/// The engine thread's state: decode, clocks, engines, alert output.
pub struct Pipeline {
    main: Unit,
    kafka: HashMap<KafkaPartition, KafkaUnit>,
    rules: Arc<RuleSet>,
    settings: EngineSettings,
    decoders: Vec<Decoder>,
    names: Vec<Arc<str>>,
    file_sources: Vec<bool>,
    metrics: Arc<Metrics>,
    outbox: OutboxHandle,
    store: Arc<Store>,
    routes: RouteState,
    /// Detections not yet rendered and routed.
    alerts: Vec<Detection>,
    /// Batches whose alerts are not in the outbox yet: (read at, alerts).
    awaiting: Vec<(Instant, u64)>,
    /// More batches were queued when this one was taken: alerts are
    /// grouped rather than handed on in slices.
    behind: bool,
    latency: Option<hdrhistogram::Histogram<u64>>,
    log: RejectLog,
    epoch: Instant,
    positions: BTreeMap<String, SavedPosition>,
    last_checkpoint: Instant,
    /// The router state as last saved (saved again only when it changes).
    saved_router: Vec<u8>,
    events: [Counter; EventKind::KNOWN.len() + 1],
    rejected: HashMap<(usize, &'static str), Counter>,
    /// Records that became events, per source (by index).
    decoded: Vec<Counter>,
    /// Unmapped records by source and the format that detected none.
    unmapped: HashMap<(usize, Arc<str>), Counter>,
    alert_counters: HashMap<String, Counter>,
    monitor: Monitor,
    /// Dead letters noted by the dispatchers, for the monitor.
    dead_letters: Arc<DeadLetters>,
    /// The web console's meter and recent alerts (`None`: no console).
    console: Option<Arc<Console>>,
}

impl Pipeline {
    /// The engine thread's state, from the settings, the sources (in
    /// configuration order), the routes and the state restored at start;
    /// `dead_letters` is where the dispatchers note theirs.
    pub fn new(
        config: PipelineConfig,
        rules: Arc<RuleSet>,
        metrics: Arc<Metrics>,
        (outbox, dead_letters): (OutboxHandle, Arc<DeadLetters>),
        store: Arc<Store>,
        restored: Restored,
    ) -> Pipeline {
        let PipelineConfig {
            engine: s,
            sources,
            router,
            monitor,
        } = config;
        let mut monitor = Monitor::new(
            monitor,
            sources
                .iter()
                .map(|src| (Arc::from(src.name.as_str()), src.silent_after))
                .collect(),
        );
        // A source that delivered before the restart is expected to
        // deliver again within its silent_after of this start.
        monitor.resume(&restored.delivering, crate::clock::now_ms());
        let events = std::array::from_fn(|i| {
            let name = EventKind::KNOWN.get(i).map_or("other", |k| k.name());
            metrics
                .events
                .get_or_create(&TypeName {
                    r#type: name.to_owned(),
                })
                .clone()
        });
        let decoded = sources
            .iter()
            .map(|src| {
                metrics
                    .records_decoded
                    .get_or_create(&Metrics::source(&src.name))
                    .clone()
            })
            .collect();
        let epoch = Instant::now();
        let (main, positions) = match restored.main {
            Some((engine, saved)) => (Unit::new(engine, &s, 0), saved.files),
            None => (
                Unit::new(Engine::new(rules.clone(), engine_config(&s)), &s, 0),
                BTreeMap::new(),
            ),
        };
        let mut routes = RouteState::new(router);
        routes.restore_repeat_state(restored.router);
        let saved_router = checkpoint::encode(ROUTER_UNIT, &Saved::Router(routes.repeat_state()))
            .unwrap_or_default();
        Pipeline {
            main,
            kafka: HashMap::new(),
            rules,
            settings: s.clone(),
            decoders: sources.iter().map(|src| src.decoder.clone()).collect(),
            names: sources
                .iter()
                .map(|src| Arc::from(src.name.as_str()))
                .collect(),
            file_sources: sources.iter().map(|src| src.follows_file).collect(),
            metrics,
            outbox,
            store,
            routes,
            alerts: Vec::new(),
            awaiting: Vec::new(),
            behind: false,
            latency: new_histogram(),
            log: RejectLog::new(10),
            epoch,
            positions,
            last_checkpoint: epoch,
            saved_router,
            events,
            rejected: HashMap::new(),
            decoded,
            unmapped: HashMap::new(),
            alert_counters: HashMap::new(),
            monitor,
            dead_letters,
            console: None,
        }
    }

    /// Feeds the console: denied tool calls and every alert raised.
    pub fn with_console(mut self, console: Arc<Console>) -> Pipeline {
        self.console = Some(console);
        self
    }

    /// Runs until every source has hung up, then drains: the last alerts
    /// and all state go to the outbox, and the writer is closed.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<SourceMsg>,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<(), PipelineError> {
        // Clocks are checked every second, or as often as state is saved.
        let period = self.settings.snapshot_interval.min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.behind = !rx.is_empty();
                    self.message(msg)?;
                    // Group commit: take what is already queued, then put all
                    // of its alerts into the outbox in one transaction.
                    for _ in 0..GROUP_COMMIT_BATCHES {
                        if self.alerts.len() >= GROUP_COMMIT_ALERTS {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(msg) => self.message(msg)?,
                            Err(_) => break,
                        }
                    }
                    self.emit()?;
                }
                Some(c) = control.recv() => self.control(c),
                _ = tick.tick() => self.tick()?,
            }
        }
        self.emit()?;
        // Open group windows are closed early rather than lost.
        self.flush_groups(true)?;
        // Drained: every accepted record went through the engine. The clock
        // is not advanced further; pending deadlines stay pending, in the
        // state saved now with the positions it covers.
        self.checkpoint(true, None)?;
        // Every alert and the state are in the store once the writer has
        // finished.
        self.outbox.close();
        self.update_gauges();
        Ok(())
    }

    fn message(&mut self, msg: SourceMsg) -> Result<(), PipelineError> {
        match msg {
            SourceMsg::Batch(b) => self.batch(b),
            SourceMsg::Closed(p) => {
                self.main.clock.remove(p);
                Ok(())
            }
            SourceMsg::Assign { source, partitions } => {
                for (topic, partition) in partitions {
                    let key = (source, topic, partition);
                    if !self.kafka.contains_key(&key) {
                        let unit = self.load_kafka_unit(&key);
                        self.kafka.insert(key, unit);
                    }
                }
                Ok(())
            }
            SourceMsg::Release {
                source,
                partitions,
                done,
            } => {
                // Alerts first, then the released units' state with them.
                self.emit()?;
                let mut states = Vec::new();
                let mut offsets = Vec::new();
                for (topic, partition) in partitions {
                    let key = (source, topic, partition);
                    if let Some(mut ku) = self.kafka.remove(&key) {
                        ku.unit.dirty = true;
                        self.save_kafka_unit(&key, &mut ku, &mut states, &mut offsets)?;
                    }
                }
                Ok(self.outbox.send(OutboxMsg::State(StateWrite {
                    states,
                    offsets,
                    done: Some(done),
                }))?)
            }
        }
    }

    fn now_mono(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    /// Counts a rejected record and logs why.
    fn reject(&mut self, source: usize, err: &DecodeError, pos: &dyn std::fmt::Display) {
        self.count_rejected(source, err.reason());
        self.log.reject(err.reason(), pos, err);
    }

    fn count_rejected(&mut self, source: usize, reason: &'static str) {
        let name = &self.names[source];
        self.rejected
            .entry((source, reason))
            .or_insert_with(|| {
                self.metrics
                    .records_rejected
                    .get_or_create(&RejectLabels {
                        source: name.to_string(),
                        reason: reason.to_owned(),
                    })
                    .clone()
            })
            .inc();
    }

    fn unmapped(&mut self, source: usize, format: Arc<str>) {
        let name = &self.names[source];
        let metrics = &self.metrics;
        self.unmapped
            .entry((source, format))
            .or_insert_with_key(|(_, format)| {
                metrics
                    .records_unmapped
                    .get_or_create(&FormatLabels {
                        source: name.to_string(),
                        format: format.to_string(),
                    })
                    .clone()
            })
            .inc();
    }

    fn batch(&mut self, b: Batch) -> Result<(), PipelineError> {
        let now = self.now_mono();
        let wall = Wall {
            now_ms: crate::clock::now_ms(),
            // Files and Kafka resume from positions and catch up backlogs:
            // only live syslog partitions are bounded in the past.
            bounded: b.file.is_none() && b.kafka.is_none(),
        };
        let bound = FutureBound {
            max_ts: wall.now_ms.saturating_add(self.settings.max_future_skew_ms),
            max_skew_ms: self.settings.max_future_skew_ms,
        };
        let mut triggered = 0usize;
        let kafka_key = b
            .kafka
            .as_ref()
            .map(|k| (b.source, k.topic.clone(), k.partition));
        if let Some(key) = &kafka_key
            && !self.kafka.contains_key(key)
        {
            let unit = self.load_kafka_unit(key);
            self.kafka.insert(key.clone(), unit);
        }
        // The unit is taken out while the batch is applied (no aliasing
        // with the rest of the pipeline), and put back after.
        let mut ku = match &kafka_key {
            Some(key) => self.kafka.remove(key),
            None => None,
        };
        let mut applied_to = None;
        if !b.frames.frames.is_empty() {
            self.monitor.arrived(b.source, wall.now_ms);
            match &mut ku {
                Some(k) => k.unit.last_record_ms = Some(wall.now_ms),
                None => self.main.last_record_ms = Some(wall.now_ms),
            }
        }
        for (i, frame) in b.frames.frames.iter().enumerate() {
            let end = b.frames.ends.get(i).copied().unwrap_or(0);
            let pos = position(&b, end, &self.names[b.source]);
            // A Kafka record is consumed whether it is applied or rejected
            // (a poison message never blocks its partition).
            applied_to = Some(end as i64 + 1);
            let record = Record::of(&b.frames, frame);
            let (unit, partition) = match &mut ku {
                Some(k) => (&mut k.unit, 0),
                None => (&mut self.main, b.partition),
            };
            let Unit {
                engine,
                clock,
                dirty,
                ..
            } = unit;
            let mut rejected = Vec::new();
            let events = &self.events;
            let console = self.console.as_deref();
            let applied = step::apply(
                record,
                &self.decoders[b.source],
                Some(bound),
                |ts| clock.observe_live(partition, ts, now, wall),
                engine,
                &pos,
                &mut self.alerts,
                &mut |outcome, at| match outcome {
                    Ok(applied) => {
                        *dirty = true;
                        triggered += applied.raised;
                        events[step::kind_index(applied.kind)].inc();
                        if let (Some(c), Some(d)) = (console, &applied.denied) {
                            c.deny(Denial {
                                ts: d.ts,
                                tenant: &d.tenant,
                                agent_id: d.agent_id.as_deref(),
                                session_id: d.session_id.as_deref(),
                            });
                        }
                    }
                    Err(err) => rejected.push((err, at.clone())),
                },
            );
            // Each record counts once (received = decoded + unmapped +
            // rejected): a fanned-out record with a bad event is rejected
            // with the first one's reason, and every bad event is logged.
            match applied {
                Ok(()) if rejected.is_empty() => {
                    self.decoded[b.source].inc();
                }
                Ok(()) => {
                    self.count_rejected(b.source, rejected[0].0.reason());
                    for (err, at) in rejected {
                        self.log.reject(err.reason(), &at, &err);
                    }
                }
                Err(DecodeError::Unmapped(format)) => self.unmapped(b.source, format),
                Err(err) => self.reject(b.source, &err, &pos),
            }
            // While the engine keeps up, the alerts of a large batch leave
            // in slices, so the first ones do not wait for the rest of it
            // (behind, it groups them: fewer, larger commits).
            if triggered > 0 && !self.behind && (i + 1) % EMIT_EVERY_RECORDS == 0 {
                self.awaiting.push((b.received, triggered as u64));
                triggered = 0;
                self.emit()?;
            }
        }
        if let (Some(key), Some(mut k)) = (kafka_key, ku) {
            if let Some(next) = applied_to {
                k.next_offset = Some(next);
                k.unit.dirty = true;
            }
            self.kafka.insert(key, k);
        }
        self.note_file_position(&b);
        if triggered > 0 {
            self.awaiting.push((b.received, triggered as u64));
        }
        Ok(())
    }

    /// A file source's batch: where reading resumes after it.
    fn note_file_position(&mut self, b: &Batch) {
        if let Some(f) = &b.file
            && self.file_sources.get(b.source).copied().unwrap_or(false)
            && let Some(&end) = b.frames.ends.last()
        {
            self.positions.insert(
                self.names[b.source].to_string(),
                SavedPosition {
                    dev: f.dev,
                    ino: f.ino,
                    offset: end,
                    head: Some(f.head),
                },
            );
            self.main.dirty = true;
        }
    }

    /// Puts the alerts raised so far into the outbox (one durable
    /// transaction) and wakes the sinks.
    fn emit(&mut self) -> Result<(), PipelineError> {
        if self.alerts.is_empty() {
            return Ok(());
        }
        if !self.monitor.state_pressure() {
            self.alerts
                .retain(|d| &*d.rule.id != crate::engine::STATE_PRESSURE_RULE);
        }
        let now = crate::clock::now_ms();
        let mut routed = Routed::default();
        let rendered: Vec<alert::Alert> = self
            .alerts
            .drain(..)
            .map(|d| alert::render(d, Some(now)))
            .collect();
        if let Some(c) = &self.console {
            c.raised(&rendered);
        }
        for alert in rendered {
            let metrics = &self.metrics;
            self.alert_counters
                .entry(alert.rule.clone())
                .or_insert_with(|| {
                    metrics
                        .alerts
                        .get_or_create(&AlertLabels {
                            rule: alert.rule.clone(),
                            severity: alert.severity.name().to_owned(),
                        })
                        .clone()
                })
                .inc();
            self.routes.route(alert, now, &mut routed);
        }
        self.deliver(routed)?;
        // Latency ends here: the alerts are routed and handed to the outbox
        // writer (which commits them before any sink sees them).
        for (received, n) in self.awaiting.drain(..) {
            let us = received.elapsed().as_micros().clamp(1, 60_000_000) as u64;
            if let Some(h) = &mut self.latency {
                let _ = h.record_n(us, n);
            }
            self.metrics.latency_samples.inc_by(n);
        }
        Ok(())
    }

    /// Puts routed alerts into the outbox.
    fn deliver(&mut self, routed: Routed) -> Result<(), PipelineError> {
        self.metrics.alerts_suppressed.inc_by(routed.suppressed);
        self.metrics.alerts_grouped.inc_by(routed.grouped);
        if routed.deliver.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(routed.deliver.len());
        for (alert, sinks) in routed.deliver {
            let json = serde_json::to_vec(&alert).map_err(PipelineError::Serialize)?;
            rows.push((alert.id, json, sinks));
        }
        Ok(self.outbox.send(OutboxMsg::Rows(rows))?)
    }

    /// Sends the digests of group windows that closed (all with `all`).
    fn flush_groups(&mut self, all: bool) -> Result<(), PipelineError> {
        let mut routed = Routed::default();
        self.routes.flush(crate::clock::now_ms(), all, &mut routed);
        self.deliver(routed)
    }

    fn tick(&mut self) -> Result<(), PipelineError> {
        let now = self.now_mono();
        let wall = crate::clock::now_ms();
        let alerts = &mut self.alerts;
        let units =
            std::iter::once(&mut self.main).chain(self.kafka.values_mut().map(|k| &mut k.unit));
        let mut latest = None;
        for unit in units {
            if let Some(c) = unit.clock.tick_live(now, wall)
                && unit.engine.clock().is_none_or(|old| c > old)
            {
                unit.engine.advance_to(c, alerts);
                unit.dirty = true;
            }
            latest = latest.max(unit.engine.clock());
        }
        if let (Some(console), Some(clock)) = (&self.console, latest) {
            console.advance(clock);
        }
        self.watch(wall);
        self.emit()?;
        self.flush_groups(false)?;
        self.update_gauges();
        if self.last_checkpoint.elapsed() >= self.settings.snapshot_interval {
            self.checkpoint(false, None)?;
        }
        Ok(())
    }

    /// The self-monitoring's alerts due at wall ms `now`.
    fn watch(&mut self, now: i64) {
        let kafka: Vec<(String, String, &Unit)> = self
            .kafka
            .iter()
            .map(|(k, ku)| {
                let source = &self.names[k.0];
                let name = checkpoint::kafka_unit(source, &k.1, k.2);
                (name, format!("kafka/{source}"), &ku.unit)
            })
            .collect();
        let main = (checkpoint::MAIN_UNIT, checkpoint::MAIN_UNIT, &self.main);
        let units: Vec<UnitView<'_>> = std::iter::once(main)
            .chain(
                kafka
                    .iter()
                    .map(|(n, g, unit)| (n.as_str(), g.as_str(), *unit)),
            )
            .map(|(name, group, unit)| UnitView {
                name,
                group,
                clock: unit.engine.clock(),
                last_record_ms: unit.last_record_ms,
            })
            .collect();
        let seen = Observed {
            now_ms: now,
            arriving_ms: self.settings.idle_after.as_millis() as i64,
            units: &units,
            dead_letters: self.dead_letters.take(),
            outage: self.outbox.outage(),
        };
        self.monitor.check(seen, &mut self.alerts);
    }

    fn update_gauges(&mut self) {
        let m = &self.metrics;
        let mut live: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        let mut clock: Option<i64> = None;
        let units =
            std::iter::once(&mut self.main).chain(self.kafka.values_mut().map(|k| &mut k.unit));
        for unit in units {
            for (rule, n) in unit.engine.live_keys() {
                *live.entry(rule).or_default() += n;
            }
            let late = unit.engine.late_events();
            m.late_events
                .inc_by(late.saturating_sub(unit.late_reported));
            unit.late_reported = late;
            let evicted = unit.engine.evicted_keys();
            m.evicted_keys
                .inc_by(evicted.saturating_sub(unit.evicted_reported));
            unit.evicted_reported = evicted;
            if let Some(c) = unit.engine.clock() {
                clock = Some(clock.map_or(c, |m| m.min(c)));
            }
        }
        for (rule, n) in live {
            m.live_keys
                .get_or_create(&RuleLabel {
                    rule: rule.to_string(),
                })
                .set(n as i64);
        }
        m.partitions
            .set((self.main.clock.partitions() + self.kafka.len()) as i64);
        m.stale_partitions
            .set(self.main.clock.stale_partitions() as i64);
        if let Some(c) = clock {
            let wall = crate::clock::now_ms();
            m.engine_lag_seconds.set((wall - c) as f64 / 1000.0);
        }
        if let Some(latency) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            for q in [0.5, 0.9, 0.99, 0.999] {
                let secs = latency.value_at_quantile(q) as f64 / 1e6;
                m.latency_seconds
                    .get_or_create(&QuantileLabel {
                        quantile: q.to_string(),
                    })
                    .set(secs);
            }
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Reload {
                rules,
                decoders,
                settings,
                done,
            } => {
                if decoders.len() == self.decoders.len() {
                    self.decoders = decoders;
                }
                let cfg = engine_config(&settings);
                let units = std::iter::once(&mut self.main)
                    .chain(self.kafka.values_mut().map(|k| &mut k.unit));
                let mut kept = None;
                for unit in units {
                    let k = unit.engine.reload(rules.clone(), cfg);
                    kept.get_or_insert(k);
                    unit.clock.set_params(
                        settings.allowed_lateness_ms,
                        settings.idle_after.as_millis() as i64,
                    );
                    unit.clock.set_max_past_skew(settings.max_past_skew_ms);
                    unit.dirty = true;
                }
                for (rule, keys, until) in self.main.engine.parked_rules() {
                    tracing::warn!(
                        rule,
                        keys,
                        until_engine_ms = until,
                        "rule not in the new rule set: its state is kept for engine.removed_rule_grace in case it comes back"
                    );
                }
                if let Some(c) = &self.console {
                    c.set_rules(&rules);
                }
                self.rules = rules;
                self.settings.removed_rule_grace_ms = settings.removed_rule_grace_ms;
                self.settings.allowed_lateness_ms = settings.allowed_lateness_ms;
                self.settings.idle_after = settings.idle_after;
                self.settings.max_future_skew_ms = settings.max_future_skew_ms;
                self.settings.max_past_skew_ms = settings.max_past_skew_ms;
                self.settings.max_keys_per_rule = settings.max_keys_per_rule;
                self.settings.snapshot_interval = settings.snapshot_interval;
                let _ = done.send(kept.unwrap_or(0));
            }
        }
    }
}

/// Where the record of a batch ending at `end` came from.
fn position(b: &Batch, end: u64, source: &Arc<str>) -> Position {
    match (&b.file, &b.kafka, b.peer) {
        (Some(f), _, _) => Position::FileOffset {
            path: f.path.clone(),
            offset: end,
        },
        (None, Some(k), _) => Position::Kafka {
            topic: k.topic.clone(),
            partition: k.partition,
            offset: end as i64,
        },
        (None, None, Some(peer)) => Position::Peer {
            source: source.clone(),
            peer,
        },
        (None, None, None) => Position::Stdin { line: 0 },
    }
}

/// Starts the engine thread (with a current-thread runtime for its timers).
pub fn spawn(
    pipeline: Pipeline,
    rx: mpsc::Receiver<SourceMsg>,
    control: mpsc::Receiver<Control>,
) -> std::io::Result<std::thread::JoinHandle<Result<(), PipelineError>>> {
    std::thread::Builder::new()
        .name("engine".to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(PipelineError::Runtime)?;
            rt.block_on(pipeline.run(rx, control))
        })
}
