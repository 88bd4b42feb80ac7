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
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::OutboxSettings;
use super::watch::DeadLetters;
use crate::alert::Alert;
use crate::store::{DeadLetter, Delivery, Due, Store};
use crate::telemetry::LogLimit;
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

/// Store writes of a dispatcher (acknowledgements, reschedules, reads)
/// that fail are retried after this, doubling up to [`STORE_RETRY_MAX`]:
/// a failing store never makes a sink resend in a loop.
const STORE_RETRY_INITIAL: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Deliveries read from the outbox at a time.
const DUE_BATCH: usize = 512;
/// Delivery warnings of one kind logged at most once per this, per sink,
/// with the count of those held back.
const WARN_WINDOW: Duration = Duration::from_secs(10);

/// The sink's shared retry schedule: a retryable failure while nothing in
/// the same round got through means the sink is down, and the whole sink
/// waits (exponential backoff with jitter, or `Retry-After`) instead of
/// each alert on a clock of its own; the first success resets it, and the
/// backlog drains at once.
#[derive(Default)]
struct SinkRetry {
    failures: u32,
    until: Option<tokio::time::Instant>,
}

impl SinkRetry {
    fn down(&self) -> bool {
        self.failures > 0
    }

    /// One more failed round; returns the wait before the next one.
    fn failed(&mut self, retry_after: Option<Duration>, settings: &OutboxSettings) -> Duration {
        let delay = backoff(self.failures, settings.retry_initial, settings.retry_max);
        let delay = retry_after.unwrap_or(delay);
        self.failures = self.failures.saturating_add(1);
        self.until = Some(tokio::time::Instant::now() + delay);
        delay
    }

    fn recovered(&mut self) {
        self.failures = 0;
        self.until = None;
    }
}

/// Acknowledgements of alerts the sink accepted, committed to the store at
/// the latest once `window` of them wait (and before the outbox is read
/// again): what a crash can deliver twice is bounded by the window. A
/// failed commit keeps them and is retried with backoff, and nothing is
/// sent meanwhile: a failing store never makes a sink resend.
struct Acks {
    store: Arc<Store>,
    sink: String,
    window: usize,
    waiting: Vec<(String, i64, u64)>,
    failures: u32,
}

impl Acks {
    fn push(&mut self, id: &str, d: &Delivery) {
        self.waiting.push((id.to_owned(), d.next_ms, d.seq));
    }

    fn full(&self) -> bool {
        self.waiting.len() >= self.window
    }

    /// Commits what waits; on failure keeps it and returns the wait before
    /// the next try.
    async fn commit(&mut self, log: &mut LogLimit) -> Result<(), Duration> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let (st, name, done) = (self.store.clone(), self.sink.clone(), self.waiting.clone());
        let result =
            tokio::task::spawn_blocking(move || st.ack(&name, &done, crate::clock::now_ms()))
                .await
                .map_err(|e| crate::store::StoreError::Corrupt(format!("task failed: {e}")))
                .and_then(|r| r);
        match result {
            Ok(()) => {
                self.waiting.clear();
                self.failures = 0;
                Ok(())
            }
            Err(e) => {
                let delay = store_backoff(self.failures);
                self.failures = self.failures.saturating_add(1);
                warn_limited(
                    log,
                    "ack",
                    &self.sink,
                    || tracing::error!(sink = %self.sink, waiting = self.waiting.len(), retry_in = ?delay, "cannot record deliveries in the outbox, nothing more is sent until it can: {e}"),
                );
                Err(delay)
            }
        }
    }
}

fn store_backoff(failures: u32) -> Duration {
    STORE_RETRY_INITIAL
        .saturating_mul(1u32 << failures.min(10))
        .min(STORE_RETRY_MAX)
}

/// Logs through `log` (one line per kind and window, per sink), saying
/// first how many lines of the last window were held back.
fn warn_limited(log: &mut LogLimit, kind: &'static str, sink: &str, line: impl FnOnce()) {
    let admit = log.admit(kind);
    if admit.held > 0 {
        tracing::warn!(sink = %sink, kind, held_back = admit.held, "delivery log lines held back in the last {WARN_WINDOW:?}");
    }
    if admit.log {
        line();
    }
}

/// Waits `delay` unless cancelled first; returns whether cancelled.
async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// What every dispatcher shares: the store, the metrics, and where dead
/// letters are noted for the self-monitoring.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub dead_letters: Arc<DeadLetters>,
}

