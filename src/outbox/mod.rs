//! The outbox (DESIGN §1, §7): routed alerts are written durably before any
//! sink sees them, and each sink takes its deliveries from it.

pub mod dispatch;
pub mod watch;
pub mod writer;

pub use dispatch::SendError;

/// The largest `ack_window` accepted.
pub const MAX_ACK_WINDOW: usize = 4096;

use std::time::Duration;

/// Outbox limits and retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxSettings {
    /// Undelivered this long after enqueueing: a dead letter.
    pub max_age: Duration,
    /// Deliveries held at most; when full the engine waits (backpressure).
    pub max_pending: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long delivered ids are remembered to drop exact duplicates.
    pub delivered_retention: Duration,
    /// Alerts a sink accepted that may wait for one durable
    /// acknowledgement: what a crash can deliver twice (plus one batch).
    pub ack_window: usize,
    /// Alerts kept in the journal's hash chain (the oldest are pruned).
    pub journal_entries: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            max_age: Duration::from_secs(24 * 3600),
            max_pending: 1_000_000,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            delivered_retention: Duration::from_secs(7 * 24 * 3600),
            ack_window: 32,
            journal_entries: crate::store::JOURNAL_ENTRIES,
        }
    }
}
