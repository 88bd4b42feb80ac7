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
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use sd_notify::NotifyState;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::Alert;
use crate::checkpoint::{
    self, DurableOffsets, EngineUnit, KafkaPartition, MAIN_UNIT, ROUTER_UNIT, Saved,
};
use crate::config::{Config, EngineSettings, Listen, OutboxSettings, SourceKind};
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

        let store = Arc::new(Store::open(&config.state_dir).context("cannot open the store")?);
        let rules = Arc::new(rules);
        let restored = restore(&store, &rules, &settings)?;
        let saved = restored
            .main
            .as_ref()
            .map(|(_, u)| u.files.clone())
            .unwrap_or_default();
        if let Some((engine, _)) = &restored.main {
            tracing::info!(
                clock = ?engine.clock().map(crate::alert::format_ts),
                files = saved.len(),
                "restored saved engine state"
            );
        }
        let durable = Arc::new(DurableOffsets::default());
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
        let mut activated = crate::source::activation::Activated::from_env();
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
                    let socket = match address {
                        Listen::Addr(a) => syslog_udp::bind(*a, *receive_buffer_bytes),
                        Listen::Systemd(name) => activated
                            .udp(name)
                            .and_then(tokio::net::UdpSocket::from_std),
                    }
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
                    let listener = match address {
                        Listen::Addr(a) => tokio::net::TcpListener::bind(a).await,
                        Listen::Systemd(name) => activated
                            .tcp(name)
                            .and_then(tokio::net::TcpListener::from_std),
                    }
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
                #[cfg(feature = "kafka")]
                SourceKind::Kafka {
                    client,
                    topics,
                    group_id,
                    group_instance_id,
                    start_from,
                    rebuild_window,
                } => {
                    use crate::source::kafka;
                    let src = kafka::KafkaSource {
                        client: client.clone(),
                        topics: topics.clone(),
                        group_id: group_id.clone(),
                        group_instance_id: group_instance_id.clone(),
                        start_from: *start_from,
                        rebuild_window: *rebuild_window,
                        store: store.clone(),
                        durable: durable.clone(),
                    };
                    let consumer =
                        kafka::connect(&ctx, &src).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
                    tracing::info!(source = %source.name, brokers = %client.brokers, topics = ?topics, group = %group_id, "consuming (Kafka)");
                    let t = tracker.clone();
                    starters.push(Box::new(move || {
                        t.spawn_blocking(move || kafka::run(ctx, consumer));
                    }));
                }
                #[cfg(not(feature = "kafka"))]
                SourceKind::Kafka { .. } => {
                    anyhow::bail!("{what}: this build has no Kafka support");
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
            durable: durable.clone(),
        };
        // The outbox writer commits on a thread of its own, so the engine
        // keeps detecting while a transaction is fsync'ed.
        let (outbox_tx, outbox_rx) = std::sync::mpsc::sync_channel::<OutboxMsg>(OUTBOX_QUEUE);
        let writer_metrics = metrics.clone();
        let writer = std::thread::Builder::new()
            .name("outbox".to_owned())
            .spawn(move || outbox.run(outbox_rx, &writer_metrics))
            .context("cannot start the outbox thread")?;
        let handle = OutboxHandle {
            tx: Some(outbox_tx),
            thread: Some(writer),
        };
        let pipeline = Pipeline::new(
            &config,
            rules,
            metrics.clone(),
            handle,
            store.clone(),
            restored,
        );
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

    /// Whether the engine thread is still running (the watchdog's health).
    pub fn engine_running(&self) -> bool {
        self.engine.as_ref().is_some_and(|h| !h.is_finished())
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
        // systemd (Type=notify): ready once every source is bound; a status
        // line every 10 s; watchdog pings at half of WatchdogSec while the
        // engine runs.
        notify(&[NotifyState::Ready, NotifyState::Status("ready")]);
        let watchdog = sd_notify::watchdog_enabled();
        if let Some(w) = watchdog {
            tracing::info!(interval = ?w, "systemd watchdog enabled");
        }
        let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| {
            (w / 2).max(Duration::from_millis(100))
        }));
        let mut status = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&mut daemon, config_path.as_deref()).await,
                _ = ping.tick(), if watchdog.is_some() => {
                    if daemon.engine_running() {
                        notify(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!("the engine has stopped: no watchdog ping");
                    }
                }
                _ = status.tick() => {
                    let line = daemon.metrics().status_line();
                    notify(&[NotifyState::Status(&line)]);
                }
            }
        }
        tracing::info!("stopping: draining accepted records");
        notify(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining"),
        ]);
        daemon.shutdown().await?;
        tracing::info!("stopped");
        Ok(0)
    })
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; otherwise nothing).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
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