/// Runs one sink's deliveries until `cancel`.
pub async fn dispatch<S: Deliver>(
    mut sink: S,
    shared: Shared,
    settings: OutboxSettings,
    limiter: Option<DefaultDirectRateLimiter>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Shared {
        store,
        metrics,
        dead_letters,
    } = shared;
    let label = crate::telemetry::metrics::SinkLabel {
        sink: sink.name().to_owned(),
    };
    let sent = metrics.alerts_sent.get_or_create(&label).clone();
    let failed = metrics.alert_send_errors.get_or_create(&label).clone();
    let dead = metrics.alerts_dead.get_or_create(&label).clone();
    let mut parsed = Parsed::default();
    let mut retry = SinkRetry::default();
    let mut log = LogLimit::new(1, WARN_WINDOW);
    let mut acks = Acks {
        store: store.clone(),
        sink: sink.name().to_owned(),
        window: settings.ack_window.max(1),
        waiting: Vec::new(),
        failures: 0,
    };
    let name = sink.name().to_owned();
    let on_failure = OnFailure {
        sink: &name,
        store: &store,
        settings: &settings,
        dead_letters: &dead_letters,
    };
    let mut store_failures = 0u32;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // What was sent is recorded before anything else is read or sent.
        if let Err(delay) = acks.commit(&mut log).await {
            if pause(&cancel, delay).await {
                break;
            }
            continue;
        }
        if let Some(until) = retry.until.take() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        let st = store.clone();
        let name = sink.name().to_owned();
        let batch =
            tokio::task::spawn_blocking(move || st.due(&name, crate::clock::now_ms(), DUE_BATCH))
                .await;
        let (due, next) = match batch {
            Ok(Ok(v)) => {
                store_failures = 0;
                v
            }
            Ok(Err(e)) => {
                let delay = store_backoff(store_failures);
                store_failures = store_failures.saturating_add(1);
                warn_limited(
                    &mut log,
                    "read",
                    sink.name(),
                    || tracing::error!(sink = %sink.name(), retry_in = ?delay, "outbox read failed: {e}"),
                );
                if pause(&cancel, delay).await {
                    break;
                }
                continue;
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
        let mut got_through = false;
        let mut store_failed = false;
        let mut queue = due.into_iter();
        'groups: loop {
            let mut group: Vec<(Due, Option<Arc<Alert>>)> = Vec::with_capacity(size);
            while group.len() < size {
                let Some(d) = queue.next() else { break };
                // While the sink is down, an alert past max_age is not
                // tried again: it becomes a dead letter now.
                if retry.down() && too_old(&d, &settings) {
                    let err = SendError::retry(d.delivery.last_error.clone());
                    let outcome = fail(&on_failure, &d, err, &mut log).await;
                    tally(outcome, &dead, &mut store_failed);
                    continue;
                }
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
                        let outcome = fail(&on_failure, &d, err, &mut log).await;
                        tally(outcome, &dead, &mut store_failed);
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
            let results: Vec<Result<(), SendError>> = {
                let mut r = sink.send(&items).await;
                r.resize_with(group.len(), || {
                    Err(SendError::retry("the sink gave no result"))
                });
                r
            };
            if results.iter().any(Result::is_ok) {
                got_through = true;
                retry.recovered();
            }
            // Nothing got through in this round and the failure may pass:
            // the sink is down. This group waits for the sink's next try;
            // the rest of the backlog is not tried until then.
            let down = !got_through
                && results
                    .iter()
                    .any(|r| r.as_ref().is_err_and(|e| e.retryable));
            let retry_after = results
                .iter()
                .filter_map(|r| r.as_ref().err()?.retry_after)
                .max();
            let wait = down.then(|| retry.failed(retry_after, &settings));
            for ((d, _), result) in group.iter().zip(results) {
                match result {
                    Ok(()) => {
                        parsed.forget(&d.id);
                        sent.inc();
                        acks.push(&d.id, &d.delivery);
                    }
                    Err(err) => {
                        failed.inc();
                        let outcome = match wait {
                            Some(wait) if err.retryable && !too_old(d, &settings) => {
                                reschedule(&on_failure, d, err, wait, &mut log).await
                            }
                            _ => fail(&on_failure, d, err, &mut log).await,
                        };
                        if tally(outcome, &dead, &mut store_failed) {
                            parsed.forget(&d.id);
                        }
                    }
                }
            }
            if down || store_failed {
                break;
            }
            if acks.full() && acks.commit(&mut log).await.is_err() {
                break;
            }
        }
        if store_failed {
            let delay = store_backoff(store_failures);
            store_failures = store_failures.saturating_add(1);
            if pause(&cancel, delay).await {
                break;
            }
        }
    }
    // Record what was sent before stopping (best effort: the store may be
    // failing, and then those alerts are sent again at the next start).
    let _ = acks.commit(&mut log).await;
}

/// Counts a failure's outcome; returns whether it became a dead letter.
fn tally(outcome: Result<bool, ()>, dead: &Counter, store_failed: &mut bool) -> bool {
    match outcome {
        Ok(true) => {
            dead.inc();
            true
        }
        Ok(false) => false,
        Err(()) => {
            *store_failed = true;
            false
        }
    }
}

fn too_old(d: &Due, settings: &OutboxSettings) -> bool {
    crate::clock::now_ms() - d.delivery.enqueued_ms >= settings.max_age.as_millis() as i64
}

/// What a failed delivery needs: the sink's name, the store, the retry
/// policy, and where dead letters are noted for the self-monitoring.
struct OnFailure<'a> {
    sink: &'a str,
    store: &'a Arc<Store>,
    settings: &'a OutboxSettings,
    dead_letters: &'a DeadLetters,
}

