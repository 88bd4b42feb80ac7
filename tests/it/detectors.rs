//! Edge cases of each detector, on the default rules unless said otherwise.

use std::sync::Arc;

use mcp_alertd::alert::Alert;
use mcp_alertd::engine::{EngineConfig, RuleSet};

use crate::{line, rules, rules_with_tasks, run_lines, run_lines_cfg, s};

fn defaults() -> Arc<RuleSet> {
    Arc::new(RuleSet::embedded().unwrap())
}

fn failures(tenant: &str, agent: &str, secs: &[f64]) -> Vec<String> {
    secs.iter()
        .map(|sec| {
            let ms = crate::s(0) + (sec * 1000.0).round() as i64;
            line(
                ms,
                "auth.failure",
                &format!(r#""tenant":"{tenant}","agent_id":"{agent}","reason":"invalid_token""#),
            )
        })
        .collect()
}

fn of_rule<'a>(alerts: &'a [Alert], rule: &str) -> Vec<&'a Alert> {
    alerts.iter().filter(|a| a.rule == rule).collect()
}

#[test]
fn three_failures_in_sixty_seconds_raise_nothing() {
    let alerts = run_lines(&defaults(), 5000, &failures("t", "a", &[0.0, 20.0, 59.0]));
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn the_fourth_failure_within_sixty_seconds_raises_exactly_one_alert_at_that_event() {
    let alerts = run_lines(
        &defaults(),
        5000,
        &failures("t", "a", &[0.0, 20.0, 40.0, 59.999]),
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.rule, "auth_failure_burst");
    assert_eq!(a.ts, s(0) + 59_999);
    assert_eq!(a.count, 4);
    assert_eq!(a.window_start, Some(s(0) + 59_999 - 60_000));
    assert_eq!(a.window_end, Some(s(0) + 59_999));
    assert_eq!(a.tenant, "t");
    assert_eq!(a.key.get("agent_id").map(String::as_str), Some("a"));
    assert_eq!(a.events.len(), 1);
    assert_eq!(a.events[0].ts, s(0) + 59_999);
}

#[test]
fn four_failures_over_sixty_one_seconds_raise_nothing() {
    let alerts = run_lines(
        &defaults(),
        5000,
        &failures("t", "a", &[0.0, 20.0, 40.0, 61.0]),
    );
    assert!(alerts.is_empty(), "{alerts:?}");
    // The window is half-open: exactly 60 s apart is already outside.
    let alerts = run_lines(
        &defaults(),
        5000,
        &failures("t", "a", &[0.0, 20.0, 40.0, 60.0]),
    );
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn a_storm_raises_one_alert_per_suppression_period() {
    // 100 failures in 60 s: one alert.
    let secs: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.6).collect();
    let alerts = run_lines(&defaults(), 5000, &failures("t", "a", &secs));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].ts, s(0) + 1800);
    // 300 failures over 180 s: fires at 1.8 s, then at the first event 60 s
    // or more after each fire.
    let secs: Vec<f64> = (0..300).map(|i| f64::from(i) * 0.6).collect();
    let alerts = run_lines(&defaults(), 5000, &failures("t", "a", &secs));
    let times: Vec<i64> = alerts.iter().map(|a| a.ts - s(0)).collect();
    assert_eq!(times, vec![1800, 61_800, 121_800]);
    assert!(alerts.iter().all(|a| a.count > 3));
}

#[test]
fn out_of_order_within_lateness_misses_no_window() {
    // In order, the 4th event at 30 s fires. Delivered shuffled (all within
    // the 5 s lateness), the same window must still fire exactly once.
    let ordered = failures("t", "a", &[27.0, 28.0, 29.0, 30.0]);
    let shuffled = vec![
        ordered[3].clone(),
        ordered[1].clone(),
        ordered[0].clone(),
        ordered[2].clone(),
    ];
    let alerts = run_lines(&defaults(), 5000, &shuffled);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].count, 4);
    assert_eq!(alerts[0].ts, s(30));
    // A late event completes a window that ends at an earlier event: the
    // alert is at that window end (the smallest candidate), not at arrival.
    let lines = failures("t", "a", &[0.0, 10.0, 20.0, 75.0]);
    let late = failures("t", "a", &[15.0]);
    let alerts = run_lines(&defaults(), 100_000, &[lines, late].concat());
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0].ts, alerts[0].count), (s(20), 4));
}

