//! `mcp-alertd run` as a service: starts the daemon, tells systemd
//! (`Type=notify`: READY once everything is bound, STATUS every 10 s,
//! WATCHDOG pings while the engine runs, STOPPING), reloads on SIGHUP and
//! drains on SIGTERM/SIGINT.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sd_notify::NotifyState;

use super::Daemon;
use crate::config::Config;

/// `mcp-alertd run`: the daemon until SIGTERM/SIGINT; SIGHUP reloads.
pub fn run(config_path: Option<PathBuf>) -> Result<u8> {
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::builtin(),
    };
    let rules = config.load_rules()?;
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
    let result = rt.block_on(async move {
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
    });
    // A store write still blocked (a full disk) must not hold the exit
    // past the grace period the shutdown already spent.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
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
    .and_then(|c| c.load_rules().map(|r| (c, r)).map_err(anyhow::Error::from));
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
