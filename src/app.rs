//! The composition root of `mcp-alertd run`: builds every stage from a
//! validated [`Config`], wires them with one bounded channel, and owns the
//! lifecycle: bind everything before reporting ready, SIGHUP reloads rules
//! and engine settings atomically, SIGTERM/SIGINT stop the sources, drain
//! what they accepted through the engine, flush alerts and exit within the
//! grace period.
//!
//! The engine runs on a thread of its own (it is CPU-bound and writes
//! alerts with blocking I/O); sources and the metrics endpoint run on a
//! small tokio runtime.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::Alert;
use crate::config::{Config, EngineSettings, OutboxSettings, SourceKind};
use crate::decode::{DecodeError, Decoder};
use crate::engine::clock::LiveClock;
use crate::engine::{Engine, EngineConfig, RuleSet};
use crate::event::{EventKind, Position};
use crate::router::{RouteState, Routed};
use crate::sink::{self, SharedWriter, Sink};
use crate::source::file::{FileSource, SavedPosition};
use crate::source::framing::FrameRef;
use crate::source::syslog_tcp::TcpLimits;
use crate::source::{Batch, SourceCtx, SourceMsg, file, syslog_tcp, syslog_udp};
use crate::store::{Enqueue, Store};
use crate::telemetry::RejectLog;
use crate::telemetry::metrics::{
    AlertLabels, Metrics, QuantileLabel, RejectLabels, RuleLabel, TypeName,
};

/// Queued source batches taken before one outbox commit.
const GROUP_COMMIT_BATCHES: usize = 256;
/// Alerts buffered at most before they go to the outbox.
const GROUP_COMMIT_ALERTS: usize = 4096;

/// The file (in the state directory) holding file sources' positions.
const POSITIONS_FILE: &str = "file-positions.json";

/// Loads the rules a configuration names (its `rules_dir`, else embedded).
pub fn load_rules(config: &Config) -> Result<RuleSet, crate::engine::RuleSetError> {
    crate::cli::load_rules(config.rules_dir.as_deref())
}

/// A request to the engine thread.
enum Control {
    Reload {
        rules: Arc<RuleSet>,
        settings: EngineSettings,
        done: oneshot::Sender<usize>,
    },
}

