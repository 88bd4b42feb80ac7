//! The correlation kinds (DESIGN §4 "More rule kinds"): sequence,
//! cardinality, membership, alerts as events and `tenant_scoped = false`.
//! Edge cases at every boundary, then property tests against naive models
//! written from the DESIGN text (random streams with bounded disorder and
//! equal-millisecond ties), determinism and snapshot/restore.

use std::collections::BTreeSet;
use std::sync::Arc;

use mcp_alertd::alert::{Alert, render};
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};
use mcp_alertd::replay::Replayer;
use proptest::prelude::*;

use crate::support::saved::run_with_saves;
use crate::{line, rules, run_lines, s};

const LATENESS: i64 = 2_000;

fn of_rule<'a>(alerts: &'a [Alert], rule: &str) -> Vec<&'a Alert> {
    alerts.iter().filter(|a| a.rule == rule).collect()
}

fn rule_text(id: &str, kind: &str, body: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\ntitle = \"{id}\"\nseverity = \"high\"\nkind = \"{kind}\"\n{body}\n"
    )
}

fn refused(toml: &str) -> String {
    let files = vec![("test.toml".to_owned(), toml.to_owned())];
    RuleSet::from_files(files, "test").unwrap_err().to_string()
}

// ---------------------------------------------------------------- sequence

const REVOKED: &str = r#"first = { event = "credential.revoked" }
then = { event = ["auth.success", "credential.used"] }
key = ["credential_id"]
within = "10s"
after = "2s""#;

fn cred(ms: i64, event: &str, cred: &str) -> String {
    line(
        ms,
        event,
        &format!(r#""tenant":"t","agent_id":"a","credential_id":"{cred}""#),
    )
}

#[test]
fn a_sequence_fires_once_per_first_dated_at_the_first_with_both_events() {
    let r = rules(&rule_text("seq", "sequence", REVOKED));
    let lines = [
        cred(s(0), "credential.revoked", "k1"),
        cred(s(0) + 1_999, "auth.success", "k1"), // before `after`
        cred(s(2), "auth.success", "k1"),         // at a + after: fires
        cred(s(3), "credential.used", "k1"),      // A already fired
    ];
    let alerts = run_lines(&r, LATENESS, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!((a.ts, a.count), (s(0), 1));
    assert_eq!(a.window_start, Some(s(2)));
    assert_eq!(a.window_end, Some(s(10)));
    assert_eq!(a.key["credential_id"], "k1");
    let events: Vec<(&str, i64)> = a.events.iter().map(|e| (e.event.as_str(), e.ts)).collect();
    assert_eq!(
        events,
        vec![("credential.revoked", s(0)), ("auth.success", s(2))]
    );
}

#[test]
fn sequence_bounds_are_inclusive_at_both_ends() {
    let r = rules(&rule_text("seq", "sequence", REVOKED));
    let at_end = [
        cred(s(0), "credential.revoked", "k1"),
        cred(s(10), "credential.used", "k1"),
    ];
    assert_eq!(run_lines(&r, LATENESS, &at_end).len(), 1);
    let past = [
        cred(s(0), "credential.revoked", "k1"),
        cred(s(10) + 1, "credential.used", "k1"),
    ];
    assert!(run_lines(&r, LATENESS, &past).is_empty());
}

#[test]
fn a_then_at_the_same_millisecond_counts_whichever_arrives_first() {
    let body = REVOKED.replace("after = \"2s\"", "");
    let r = rules(&rule_text("seq", "sequence", &body));
    for lines in [
        [
            cred(s(0), "credential.revoked", "k1"),
            cred(s(0), "credential.used", "k1"),
        ],
        [
            cred(s(0), "credential.used", "k1"),
            cred(s(0), "credential.revoked", "k1"),
        ],
    ] {
        let alerts = run_lines(&r, LATENESS, &lines);
        assert_eq!(alerts.len(), 1, "{lines:?}");
        assert_eq!(alerts[0].events[0].event, "credential.revoked");
        assert_eq!(alerts[0].events[1].event, "credential.used");
    }
}

#[test]
fn a_late_first_finds_the_thens_kept_for_the_lateness_and_no_older() {
    let body = REVOKED.replace("after = \"2s\"", "");
    let r = rules(&rule_text("seq", "sequence", &body));
    // B at 1 s, then the clock moves to 3 s - 2 s lateness = 1 s: B is
    // still kept (clock <= b + lateness); the late A at 0.5 s finds it.
    let kept = [
        cred(s(1), "credential.used", "k1"),
        cred(s(3), "auth.success", "k2"),
        cred(s(0) + 500, "credential.revoked", "k1"),
    ];
    let alerts = run_lines(&r, LATENESS, &kept);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].ts, s(0) + 500);
    // The clock at 3.001 s passes b + lateness: B is gone.
    let gone = [
        cred(s(1), "credential.used", "k1"),
        cred(s(5) + 1, "auth.success", "k2"),
        cred(s(0) + 500, "credential.revoked", "k1"),
    ];
    assert!(run_lines(&r, LATENESS, &gone).is_empty());
}

