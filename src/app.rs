//! The composition root of `mcp-alertd run`: builds every stage from a
//! validated [`Config`], wires them with one bounded channel, and owns the
//! lifecycle: bind everything before reporting ready, SIGHUP reloads rules
//! and engine settings atomically, SIGTERM/SIGINT stop the sources, drain
//! what they accepted through the engine, flush alerts and exit within the
//! grace period.
//!
//! It only wires: sources bind through `source::SourceKind::bind`, sinks
//! build through `sink::Sink::build`, the engine thread is `pipeline`, the
//! outbox writer and the dispatchers are `outbox`. The engine runs on a
//! thread of its own (it is CPU-bound); sources, dispatchers and the metrics
//! endpoint run on a small tokio runtime. The service loop (signals,
//! systemd notifications) is in `signals`.

mod signals;

pub use signals::run;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::console::Console;
use crate::engine::RuleSet;
use crate::outbox::watch::DeadLetters;
use crate::outbox::{dispatch, writer};
use crate::pipeline::{self, Control, Pipeline, PipelineError, Restored};
use crate::sink::{SharedWriter, Sink};
use crate::source::activation::Activated;
use crate::source::{BindEnv, DurableOffsets, SavedOffset, SourceCtx, SourceMsg};
use crate::store::Store;
use crate::store::state as checkpoint;
use crate::telemetry::metrics::Metrics;

/// The daemon's tasks and their stop signals, in shutdown order: sources
/// first, then (once the engine has drained) delivery, then metrics.
#[derive(Default)]
struct Tasks {
    cancel_sources: CancellationToken,
    sources: TaskTracker,
    cancel_delivery: CancellationToken,
    delivery: TaskTracker,
    cancel_metrics: CancellationToken,
}

/// A running daemon (in process): its bound addresses and its controls.
pub struct Daemon {
    addrs: Vec<(String, SocketAddr)>,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    config: Config,
    control: mpsc::Sender<Control>,
    tasks: Tasks,
    reopen: Arc<AtomicU64>,
    store: Arc<Store>,
    tx: Option<mpsc::Sender<SourceMsg>>,
    engine: Option<std::thread::JoinHandle<Result<(), PipelineError>>>,
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
        let tasks = Tasks::default();