#[test]
fn failures_of_different_tenants_never_mix() {
    let mut lines = failures("acme", "shared", &[0.0, 10.0]);
    lines.extend(failures("globex", "shared", &[20.0, 30.0]));
    lines.extend(failures("acme", "other", &[40.0, 41.0]));
    assert!(run_lines(&defaults(), 5000, &lines).is_empty());
}

fn denial(sec: i64, tenant: &str, session: &str) -> String {
    line(
        s(sec),
        "tool.denied",
        &format!(
            r#""tenant":"{tenant}","agent_id":"ag","session_id":"{session}","tool":"shell","reason":"not_in_allowlist""#
        ),
    )
}

#[test]
fn the_fifth_denial_raises_one_critical_alert_and_no_more() {
    let lines: Vec<String> = (0..100).map(|i| denial(i, "t", "s1")).collect();
    let alerts = run_lines(&defaults(), 5000, &lines);
    let critical = of_rule(&alerts, "session_injection_incident");
    assert_eq!(critical.len(), 1);
    assert_eq!(critical[0].ts, s(4));
    assert_eq!(critical[0].count, 5);
    assert_eq!(critical[0].severity.name(), "critical");
    assert_eq!(critical[0].window_start, None);
    // Every denial is also an unauthorized_tool_attempt.
    assert_eq!(of_rule(&alerts, "unauthorized_tool_attempt").len(), 100);
}

#[test]
fn four_denials_raise_no_incident_and_sessions_of_other_tenants_do_not_add_up() {
    let mut lines: Vec<String> = (0..4).map(|i| denial(i, "t", "s1")).collect();
    lines.extend((10..14).map(|i| denial(i, "u", "s1")));
    let alerts = run_lines(&defaults(), 5000, &lines);
    assert!(of_rule(&alerts, "session_injection_incident").is_empty());
}

#[test]
fn a_lifetime_key_starts_a_new_life_after_key_ttl() {
    let r = rules(
        r#"[[rule]]
id = "x"
title = "x"
severity = "low"
kind = "threshold"
match = { event = "tool.denied" }
group_by = ["session_id"]
condition = { gte = 2 }
key_ttl = "1h"
"#,
    );
    let hour = 3600;
    let lines = vec![
        denial(0, "t", "s"),
        denial(10, "t", "s"),            // fires (2)
        denial(20, "t", "s"),            // same life: no more
        denial(20 + hour + 6, "t", "s"), // clock passed 20 s + 1 h: new life, count 1
        denial(20 + hour + 7, "t", "s"), // fires again (2)
    ];
    let alerts = run_lines(&r, 5000, &lines);
    let times: Vec<i64> = alerts.iter().map(|a| a.ts).collect();
    assert_eq!(times, vec![s(10), s(20 + hour + 7)]);
}

