//! Property tests of the detectors against naive models that re-count
//! everything from the full history, on random streams with bounded
//! disorder and ties on the same millisecond.

use std::collections::BTreeMap;

use proptest::prelude::*;

use mcp_alertd::engine::EngineConfig;

use crate::support::saved::run_with_saves;
use crate::{line, rules, run_lines};

const LATENESS: i64 = 5_000;

/// The engine configuration `run_lines` uses.
fn config() -> EngineConfig {
    EngineConfig {
        lateness_ms: LATENESS,
        ..EngineConfig::default()
    }
}

/// A random stream: (key index, ts) in arrival order. Times move forward by
/// 0..`step` ms and are then moved back by up to `disorder` ms.
fn stream(max_len: usize, step: i64, disorder: i64) -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0u8..2, 0..step, 0..=disorder), 1..max_len).prop_map(|raw| {
        let mut base = 1_000_000i64;
        raw.into_iter()
            .map(|(key, dt, back)| {
                base += dt;
                (key, base - back)
            })
            .collect()
    })
}

/// DESIGN §4 threshold with a window, literally: re-counts every candidate
/// window over the elements still present (those above clock - W, and the
/// arriving one), with fire times forgotten below clock - W - S.
fn naive_threshold(
    events: &[(u8, i64)],
    w: i64,
    s: i64,
    holds: impl Fn(u64) -> bool,
) -> Vec<(u8, i64, u64)> {
    let mut clock = i64::MIN;
    let mut max_ts = i64::MIN;
    let mut seen: Vec<(u8, i64, usize)> = Vec::new(); // (key, ts, arrival)
    let mut fires: Vec<(u8, i64)> = Vec::new();
    let mut out = Vec::new();
    for (k, &(key, e)) in events.iter().enumerate() {
        max_ts = max_ts.max(e);
        clock = clock.max(max_ts - LATENESS);
        seen.push((key, e, k));
        let present: Vec<i64> = seen
            .iter()
            .filter(|(kk, t, j)| *kk == key && (*j == k || *t > clock - w))
            .map(|(_, t, _)| *t)
            .collect();
        let mut candidates: Vec<i64> = present
            .iter()
            .copied()
            .filter(|&t| e <= t && t < e + w)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for t in candidates {
            let count = present.iter().filter(|&&x| t - w < x && x <= t).count() as u64;
            let suppressed = fires
                .iter()
                .any(|&(fk, f)| fk == key && f > clock - w - s && (t - f).abs() < s);
            if holds(count) && !suppressed {
                fires.push((key, t));
                out.push((key, t, count));
                break;
            }
        }
    }
    out
}

fn threshold_rules(w: i64, s: i64, op: &str, n: u64) -> String {
    format!(
        r#"[[rule]]
id = "t"
title = "t"
severity = "low"
kind = "threshold"
match = {{ event = "auth.failure" }}
group_by = ["agent_id"]
window = "{w}ms"
suppress = "{s}ms"
condition = {{ {op} = {n} }}
"#
    )
}

fn lines_of(events: &[(u8, i64)], event: &str, field: &str) -> Vec<String> {
    events
        .iter()
        .enumerate()
        .map(|(i, (k, ts))| {
            line(
                *ts,
                event,
                &format!(
                    r#""agent_id":"a","{field}":"k{k}","session_id":"k{k}","tool":"x","seq":{i}"#
                ),
            )
        })
        .collect()
}