/// A running daemon (in process): its bound addresses and its controls.
pub struct Daemon {
    addrs: Vec<(String, SocketAddr)>,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    config: Config,
    control: mpsc::Sender<Control>,
    cancel_sources: CancellationToken,
    cancel_metrics: CancellationToken,
    cancel_delivery: CancellationToken,
    tracker: TaskTracker,
    delivery: TaskTracker,
    reopen: Arc<AtomicU64>,
    store: Arc<Store>,
    tx: Option<mpsc::Sender<SourceMsg>>,
    engine: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Daemon {
    /// Binds every source and the metrics endpoint, then starts the engine
    /// and the sources. Alerts are written to `out` as JSON lines.
    pub async fn start(
        config: Config,
        rules: RuleSet,
        out: Box<dyn Write + Send>,
    ) -> Result<Daemon> {
        let metrics = Arc::new(Metrics::new());
        let settings = config.engine.clone();
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let (control, control_rx) = mpsc::channel(4);
        let cancel_sources = CancellationToken::new();
        let cancel_metrics = CancellationToken::new();
        let tracker = TaskTracker::new();

        let saved = load_positions(&config.state_dir);
        let store = Arc::new(Store::open(&config.state_dir).context("cannot open the store")?);
        let writer: SharedWriter = Arc::new(std::sync::Mutex::new(out));
        let reopen = Arc::new(AtomicU64::new(0));
        let mut sinks = Vec::new();
        for cfg in &config.sinks {
            let sink = Sink::build(cfg, &writer, &reopen).map_err(|e| anyhow::anyhow!(e))?;
            sinks.push((sink, sink::limiter(cfg), Arc::new(Notify::new())));
        }
        let cancel_delivery = CancellationToken::new();
        let delivery = TaskTracker::new();
        let mut addrs = Vec::new();
        let mut starters: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        for (index, source) in config.sources.iter().enumerate() {
            let ctx = SourceCtx {
                index,
                name: source.name.as_str().into(),
                label: Metrics::source(&source.name),
                max_record_bytes: settings.max_record_bytes,
                tx: tx.clone(),
                metrics: metrics.clone(),
                cancel: cancel_sources.clone(),
            };
            let what = format!("source `{}` ({})", source.name, source.type_name());
            match &source.kind {
                SourceKind::SyslogUdp {
                    address,
                    receive_buffer_bytes,
                } => {
                    let socket = syslog_udp::bind(*address, *receive_buffer_bytes)
                        .with_context(|| format!("{what}: cannot listen on udp {address}"))?;
                    let local = socket.local_addr()?;
                    addrs.push((source.name.clone(), local));
                    tracing::info!(source = %source.name, address = %local, "listening (syslog over UDP)");
                    let t = tracker.clone();
                    starters.push(Box::new(move || {
                        t.spawn(syslog_udp::run(ctx, socket));
                    }));
                }
                SourceKind::SyslogTcp {
                    address,
                    max_connections,
                    idle_timeout,
                    tls,
                } => {
                    let acceptor = match tls {
                        Some(t) => Some(
                            syslog_tcp::tls_acceptor(t).with_context(|| format!("{what}: TLS"))?,
                        ),
                        None => None,
                    };
                    let listener = tokio::net::TcpListener::bind(address)
                        .await
                        .with_context(|| format!("{what}: cannot listen on tcp {address}"))?;
                    let local = listener.local_addr()?;
                    addrs.push((source.name.clone(), local));
                    tracing::info!(source = %source.name, address = %local, tls = acceptor.is_some(), "listening (syslog over TCP)");
                    let limits = TcpLimits {
                        max_connections: *max_connections,
                        idle_timeout: *idle_timeout,
                    };
                    let t = tracker.clone();
                    starters.push(Box::new(move || {
                        let inner = t.clone();
                        t.spawn(syslog_tcp::run(ctx, listener, limits, acceptor, inner));
                    }));
                }
                SourceKind::File {
                    path,
                    read_from,
                    poll_interval,
                } => {
                    let src = FileSource {
                        path: path.clone(),
                        read_from: *read_from,
                        poll_interval: *poll_interval,
                        saved: saved.get(&source.name).copied(),
                    };
                    tracing::info!(source = %source.name, path = %path.display(), "following file");
                    let t = tracker.clone();
                    starters.push(Box::new(move || {
                        t.spawn(file::run(ctx, src));
                    }));
                }
            }
        }
        let metrics_addr = match config.metrics {
            Some(addr) => {
                let listener = crate::telemetry::metrics::bind(addr)
                    .await
                    .with_context(|| format!("metrics: cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                tracing::info!(address = %local, "serving /metrics, /healthz, /readyz");
                let m = metrics.clone();
                let c = cancel_metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::telemetry::metrics::serve(listener, m, c).await {
                        tracing::error!("metrics endpoint failed: {e}");
                    }
                });
                Some(local)
            }
            None => None,
        };

        let wakes: Vec<(String, Arc<Notify>)> = sinks
            .iter()
            .map(|(s, _, w)| (s.name.clone(), w.clone()))
            .collect();
        for (sink, limiter, wake) in sinks {
            delivery.spawn(sink::dispatch(
                sink,
                store.clone(),
                config.outbox.clone(),
                limiter,
                wake,
                metrics.clone(),
                cancel_delivery.clone(),
            ));
        }
        let outbox = Outbox {
            store: store.clone(),
            settings: config.outbox.clone(),
            wakes,
            pending: 0,
            pruned_ms: 0,
        };
        // The outbox writer commits on a thread of its own, so the engine
        // keeps detecting while a transaction is fsync'ed.
        let (outbox_tx, outbox_rx) = std::sync::mpsc::sync_channel::<Vec<Row>>(OUTBOX_QUEUE);
        let writer_metrics = metrics.clone();
        let writer = std::thread::Builder::new()
            .name("outbox".to_owned())
            .spawn(move || outbox.run(outbox_rx, &writer_metrics))
            .context("cannot start the outbox thread")?;
        let handle = OutboxHandle {
            tx: Some(outbox_tx),
            thread: Some(writer),
        };
        let pipeline = Pipeline::new(&config, Arc::new(rules), metrics.clone(), handle, saved);
        let engine = std::thread::Builder::new()
            .name("engine".to_owned())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .context("engine runtime")?;
                rt.block_on(pipeline.run(rx, control_rx))
            })
            .context("cannot start the engine thread")?;
        for start in starters {
            start();
        }
        metrics.set_ready(true);
        Ok(Daemon {
            addrs,
            metrics_addr,
            metrics,
            config,
            control,
            cancel_sources,
            cancel_metrics,
            cancel_delivery,
            tracker,
            delivery,
            reopen,
            store,
            tx: Some(tx),
            engine: Some(engine),
        })
    }

    /// The bound address of a source (port 0 resolved).
    pub fn local_addr(&self, source: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == source)
            .map(|(_, a)| *a)
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a new rule set and engine settings; returns how many rules
    /// kept their state. Source and metrics settings apply at restart.
    pub async fn reload(&mut self, config: Config, rules: RuleSet) -> Result<usize> {
        // File sinks reopen their files (logrotate moved them).
        self.reopen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if config.sources != self.config.sources
            || config.metrics != self.config.metrics
            || config.state_dir != self.config.state_dir
            || config.sinks != self.config.sinks
            || config.router != self.config.router
            || config.outbox != self.config.outbox
        {
            tracing::warn!(
                "changes to sources, sinks, routes, outbox, metrics or state_dir take effect at the next start"
            );
        }
        let (done, kept) = oneshot::channel();
        self.control
            .send(Control::Reload {
                rules: Arc::new(rules),
                settings: config.engine.clone(),
                done,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        let kept = kept
            .await
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        self.config.engine = config.engine;
        self.config.rules_dir = config.rules_dir;
        Ok(kept)
    }

    /// Stops the sources, drains what they accepted through the engine,
    /// flushes alerts, and stops the metrics endpoint, within the grace
    /// period. Records not yet read from sockets or files are not accepted.
    pub async fn shutdown(mut self) -> Result<()> {
        let grace = self.config.engine.shutdown_grace;
        let deadline = Instant::now() + grace;
        self.metrics.set_ready(false);
        self.cancel_sources.cancel();
        self.tracker.close();
        drop(self.tx.take());
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("sources did not stop within the grace period");
        }
        let result = match self.engine.take() {
            Some(handle) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, tokio::task::spawn_blocking(move || handle.join()))
                    .await
                {
                    Ok(Ok(Ok(r))) => r,
                    Ok(_) => Err(anyhow::anyhow!("the engine thread panicked")),
                    Err(_) => Err(anyhow::anyhow!(
                        "the engine did not drain within the grace period ({grace:?})"
                    )),
                }
            }
            None => Ok(()),
        };
        // Deliver what can be delivered in the time left; the rest stays in
        // the outbox for the next start.
        self.delivery.close();
        let left = deadline.saturating_duration_since(Instant::now());
        let pending = || self.store.counts().map_or(0, |(_, p, _)| p);
        let drained = tokio::time::timeout(left, async {
            while pending() > 0 && !self.delivery.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                pending = pending(),
                "undelivered alerts stay in the outbox for the next start"
            );
        }
        self.cancel_delivery.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.delivery.wait()).await;
        self.cancel_metrics.cancel();
        result
    }
}