fn issued(sec: i64, cred: &str) -> String {
    line(
        s(sec),
        "credential.issued",
        &format!(r#""tenant":"t","agent_id":"a","credential_id":"{cred}""#),
    )
}

fn used(sec: i64, cred: &str) -> String {
    line(
        s(sec),
        "credential.used",
        &format!(r#""tenant":"t","agent_id":"a","credential_id":"{cred}""#),
    )
}

#[test]
fn absence_fires_at_the_deadline_unless_a_stop_cancels_it() {
    let day = 86_400;
    let lines = vec![
        issued(0, "forgotten"),
        issued(0, "used"),
        used(3 * day, "used"),
        // Moves the clock past both deadlines (15 d and 30 d).
        line(
            s(31 * day),
            "auth.failure",
            r#""tenant":"t","agent_id":"z""#,
        ),
    ];
    let alerts = run_lines(&defaults(), 5000, &lines);
    let fired: Vec<(&str, &str, i64)> = alerts
        .iter()
        .map(|a| (a.rule.as_str(), a.key["credential_id"].as_str(), a.ts))
        .collect();
    assert_eq!(
        fired,
        vec![
            ("credential_unused", "forgotten", s(15 * day)),
            ("credential_unused_revoke", "forgotten", s(30 * day)),
        ]
    );
    assert_eq!(alerts[0].window_start, Some(s(0)));
    assert_eq!(alerts[0].window_end, Some(s(15 * day)));
    assert_eq!(alerts[0].events[0].event, "credential.issued");
}

#[test]
fn a_stop_after_the_deadline_or_before_the_start_does_not_cancel() {
    let day = 86_400;
    let lines = vec![
        used(0, "early"), // before its start: not remembered
        issued(10, "early"),
        issued(10, "late"),
        used(16 * day, "late"), // after the 15 d deadline: too late
        line(
            s(31 * day),
            "auth.failure",
            r#""tenant":"t","agent_id":"z""#,
        ),
    ];
    let alerts = run_lines(&defaults(), 5000, &lines);
    let unused: Vec<&str> = of_rule(&alerts, "credential_unused")
        .iter()
        .map(|a| a.key["credential_id"].as_str())
        .collect();
    assert_eq!(unused, vec!["early", "late"]);
    // The 30 d deadline of `late` was cancelled by the use on day 16.
    let revoke: Vec<&str> = of_rule(&alerts, "credential_unused_revoke")
        .iter()
        .map(|a| a.key["credential_id"].as_str())
        .collect();
    assert_eq!(revoke, vec!["early"]);
}

#[test]
fn a_timer_due_after_the_final_clock_does_not_fire() {
    let lines = vec![
        issued(0, "c"),
        line(s(15 * 86_400), "auth.failure", r#""tenant":"t""#),
    ];
    // Clock ends at 15 d - 5 s: the 15 d deadline is not passed.
    assert!(run_lines(&defaults(), 5000, &lines).is_empty());
    // Passed by one millisecond more than the lateness: fires.
    let lines = vec![
        issued(0, "c"),
        line(s(15 * 86_400) + 5001, "auth.failure", r#""tenant":"t""#),
    ];
    assert_eq!(run_lines(&defaults(), 5000, &lines).len(), 1);
}

fn start(sec: i64, session: &str, extra: &str) -> String {
    line(
        s(sec),
        "session.start",
        &format!(r#""tenant":"t","agent_id":"a","session_id":"{session}"{extra}"#),
    )
}

#[test]
fn deadline_precedence_is_field_then_task_table_then_default() {
    let lines = vec![
        start(
            0,
            "field",
            r#","declared_task":"code_review","expected_runtime_s":120"#,
        ),
        start(0, "task", r#","declared_task":"code_review""#),
        start(0, "unknown-task", r#","declared_task":"no_such_task""#),
        start(0, "none", ""),
        line(s(4 * 3600), "auth.failure", r#""tenant":"t""#),
    ];
    let alerts = run_lines(&defaults(), 5000, &lines);
    let fired: Vec<(&str, i64)> = alerts
        .iter()
        .map(|a| (a.key["session_id"].as_str(), a.ts - s(0)))
        .collect();
    // code_review = 45m in rules/tasks.toml; default 1h; ties on the
    // deadline are ordered by key.
    assert_eq!(
        fired,
        vec![
            ("field", 120_000),
            ("task", 45 * 60_000),
            ("none", 3_600_000),
            ("unknown-task", 3_600_000)
        ]
    );
}

#[test]
fn a_session_end_within_the_deadline_cancels_and_timers_fire_before_the_arriving_event() {
    let end = |sec: i64, session: &str| {
        line(
            s(sec),
            "session.end",
            &format!(r#""tenant":"t","agent_id":"a","session_id":"{session}""#),
        )
    };
    let lines = vec![
        start(0, "ok", r#","expected_runtime_s":60"#),
        end(60, "ok"), // at the deadline itself: cancels
        start(100, "over", r#","expected_runtime_s":60"#),
        // Its time moves the clock past 160 s: the overrun fires first, then
        // this end no longer finds a pending deadline.
        end(170, "over"),
    ];
    let alerts = run_lines(&defaults(), 5000, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].key["session_id"], "over");
    assert_eq!(alerts[0].ts, s(160));
}

#[test]
fn timers_with_equal_deadlines_fire_in_rule_id_then_key_order() {
    let rule = |id: &str| {
        format!(
            r#"[[rule]]
id = "{id}"
title = "t"
severity = "low"
kind = "absence"
start = {{ event = "session.start" }}
stop = {{ event = "session.end" }}
key = ["session_id"]
deadline = "10s"
"#
        )
    };
    let r = rules(&format!("{}{}", rule("b_rule"), rule("a_rule")));
    let lines = vec![
        start(0, "s2", ""),
        start(0, "s1", ""),
        line(s(100), "auth.failure", r#""tenant":"t""#),
    ];
    let alerts = run_lines(&r, 0, &lines);
    let order: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a.rule.as_str(), a.key["session_id"].as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            ("a_rule", "s1"),
            ("a_rule", "s2"),
            ("b_rule", "s1"),
            ("b_rule", "s2")
        ]
    );
}

#[test]
fn a_deadline_from_a_custom_task_table() {
    let r = rules_with_tasks(
        r#"[[rule]]
id = "overrun"
title = "t"
severity = "low"
kind = "absence"
start = { event = "session.start" }
stop = { event = "session.end" }
key = ["session_id"]
deadline_by_task = "tasks.toml"
deadline = "1h"
"#,
        Some("[tasks]\nquick = \"30s\"\n"),
    );
    let lines = vec![
        start(0, "q", r#","declared_task":"quick""#),
        line(s(100), "auth.failure", ""),
    ];
    let alerts = run_lines(&r, 0, &lines);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].ts, s(30));
}

#[test]
fn the_key_cap_evicts_the_oldest_keys_and_says_so() {
    let lines: Vec<String> = (0..40)
        .map(|i| {
            line(
                s(i),
                "auth.failure",
                &format!(r#""tenant":"t","agent_id":"a{i}""#),
            )
        })
        .collect();
    let alerts = run_lines_cfg(
        &defaults(),
        5000,
        EngineConfig {
            max_keys_per_rule: 16,
            ..EngineConfig::default()
        },
        &lines,
    );
    let pressure = of_rule(&alerts, "state_pressure");
    assert!(!pressure.is_empty());
    assert!(
        pressure
            .iter()
            .all(|a| a.key["rule"] == "auth_failure_burst" && a.count == 1)
    );
    // The evicted key lost its state: a0 (the oldest) needs 4 new failures.
    let mut more = lines.clone();
    more.extend((0..3).map(|i| line(s(41 + i), "auth.failure", r#""tenant":"t","agent_id":"a0""#)));
    let alerts = run_lines_cfg(
        &defaults(),
        5000,
        EngineConfig {
            max_keys_per_rule: 16,
            ..EngineConfig::default()
        },
        &more,
    );
    assert!(of_rule(&alerts, "auth_failure_burst").is_empty());
}

#[test]
fn match_rules_alert_on_every_event_with_its_own_time() {
    let lines: Vec<String> = (0..3)
        .map(|i| denial(i * 100, "t", &format!("s{i}")))
        .collect();
    let alerts = run_lines(&defaults(), 5000, &lines);
    let times: Vec<i64> = of_rule(&alerts, "unauthorized_tool_attempt")
        .iter()
        .map(|a| a.ts)
        .collect();
    assert_eq!(times, vec![s(0), s(100), s(200)]);
    assert!(
        of_rule(&alerts, "unauthorized_tool_attempt")
            .iter()
            .all(|a| a.count == 1 && a.window_start.is_none())
    );
}

#[test]
fn snapshot_and_restore_continue_exactly_where_the_state_left_off() {
    use mcp_alertd::decode::Decoder;
    use mcp_alertd::engine::Engine;
    use mcp_alertd::replay::Replayer;
    let mut lines = failures("t", "a", &[0.0, 10.0]);
    lines.push(issued(20, "c"));
    lines.push(start(30, "s", r#","expected_runtime_s":100"#));
    let tail = [
        failures("t", "a", &[40.0, 50.0]),
        vec![line(s(16 * 86_400), "auth.failure", "")],
    ]
    .concat();
    let whole = run_lines(&defaults(), 5000, &[lines.clone(), tail.clone()].concat());

    let decoder = Decoder::default();
    let mut engine = Engine::new(defaults(), EngineConfig::default());
    let mut out = Vec::new();
    let mut max = 0;
    for l in &lines {
        let ev = decoder.decode(l.as_bytes()).unwrap();
        max = max.max(ev.ts);
        engine.advance_to(max - 5000, &mut out);
        engine.on_event(&ev, None, &mut out);
    }
    let bytes = engine.snapshot().unwrap();
    let restored = Engine::restore(defaults(), EngineConfig::default(), &bytes).unwrap();
    // The replayer's max ts is re-derived from the first event after restore.
    let mut replayer = Replayer::new(restored, 5000);
    for l in &tail {
        let ev = decoder.decode(l.as_bytes()).unwrap();
        replayer.on_event(&ev, None, &mut out);
    }
    replayer.finish(&mut out);
    let out: Vec<_> = out
        .into_iter()
        .map(|d| mcp_alertd::alert::render(d, None))
        .collect();
    assert_eq!(out, whole);
    assert_eq!(
        whole
            .iter()
            .filter(|a| a.rule == "auth_failure_burst")
            .count(),
        1
    );
    assert_eq!(
        whole
            .iter()
            .filter(|a| a.rule == "credential_unused")
            .count(),
        1
    );
    assert_eq!(
        whole.iter().filter(|a| a.rule == "session_overrun").count(),
        1
    );

    let mut bad = bytes.clone();
    bad[0] = 99;
    let err = Engine::restore(defaults(), EngineConfig::default(), &bad).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}