fn failure_lines(events: &[(u8, i64)]) -> Vec<String> {
    events
        .iter()
        .enumerate()
        .map(|(i, (k, ts))| {
            line(
                *ts,
                "auth.failure",
                &format!(r#""agent_id":"k{k}","seq":{i}"#),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn threshold_matches_the_naive_model(
        events in stream(60, 3_000, 8_000),
        w in prop::sample::select(vec![1_000i64, 10_000, 60_000]),
        s_factor in prop::sample::select(vec![1i64, 2, 0]),
        gt in any::<bool>(),
        n in 1u64..5,
        cut in 0usize..70,
    ) {
        let s = if s_factor == 0 { w / 2 } else { w * s_factor };
        let op = if gt { "gt" } else { "gte" };
        let r = rules(&threshold_rules(w, s, op, n));
        let lines = failure_lines(&events);
        let alerts = run_lines(&r, LATENESS, &lines);
        prop_assert_eq!(&run_with_saves(&r, config(), LATENESS, &lines, cut), &alerts);
        let got: Vec<(u8, i64, u64)> = alerts
            .into_iter()
            .map(|a| {
                let key: u8 = a.key["agent_id"][1..].parse().unwrap();
                prop_assert_eq!(a.window_start, Some(a.ts - w));
                Ok((key, a.ts, a.count))
            })
            .collect::<Result<_, _>>()?;
        let holds = |c: u64| if gt { c > n } else { c >= n };
        let want = naive_threshold(&events, w, s, holds);
        prop_assert_eq!(got, want);
    }

    /// With disorder within the lateness and suppress >= window, every
    /// window whose full count meets the condition has an alert within
    /// `suppress` of its end (DESIGN §4: no window is missed).
    #[test]
    fn no_window_over_the_threshold_goes_unalerted(
        events in stream(60, 2_000, LATENESS),
        w in prop::sample::select(vec![1_000i64, 10_000, 60_000]),
        s_factor in 1i64..3,
        n in 1u64..5,
    ) {
        let s = w * s_factor;
        let r = rules(&threshold_rules(w, s, "gt", n));
        let alerts = run_lines(&r, LATENESS, &failure_lines(&events));
        for key in 0u8..2 {
            let ts: Vec<i64> = events.iter().filter(|(k, _)| *k == key).map(|(_, t)| *t).collect();
            for &t in &ts {
                let count = ts.iter().filter(|&&x| t - w < x && x <= t).count() as u64;
                if count > n {
                    let covered = alerts.iter().any(|a| a.key["agent_id"] == format!("k{key}") && (a.ts - t).abs() < s);
                    prop_assert!(covered, "window ending {} (count {}) of k{} unalerted: {:?}", t, count, key, alerts);
                }
            }
        }
    }

    #[test]
    fn lifetime_threshold_fires_once_per_key_at_the_nth_arrival(
        events in stream(40, 3_000, 4_000),
        n in 1u64..8,
    ) {
        let r = rules(&format!(r#"[[rule]]
id = "life"
title = "t"
severity = "low"
kind = "threshold"
match = {{ event = "tool.denied" }}
group_by = ["session_id"]
condition = {{ gte = {n} }}
"#));
        let alerts = run_lines(&r, LATENESS, &lines_of(&events, "tool.denied", "reason"));
        let mut want = Vec::new();
        for key in 0u8..2 {
            if let Some((_, ts)) = events.iter().filter(|(k, _)| *k == key).nth(n as usize - 1) {
                want.push((format!("k{key}"), *ts));
            }
        }
        let mut got: Vec<(String, i64)> = alerts.iter().map(|a| (a.key["session_id"].clone(), a.ts)).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn absence_matches_the_naive_model(
        ops in prop::collection::vec((0u8..3, any::<bool>(), 0i64..4_000, 0i64..=6_000), 1..50),
        d in prop::sample::select(vec![1_000i64, 5_000, 20_000]),
        cut in 0usize..50,
    ) {
        let r = rules(&format!(r#"[[rule]]
id = "abs"
title = "t"
severity = "low"
kind = "absence"
start = {{ event = "session.start" }}
stop = {{ event = "session.end" }}
key = ["session_id"]
deadline = "{d}ms"
"#));
        let mut base = 1_000_000i64;
        let events: Vec<(u8, bool, i64)> = ops
            .into_iter()
            .map(|(key, is_start, dt, back)| {
                base += dt;
                (key, is_start, base - back)
            })
            .collect();
        let lines: Vec<String> = events
            .iter()
            .map(|(k, is_start, ts)| {
                let ev = if *is_start { "session.start" } else { "session.end" };
                line(*ts, ev, &format!(r#""agent_id":"a","session_id":"k{k}""#))
            })
            .collect();
        let alerts = run_lines(&r, LATENESS, &lines);
        prop_assert_eq!(&run_with_saves(&r, config(), LATENESS, &lines, cut), &alerts);
        let got: Vec<(String, i64, i64)> = alerts
            .into_iter()
            .map(|a| (a.key["session_id"].clone(), a.window_start.unwrap(), a.ts))
            .collect();

        // Naive: pending deadlines in a map; before each event, fire every
        // deadline below the clock in (deadline, key) order.
        let mut pending: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut want = Vec::new();
        let mut clock = i64::MIN;
        let mut max_ts = i64::MIN;
        let fire = |clock: i64, pending: &mut BTreeMap<String, (i64, i64)>, want: &mut Vec<(String, i64, i64)>| {
            let mut due: Vec<(i64, String, i64)> = pending
                .iter()
                .filter(|(_, (_, dl))| *dl < clock)
                .map(|(k, (st, dl))| (*dl, k.clone(), *st))
                .collect();
            due.sort();
            for (dl, k, st) in due {
                pending.remove(&k);
                want.push((k, st, dl));
            }
        };
        for (k, is_start, ts) in &events {
            max_ts = max_ts.max(*ts);
            clock = clock.max(max_ts - LATENESS);
            fire(clock, &mut pending, &mut want);
            let key = format!("k{k}");
            if *is_start {
                pending.insert(key, (*ts, ts + d));
            } else if let Some((st, dl)) = pending.get(&key).copied()
                && st <= *ts && *ts <= dl {
                pending.remove(&key);
            }
        }
        fire(clock, &mut pending, &mut want);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn the_same_input_gives_the_same_alerts_and_ids(
        events in stream(80, 2_000, 6_000),
    ) {
        let r = std::sync::Arc::new(mcp_alertd::engine::RuleSet::embedded().unwrap());
        let mut lines = failure_lines(&events);
        lines.extend(lines_of(&events, "tool.denied", "reason"));
        let a = run_lines(&r, LATENESS, &lines);
        let b = run_lines(&r, LATENESS, &lines);
        prop_assert_eq!(&a, &b);
        let mut ids: Vec<&str> = a.iter().map(|x| x.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), a.len(), "two alerts share an id");
    }
}
