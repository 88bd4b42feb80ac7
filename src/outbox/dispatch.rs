//! Per-sink dispatch: one task per sink takes its due deliveries from the
//! outbox, waits for its rate limit (over-limit alerts wait in the outbox,
//! never dropped), sends, and acknowledges. Failures are classified by the
//! sink: retryable ones are retried with exponential backoff and jitter
//! (honouring `Retry-After`) until `max_age`, then become dead letters,
//! loudly; permanent ones become dead letters at once. Every store call
//! runs off the async workers (`spawn_blocking`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::OutboxSettings;
use crate::alert::Alert;
use crate::store::{DeadLetter, Delivery, Due, Store};
use crate::telemetry::metrics::Metrics;

/// One alert handed to a sink: its id, its stored JSON and, for a sink that
/// renders, the typed alert.
#[derive(Clone, Copy)]
pub struct Item<'a> {
    pub id: &'a str,
    pub json: &'a [u8],
    pub alert: Option<&'a Alert>,
}

/// What the dispatcher delivers through: a sink (the contract every sink
/// kind meets through `sink::Sink`).
pub trait Deliver: Send + 'static {
    /// The sink's name (metrics, logs, the outbox's per-sink queue).
    fn name(&self) -> &str;
    /// Whether the sink renders the alert itself (a format, email, a Kafka
    /// key) and so needs it typed, not only its stored JSON.
    fn renders(&self) -> bool;
    /// Alerts the sink takes in one request (1: one at a time).
    fn batch(&self) -> usize;
    /// Delivers a group of at most [`batch`](Self::batch) alerts within the
    /// sink's own timeout: one result per item, in order (a batch request
    /// that fails as a whole fails every item alike).
    fn send(
        &mut self,
        items: &[Item<'_>],
    ) -> impl std::future::Future<Output = Vec<Result<(), SendError>>> + Send;
}

/// Alerts parsed once from their stored JSON for a sink that renders them,
/// kept while their delivery is retried so no attempt parses again.
/// Bounded: forgotten on success or dead letter, cleared at the cap.
#[derive(Default)]
struct Parsed(std::collections::HashMap<String, Arc<Alert>>);

impl Parsed {
    /// Alerts kept at most (a retry after a clear parses once more).
    const CAP: usize = 4096;

    fn get(&mut self, id: &str, json: &[u8]) -> Result<Arc<Alert>, SendError> {
        if let Some(a) = self.0.get(id) {
            return Ok(a.clone());
        }
        let alert: Alert = serde_json::from_slice(json)
            .map_err(|e| SendError::permanent(format!("unreadable alert in the outbox: {e}")))?;
        if self.0.len() >= Self::CAP {
            self.0.clear();
        }
        let alert = Arc::new(alert);
        self.0.insert(id.to_owned(), alert.clone());
        Ok(alert)
    }

    fn forget(&mut self, id: &str) {
        self.0.remove(id);
    }
}

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

/// The delay before attempt `attempts + 1`: exponential from `initial`,
/// capped at `max`, with ±20% jitter so that many alerts do not retry in
/// lockstep.
pub fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempts.min(20));
    let base = exp.min(max);
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

/// Creates a sink's delivery series (at 0) before its dispatcher runs, so a
/// scrape right after start shows them.
pub fn register(metrics: &Metrics, sink: &str) {
    let label = crate::telemetry::metrics::SinkLabel {
        sink: sink.to_owned(),
    };
    drop(metrics.alerts_sent.get_or_create(&label));
    drop(metrics.alert_send_errors.get_or_create(&label));
    drop(metrics.alerts_dead.get_or_create(&label));
}