/// Saved state found in the store at start, validated.
struct Restored {
    main: Option<(Engine, EngineUnit)>,
    router: Vec<(u32, String, i64)>,
}

/// Reads and checks every saved unit: one this build cannot read stops the
/// start with a message naming it (state is never silently dropped).
fn restore(store: &Store, rules: &Arc<RuleSet>, settings: &EngineSettings) -> Result<Restored> {
    let mut restored = Restored {
        main: None,
        router: Vec::new(),
    };
    let states = store.states().context("cannot read saved state")?;
    for (unit, bytes) in states {
        let saved = checkpoint::decode(&unit, &bytes)?;
        match saved {
            Saved::Router(rows) if unit == ROUTER_UNIT => restored.router = rows,
            Saved::Engine(e) => {
                let engine = Engine::restore(rules.clone(), engine_config(settings), &e.engine)
                    .with_context(|| format!("saved state `{unit}`"))?;
                if unit == MAIN_UNIT {
                    restored.main = Some((engine, e));
                }
            }
            Saved::Router(_) => {
                anyhow::bail!("saved state `{unit}` holds router state; the store is corrupt")
            }
        }
    }
    Ok(restored)
}

fn engine_config(s: &EngineSettings) -> EngineConfig {
    EngineConfig {
        max_keys_per_rule: s.max_keys_per_rule,
    }
}

/// Latency histogram bounds: 1 µs to 60 s, 3 significant digits. `None`
/// only if hdrhistogram refused these constant bounds: latency is then
/// not exported, rather than the daemon panicking.
fn new_histogram() -> Option<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

/// An engine with its clock: the syslog and file sources share one; each
/// Kafka partition has its own, so its state can move between daemons.
struct Unit {
    engine: Engine,
    clock: LiveClock,
    /// Changed since it was last saved.
    dirty: bool,
    late_reported: u64,
    evicted_reported: u64,
}

impl Unit {
    fn new(engine: Engine, s: &EngineSettings, now: i64) -> Unit {
        let mut clock = LiveClock::new(s.allowed_lateness_ms, s.idle_after.as_millis() as i64);
        if let Some(c) = engine.clock() {
            clock.resume(c, now);
        }
        Unit {
            late_reported: engine.late_events(),
            evicted_reported: engine.evicted_keys(),
            engine,
            clock,
            dirty: false,
        }
    }
}

/// A Kafka partition's unit and how far it has read.
struct KafkaUnit {
    unit: Unit,
    /// The offset after the last record applied.
    next_offset: Option<i64>,
}

