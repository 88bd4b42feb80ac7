//! The live partition clock (DESIGN §3), with the wall clock as an input.

use mcp_alertd::engine::clock::LiveClock;
use proptest::prelude::*;

const L: i64 = 5_000;
const IDLE: i64 = 10_000;

#[test]
fn the_clock_is_the_lowest_watermark_of_active_partitions() {
    let mut c = LiveClock::new(L, IDLE);
    assert_eq!(c.observe(1, 100_000, 0), 95_000);
    // A second partition behind the first holds the clock (never back).
    assert_eq!(c.observe(2, 50_000, 10), 95_000);
    // The first moves on; the second still holds the clock at 95 s.
    assert_eq!(c.observe(1, 200_000, 20), 95_000);
    assert_eq!(c.observe(2, 150_000, 30), 145_000);
}

#[test]
fn an_idle_partition_stops_holding_the_clock_back() {
    let mut c = LiveClock::new(L, IDLE);
    c.observe(1, 100_000, 0);
    c.observe(2, 300_000, 0);
    assert_eq!(c.clock(), Some(95_000));
    // Partition 1 goes quiet; partition 2 keeps sending.
    assert_eq!(c.observe(2, 301_000, 9_000), 95_000);
    assert_eq!(c.observe(2, 302_000, 10_500), 297_000);
    // A closed partition is gone at once.
    let mut c = LiveClock::new(L, IDLE);
    c.observe(1, 100_000, 0);
    c.observe(2, 300_000, 0);
    c.remove(1);
    assert_eq!(c.tick(1), Some(295_000));
}

#[test]
fn when_every_partition_is_idle_the_wall_clock_moves_the_clock() {
    let mut c = LiveClock::new(L, IDLE);
    c.observe(1, 100_000, 0);
    // Not idle yet: the clock stays at the watermark.
    assert_eq!(c.tick(5_000), Some(95_000));
    // Idle: the watermark plus the wall time since the last record.
    assert_eq!(c.tick(12_000), Some(107_000));
    assert_eq!(c.tick(60_000), Some(155_000));
    // A record again: the clock never moves back.
    assert_eq!(c.observe(1, 101_000, 61_000), 155_000);
}

#[test]
fn no_clock_before_the_first_record() {
    let mut c = LiveClock::new(L, IDLE);
    assert_eq!(c.tick(1_000_000), None);
}

proptest! {
    /// A backlog read fast (records keep arriving, however old) is never
    /// hurried by the wall clock: the clock equals the replay clock, the
    /// largest event time so far minus the lateness.
    #[test]
    fn a_busy_partition_gives_the_replay_clock(ts in prop::collection::vec(0i64..10_000_000, 1..200)) {
        let mut c = LiveClock::new(L, IDLE);
        let mut max = i64::MIN;
        for (i, t) in ts.iter().enumerate() {
            max = max.max(*t);
            let now = i as i64; // 1 ms of wall time per record
            prop_assert_eq!(c.observe(7, *t, now), max - L);
            prop_assert_eq!(c.tick(now), Some(max - L));
        }
    }

    #[test]
    fn the_clock_never_moves_back(ops in prop::collection::vec((0u64..4, 0i64..1_000_000, 0i64..50_000, any::<bool>()), 1..200)) {
        let mut c = LiveClock::new(L, IDLE);
        let mut now = 0;
        let mut last = i64::MIN;
        for (p, ts, dt, tick) in ops {
            now += dt;
            let clock = if tick { c.tick(now).unwrap_or(i64::MIN) } else { c.observe(p, ts, now) };
            prop_assert!(clock >= last);
            last = clock;
        }
    }
}

mod bounds {
    use mcp_alertd::engine::clock::{FUTURE_TOLERANCE_MS, LiveClock, Wall};

    const WALL: i64 = 1_790_000_000_000;
    const SKEW: i64 = 15 * 60_000;
    const SYSLOG: Wall = Wall {
        now_ms: WALL,
        bounded: true,
    };

    fn clock() -> LiveClock {
        LiveClock::new(0, 10_000).with_max_past_skew(SKEW)
    }

    #[test]
    fn a_stale_partition_does_not_hold_back_a_fresh_one() {
        let mut c = clock();
        c.observe_live(1, WALL - 1000, 0, SYSLOG);
        // An hour behind: stale, left out while partition 1 is fresh.
        assert_eq!(c.observe_live(2, WALL - 3_600_000, 10, SYSLOG), WALL - 1000);
        assert_eq!(c.stale_partitions(), 1);
        assert_eq!(c.observe_live(1, WALL, 20, SYSLOG), WALL);
        // Exactly at the bound it is not stale yet, and holds the clock.
        let mut c = clock();
        c.observe_live(2, WALL - SKEW, 0, SYSLOG);
        c.observe_live(1, WALL, 10, SYSLOG);
        assert_eq!(c.stale_partitions(), 0);
        assert_eq!(c.observe_live(1, WALL, 20, SYSLOG), WALL - SKEW);
    }

    #[test]
    fn a_stale_partition_behind_the_clock_does_not_stop_it_when_alone() {
        let mut c = clock();
        c.observe_live(1, WALL - 1000, 0, SYSLOG);
        // Partition 1 goes idle; partition 2 keeps sending 1970.
        for i in 0..10 {
            c.observe_live(2, 1000, 11_000 + i * 1000, SYSLOG);
        }
        // The clock moves with the (monotonic) time since partition 1's
        // last record, from its watermark.
        assert_eq!(
            c.tick_live(30_000, WALL + 30_000),
            Some(WALL - 1000 + 30_000)
        );
    }

    #[test]
    fn a_stream_that_is_all_old_still_drives_the_clock() {
        let mut c = clock();
        let old = WALL - 7 * 86_400_000;
        assert_eq!(c.observe_live(1, old, 0, SYSLOG), old);
        assert_eq!(c.observe_live(1, old + 5000, 1, SYSLOG), old + 5000);
        assert_eq!(c.observe_live(2, old + 3000, 2, SYSLOG), old + 5000);
        // Files and Kafka are never stale.
        let file = Wall {
            now_ms: WALL,
            bounded: false,
        };
        let mut c = clock();
        c.observe_live(2, old, 0, file);
        assert_eq!(c.observe_live(1, WALL, 1, SYSLOG), old);
        assert_eq!(c.stale_partitions(), 0);
    }

    #[test]
    fn an_event_ahead_moves_its_watermark_only_to_the_wall_clock() {
        let mut c = clock();
        assert_eq!(
            c.observe_live(1, WALL + 290_000, 0, SYSLOG),
            WALL + FUTURE_TOLERANCE_MS
        );
        // The partition's later events move it on as time passes.
        let later = Wall {
            now_ms: WALL + 5000,
            bounded: true,
        };
        assert_eq!(c.observe_live(1, WALL + 4000, 5, later), WALL + 4000);
    }
}