/// `mcp-alertd run`: the daemon until SIGTERM/SIGINT; SIGHUP reloads.
pub fn run(config_path: Option<PathBuf>) -> Result<u8> {
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::builtin(),
    };
    let rules = load_rules(&config)?;
    tracing::info!(
        rules = rules.rules().len(),
        origin = %rules.origin,
        config = %config_path.as_deref().map_or("(built-in defaults)".into(), |p| p.display().to_string()),
        "starting"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mcp-alertd")
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let stdout: Box<dyn Write + Send> = Box::new(std::io::stdout());
        let mut daemon = Daemon::start(config, rules, stdout).await?;
        tracing::info!("ready");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&mut daemon, config_path.as_deref()).await,
            }
        }
        tracing::info!("stopping: draining accepted records");
        daemon.shutdown().await?;
        tracing::info!("stopped");
        Ok(0)
    })
}

async fn reload(daemon: &mut Daemon, path: Option<&Path>) {
    let loaded = match path {
        Some(p) => Config::load(p).map_err(anyhow::Error::from),
        None => Ok(Config::builtin()),
    }
    .and_then(|c| load_rules(&c).map(|r| (c, r)).map_err(anyhow::Error::from));
    let result = match loaded {
        Ok((config, rules)) => {
            let n = rules.rules().len();
            daemon.reload(config, rules).await.map(|kept| (n, kept))
        }
        Err(e) => Err(e),
    };
    let label = |r: &str| crate::telemetry::metrics::ResultLabel {
        result: r.to_owned(),
    };
    match result {
        Ok((n, kept)) => {
            daemon.metrics().reloads.get_or_create(&label("ok")).inc();
            tracing::info!(rules = n, kept_state = kept, "reloaded");
        }
        Err(e) => {
            daemon
                .metrics()
                .reloads
                .get_or_create(&label("error"))
                .inc();
            tracing::error!("reload refused, the running rules stay: {e:#}");
        }
    }
}