#[test]
fn first_key_and_then_key_tie_different_fields_and_the_alert_names_the_then_side() {
    let r = rules(&rule_text(
        "overlap",
        "sequence",
        r#"first = { event = "credential.issued", replaces = { exists = true } }
then = { event = "credential.used" }
first_key = ["replaces"]
then_key = ["credential_id"]
within = "1h""#,
    ));
    let lines = [
        line(
            s(0),
            "credential.issued",
            r#""tenant":"t","agent_id":"a","credential_id":"new","replaces":"old""#,
        ),
        cred(s(1), "credential.used", "new"),
        cred(s(2), "credential.used", "old"),
    ];
    let alerts = run_lines(&r, LATENESS, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].key["credential_id"], "old");
    assert_eq!(alerts[0].ts, s(0));
}

#[test]
fn sequence_options_are_validated() {
    let err = refused(&rule_text(
        "x",
        "sequence",
        "first = { event = \"a\" }\nthen = { event = \"b\" }\nfirst_key = [\"a\"]\nwithin = \"1s\"\nafter = \"2s\"",
    ));
    assert!(
        err.contains("give `key` (both sides), or both `first_key` and `then_key`"),
        "{err}"
    );
    assert!(err.contains("`after` must not exceed `within`"), "{err}");
    let err = refused(&rule_text(
        "x",
        "sequence",
        "first = { event = \"a\" }\nkey = [\"a\"]",
    ));
    assert!(
        err.contains("`then` is required") && err.contains("`within` is required"),
        "{err}"
    );
}

// ---------------------------------------------------- alerts as events

const BURST: &str = r#"match = { event = "auth.failure" }
group_by = ["agent_id"]
window = "60s"
condition = { gt = 1 }"#;

fn chain_rules() -> Arc<RuleSet> {
    let mut text = rule_text("burst", "threshold", BURST);
    text.push_str(&rule_text(
        "after_burst",
        "sequence",
        "first = { alert = \"burst\" }\nthen = { event = \"auth.success\" }\nkey = [\"agent_id\"]\nwithin = \"10m\"",
    ));
    text.push_str(&rule_text(
        "paged",
        "match",
        "match = { alert = \"after_burst\" }\ngroup_by = [\"agent_id\"]",
    ));
    rules(&text)
}