/// The engine thread's state: decode, clocks, engines, alert output.
struct Pipeline {
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
    alerts: Vec<Alert>,
    /// Batches whose alerts are not in the outbox yet: (read at, alerts).
    awaiting: Vec<(Instant, u64)>,
    latency: Option<hdrhistogram::Histogram<u64>>,
    log: RejectLog,
    epoch: Instant,
    positions: BTreeMap<String, SavedPosition>,
    last_checkpoint: Instant,
    /// The router state as last saved (saved again only when it changes).
    saved_router: Vec<u8>,
    events: [Counter; EventKind::KNOWN.len() + 1],
    rejected: HashMap<(usize, &'static str), Counter>,
    alert_counters: HashMap<String, Counter>,
}

impl Pipeline {
    fn new(
        config: &Config,
        rules: Arc<RuleSet>,
        metrics: Arc<Metrics>,
        outbox: OutboxHandle,
        store: Arc<Store>,
        restored: Restored,
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
        let epoch = Instant::now();
        let (main, positions) = match restored.main {
            Some((engine, saved)) => (Unit::new(engine, s, 0), saved.files),
            None => (
                Unit::new(Engine::new(rules.clone(), engine_config(s)), s, 0),
                BTreeMap::new(),
            ),
        };
        let mut routes = RouteState::new(config.router.clone());
        routes.restore_repeat_state(restored.router);
        let saved_router = checkpoint::encode(ROUTER_UNIT, &Saved::Router(routes.repeat_state()))
            .unwrap_or_default();
        Pipeline {
            main,
            kafka: HashMap::new(),
            rules,
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
            store,
            routes,
            alerts: Vec::new(),
            awaiting: Vec::new(),
            latency: new_histogram(),
            log: RejectLog::new(10),
            epoch,
            positions,
            last_checkpoint: epoch,
            saved_router,
            events,
            rejected: HashMap::new(),
            alert_counters: HashMap::new(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<SourceMsg>,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<()> {
        // Clocks are checked every second, or as often as state is saved.
        let period = self.settings.snapshot_interval.min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
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

    fn message(&mut self, msg: SourceMsg) -> Result<()> {
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
                self.outbox.send(OutboxMsg::State(StateWrite {
                    states,
                    offsets,
                    done: Some(done),
                }))
            }
        }
    }

    /// A Kafka partition's unit: its saved state when the store has it,
    /// else a fresh engine (the source then decides where to start).
    fn load_kafka_unit(&self, key: &KafkaPartition) -> KafkaUnit {
        let name = checkpoint::kafka_unit(&self.names[key.0], &key.1, key.2);
        let now = self.now_mono();
        let fresh = || KafkaUnit {
            unit: Unit::new(
                Engine::new(self.rules.clone(), engine_config(&self.settings)),
                &self.settings,
                now,
            ),
            next_offset: None,
        };
        let saved = match self.store.state(&name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return fresh(),
            Err(e) => {
                tracing::error!(unit = %name, "cannot read saved state, starting afresh: {e}");
                return fresh();
            }
        };
        let restored = checkpoint::decode(&name, &saved)
            .map_err(anyhow::Error::from)
            .and_then(|saved| match saved {
                Saved::Engine(e) => {
                    Engine::restore(self.rules.clone(), engine_config(&self.settings), &e.engine)
                        .map(|engine| (engine, e.next_offset))
                        .map_err(anyhow::Error::from)
                }
                Saved::Router(_) => Err(anyhow::anyhow!("not an engine unit")),
            });
        match restored {
            Ok((engine, next_offset)) => {
                tracing::info!(unit = %name, next_offset, "restored partition state");
                KafkaUnit {
                    unit: Unit::new(engine, &self.settings, now),
                    next_offset,
                }
            }
            Err(e) => {
                tracing::error!(unit = %name, "saved state unusable, starting afresh: {e:#}");
                fresh()
            }
        }
    }

    fn save_kafka_unit(
        &self,
        key: &KafkaPartition,
        ku: &mut KafkaUnit,
        states: &mut Vec<(String, Vec<u8>)>,
        offsets: &mut Vec<(KafkaPartition, i64)>,
    ) -> Result<()> {
        if !ku.unit.dirty {
            return Ok(());
        }
        let name = checkpoint::kafka_unit(&self.names[key.0], &key.1, key.2);
        let saved = Saved::Engine(EngineUnit {
            files: BTreeMap::new(),
            next_offset: ku.next_offset,
            engine: ku.unit.engine.snapshot()?,
        });
        states.push((name.clone(), checkpoint::encode(&name, &saved)?));
        if let Some(next) = ku.next_offset {
            offsets.push((key.clone(), next));
        }
        ku.unit.dirty = false;
        Ok(())
    }

    /// Saves the state of every unit that changed (all with `all`) in
    /// the store, after the alerts raised so far, in one transaction.
    fn checkpoint(&mut self, all: bool, done: Option<SyncSender<()>>) -> Result<()> {
        self.emit()?;
        self.last_checkpoint = Instant::now();
        let started = Instant::now();
        let mut states = Vec::new();
        let mut offsets = Vec::new();
        if all || self.main.dirty {
            let saved = Saved::Engine(EngineUnit {
                files: self.positions.clone(),
                next_offset: None,
                engine: self.main.engine.snapshot()?,
            });
            states.push((MAIN_UNIT.to_owned(), checkpoint::encode(MAIN_UNIT, &saved)?));
            self.main.dirty = false;
        }
        let mut kafka = std::mem::take(&mut self.kafka);
        for (key, ku) in &mut kafka {
            ku.unit.dirty |= all;
            let saved = self.save_kafka_unit(key, ku, &mut states, &mut offsets);
            if let Err(e) = saved {
                self.kafka = kafka;
                return Err(e);
            }
        }
        self.kafka = kafka;
        let router = checkpoint::encode(ROUTER_UNIT, &Saved::Router(self.routes.repeat_state()))?;
        if all || router != self.saved_router {
            self.saved_router = router.clone();
            states.push((ROUTER_UNIT.to_owned(), router));
        }
        if states.is_empty() && done.is_none() {
            // Nothing changed: no transaction (and no fsync) while idle.
            return Ok(());
        }
        let bytes: usize = states.iter().map(|(_, b)| b.len()).sum();
        self.metrics.snapshot_bytes.set(bytes as i64);
        self.metrics
            .snapshot_seconds
            .set(started.elapsed().as_secs_f64());
        self.outbox.send(OutboxMsg::State(StateWrite {
            states,
            offsets,
            done,
        }))
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
        for (i, frame) in b.frames.frames.iter().enumerate() {
            let end = b.frames.ends.get(i).copied().unwrap_or(0);
            let pos = match (&b.file, &b.kafka, b.peer) {
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
                    source: self.names[b.source].clone(),
                    peer,
                },
                (None, None, None) => Position::Stdin { line: 0 },
            };
            // A Kafka record is consumed whether it is applied or rejected
            // (a poison message never blocks its partition).
            applied_to = Some(end as i64 + 1);
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
            let (unit, partition) = match &mut ku {
                Some(k) => (&mut k.unit, 0),
                None => (&mut self.main, b.partition),
            };
            let target = unit.clock.observe(partition, ev.ts, now);
            unit.engine.advance_to(target, &mut self.alerts);
            let before = self.alerts.len();
            unit.engine.on_event(&ev, Some(&pos), &mut self.alerts);
            unit.dirty = true;
            triggered += self.alerts.len() - before;
        }
        if let (Some(key), Some(mut k)) = (kafka_key, ku) {
            if let Some(next) = applied_to {
                k.next_offset = Some(next);
                k.unit.dirty = true;
            }
            self.kafka.insert(key, k);
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
            self.main.dirty = true;
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
        self.outbox.send(OutboxMsg::Rows(rows))
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
        let alerts = &mut self.alerts;
        let units =
            std::iter::once(&mut self.main).chain(self.kafka.values_mut().map(|k| &mut k.unit));
        for unit in units {
            if let Some(c) = unit.clock.tick(now)
                && unit.engine.clock().is_none_or(|old| c > old)
            {
                unit.engine.advance_to(c, alerts);
                unit.dirty = true;
            }
        }
        self.emit()?;
        self.flush_groups(false)?;
        self.update_gauges();
        if self.last_checkpoint.elapsed() >= self.settings.snapshot_interval {
            self.checkpoint(false, None)?;
        }
        Ok(())
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
        if let Some(c) = clock {
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

    fn control(&mut self, c: Control) {
        match c {
            Control::Reload {
                rules,
                settings,
                done,
            } => {
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
                    unit.dirty = true;
                }
                self.rules = rules;
                self.settings.allowed_lateness_ms = settings.allowed_lateness_ms;
                self.settings.idle_after = settings.idle_after;
                self.settings.max_future_skew_ms = settings.max_future_skew_ms;
                self.settings.max_keys_per_rule = settings.max_keys_per_rule;
                self.settings.snapshot_interval = settings.snapshot_interval;
                let _ = done.send(kept.unwrap_or(0));
            }
        }
    }
}

/// An alert ready for the outbox: id, JSON, sinks.
type Row = (String, Vec<u8>, Vec<String>);

/// Batches of rows queued for the outbox writer (it coalesces them).
const OUTBOX_QUEUE: usize = 16;

/// Saved unit states, written after (and with) the alerts sent before
/// them.
struct StateWrite {
    states: Vec<(String, Vec<u8>)>,
    /// Kafka partitions whose records up to these offsets the states cover.
    offsets: Vec<(KafkaPartition, i64)>,
    /// Signalled once the write is durable.
    done: Option<SyncSender<()>>,
}

/// What the engine hands the outbox writer, in order.
enum OutboxMsg {
    Rows(Vec<Row>),
    State(StateWrite),
}

/// The engine's end of the outbox writer.
struct OutboxHandle {
    tx: Option<SyncSender<OutboxMsg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutboxHandle {
    /// Hands rows or state to the writer; blocks while its queue is full
    /// (backpressure up to the sources).
    fn send(&mut self, msg: OutboxMsg) -> Result<()> {
        match &self.tx {
            Some(tx) => tx
                .send(msg)
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
    durable: Arc<DurableOffsets>,
}

impl Outbox {
    fn run(mut self, rx: std::sync::mpsc::Receiver<OutboxMsg>, metrics: &Metrics) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut refreshed = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(first) => {
                    // Group commit: everything already queued, in one go,
                    // up to and including the first state write.
                    let mut rows = Vec::new();
                    let mut state = None;
                    let mut next = Some(first);
                    while let Some(msg) = next.take() {
                        match msg {
                            OutboxMsg::Rows(more) => rows.extend(more),
                            OutboxMsg::State(s) => state = Some(s),
                        }
                        if state.is_none() && rows.len() < GROUP_COMMIT_ALERTS {
                            next = rx.try_recv().ok();
                        }
                    }
                    let states = state.as_ref().map_or(&[][..], |s| &s.states[..]);
                    self.put(&rows, states, metrics);
                    if let Some(s) = state {
                        metrics.state_saves.inc();
                        self.durable.raise(&s.offsets);
                        if let Some(done) = s.done {
                            let _ = done.send(());
                        }
                    }
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

    /// Writes the rows, and the states with the last of them; waits while
    /// the outbox is full (backpressure up to the sources) and retries
    /// while the store fails: an alert is never dropped here.
    fn put(&mut self, rows: &[Row], states: &[(String, Vec<u8>)], metrics: &Metrics) {
        let mut rest = rows;
        let mut waited = false;
        if rows.is_empty() && !states.is_empty() {
            self.write(&[], states, metrics);
        }
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
            let with = if rest.is_empty() { states } else { &[] };
            self.write(&items, with, metrics);
            self.wake_all();
        }
    }

    /// One store transaction, retried until it commits.
    fn write(&mut self, items: &[Enqueue<'_>], states: &[(String, Vec<u8>)], metrics: &Metrics) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.write(items, sink::now_ms(), states) {
                Ok(added) => {
                    self.pending += added as u64;
                    metrics.outbox_pending.set(self.pending as i64);
                    return;
                }
                Err(e) => {
                    tracing::error!("cannot write to the store, retrying in {delay:?}: {e}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
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
