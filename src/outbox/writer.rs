//! The outbox writer: a thread of its own that takes routed alerts (and
//! saved engine state) from the engine thread in order, writes them to the
//! store in group commits before any sink sees them, waits while the
//! outbox is full (backpressure up to the sources), and wakes the sinks.
//! It never drops an alert: a failed store write is retried.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::OutboxSettings;
use super::watch::{Outage, StoreOutage};
use crate::source::{DurableOffsets, KafkaPartition};
use crate::store::{Enqueue, Store, UnitState};
use crate::telemetry::metrics::Metrics;

/// Alerts taken at most into one commit.
pub const GROUP_COMMIT_ALERTS: usize = 4096;

/// The writer has stopped (or was closed): nothing more can be handed on.
#[derive(Debug, thiserror::Error)]
#[error("the outbox writer has stopped")]
pub struct WriterStopped;

/// Starts the writer thread; `wakes` are the sinks' wake-ups (by name).
pub fn start(
    store: Arc<Store>,
    settings: OutboxSettings,
    wakes: Vec<(String, Arc<Notify>)>,
    durable: Arc<DurableOffsets>,
    metrics: Arc<Metrics>,
) -> std::io::Result<OutboxHandle> {
    let outage = Arc::new(StoreOutage::default());
    let writer = Writer {
        outage: outage.clone(),
        store,
        settings,
        wakes,
        pending: 0,
        pruned_ms: 0,
        durable,
        failures: crate::telemetry::LogLimit::new(1, FAILURE_LOG_WINDOW),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<OutboxMsg>(OUTBOX_QUEUE);
    let thread = std::thread::Builder::new()
        .name("outbox".to_owned())
        .spawn(move || writer.run(rx, &metrics))?;
    Ok(OutboxHandle {
        tx: Some(tx),
        thread: Some(thread),
        outage,
    })
}

/// An alert ready for the outbox: id, JSON, sinks.
pub type Row = (String, Vec<u8>, Vec<String>);

/// Batches of rows queued for the outbox writer (it coalesces them).
const OUTBOX_QUEUE: usize = 64;

/// Saved unit states, written after (and with) the alerts sent before
/// them.
pub struct StateWrite {
    pub states: Vec<UnitState>,
    /// Kafka partitions whose records up to these offsets the states cover.
    pub offsets: Vec<(KafkaPartition, i64)>,
    /// Signalled once the write is durable.
    pub done: Option<SyncSender<()>>,
}

/// What the engine hands the outbox writer, in order.
pub enum OutboxMsg {
    Rows(Vec<Row>),
    State(StateWrite),
}

/// The engine's end of the outbox writer.
pub struct OutboxHandle {
    tx: Option<SyncSender<OutboxMsg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    outage: Arc<StoreOutage>,
}

impl OutboxHandle {
    /// Hands rows or state to the writer; blocks while its queue is full
    /// (backpressure up to the sources).
    pub fn send(&mut self, msg: OutboxMsg) -> Result<(), WriterStopped> {
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| WriterStopped),
            None => Err(WriterStopped),
        }
    }

    /// The latest period in which the store refused the writer's writes.
    pub fn outage(&self) -> Option<Outage> {
        self.outage.latest()
    }

    /// Waits until the writer has committed everything it was handed.
    pub fn close(&mut self) {
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

/// The writer: writes routed alerts durably before any sink sees
/// them, waits while the outbox is full, and keeps its gauges.
struct Writer {
    store: Arc<Store>,
    /// Outages, for the self-monitoring's `store_unavailable`.
    outage: Arc<StoreOutage>,
    settings: OutboxSettings,
    wakes: Vec<(String, Arc<Notify>)>,
    /// Pending deliveries, as last counted plus what was added since.
    pending: u64,
    /// When delivered ids were last pruned (wall ms).
    pruned_ms: i64,
    durable: Arc<DurableOffsets>,
    /// Store failures logged, per kind.
    failures: crate::telemetry::LogLimit,
}

/// A kind of store failure is logged once per window (with how many more
/// there were).
pub const FAILURE_LOG_WINDOW: Duration = Duration::from_secs(30);

impl Writer {
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
                        metrics.state_last_save.set(crate::clock::now_secs());
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
    fn put(&mut self, rows: &[Row], states: &[UnitState], metrics: &Metrics) {
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
                // A thread of its own, not an async worker: sleeping here
                // holds up only the engine, which is the backpressure.
                #[allow(clippy::disallowed_methods)]
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

    /// One store transaction, retried until it commits. While it fails
    /// the daemon is not ready (`store_available` 0, `/readyz` 503,
    /// systemd's STATUS), the engine waits (backpressure up to the
    /// sources), each kind of failure is logged once per
    /// [`FAILURE_LOG_WINDOW`], and the store is opened again before each
    /// retry after an I/O failure, so freeing space recovers it.
    fn write(&mut self, items: &[Enqueue<'_>], states: &[UnitState], metrics: &Metrics) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.write(items, crate::clock::now_ms(), states) {
                Ok(added) => {
                    self.pending += added as u64;
                    metrics.outbox_pending.set(self.pending as i64);
                    if metrics.store_available.get() != 1 {
                        metrics.store_available.set(1);
                        self.outage.recovered(crate::clock::now_ms());
                        tracing::warn!("the store takes writes again: ready");
                    }
                    return;
                }
                Err(e) => {
                    metrics.store_available.set(0);
                    self.outage.failed(e.kind(), crate::clock::now_ms());
                    let admit = self.failures.admit(e.kind());
                    if admit.log || admit.held > 0 {
                        tracing::error!(
                            kind = e.kind(),
                            held_back = admit.held,
                            retry_in = ?delay,
                            "cannot write to the store (not ready until it can): {e}"
                        );
                    }
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Forgets delivered ids older than `delivered_retention`, at most
    /// once a minute.
    fn prune_delivered(&mut self) {
        let now = crate::clock::now_ms();
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