fn auth(ms: i64, event: &str, agent: &str) -> String {
    line(ms, event, &format!(r#""tenant":"t","agent_id":"{agent}""#))
}

#[test]
fn an_alert_is_an_event_for_the_rules_that_name_it_applied_right_after_its_trigger() {
    let lines = [
        auth(s(0), "auth.failure", "bot"),
        auth(s(1), "auth.failure", "bot"),
        auth(s(2), "auth.success", "bot"),
        auth(s(3), "auth.success", "other"),
    ];
    let alerts = run_lines(&chain_rules(), LATENESS, &lines);
    let rules: Vec<(&str, i64)> = alerts.iter().map(|a| (a.rule.as_str(), a.ts)).collect();
    assert_eq!(
        rules,
        vec![("burst", s(1)), ("after_burst", s(1)), ("paged", s(1))]
    );
    let seq = &alerts[1];
    assert_eq!(seq.events[0].event, "alert.burst");
    assert_eq!(seq.events[1].event, "auth.success");
    assert_eq!(alerts[2].key["agent_id"], "bot");
    assert_eq!(alerts[2].tenant, "t");
}

#[test]
fn an_input_event_named_like_an_alert_is_not_one() {
    let lines = [
        auth(s(0), "alert.burst", "bot"),
        auth(s(1), "auth.success", "bot"),
    ];
    assert!(run_lines(&chain_rules(), LATENESS, &lines).is_empty());
}

#[test]
fn alert_chains_must_name_rules_of_the_set_and_be_acyclic() {
    let mut text = rule_text(
        "a",
        "sequence",
        "first = { alert = \"b\" }\nthen = { event = \"x\" }\nkey = [\"agent_id\"]\nwithin = \"1m\"",
    );
    text.push_str(&rule_text("b", "match", "match = { alert = \"a\" }"));
    text.push_str(&rule_text("c", "match", "match = { alert = \"c\" }"));
    text.push_str(&rule_text("d", "match", "match = { alert = \"nope\" }"));
    let err = refused(&text);
    assert!(
        err.contains("alert chains must be acyclic: a -> b -> a"),
        "{err}"
    );
    assert!(
        err.contains("rule `c`: `alert` names the rule itself"),
        "{err}"
    );
    assert!(
        err.contains("`alert` names `nope`, which is no enabled rule of this set"),
        "{err}"
    );
}

// ------------------------------------------------------------- cardinality

fn spray(ms: i64, ip: &str, agent: Option<&str>) -> String {
    let agent = agent.map_or_else(String::new, |a| format!(r#","agent_id":"{a}""#));
    line(
        ms,
        "auth.failure",
        &format!(r#""tenant":"t","source_ip":"{ip}"{agent}"#),
    )
}

const SPRAY: &str = r#"match = { event = "auth.failure" }
group_by = ["source_ip"]
distinct = "agent_id"
window = "5m"
condition = { gte = 10 }"#;

#[test]
fn the_tenth_distinct_value_fires_and_the_ninth_does_not() {
    let r = rules(&rule_text("spray", "cardinality", SPRAY));
    let mut lines: Vec<String> = (0..9)
        .map(|i| spray(s(i), "ip1", Some(&format!("a{i}"))))
        .collect();
    lines.push(spray(s(9), "ip1", Some("a0"))); // a repeat: still 9
    lines.push(spray(s(10), "ip1", None)); // claims no identity: does not count
    assert!(run_lines(&r, LATENESS, &lines).is_empty());
    lines.push(spray(s(11), "ip1", Some("a9")));
    let alerts = run_lines(&r, LATENESS, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0].ts, alerts[0].count), (s(11), 10));
    assert_eq!(alerts[0].window_start, Some(s(11) - 300_000));
    assert_eq!(alerts[0].key["source_ip"], "ip1");
}

#[test]
fn distinct_values_are_counted_in_the_half_open_window() {
    let r = rules(&rule_text(
        "spray",
        "cardinality",
        &SPRAY.replace("gte = 10", "gte = 2"),
    ));
    let out = [
        spray(s(0), "ip1", Some("a")),
        spray(s(300), "ip1", Some("b")),
    ];
    assert!(run_lines(&r, LATENESS, &out).is_empty());
    let inside = [
        spray(s(0), "ip1", Some("a")),
        spray(s(300) - 1, "ip1", Some("b")),
    ];
    assert_eq!(run_lines(&r, LATENESS, &inside).len(), 1);
}

#[test]
fn cardinality_options_are_validated() {
    let err = refused(&rule_text(
        "x",
        "cardinality",
        "match = { event = \"a\" }\ngroup_by = [\"agent_id\"]\ndistinct = \"agent_id\"\ncondition = { gte = 2 }",
    ));
    assert!(err.contains("`window` is required"), "{err}");
    assert!(
        err.contains("`distinct`: `agent_id` is also a `group_by` field"),
        "{err}"
    );
}

// ----------------------------------------------------- tenant_scoped = false

#[test]
fn a_rule_that_is_not_tenant_scoped_keys_across_tenants_and_alerts_in_the_triggers_tenant() {
    let r = rules(&rule_text(
        "cross",
        "cardinality",
        "tenant_scoped = false\nmatch = { event = \"auth.success\" }\ngroup_by = [\"credential_id\"]\ndistinct = \"tenant\"\nwindow = \"30d\"\ncondition = { gte = 2 }",
    ));
    let use_in = |ms: i64, tenant: &str| {
        line(
            ms,
            "auth.success",
            &format!(r#""tenant":"{tenant}","agent_id":"a","credential_id":"k""#),
        )
    };
    let day = 86_400_000;
    let alerts = run_lines(
        &r,
        LATENESS,
        &[use_in(s(0), "acme"), use_in(s(0) + 29 * day, "globex")],
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].tenant, "globex");
    assert_eq!(alerts[0].key["credential_id"], "k");
    assert_eq!(alerts[0].count, 2);
    assert!(
        run_lines(
            &r,
            LATENESS,
            &[use_in(s(0), "acme"), use_in(s(0) + 30 * day, "globex")]
        )
        .is_empty()
    );
    // Scoped (the default), the two tenants are two keys of one value each.
    let scoped = rules(&rule_text(
        "cross",
        "cardinality",
        "match = { event = \"auth.success\" }\ngroup_by = [\"credential_id\"]\ndistinct = \"tenant\"\nwindow = \"30d\"\ncondition = { gte = 2 }",
    ));
    assert!(
        run_lines(
            &scoped,
            LATENESS,
            &[use_in(s(0), "acme"), use_in(s(1), "globex")]
        )
        .is_empty()
    );
}

// -------------------------------------------------------------- membership

const BYPASS: &str = r#"define = { event = "session.start" }
set = "allowed_tools"
check = { event = "tool.invoke" }
field = "tool"
until = { event = "session.end" }
key = ["session_id"]"#;

fn start(ms: i64, session: &str, tools: &[&str]) -> String {
    let tools: Vec<String> = tools.iter().map(|t| format!("\"{t}\"")).collect();
    line(
        ms,
        "session.start",
        &format!(
            r#""tenant":"t","agent_id":"a","session_id":"{session}","allowed_tools":[{}]"#,
            tools.join(",")
        ),
    )
}

fn invoke(ms: i64, session: &str, tool: &str) -> String {
    line(
        ms,
        "tool.invoke",
        &format!(r#""tenant":"t","agent_id":"a","session_id":"{session}","tool":"{tool}""#),
    )
}

fn end(ms: i64, session: &str) -> String {
    line(
        ms,
        "session.end",
        &format!(r#""tenant":"t","agent_id":"a","session_id":"{session}""#),
    )
}

#[test]
fn a_check_outside_the_set_fires_at_its_own_time_and_a_member_does_not() {
    let r = rules(&rule_text("bypass", "membership", BYPASS));
    let lines = [
        start(s(0), "s1", &["read"]),
        invoke(s(1), "s1", "read"),
        invoke(s(2), "s1", "shell"),
        end(s(3), "s1"),
        invoke(s(3), "s1", "shell"), // at the until's time: the set has ended
        invoke(s(4), "s1", "shell"),
    ];
    let alerts = run_lines(&r, LATENESS, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].ts, s(2));
    assert_eq!(alerts[0].key["session_id"], "s1");
    assert!(
        alerts[0].summary.contains("`shell`"),
        "{}",
        alerts[0].summary
    );
}

#[test]
fn a_check_before_its_define_is_held_until_the_clock_passes_it() {
    let r = rules(&rule_text("bypass", "membership", BYPASS));
    // The check at 1 s arrives first; the define at 0.5 s arrives while the
    // clock (3 s - 2 s) has not passed 1 s: it still judges the check.
    let held = [
        invoke(s(1), "s1", "shell"),
        invoke(s(3), "s2", "x"),
        start(s(0) + 500, "s1", &["read"]),
    ];
    let alerts = run_lines(&r, LATENESS, &held);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].ts, s(1));
    // Once the clock passed the check (3.001 s - 2 s > 1 s), it is dropped.
    let dropped = [
        invoke(s(1), "s1", "shell"),
        invoke(s(3) + 1, "s2", "x"),
        start(s(0) + 500, "s1", &["read"]),
    ];
    assert!(run_lines(&r, LATENESS, &dropped).is_empty());
}

#[test]
fn an_until_ends_the_set_for_checks_that_arrive_after_it_only() {
    let r = rules(&rule_text("bypass", "membership", BYPASS));
    // The until at 1 s arrives after the check at 2 s was judged: the check
    // fired. A check at 2.5 s arriving after the until does not.
    let lines = [
        start(s(0), "s1", &["read"]),
        invoke(s(2), "s1", "shell"),
        end(s(1), "s1"),
        invoke(s(2) + 500, "s1", "shell"),
    ];
    let alerts = run_lines(&r, LATENESS, &lines);
    let times: Vec<i64> = alerts.iter().map(|a| a.ts).collect();
    assert_eq!(times, vec![s(2)]);
}

#[test]
fn a_set_ends_at_key_ttl_after_its_define() {
    let body = format!("{BYPASS}\nkey_ttl = \"1m\"");
    let r = rules(&rule_text("bypass", "membership", &body));
    let lines = [
        start(s(0), "s1", &["read"]),
        invoke(s(62), "s1", "other"), // clock 60 s: the set still holds
        invoke(s(63), "s1", "shell"), // clock 61 s > 0 + 60 s: ended
    ];
    let times: Vec<i64> = run_lines(&r, LATENESS, &lines)
        .iter()
        .map(|a| a.ts)
        .collect();
    assert_eq!(times, vec![s(62)]);
}

#[test]
fn membership_options_are_validated() {
    let err = refused(&rule_text(
        "x",
        "membership",
        "define = { event = \"a\" }\ncheck = { event = \"b\" }",
    ));
    for want in [
        "`key` is required",
        "`set` is required",
        "`field` is required",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

// ------------------------------------------------- the default rules' state

/// The alerts of `lines` with at most `cap` live keys per rule.
fn run_capped(rules: &Arc<RuleSet>, cap: usize, lines: &[String]) -> Vec<Alert> {
    let cfg = EngineConfig {
        max_keys_per_rule: cap,
        ..EngineConfig::default()
    };
    crate::run_lines_cfg(rules, LATENESS, cfg, lines)
}

#[test]
fn every_new_kind_is_capped_with_state_pressure() {
    let defaults = Arc::new(RuleSet::embedded().unwrap());
    let lines: Vec<String> = (0..40)
        .flat_map(|i| {
            [
                line(
                    s(i),
                    "credential.revoked",
                    &format!(r#""tenant":"t","agent_id":"a","credential_id":"k{i}""#),
                ),
                start(s(i), &format!("s{i}"), &["read"]),
                line(
                    s(i),
                    "tool.denied",
                    &format!(r#""tenant":"t","agent_id":"a{i}","session_id":"s{i}","tool":"x""#),
                ),
            ]
        })
        .collect();
    let alerts = run_capped(&defaults, 16, &lines);
    let pressured: BTreeSet<&str> = of_rule(&alerts, "state_pressure")
        .iter()
        .map(|a| a.key["rule"].as_str())
        .collect();
    for rule in [
        "revoked_credential_use",
        "allowlist_bypass",
        "persistent_injection",
    ] {
        assert!(pressured.contains(rule), "{rule} not capped: {pressured:?}");
    }
}

/// The events kept only for late arrivals (a sequence's thens, a
/// membership rule's held checks) are capped per rule like keys: past the
/// cap the oldest go, with `state_pressure`, and a late arrival finds only
/// what is left.
#[test]
fn events_kept_for_late_arrivals_are_capped_with_state_pressure() {
    let defaults = Arc::new(RuleSet::embedded().unwrap());
    let t = s(100);
    let mut lines: Vec<String> = (0..40)
        .flat_map(|i| {
            [
                line(
                    t,
                    "credential.used",
                    &format!(r#""tenant":"t","agent_id":"a","credential_id":"k{i}""#),
                ),
                line(
                    t,
                    "tool.invoke",
                    &format!(r#""tenant":"t","agent_id":"a","session_id":"h{i}","tool":"x""#),
                ),
            ]
        })
        .collect();
    // Late, within the lateness: the revocation and the allowlist of the
    // first (evicted) and the last (kept) of them.
    for i in [0, 39] {
        lines.push(line(
            t - 1,
            "credential.revoked",
            &format!(r#""tenant":"t","agent_id":"a","credential_id":"k{i}""#),
        ));
        lines.push(start(t - 1, &format!("h{i}"), &["read"]));
    }
    let alerts = run_capped(&defaults, 16, &lines);
    for rule in ["revoked_credential_use", "allowlist_bypass"] {
        let pressure: Vec<&Alert> = of_rule(&alerts, "state_pressure")
            .into_iter()
            .filter(|a| a.key["rule"] == rule)
            .collect();
        // 40 kept at a cap of 16, one sixteenth (one) at a time: 24 went.
        let evicted: u64 = pressure.iter().map(|a| a.count).sum();
        assert_eq!(evicted, 24, "{rule}: {pressure:?}");
    }
    let revoked: Vec<&str> = of_rule(&alerts, "revoked_credential_use")
        .iter()
        .map(|a| a.key["credential_id"].as_str())
        .collect();
    assert_eq!(revoked, vec!["k39"]);
    let bypass: Vec<&str> = of_rule(&alerts, "allowlist_bypass")
        .iter()
        .map(|a| a.key["session_id"].as_str())
        .collect();
    assert_eq!(bypass, vec!["h39"]);
}

// ------------------------------------------------------ naive models

/// One random event: (kind selector, key, ts, value) in arrival order.
type Ev = (u8, u8, i64, u8);

fn events(max_len: usize, step: i64, disorder: i64) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0u8..3, 0u8..2, 0..step, 0..=disorder, 0u8..4), 1..max_len).prop_map(
        |raw| {
            let mut base = 1_000_000i64;
            raw.into_iter()
                .map(|(kind, key, dt, back, value)| {
                    base += dt;
                    (kind, key, base - back, value)
                })
                .collect()
        },
    )
}

/// Replays `lines` and returns the alerts; also checks a run cut at
/// `cut` and restored from a snapshot gives the same alerts.
fn run_with_restart(r: &Arc<RuleSet>, lines: &[String], cut: usize) -> Vec<Alert> {
    let cfg = EngineConfig {
        lateness_ms: LATENESS,
        ..EngineConfig::default()
    };
    let decoder = Decoder::default();
    let mut out = Vec::new();
    let mut replayer = Replayer::new(Engine::new(r.clone(), cfg), LATENESS);
    let cut = cut.min(lines.len());
    for l in &lines[..cut] {
        replayer.on_event(&decoder.decode(l.as_bytes()).unwrap(), None, &mut out);
    }
    let snap = replayer.engine().snapshot().unwrap();
    let restored = Engine::restore(r.clone(), cfg, &snap).unwrap();
    // The clock is restored with the engine; the replayer's own maximum
    // starting again gives the same clock (it never moves back).
    let mut replayer = Replayer::new(restored, LATENESS);
    for l in &lines[cut..] {
        replayer.on_event(&decoder.decode(l.as_bytes()).unwrap(), None, &mut out);
    }
    replayer.finish(&mut out);
    let alerts: Vec<Alert> = out.into_iter().map(|d| render(d, None)).collect();
    let straight = run_lines(r, LATENESS, lines);
    assert_eq!(alerts, straight, "a restart changed the alerts");
    let incremental = run_with_saves(r, cfg, LATENESS, lines, cut);
    assert_eq!(
        incremental, straight,
        "incremental saves changed the alerts"
    );
    alerts
}

/// DESIGN §4 sequence, literally: every A kept while clock <= a + W and
/// every B while clock <= b + lateness; a B completes every waiting A in
/// range; an A takes the earliest kept B in range (first to arrive on a
/// tie) or waits. Returns (key, a, b) per alert.
fn naive_sequence(evs: &[Ev], w: i64, g: i64) -> Vec<(u8, i64, i64)> {
    let mut clock = i64::MIN;
    let mut max_ts = i64::MIN;
    let mut firsts: Vec<(u8, i64)> = Vec::new();
    let mut thens: Vec<(u8, i64)> = Vec::new();
    let mut out = Vec::new();
    for &(kind, key, t, _) in evs {
        max_ts = max_ts.max(t);
        clock = clock.max(max_ts - LATENESS);
        let (is_first, is_then) = (kind != 1, kind != 0); // 0 first, 1 then, 2 both
        firsts.retain(|&(_, a)| clock <= a + w);
        thens.retain(|&(_, b)| clock <= b + LATENESS);
        if is_then {
            let mut done: Vec<(u8, i64)> = firsts
                .iter()
                .copied()
                .filter(|&(k, a)| k == key && a + g <= t && t <= a + w)
                .collect();
            done.sort_by_key(|&(_, a)| a);
            firsts.retain(|&(k, a)| !(k == key && a + g <= t && t <= a + w));
            out.extend(done.into_iter().map(|(_, a)| (key, a, t)));
        }
        if is_first {
            let b = thens
                .iter()
                .filter(|&&(k, b)| k == key && t + g <= b && b <= t + w)
                .map(|&(_, b)| b)
                .min();
            match b {
                Some(b) => out.push((key, t, b)),
                None if clock <= t + w => firsts.push((key, t)),
                None => {}
            }
        }
        if is_then && clock <= t + LATENESS {
            thens.push((key, t));
        }
    }
    out
}

fn sequence_lines(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .enumerate()
        .map(|(i, &(kind, key, t, _))| {
            let event = [
                "credential.revoked",
                "credential.used",
                "credential.rotated",
            ][kind as usize];
            line(
                t,
                event,
                &format!(r#""tenant":"t","agent_id":"a","credential_id":"k{key}","seq":{i}"#),
            )
        })
        .collect()
}

/// DESIGN §4 cardinality: the threshold's candidates and suppression, with
/// the count of distinct values among the elements still present.
fn naive_cardinality(evs: &[Ev], w: i64, s: i64, n: u64) -> Vec<(u8, i64, u64)> {
    let mut clock = i64::MIN;
    let mut max_ts = i64::MIN;
    let mut seen: Vec<(u8, i64, u8, usize)> = Vec::new();
    let mut fires: Vec<(u8, i64)> = Vec::new();
    let mut out = Vec::new();
    for (j, &(kind, key, e, value)) in evs.iter().enumerate() {
        max_ts = max_ts.max(e);
        clock = clock.max(max_ts - LATENESS);
        if kind == 2 {
            continue; // lacks the distinct field
        }
        seen.push((key, e, value, j));
        let present: Vec<(i64, u8)> = seen
            .iter()
            .filter(|&&(k, t, _, i)| k == key && (i == j || t > clock - w))
            .map(|&(_, t, v, _)| (t, v))
            .collect();
        let mut candidates: Vec<i64> = present
            .iter()
            .map(|p| p.0)
            .filter(|&t| e <= t && t < e + w)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for t in candidates {
            let values: BTreeSet<u8> = present
                .iter()
                .filter(|p| t - w < p.0 && p.0 <= t)
                .map(|p| p.1)
                .collect();
            let count = values.len() as u64;
            let suppressed = fires
                .iter()
                .any(|&(fk, f)| fk == key && f > clock - w - s && (t - f).abs() < s);
            if count >= n && !suppressed {
                fires.push((key, t));
                out.push((key, t, count));
                break;
            }
        }
    }
    out
}

fn cardinality_lines(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .enumerate()
        .map(|(i, &(kind, key, t, value))| {
            let agent = if kind == 2 {
                String::new()
            } else {
                format!(r#","agent_id":"v{value}""#)
            };
            line(
                t,
                "auth.failure",
                &format!(r#""tenant":"t","source_ip":"ip{key}"{agent},"seq":{i}"#),
            )
        })
        .collect()
}

/// DESIGN §4 membership, literally, over every define, until and held
/// check still present (defines and untils for key_ttl, held checks while
/// the clock has not passed them). Sets are `{value, value + 1}`.
fn naive_membership(evs: &[Ev], ttl: i64) -> Vec<(u8, i64)> {
    let mut clock = i64::MIN;
    let mut max_ts = i64::MIN;
    let mut defines: Vec<(u8, i64, u8)> = Vec::new();
    let mut untils: Vec<(u8, i64)> = Vec::new();
    let mut held: Vec<(u8, i64, u8)> = Vec::new();
    let mut out = Vec::new();
    let judge = |defines: &[(u8, i64, u8)], untils: &[(u8, i64)], key: u8, t: i64, v: u8| {
        let d = defines
            .iter()
            .filter(|d| d.0 == key && d.1 <= t)
            .max_by_key(|d| d.1)?;
        let ended = untils.iter().any(|u| u.0 == key && d.1 <= u.1 && u.1 <= t);
        Some(!ended && v != d.2 && v != d.2 + 1)
    };
    for &(kind, key, t, value) in evs {
        max_ts = max_ts.max(t);
        clock = clock.max(max_ts - LATENESS);
        defines.retain(|d| clock <= d.1 + ttl);
        untils.retain(|u| clock <= u.1 + ttl);
        held.retain(|h| clock <= h.1);
        match kind {
            0 => match judge(&defines, &untils, key, t, value) {
                Some(true) => out.push((key, t)),
                Some(false) => {}
                None if clock <= t => held.push((key, t, value)),
                None => {}
            },
            1 => {
                // Of defines of one key at one millisecond, the last wins.
                defines.push((key, t, value));
                let (now, keep): (Vec<_>, Vec<_>) =
                    held.iter().partition(|h| h.0 == key && h.1 >= t);
                held = keep;
                let mut now = now;
                now.sort_by_key(|h| h.1);
                for (k, ht, hv) in now {
                    if judge(&defines, &untils, k, ht, hv) == Some(true) {
                        out.push((k, ht));
                    }
                }
            }
            _ => untils.push((key, t)),
        }
    }
    out
}

fn membership_lines(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .enumerate()
        .map(|(i, &(kind, key, t, value))| match kind {
            0 => line(t, "tool.invoke", &format!(r#""tenant":"t","agent_id":"a","session_id":"s{key}","tool":"v{value}","seq":{i}"#)),
            1 => line(
                t,
                "session.start",
                &format!(r#""tenant":"t","agent_id":"a","session_id":"s{key}","allowed_tools":["v{value}","v{}"],"seq":{i}"#, value + 1),
            ),
            _ => line(t, "session.end", &format!(r#""tenant":"t","agent_id":"a","session_id":"s{key}","seq":{i}"#)),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn sequence_matches_the_naive_model(
        evs in events(50, 1_500, 4_000),
        w in prop::sample::select(vec![1_000i64, 3_000, 10_000]),
        g_part in prop::sample::select(vec![0i64, 2, 1]),
        cut in 0usize..50,
    ) {
        let g = if g_part == 0 { 0 } else { w / (g_part * 2) };
        let body = format!(
            "first = {{ event = [\"credential.revoked\", \"credential.rotated\"] }}\nthen = {{ event = [\"credential.used\", \"credential.rotated\"] }}\nkey = [\"credential_id\"]\nwithin = \"{w}ms\"\nafter = \"{g}ms\""
        );
        let r = rules(&rule_text("seq", "sequence", &body));
        let alerts = run_with_restart(&r, &sequence_lines(&evs), cut);
        let mut got: Vec<(u8, i64, i64)> = alerts
            .iter()
            .map(|a| (a.key["credential_id"][1..].parse().unwrap(), a.ts, a.events[1].ts))
            .collect();
        let mut want = naive_sequence(&evs, w, g);
        got.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(got, want);
        for a in &alerts {
            prop_assert_eq!(a.window_start, Some(a.ts + g));
            prop_assert_eq!(a.window_end, Some(a.ts + w));
        }
    }

    #[test]
    fn cardinality_matches_the_naive_model(
        evs in events(60, 1_500, 4_000),
        w in prop::sample::select(vec![1_000i64, 5_000, 20_000]),
        s_factor in prop::sample::select(vec![1i64, 2, 0]),
        n in 1u64..4,
        cut in 0usize..60,
    ) {
        let s = if s_factor == 0 { w / 2 } else { w * s_factor };
        let body = format!(
            "match = {{ event = \"auth.failure\" }}\ngroup_by = [\"source_ip\"]\ndistinct = \"agent_id\"\nwindow = \"{w}ms\"\nsuppress = \"{s}ms\"\ncondition = {{ gte = {n} }}"
        );
        let r = rules(&rule_text("card", "cardinality", &body));
        let got: Vec<(u8, i64, u64)> = run_with_restart(&r, &cardinality_lines(&evs), cut)
            .iter()
            .map(|a| (a.key["source_ip"][2..].parse().unwrap(), a.ts, a.count))
            .collect();
        prop_assert_eq!(got, naive_cardinality(&evs, w, s, n));
    }

    #[test]
    fn membership_matches_the_naive_model(
        evs in events(50, 1_500, 4_000),
        ttl in prop::sample::select(vec![3_000i64, 20_000, 86_400_000]),
        cut in 0usize..50,
    ) {
        let body = format!("{BYPASS}\nkey_ttl = \"{ttl}ms\"");
        let r = rules(&rule_text("member", "membership", &body));
        let mut got: Vec<(u8, i64)> = run_with_restart(&r, &membership_lines(&evs), cut)
            .iter()
            .map(|a| (a.key["session_id"][1..].parse().unwrap(), a.ts))
            .collect();
        let mut want = naive_membership(&evs, ttl);
        got.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(got, want);
    }

    /// The same input gives the same alerts with the same ids, all rules
    /// together (chains included).
    #[test]
    fn the_default_rules_are_deterministic(evs in events(60, 20_000, 4_000)) {
        let defaults = Arc::new(RuleSet::embedded().unwrap());
        let mut lines = sequence_lines(&evs);
        lines.extend(cardinality_lines(&evs));
        lines.extend(membership_lines(&evs));
        let a = run_lines(&defaults, LATENESS, &lines);
        let b = run_lines(&defaults, LATENESS, &lines);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn a_snapshot_of_the_version_before_the_correlation_kinds_is_refused_with_the_reset_hint() {
    let r = Arc::new(RuleSet::embedded().unwrap());
    let mut bytes = Engine::new(r.clone(), EngineConfig::default())
        .snapshot()
        .unwrap();
    assert_eq!(bytes[0], 4, "postcard varint of the version");
    bytes[0] = 2;
    let err = Engine::restore(r, EngineConfig::default(), &bytes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("version 2"), "{err}");
    assert!(err.contains("mcp-alertd state reset"), "{err}");
}

#[test]
fn many_distinct_values_are_counted_as_few_are() {
    // Past 16 values a key keeps them in a map instead of a vector.
    let r = rules(&rule_text(
        "spray",
        "cardinality",
        &SPRAY.replace("gte = 10", "gte = 25"),
    ));
    let mut lines: Vec<String> = (0..24)
        .map(|i| spray(s(i), "ip1", Some(&format!("a{i}"))))
        .collect();
    lines.extend((0..24).map(|i| spray(s(30 + i), "ip1", Some(&format!("a{i}")))));
    assert!(run_lines(&r, LATENESS, &lines).is_empty());
    lines.push(spray(s(60), "ip1", Some("a24")));
    let alerts = run_lines(&r, LATENESS, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0].ts, alerts[0].count), (s(60), 25));
}