        let rules = Arc::new(rules);
        let formats = config.load_formats()?;
        let pipeline_config = config.pipeline(&formats)?;
        let (store, restored) = open_state(&config, &rules)?;
        let durable = Arc::new(DurableOffsets::default());
        let writer: SharedWriter = Arc::new(std::sync::Mutex::new(out));
        let reopen = Arc::new(AtomicU64::new(0));
        // Every sink that cannot be built (a missing secret, a bad CA file)
        // at once, as a configuration error: exit 78 as `check` does.
        let (mut sinks, mut problems) = (Vec::new(), Vec::new());
        for cfg in &config.sinks {
            match Sink::build(cfg, &writer, &reopen) {
                Ok(sink) => sinks.push(sink),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(config.error(problems).into());
        }
        let mut env = BindEnv {
            activated: Activated::from_env(),
            file_positions: restored.file_positions(),
            saved_offset: saved_offsets(&store),
            durable: durable.clone(),
            tracker: tasks.sources.clone(),
        };
        let source_ctx = |index: usize, name: &str| SourceCtx {
            index,
            name: name.into(),
            label: Metrics::source(name),
            max_record_bytes: settings.max_record_bytes,
            tx: tx.clone(),
            metrics: metrics.clone(),
            cancel: tasks.cancel_sources.clone(),
        };
        let (mut addrs, mut starters) = (Vec::new(), Vec::new());
        for (index, source) in config.sources.iter().enumerate() {
            let ctx = source_ctx(index, &source.name);
            let bound = source.kind.bind(ctx, &mut env).await;
            let bound = bound.map_err(anyhow::Error::msg)?;
            addrs.extend(bound.local.map(|local| (source.name.clone(), local)));
            starters.push(bound.start);
        }
        // The console is kept and fed only when it is served.
        let console = (config.console.enabled && config.metrics.is_some())
            .then(|| Arc::new(Console::new(&config.console, &rules)));
        let metrics_addr = match config.metrics {
            Some(addr) => {
                Some(serve_http(addr, &config, &metrics, console.as_ref(), &tasks).await?)
            }
            None => None,
        };
        let dead_letters = Arc::new(DeadLetters::default());
        let wakes = start_delivery(
            &config,
            sinks,
            (&store, &dead_letters),
            &metrics,
            &tasks.cancel_delivery,
            &tasks.delivery,
        );
        // The outbox writer commits on a thread of its own, so the engine
        // keeps detecting while a transaction is fsync'ed.
        let handle = writer::start(
            store.clone(),
            config.outbox.clone(),
            wakes,
            durable.clone(),
            metrics.clone(),
        )
        .context("cannot start the outbox thread")?;
        let mut pipeline = Pipeline::new(
            pipeline_config,
            rules,
            metrics.clone(),
            (handle, dead_letters),
            store.clone(),
            restored,
        );
        if let Some(console) = console {
            pipeline = pipeline.with_console(console);
        }
        let engine =
            pipeline::spawn(pipeline, rx, control_rx).context("cannot start the engine thread")?;
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
            tasks,
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
        // Format files are read again (the new configuration's
        // `formats_dir`) for the running sources.
        let mut running = self.config.clone();
        running.formats_dir = config.formats_dir.clone();
        let decoders = running.decoders(&running.load_formats()?)?;
        // File sinks reopen their files (logrotate moved them).
        self.reopen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if config.sources != self.config.sources
            || config.metrics != self.config.metrics
            || config.metrics_tls != self.config.metrics_tls
            || config.console != self.config.console
            || config.state_dir != self.config.state_dir
            || config.sinks != self.config.sinks
            || config.router != self.config.router
            || config.outbox != self.config.outbox
            || config.monitor != self.config.monitor
        {
            tracing::warn!(
                "changes to sources, sinks, routes, outbox, self_monitoring, metrics, console or state_dir take effect at the next start"
            );
        }
        let (done, kept) = oneshot::channel();
        self.control
            .send(Control::Reload {
                rules: Arc::new(rules),
                decoders,
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
        self.config.formats_dir = running.formats_dir;
        Ok(kept)
    }

    /// Stops the sources, drains what they accepted through the engine,
    /// flushes alerts, and stops the metrics endpoint, within the grace
    /// period. Records not yet read from sockets or files are not accepted.
    pub async fn shutdown(mut self) -> Result<()> {
        let grace = self.config.engine.shutdown_grace;
        let deadline = Instant::now() + grace;
        self.metrics.set_ready(false);
        self.tasks.cancel_sources.cancel();
        self.tasks.sources.close();
        drop(self.tx.take());
        if tokio::time::timeout(grace, self.tasks.sources.wait())
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
                    Ok(Ok(Ok(r))) => r.context("the engine stopped"),
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
        self.tasks.delivery.close();
        let left = deadline.saturating_duration_since(Instant::now());
        let pending = || self.store.counts().map_or(0, |(_, p, _)| p);
        let drained = tokio::time::timeout(left, async {
            while pending() > 0 && !self.tasks.delivery.is_empty() {
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
        self.tasks.cancel_delivery.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.delivery.wait()).await;
        self.tasks.cancel_metrics.cancel();
        result
    }
}

/// Opens the store and reads the saved state (a unit this build cannot
/// read stops the start).
fn open_state(config: &Config, rules: &Arc<RuleSet>) -> Result<(Arc<Store>, Restored)> {
    let store = Arc::new(Store::open(&config.state_dir).context("cannot open the store")?);
    store.set_journal_entries(config.outbox.journal_entries);
    let restored = pipeline::restore(&store, rules, &config.engine)?;
    if let Some(clock) = restored.main_clock() {
        tracing::info!(
            clock = ?clock.map(crate::alert::format_ts),
            files = restored.file_positions().len(),
            "restored saved engine state"
        );
    }
    Ok((store, restored))
}

/// Where a Kafka source's saved partition states end, read from the store.
fn saved_offsets(store: &Arc<Store>) -> Box<dyn Fn(&str) -> SavedOffset + Send> {
    let store = store.clone();
    Box::new(move |source: &str| {
        let (store, source) = (store.clone(), source.to_owned());
        Arc::new(move |topic: &str, partition: i32| {
            store.saved_next_offset(&checkpoint::kafka_unit(&source, topic, partition))
        })
    })
}

/// Binds the metrics address and serves `/metrics`, `/healthz`, `/readyz`
/// and (unless turned off) the console until the metrics are cancelled;
/// HTTPS with `[metrics.tls]`.
async fn serve_http(
    addr: SocketAddr,
    config: &Config,
    metrics: &Arc<Metrics>,
    console: Option<&Arc<Console>>,
    tasks: &Tasks,
) -> Result<SocketAddr> {
    let acceptor = match &config.metrics_tls {
        Some(tls) => Some(
            crate::source::syslog_tcp::tls_acceptor(tls)
                .map_err(|e| config.error(vec![format!("metrics.tls: {e}")]))?,
        ),
        None => None,
    };
    let mut app = crate::telemetry::metrics::routes(metrics.clone());
    if let Some(console) = console {
        let token = config
            .console
            .read_token()
            .map_err(|e| config.error(vec![e]))?;
        app = app.merge(crate::console::http::routes(
            console.clone(),
            metrics.clone(),
            token.as_deref(),
            acceptor.is_some(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let console = if console.is_some() {
        format!(" and the console on {scheme}://{local}/")
    } else {
        String::new()
    };
    tracing::info!(address = %local, "serving /metrics, /healthz, /readyz over {scheme}{console}");
    let cancel = tasks.cancel_metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::console::http::serve(listener, acceptor, app, cancel).await {
            tracing::error!("metrics endpoint failed: {e}");
        }
    });
    Ok(local)
}

/// Starts one dispatcher per sink; returns the sinks' wake-ups for the
/// outbox writer.
fn start_delivery(
    config: &Config,
    sinks: Vec<Sink>,
    (store, dead_letters): (&Arc<Store>, &Arc<DeadLetters>),
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Vec<(String, Arc<Notify>)> {
    let mut wakes = Vec::new();
    for (sink, cfg) in sinks.into_iter().zip(&config.sinks) {
        let wake = Arc::new(Notify::new());
        wakes.push((sink.name.clone(), wake.clone()));
        dispatch::register(metrics, &sink.name);
        tracker.spawn(dispatch::dispatch(
            sink,
            dispatch::Shared {
                store: store.clone(),
                metrics: metrics.clone(),
                dead_letters: dead_letters.clone(),
            },
            config.outbox.clone(),
            dispatch::limiter(cfg.rate_limit),
            wake,
            cancel.clone(),
        ));
    }
    wakes
}
