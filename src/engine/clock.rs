//! The live engine clock over input partitions (DESIGN §3), pure: the wall
//! clock is an input (`now`, monotonic milliseconds).
//!
//! - Each partition's watermark is its largest `ts` minus the allowed
//!   lateness.
//! - The clock is the minimum watermark over partitions that are not idle
//!   (no record for `idle_after`), and never moves back.
//! - When every partition is idle, the clock advances with the wall clock:
//!   the largest watermark plus the wall time elapsed since the last record.
//!   So deadlines fire while nothing arrives, and a backlog being caught up
//!   (records arriving, however old) never has deadlines fired early.

use std::collections::HashMap;

pub use crate::event::PartitionId;

#[derive(Debug, Clone, Copy)]
struct Partition {
    max_ts: i64,
    last_seen: i64,
}

#[derive(Debug, Clone)]
pub struct LiveClock {
    lateness_ms: i64,
    idle_after_ms: i64,
    /// Partitions idle this long are forgotten (bounded memory for UDP
    /// senders that come and go).
    forget_after_ms: i64,
    partitions: HashMap<PartitionId, Partition>,
    clock: Option<i64>,
    /// The largest watermark ever seen, and when the last record arrived.
    high_watermark: Option<i64>,
    last_record: i64,
}

impl LiveClock {
    pub fn new(lateness_ms: i64, idle_after_ms: i64) -> LiveClock {
        LiveClock {
            lateness_ms,
            idle_after_ms: idle_after_ms.max(1),
            forget_after_ms: idle_after_ms.max(1).saturating_mul(30),
            partitions: HashMap::new(),
            clock: None,
            high_watermark: None,
            last_record: 0,
        }
    }

    /// New lateness and idle settings (on reload); the clock never moves
    /// back because of them.
    pub fn set_params(&mut self, lateness_ms: i64, idle_after_ms: i64) {
        self.lateness_ms = lateness_ms;
        self.idle_after_ms = idle_after_ms.max(1);
        self.forget_after_ms = self.idle_after_ms.saturating_mul(30);
    }

    pub fn clock(&self) -> Option<i64> {
        self.clock
    }

    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Records an event of `ts` on `partition` at wall time `now`; returns
    /// the clock to advance the engine to before applying the event.
    pub fn observe(&mut self, partition: PartitionId, ts: i64, now: i64) -> i64 {
        let p = self.partitions.entry(partition).or_insert(Partition {
            max_ts: ts,
            last_seen: now,
        });
        p.max_ts = p.max_ts.max(ts);
        p.last_seen = now;
        let wm = p.max_ts.saturating_sub(self.lateness_ms);
        self.high_watermark = Some(self.high_watermark.map_or(wm, |h| h.max(wm)));
        self.last_record = now;
        self.recompute(now)
    }

    /// Resumes from a saved engine clock at wall time `now` (after a
    /// restart): the clock never moves back, and while no record arrives
    /// it advances with the wall clock from `now` (the time the daemon was
    /// down is not counted: a backlog may be waiting).
    pub fn resume(&mut self, clock: i64, now: i64) {
        self.clock = Some(self.clock.map_or(clock, |c| c.max(clock)));
        self.high_watermark = Some(self.high_watermark.map_or(clock, |h| h.max(clock)));
        self.last_record = now;
    }

    /// A partition ended (connection closed).
    pub fn remove(&mut self, partition: PartitionId) {
        self.partitions.remove(&partition);
    }

    /// Called periodically: idle partitions stop holding the clock back and,
    /// when all are idle, the wall clock moves it. Returns the clock if any.
    pub fn tick(&mut self, now: i64) -> Option<i64> {
        let forget = self.forget_after_ms;
        self.partitions.retain(|_, p| now - p.last_seen < forget);
        self.high_watermark?;
        Some(self.recompute(now))
    }

    fn recompute(&mut self, now: i64) -> i64 {
        let active = self
            .partitions
            .values()
            .filter(|p| now - p.last_seen < self.idle_after_ms)
            .map(|p| p.max_ts.saturating_sub(self.lateness_ms))
            .min();
        let target = match active {
            Some(min) => min,
            None => {
                let base = self.high_watermark.unwrap_or(i64::MIN);
                base.saturating_add((now - self.last_record).max(0))
            }
        };
        let clock = self.clock.map_or(target, |c| c.max(target));
        self.clock = Some(clock);
        clock
    }
}