fn load_positions(state_dir: &Path) -> HashMap<String, SavedPosition> {
    let path = state_dir.join(POSITIONS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "ignoring unreadable file positions: {e}");
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    }
}

fn save_positions(
    state_dir: &Path,
    positions: &BTreeMap<String, SavedPosition>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{POSITIONS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(positions)?)?;
    std::fs::rename(&tmp, state_dir.join(POSITIONS_FILE))
}

/// Latency histogram bounds: 1 µs to 60 s, 3 significant digits. `None`
/// only if hdrhistogram refused these constant bounds: latency is then
/// not exported, rather than the daemon panicking.
fn new_histogram() -> Option<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

/// The engine thread's state: decode, clock, engine, alert output.
struct Pipeline {
    engine: Engine,
    clock: LiveClock,
    settings: EngineSettings,
    decoders: Vec<Decoder>,
    names: Vec<Arc<str>>,
    file_sources: Vec<bool>,
    metrics: Arc<Metrics>,
    outbox: OutboxHandle,
    routes: RouteState,
    alerts: Vec<Alert>,
    /// Batches whose alerts are not in the outbox yet: (read at, alerts).
    awaiting: Vec<(Instant, u64)>,
    latency: Option<hdrhistogram::Histogram<u64>>,
    log: RejectLog,
    epoch: Instant,
    state_dir: PathBuf,
    positions: BTreeMap<String, SavedPosition>,
    positions_dirty: bool,
    events: [Counter; EventKind::KNOWN.len() + 1],
    rejected: HashMap<(usize, &'static str), Counter>,
    alert_counters: HashMap<String, Counter>,
    late_reported: u64,
    evicted_reported: u64,
}

impl Pipeline {
    fn new(
        config: &Config,
        rules: Arc<RuleSet>,
        metrics: Arc<Metrics>,
        outbox: OutboxHandle,
        saved: HashMap<String, SavedPosition>,
    ) -> Pipeline {
        let s = &config.engine;
        let events = std::array::from_fn(|i| {
            let name = EventKind::KNOWN.get(i).map_or("other", |k| k.name());
            metrics
                .events
                .get_or_create(&TypeName {
                    r#type: name.to_owned(),
                })
                .clone()
        });
        Pipeline {
            engine: Engine::new(
                rules,
                EngineConfig {
                    max_keys_per_rule: s.max_keys_per_rule,
                },
            ),
            clock: LiveClock::new(s.allowed_lateness_ms, s.idle_after.as_millis() as i64),
            settings: s.clone(),
            decoders: config
                .sources
                .iter()
                .map(|src| Decoder::new(src.format, s.max_record_bytes))
                .collect(),
            names: config
                .sources
                .iter()
                .map(|src| Arc::from(src.name.as_str()))
                .collect(),
            file_sources: config
                .sources
                .iter()
                .map(|src| matches!(src.kind, SourceKind::File { .. }))
                .collect(),
            metrics,
            outbox,
            routes: RouteState::new(config.router.clone()),
            alerts: Vec::new(),
            awaiting: Vec::new(),
            latency: new_histogram(),
            log: RejectLog::new(10),
            epoch: Instant::now(),
            state_dir: config.state_dir.clone(),
            positions: saved.into_iter().collect(),
            positions_dirty: false,
            events,
            rejected: HashMap::new(),
            alert_counters: HashMap::new(),
            late_reported: 0,
            evicted_reported: 0,
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<SourceMsg>,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
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
        // Every alert is in the outbox once its writer has finished.
        self.outbox.close();
        // Drained: every accepted record went through the engine and its
        // alerts are in the outbox. The clock is not advanced further;
        // pending deadlines stay pending.
        self.update_gauges();
        self.save_positions();
        Ok(())
    }

    fn message(&mut self, msg: SourceMsg) -> Result<()> {
        match msg {
            SourceMsg::Batch(b) => self.batch(b),
            SourceMsg::Closed(p) => {
                self.clock.remove(p);
                Ok(())
            }
        }
    }

    fn now_mono(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    fn reject(&mut self, source: usize, err: &DecodeError, pos: &dyn std::fmt::Display) {
        let reason = err.reason();
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
        self.log.reject(reason, pos, err);
    }

    fn batch(&mut self, b: Batch) -> Result<()> {
        let now = self.now_mono();
        let wall = jiff::Timestamp::now().as_millisecond();
        let max_ts = wall.saturating_add(self.settings.max_future_skew_ms);
        let mut triggered = 0usize;
        for (i, frame) in b.frames.frames.iter().enumerate() {
            let pos = match (&b.file, b.peer) {
                (Some(f), _) => Position::FileOffset {
                    path: f.path.clone(),
                    offset: b.frames.ends.get(i).copied().unwrap_or(0),
                },
                (None, Some(peer)) => Position::Peer {
                    source: self.names[b.source].clone(),
                    peer,
                },
                (None, None) => Position::Stdin { line: 0 },
            };
            let bytes = match b.frames.get(frame) {
                Some(bytes) => bytes,
                None => {
                    let len = if let FrameRef::TooLarge(l) = frame {
                        *l
                    } else {
                        0
                    };
                    let err = DecodeError::TooLarge {
                        len,
                        max: self.settings.max_record_bytes,
                    };
                    self.reject(b.source, &err, &pos);
                    continue;
                }
            };
            let ev = match self.decoders[b.source].decode(bytes) {
                Ok(ev) => ev,
                Err(err) => {
                    self.reject(b.source, &err, &pos);
                    continue;
                }
            };
            if ev.ts > max_ts {
                let err = DecodeError::FutureTimestamp {
                    max_skew_ms: self.settings.max_future_skew_ms,
                };
                self.reject(b.source, &err, &pos);
                continue;
            }
            let kind = EventKind::KNOWN
                .iter()
                .position(|k| *k == ev.kind)
                .unwrap_or(EventKind::KNOWN.len());
            self.events[kind].inc();
            let target = self.clock.observe(b.partition, ev.ts, now);
            self.engine.advance_to(target, &mut self.alerts);
            let before = self.alerts.len();
            self.engine.on_event(&ev, Some(&pos), &mut self.alerts);
            triggered += self.alerts.len() - before;
        }
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
                },
            );
            self.positions_dirty = true;
        }
        if triggered > 0 {
            self.awaiting.push((b.received, triggered as u64));
        }
        Ok(())
    }

