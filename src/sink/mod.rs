//! Alert delivery. Every alert is in the outbox (the store) before any sink
//! sees it; one dispatcher task per sink takes its due deliveries, waits for
//! its rate limit (over-limit alerts wait in the outbox, never dropped),
//! sends, and acknowledges. Failures are classified: retryable ones are
//! retried with exponential backoff and jitter (honouring `Retry-After`)
//! until `max_age`, then become dead letters, loudly; permanent ones become
//! dead letters at once.

pub mod cef;
mod email;
#[cfg(feature = "kafka")]
mod kafka;
mod syslog;
mod webhook;

pub use email::{body as email_body, subject as email_subject};
pub use webhook::{decode_key as decode_webhook_key, sign as webhook_signature};

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::config::{OutboxSettings, SinkConfig, SinkKind};
use crate::store::{DeadLetter, Delivery, Store};
use crate::telemetry::metrics::Metrics;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl SendError {
    pub fn retry(message: impl Into<String>) -> SendError {
        SendError {
            retryable: true,
            retry_after: None,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            retryable: false,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// The shared writer of the stdout sink (a test may pass its own).
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

enum Kind {
    Stdout(SharedWriter),
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
        generation: u64,
        reopen: Arc<AtomicU64>,
    },
    Webhook(webhook::Webhook),
    Email(email::Email),
    Syslog(syslog::Syslog),
    #[cfg(feature = "kafka")]
    Kafka(kafka::Kafka),
}

/// One configured sink, ready to send.
pub struct Sink {
    pub name: String,
    kind: Kind,
    timeout: Duration,
}

impl Sink {
    /// Builds a sink: reads its secrets and TLS roots (errors say which).
    pub fn build(
        cfg: &SinkConfig,
        stdout: &SharedWriter,
        reopen: &Arc<AtomicU64>,
    ) -> Result<Sink, String> {
        let at = |e: String| format!("sink `{}`: {e}", cfg.name);
        let kind = match &cfg.kind {
            SinkKind::Stdout => Kind::Stdout(stdout.clone()),
            SinkKind::File { path } => Kind::File {
                path: path.clone(),
                file: None,
                generation: reopen.load(Ordering::Relaxed),
                reopen: reopen.clone(),
            },
            SinkKind::Webhook { .. } => Kind::Webhook(webhook::Webhook::build(cfg).map_err(at)?),
            SinkKind::Email { .. } => Kind::Email(email::Email::build(cfg).map_err(at)?),
            SinkKind::Syslog { .. } => Kind::Syslog(syslog::Syslog::build(cfg).map_err(at)?),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka { .. } => Kind::Kafka(kafka::Kafka::build(cfg).map_err(at)?),
            #[cfg(not(feature = "kafka"))]
            SinkKind::Kafka { .. } => return Err(at("this build has no Kafka support".into())),
        };
        Ok(Sink {
            name: cfg.name.clone(),
            kind,
            timeout: cfg.timeout,
        })
    }

    /// Delivers one alert (its id and serialized form), within the sink's
    /// timeout. Only the sinks that render the alert parse it.
    pub async fn send(&mut self, id: &str, json: &[u8]) -> Result<(), SendError> {
        let parse = || {
            serde_json::from_slice::<Alert>(json)
                .map_err(|e| SendError::permanent(format!("unreadable alert in the outbox: {e}")))
        };
        let timeout = self.timeout;
        let fut = async {
            match &mut self.kind {
                Kind::Stdout(w) => {
                    let mut w = w
                        .lock()
                        .map_err(|_| SendError::permanent("stdout writer poisoned"))?;
                    w.write_all(json)
                        .and_then(|()| w.write_all(b"\n"))
                        .and_then(|()| w.flush())
                        .map_err(|e| SendError::retry(format!("stdout: {e}")))
                }
                Kind::File {
                    path,
                    file,
                    generation,
                    reopen,
                } => {
                    let now = reopen.load(Ordering::Relaxed);
                    if now != *generation {
                        // SIGHUP: logrotate moved the file; write to a new one.
                        *file = None;
                        *generation = now;
                    }
                    if file.is_none() {
                        *file = Some(
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&*path)
                                .map_err(|e| {
                                    SendError::retry(format!("{}: {e}", path.display()))
                                })?,
                        );
                    }
                    let f = file
                        .as_mut()
                        .ok_or_else(|| SendError::retry("file not open"))?;
                    let mut line = json.to_vec();
                    line.push(b'\n');
                    f.write_all(&line)
                        .map_err(|e| SendError::retry(format!("{}: {e}", path.display())))
                }
                Kind::Webhook(w) => w.send(id, json).await,
                Kind::Email(e) => e.send(&parse()?).await,
                Kind::Syslog(s) => s.send(&parse()?, json).await,
                #[cfg(feature = "kafka")]
                Kind::Kafka(k) => {
                    let alert = parse()?;
                    k.send(id, &alert.tenant, &alert.rule, json).await
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SendError::retry(format!("timed out after {timeout:?}"))),
        }
    }
}

/// Wall-clock milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The delay before attempt `attempts + 1`: exponential from `initial`,
/// capped at `max`, with ±20% jitter so that many alerts do not retry in
/// lockstep.
pub fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempts.min(20));
    let base = exp.min(max);
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

/// Runs one sink's deliveries until `cancel`.
pub async fn dispatch(
    mut sink: Sink,
    store: Arc<Store>,
    settings: OutboxSettings,
    limiter: Option<DefaultDirectRateLimiter>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let label = crate::telemetry::metrics::SinkLabel {
        sink: sink.name.clone(),
    };
    let sent = metrics.alerts_sent.get_or_create(&label).clone();
    let failed = metrics.alert_send_errors.get_or_create(&label).clone();
    let dead = metrics.alerts_dead.get_or_create(&label).clone();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let st = store.clone();
        let name = sink.name.clone();
        let batch = tokio::task::spawn_blocking(move || st.due(&name, now_ms(), 512)).await;
        let (due, next) = match batch {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::error!(sink = %sink.name, "outbox read failed: {e}");
                (Vec::new(), Some(now_ms() + 1000))
            }
            Err(e) => {
                tracing::error!(sink = %sink.name, "outbox task failed: {e}");
                break;
            }
        };
        if due.is_empty() {
            let wait = next.map_or(Duration::from_secs(1), |n| {
                Duration::from_millis((n - now_ms()).clamp(1, 1000) as u64)
            });
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let mut acks = Vec::new();
        for d in due {
            if let Some(l) = &limiter {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = l.until_ready() => {}
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            match sink.send(&d.id, &d.alert).await {
                Ok(()) => {
                    sent.inc();
                    acks.push((d.id.clone(), d.delivery.next_ms, d.delivery.seq));
                }
                Err(err) => {
                    failed.inc();
                    let now = now_ms();
                    let attempts = d.delivery.attempts + 1;
                    let too_old =
                        now - d.delivery.enqueued_ms >= settings.max_age.as_millis() as i64;
                    if !err.retryable || too_old {
                        let why = if err.retryable {
                            "max_age reached"
                        } else {
                            "permanent failure"
                        };
                        tracing::error!(sink = %sink.name, alert = %d.id, attempts, "{why}; alert moved to dead letters: {err}");
                        let letter = DeadLetter {
                            attempts,
                            enqueued_ms: d.delivery.enqueued_ms,
                            died_ms: now,
                            error: err.message.clone(),
                        };
                        if let Err(e) = store.kill(&sink.name, &d.id, &d.delivery, &letter) {
                            tracing::error!(sink = %sink.name, "outbox write failed: {e}");
                        }
                        dead.inc();
                    } else {
                        let delay = err.retry_after.unwrap_or_else(|| {
                            backoff(
                                d.delivery.attempts,
                                settings.retry_initial,
                                settings.retry_max,
                            )
                        });
                        tracing::warn!(sink = %sink.name, alert = %d.id, attempts, retry_in = ?delay, "delivery failed, will retry: {err}");
                        let next = Delivery {
                            seq: d.delivery.seq,
                            attempts,
                            enqueued_ms: d.delivery.enqueued_ms,
                            next_ms: now + delay.as_millis() as i64,
                            last_error: err.message,
                        };
                        if let Err(e) =
                            store.retry_later(&sink.name, &d.id, d.delivery.next_ms, &next)
                        {
                            tracing::error!(sink = %sink.name, "outbox write failed: {e}");
                        }
                    }
                }
            }
        }
        if !acks.is_empty() {
            let st = store.clone();
            let name = sink.name.clone();
            match tokio::task::spawn_blocking(move || st.ack(&name, &acks, now_ms())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(sink = %sink.name, "outbox ack failed (the alerts will be sent again): {e}")
                }
                Err(e) => tracing::error!(sink = %sink.name, "outbox ack task failed: {e}"),
            }
        }
    }
}

/// The rate limiter of a sink, if it has one.
pub fn limiter(cfg: &SinkConfig) -> Option<DefaultDirectRateLimiter> {
    let (rate, burst) = cfg.rate_limit?;
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst)?;
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}