/// A failed delivery retried after `wait` (the sink's shared schedule, its
/// Retry-After, or this alert's backoff), with its attempt counted.
async fn reschedule(
    on: &OnFailure<'_>,
    d: &Due,
    err: SendError,
    wait: Duration,
    log: &mut LogLimit,
) -> Result<bool, ()> {
    let (sink, store) = (on.sink, on.store);
    let attempts = d.delivery.attempts + 1;
    warn_limited(
        log,
        "retry",
        sink,
        || tracing::warn!(sink = %sink, alert = %d.id, attempts, retry_in = ?wait, "delivery failed, will retry: {err}"),
    );
    let next = Delivery {
        seq: d.delivery.seq,
        attempts,
        enqueued_ms: d.delivery.enqueued_ms,
        next_ms: crate::clock::now_ms() + wait.as_millis() as i64,
        last_error: err.message,
    };
    let (st, name, id, due_ms) = (
        store.clone(),
        sink.to_owned(),
        d.id.clone(),
        d.delivery.next_ms,
    );
    off_worker(sink, log, move || st.retry_later(&name, &id, due_ms, &next))
        .await
        .map(|()| false)
}

/// A failed delivery: retried later with backoff (or when the sink said),
/// or, when the failure is permanent or the alert reached `max_age`, moved
/// to the dead letters. Returns whether it went to the dead letters, or
/// `Err` when the store could not record it (it stays due).
async fn fail(on: &OnFailure<'_>, d: &Due, err: SendError, log: &mut LogLimit) -> Result<bool, ()> {
    let (sink, store, settings) = (on.sink, on.store, on.settings);
    let now = crate::clock::now_ms();
    let attempts = d.delivery.attempts + 1;
    let (st, name, id) = (store.clone(), sink.to_owned(), d.id.clone());
    if !err.retryable || too_old(d, settings) {
        let why = if err.retryable {
            "max_age reached"
        } else {
            "permanent failure"
        };
        warn_limited(
            log,
            "dead",
            sink,
            || tracing::error!(sink = %sink, alert = %d.id, attempts, "{why}; alert moved to dead letters: {err}"),
        );
        let letter = DeadLetter {
            attempts,
            enqueued_ms: d.delivery.enqueued_ms,
            died_ms: now,
            error: err.message.clone(),
        };
        let delivery = d.delivery.clone();
        off_worker(sink, log, move || st.kill(&name, &id, &delivery, &letter)).await?;
        on.dead_letters
            .note(sink, &d.id, &d.alert, &err.message, now);
        return Ok(true);
    }
    let delay = err.retry_after.unwrap_or_else(|| {
        backoff(
            d.delivery.attempts,
            settings.retry_initial,
            settings.retry_max,
        )
    });
    reschedule(on, d, err, delay, log).await
}

/// Runs a store write on the blocking pool (never on an async worker) and
/// logs its failure (rate-limited): the delivery then stays due and is
/// tried again after the dispatcher's store backoff.
async fn off_worker(
    sink: &str,
    log: &mut LogLimit,
    write: impl FnOnce() -> Result<(), crate::store::StoreError> + Send + 'static,
) -> Result<(), ()> {
    let error = match tokio::task::spawn_blocking(write).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("task failed: {e}"),
    };
    warn_limited(
        log,
        "write",
        sink,
        || tracing::error!(sink = %sink, "outbox write failed: {error}"),
    );
    Err(())
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