    /// Puts the alerts raised so far into the outbox (one durable
    /// transaction) and wakes the sinks.
    fn emit(&mut self) -> Result<()> {
        if self.alerts.is_empty() {
            return Ok(());
        }
        let now = jiff::Timestamp::now().as_millisecond();
        let mut routed = Routed::default();
        for mut alert in self.alerts.drain(..) {
            alert.detected_at = Some(now);
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
    fn deliver(&mut self, routed: Routed) -> Result<()> {
        self.metrics.alerts_suppressed.inc_by(routed.suppressed);
        self.metrics.alerts_grouped.inc_by(routed.grouped);
        if routed.deliver.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(routed.deliver.len());
        for (alert, sinks) in routed.deliver {
            let json = serde_json::to_vec(&alert).context("cannot serialize an alert")?;
            rows.push((alert.id, json, sinks));
        }
        self.outbox.send(rows)
    }

    /// Sends the digests of group windows that closed (all with `all`).
    fn flush_groups(&mut self, all: bool) -> Result<()> {
        let mut routed = Routed::default();
        self.routes
            .flush(jiff::Timestamp::now().as_millisecond(), all, &mut routed);
        self.deliver(routed)
    }

    fn tick(&mut self) -> Result<()> {
        let now = self.now_mono();
        if let Some(c) = self.clock.tick(now) {
            self.engine.advance_to(c, &mut self.alerts);
            self.emit()?;
        }
        self.flush_groups(false)?;
        self.update_gauges();
        if self.positions_dirty {
            self.save_positions();
        }
        Ok(())
    }

    fn update_gauges(&mut self) {
        let m = &self.metrics;
        for (rule, n) in self.engine.live_keys() {
            m.live_keys
                .get_or_create(&RuleLabel {
                    rule: rule.to_string(),
                })
                .set(n as i64);
        }
        let late = self.engine.late_events();
        m.late_events.inc_by(late - self.late_reported);
        self.late_reported = late;
        let evicted = self.engine.evicted_keys();
        m.evicted_keys.inc_by(evicted - self.evicted_reported);
        self.evicted_reported = evicted;
        m.partitions.set(self.clock.partitions() as i64);
        if let Some(c) = self.engine.clock() {
            let wall = jiff::Timestamp::now().as_millisecond();
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

    fn save_positions(&mut self) {
        if self.positions.is_empty() {
            return;
        }
        match save_positions(&self.state_dir, &self.positions) {
            Ok(()) => self.positions_dirty = false,
            Err(e) => {
                tracing::warn!(dir = %self.state_dir.display(), "cannot save file positions: {e}")
            }
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Reload {
                rules,
                settings,
                done,
            } => {
                let kept = self.engine.reload(
                    rules,
                    EngineConfig {
                        max_keys_per_rule: settings.max_keys_per_rule,
                    },
                );
                self.clock.set_params(
                    settings.allowed_lateness_ms,
                    settings.idle_after.as_millis() as i64,
                );
                self.settings.allowed_lateness_ms = settings.allowed_lateness_ms;
                self.settings.max_future_skew_ms = settings.max_future_skew_ms;
                self.settings.max_keys_per_rule = settings.max_keys_per_rule;
                let _ = done.send(kept);
            }
        }
    }
}

/// An alert ready for the outbox: id, JSON, sinks.
type Row = (String, Vec<u8>, Vec<String>);

/// Batches of rows queued for the outbox writer (it coalesces them).
const OUTBOX_QUEUE: usize = 16;

/// The engine's end of the outbox writer.
struct OutboxHandle {
    tx: Option<std::sync::mpsc::SyncSender<Vec<Row>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutboxHandle {
    /// Hands rows to the writer; blocks while its queue is full
    /// (backpressure up to the sources).
    fn send(&mut self, rows: Vec<Row>) -> Result<()> {
        match &self.tx {
            Some(tx) => tx
                .send(rows)
                .map_err(|_| anyhow::anyhow!("the outbox writer has stopped")),
            None => Err(anyhow::anyhow!("the outbox is closed")),
        }
    }

    /// Waits until the writer has committed everything it was handed.
    fn close(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the outbox writer panicked");
        }
    }
}

impl Drop for OutboxHandle {
    fn drop(&mut self) {
        self.close();
    }
}

/// The outbox writer: writes routed alerts durably before any sink sees
/// them, waits while the outbox is full, and keeps its gauges.
struct Outbox {
    store: Arc<Store>,
    settings: OutboxSettings,
    wakes: Vec<(String, Arc<Notify>)>,
    /// Pending deliveries, as last counted plus what was added since.
    pending: u64,
    /// When delivered ids were last pruned (wall ms).
    pruned_ms: i64,
}

impl Outbox {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Vec<Row>>, metrics: &Metrics) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut refreshed = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(mut rows) => {
                    // Group commit: everything already queued, in one go.
                    while rows.len() < GROUP_COMMIT_ALERTS {
                        match rx.try_recv() {
                            Ok(more) => rows.extend(more),
                            Err(_) => break,
                        }
                    }
                    self.put(&rows, metrics);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if refreshed.elapsed() >= Duration::from_secs(1) {
                refreshed = Instant::now();
                self.refresh(metrics);
                self.prune_delivered();
            }
        }
        self.refresh(metrics);
    }

    fn refresh(&mut self, metrics: &Metrics) {
        if let Ok((_, pending, dead)) = self.store.counts() {
            self.pending = pending;
            metrics.outbox_pending.set(pending as i64);
            metrics.outbox_dead.set(dead as i64);
        }
    }

    /// Writes the rows; waits while the outbox is full (backpressure up to
    /// the sources) and retries while the store fails: an alert is never
    /// dropped here.
    fn put(&mut self, rows: &[(String, Vec<u8>, Vec<String>)], metrics: &Metrics) {
        let mut rest = rows;
        let mut waited = false;
        while !rest.is_empty() {
            // Never more than the room left (at least one alert at a time).
            while self.pending >= self.settings.max_pending {
                if !waited {
                    tracing::warn!(
                        pending = self.pending,
                        max = self.settings.max_pending,
                        "outbox full: waiting for sinks to deliver"
                    );
                    waited = true;
                }
                self.wake_all();
                std::thread::sleep(Duration::from_millis(20));
                self.refresh(metrics);
            }
            let room = (self.settings.max_pending - self.pending).max(1) as usize;
            let sinks_per_alert = rest.first().map_or(1, |(_, _, s)| s.len().max(1));
            let take = (room / sinks_per_alert).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let items: Vec<Enqueue<'_>> = chunk
                .iter()
                .map(|(id, json, sinks)| Enqueue { id, json, sinks })
                .collect();
            let mut delay = Duration::from_millis(50);
            loop {
                match self.store.enqueue(&items, sink::now_ms()) {
                    Ok(added) => {
                        self.pending += added as u64;
                        metrics.outbox_pending.set(self.pending as i64);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(
                            "cannot write alerts to the outbox, retrying in {delay:?}: {e}"
                        );
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            self.wake_all();
        }
    }

    /// Forgets delivered ids older than `delivered_retention`, at most
    /// once a minute.
    fn prune_delivered(&mut self) {
        let now = sink::now_ms();
        if now - self.pruned_ms < 60_000 {
            return;
        }
        self.pruned_ms = now;
        let before = now - self.settings.delivered_retention.as_millis() as i64;
        match self.store.prune_delivered(before) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                forgotten = n,
                "pruned delivered alert ids past the retention"
            ),
            Err(e) => tracing::warn!("cannot prune delivered alert ids: {e}"),
        }
    }

    fn wake_all(&self) {
        for (_, wake) in &self.wakes {
            wake.notify_one();
        }
    }
}