/// Runs one sink's deliveries until `cancel`.
pub async fn dispatch<S: Deliver>(
    mut sink: S,
    store: Arc<Store>,
    settings: OutboxSettings,
    limiter: Option<DefaultDirectRateLimiter>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let label = crate::telemetry::metrics::SinkLabel {
        sink: sink.name().to_owned(),
    };
    let sent = metrics.alerts_sent.get_or_create(&label).clone();
    let failed = metrics.alert_send_errors.get_or_create(&label).clone();
    let dead = metrics.alerts_dead.get_or_create(&label).clone();
    let mut parsed = Parsed::default();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let st = store.clone();
        let name = sink.name().to_owned();
        let batch =
            tokio::task::spawn_blocking(move || st.due(&name, crate::clock::now_ms(), 512)).await;
        let (due, next) = match batch {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::error!(sink = %sink.name(), "outbox read failed: {e}");
                (Vec::new(), Some(crate::clock::now_ms() + 1000))
            }
            Err(e) => {
                tracing::error!(sink = %sink.name(), "outbox task failed: {e}");
                break;
            }
        };
        if due.is_empty() {
            let wait = next.map_or(Duration::from_secs(1), |n| {
                Duration::from_millis((n - crate::clock::now_ms()).clamp(1, 1000) as u64)
            });
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let size = sink.batch().max(1);
        let mut acks = Vec::new();
        let mut queue = due.into_iter();
        'groups: loop {
            let mut group: Vec<(Due, Option<Arc<Alert>>)> = Vec::with_capacity(size);
            while group.len() < size {
                let Some(d) = queue.next() else { break };
                if let Some(l) = &limiter {
                    tokio::select! {
                        _ = cancel.cancelled() => break 'groups,
                        _ = l.until_ready() => {}
                    }
                }
                if cancel.is_cancelled() {
                    break 'groups;
                }
                let alert = match sink.renders() {
                    true => parsed.get(&d.id, &d.alert).map(Some),
                    false => Ok(None),
                };
                match alert {
                    Ok(alert) => group.push((d, alert)),
                    Err(err) => {
                        failed.inc();
                        if fail(sink.name(), &d, err, &store, &settings).await {
                            dead.inc();
                        }
                    }
                }
            }
            if group.is_empty() {
                break;
            }
            let items: Vec<Item<'_>> = group
                .iter()
                .map(|(d, a)| Item {
                    id: &d.id,
                    json: &d.alert,
                    alert: a.as_deref(),
                })
                .collect();
            let mut results = sink.send(&items).await.into_iter();
            for (d, _) in &group {
                let result = results
                    .next()
                    .unwrap_or_else(|| Err(SendError::retry("the sink gave no result")));
                match result {
                    Ok(()) => {
                        parsed.forget(&d.id);
                        sent.inc();
                        acks.push((d.id.clone(), d.delivery.next_ms, d.delivery.seq));
                    }
                    Err(err) => {
                        failed.inc();
                        if fail(sink.name(), d, err, &store, &settings).await {
                            dead.inc();
                            parsed.forget(&d.id);
                        }
                    }
                }
            }
        }
        if !acks.is_empty() {
            let st = store.clone();
            let name = sink.name().to_owned();
            match tokio::task::spawn_blocking(move || st.ack(&name, &acks, crate::clock::now_ms()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(sink = %sink.name(), "outbox ack failed (the alerts will be sent again): {e}")
                }
                Err(e) => tracing::error!(sink = %sink.name(), "outbox ack task failed: {e}"),
            }
        }
    }
}

/// A failed delivery: retried later with backoff (or when the sink said),
/// or, when the failure is permanent or the alert reached `max_age`, moved
/// to the dead letters. Returns whether it went to the dead letters.
async fn fail(
    sink: &str,
    d: &Due,
    err: SendError,
    store: &Arc<Store>,
    settings: &OutboxSettings,
) -> bool {
    let now = crate::clock::now_ms();
    let attempts = d.delivery.attempts + 1;
    let too_old = now - d.delivery.enqueued_ms >= settings.max_age.as_millis() as i64;
    let (st, name, id) = (store.clone(), sink.to_owned(), d.id.clone());
    if !err.retryable || too_old {
        let why = if err.retryable {
            "max_age reached"
        } else {
            "permanent failure"
        };
        tracing::error!(sink = %sink, alert = %d.id, attempts, "{why}; alert moved to dead letters: {err}");
        let letter = DeadLetter {
            attempts,
            enqueued_ms: d.delivery.enqueued_ms,
            died_ms: now,
            error: err.message,
        };
        let delivery = d.delivery.clone();
        off_worker(sink, move || st.kill(&name, &id, &delivery, &letter)).await;
        return true;
    }
    let delay = err.retry_after.unwrap_or_else(|| {
        backoff(
            d.delivery.attempts,
            settings.retry_initial,
            settings.retry_max,
        )
    });
    tracing::warn!(sink = %sink, alert = %d.id, attempts, retry_in = ?delay, "delivery failed, will retry: {err}");
    let next = Delivery {
        seq: d.delivery.seq,
        attempts,
        enqueued_ms: d.delivery.enqueued_ms,
        next_ms: now + delay.as_millis() as i64,
        last_error: err.message,
    };
    let due_ms = d.delivery.next_ms;
    off_worker(sink, move || st.retry_later(&name, &id, due_ms, &next)).await;
    false
}

/// Runs a store write on the blocking pool (never on an async worker) and
/// logs its failure: the delivery then stays due and is tried again.
async fn off_worker(
    sink: &str,
    write: impl FnOnce() -> Result<(), crate::store::StoreError> + Send + 'static,
) {
    match tokio::task::spawn_blocking(write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(sink = %sink, "outbox write failed: {e}"),
        Err(e) => tracing::error!(sink = %sink, "outbox write task failed: {e}"),
    }
}

/// The rate limiter of a sink, if it has one.
pub fn limiter(rate_limit: Option<(u32, u32)>) -> Option<DefaultDirectRateLimiter> {
    let (rate, burst) = rate_limit?;
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst)?;
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}
