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
//! - Bounds against the wall clock (the daemon's live sources, through
//!   [`LiveClock::observe_live`]): an event moves its partition's
//!   watermark at most [`FUTURE_TOLERANCE_MS`] past the wall clock, so one
//!   forged event dated ahead (even inside `max_future_skew`) cannot fire
//!   deadlines early; and a *bounded* partition (syslog: a connection or
//!   UDP sender) whose newest event lags the wall clock by more than
//!   `max_past_skew` is stale. A stale partition is left out of the
//!   minimum like an idle one, and its records do not count as records
//!   arriving, when another active partition is not stale or when its
//!   watermark is behind the engine clock (it could only hold the clock,
//!   never move it). So old timestamps (an event dated 1970 every few
//!   seconds, a server whose clock runs an hour behind) cannot hold the
//!   clock back, while a stream that is all old (a relay sending its
//!   backlog, a test sending last week's events) still drives the clock as
//!   `replay` would. Files and Kafka partitions are not bounded in the
//!   past: they resume from positions and catching up a backlog is what
//!   they do.

use std::collections::HashMap;

pub use crate::event::PartitionId;

/// How far past the wall clock an event can move its partition's
/// watermark (host clocks differ by this much).
pub const FUTURE_TOLERANCE_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Partition {
    max_ts: i64,
    last_seen: i64,
    /// Bounded in the past by `max_past_skew` (live syslog partitions).
    bounded: bool,
}

/// The wall clock and the partition's kind, for [`LiveClock::observe_live`].
#[derive(Debug, Clone, Copy)]
pub struct Wall {
    /// Wall-clock time, epoch milliseconds.
    pub now_ms: i64,
    /// The partition is a live stream bounded by `max_past_skew`.
    pub bounded: bool,
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
    /// `max_past_skew`: bounded partitions lagging the wall clock more are
    /// stale.
    max_past_skew_ms: i64,
    /// The wall clock last seen (epoch ms), when the daemon gives it.
    wall: Option<i64>,
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
            max_past_skew_ms: i64::MAX,
            wall: None,
        }
    }

    /// Bounds bounded partitions in the past (see the module docs).
    pub fn with_max_past_skew(mut self, max_past_skew_ms: i64) -> LiveClock {
        self.max_past_skew_ms = max_past_skew_ms.max(0);
        self
    }

    /// A new `max_past_skew` (on reload).
    pub fn set_max_past_skew(&mut self, max_past_skew_ms: i64) {
        self.max_past_skew_ms = max_past_skew_ms.max(0);
    }

    /// Stale: bounded, and its newest event lags the wall clock by more
    /// than `max_past_skew`.
    fn stale(&self, p: &Partition) -> bool {
        p.bounded
            && self
                .wall
                .is_some_and(|wall| wall.saturating_sub(p.max_ts) > self.max_past_skew_ms)
    }

    fn active(&self, p: &Partition, now: i64) -> bool {
        now - p.last_seen < self.idle_after_ms
    }

    /// Some active partition is not stale.
    fn any_fresh(&self, now: i64) -> bool {
        self.partitions
            .values()
            .any(|p| self.active(p, now) && !self.stale(p))
    }

    /// Left out of the clock: stale, and either something fresher drives
    /// the clock or it is behind the clock anyway.
    fn excluded(&self, p: &Partition, any_fresh: bool) -> bool {
        self.stale(p)
            && (any_fresh
                || self
                    .clock
                    .is_some_and(|c| p.max_ts.saturating_sub(self.lateness_ms) < c))
    }

    /// Partitions that are stale now (for `status` and metrics).
    pub fn stale_partitions(&self) -> usize {
        self.partitions.values().filter(|p| self.stale(p)).count()
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

    /// Records an event of `ts` on `partition` at monotonic time `now`;
    /// returns the clock to advance the engine to before applying the
    /// event. No wall-clock bounds (tests, and where none apply).
    pub fn observe(&mut self, partition: PartitionId, ts: i64, now: i64) -> i64 {
        self.observe_at(partition, ts, now, None)
    }

    /// As [`observe`](Self::observe), bounded by the wall clock (see the
    /// module docs).
    pub fn observe_live(&mut self, partition: PartitionId, ts: i64, now: i64, wall: Wall) -> i64 {
        self.observe_at(partition, ts, now, Some(wall))
    }

    fn observe_at(&mut self, partition: PartitionId, ts: i64, now: i64, wall: Option<Wall>) -> i64 {
        let (ts, bounded) = match wall {
            Some(w) => {
                self.wall = Some(w.now_ms);
                (
                    ts.min(w.now_ms.saturating_add(FUTURE_TOLERANCE_MS)),
                    w.bounded,
                )
            }
            None => (ts, false),
        };
        let p = self.partitions.entry(partition).or_insert(Partition {
            max_ts: ts,
            last_seen: now,
            bounded,
        });
        p.max_ts = p.max_ts.max(ts);
        p.last_seen = now;
        let p = *p;
        // An excluded partition's records are not records arriving: they
        // neither raise the high watermark nor stop the wall clock moving
        // an otherwise idle clock.
        let any_fresh = self.any_fresh(now);
        if !self.excluded(&p, any_fresh) {
            let wm = p.max_ts.saturating_sub(self.lateness_ms);
            self.high_watermark = Some(self.high_watermark.map_or(wm, |h| h.max(wm)));
            self.last_record = now;
        }
        self.recompute(now, any_fresh)
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
        self.tick_at(now, None)
    }

    /// As [`tick`](Self::tick), with the wall clock (epoch ms).
    pub fn tick_live(&mut self, now: i64, wall_ms: i64) -> Option<i64> {
        self.tick_at(now, Some(wall_ms))
    }

    fn tick_at(&mut self, now: i64, wall_ms: Option<i64>) -> Option<i64> {
        if wall_ms.is_some() {
            self.wall = wall_ms;
        }
        let forget = self.forget_after_ms;
        self.partitions.retain(|_, p| now - p.last_seen < forget);
        self.high_watermark?;
        Some(self.recompute(now, self.any_fresh(now)))
    }

    /// The clock from the partitions, `any_fresh` being
    /// [`any_fresh`](Self::any_fresh) now (computed once by the caller).
    fn recompute(&mut self, now: i64, any_fresh: bool) -> i64 {
        let active = self
            .partitions
            .values()
            .filter(|p| self.active(p, now) && !self.excluded(p, any_fresh))
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
