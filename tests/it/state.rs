//! Durable engine state: long timers and windows survive restarts, saves
//! write only what changed, and saved state of an unknown format stops the
//! start with a clear message.

use std::collections::BTreeMap;
use std::sync::Arc;

use mcp_alertd::alert::{Alert, render};
use mcp_alertd::app::Daemon;
use mcp_alertd::config::Config;
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet, StateChanges};
use mcp_alertd::store::state::{self as checkpoint, EngineUnit, MAIN_UNIT, Saved};
use mcp_alertd::store::{Store, UnitState};

use crate::support::saved::SavedRows;
use crate::support::{Capture, append, file_config, start, wait_for};
use crate::{line, s};

const DAY_MS: i64 = 86_400_000;

/// Waits until the daemon has decoded `n` events of type `kind`.
async fn wait_events(daemon: &Daemon, kind: &str, n: u64) {
    let m = daemon.metrics().clone();
    let sample = format!("mcp_alertd_events_total{{type=\"{kind}\"}} {n}\n");
    wait_for(&format!("{n} {kind} events"), || {
        m.render().contains(&sample)
    })
    .await;
}

fn rules_of(out: &Capture) -> Vec<String> {
    let mut r: Vec<String> = out
        .alerts()
        .iter()
        .map(|a| a["rule"].as_str().unwrap().to_owned())
        .collect();
    r.sort();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_deadline_survives_restarts_and_fires_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = file_config(&log);
    // Issued 20 days ago (the past, so max_future_skew is not in the way).
    let issued = jiff::Timestamp::now().as_millisecond() - 20 * DAY_MS;
    append(
        &log,
        &[format!(
            r#"{{"ts":{issued},"event":"credential.issued","tenant":"acme","agent_id":"a1","credential_id":"k-forgotten"}}"#
        )],
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    wait_events(&daemon, "credential.issued", 1).await;
    daemon.shutdown().await.unwrap();
    assert!(out.alerts().is_empty());

    // Restarted; then an unrelated event 16 days after the issue moves
    // the clock past the 15-day deadline.
    let (daemon, out) = start(&cfg, dir.path()).await;
    append(
        &log,
        &[format!(
            r#"{{"ts":{},"event":"auth.success","tenant":"acme","agent_id":"a2","credential_id":"k-used"}}"#,
            issued + 16 * DAY_MS
        )],
    );
    wait_for("credential_unused", || !out.alerts().is_empty()).await;
    daemon.shutdown().await.unwrap();
    assert_eq!(rules_of(&out), ["credential_unused"]);
    let alert = &out.alerts()[0];
    assert_eq!(alert["key"]["credential_id"], "k-forgotten");

    // Another restart and a later event (still before the 30-day
    // deadline): the 15-day alert does not fire again.
    let (daemon, out) = start(&cfg, dir.path()).await;
    append(
        &log,
        &[format!(
            r#"{{"ts":{},"event":"auth.success","tenant":"acme","agent_id":"a2","credential_id":"k-used"}}"#,
            issued + 17 * DAY_MS
        )],
    );
    wait_events(&daemon, "auth.success", 1).await;
    daemon.shutdown().await.unwrap();
    assert!(out.alerts().is_empty(), "{:?}", out.alerts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_spans_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = file_config(&log);
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let failure = |i: i64| {
        format!(
            r#"{{"ts":{},"event":"auth.failure","tenant":"acme","agent_id":"intruder","reason":"invalid_token","n":{i}}}"#,
            base + i * 1000
        )
    };
    // Three failures, a restart, two more: the fifth within the minute
    // raises the burst, as without the restart.
    append(&log, &(0..3).map(failure).collect::<Vec<_>>());
    let (daemon, _) = start(&cfg, dir.path()).await;
    wait_events(&daemon, "auth.failure", 3).await;
    daemon.shutdown().await.unwrap();
    let (daemon, out) = start(&cfg, dir.path()).await;
    append(&log, &(3..5).map(failure).collect::<Vec<_>>());
    wait_for("the burst", || !out.alerts().is_empty()).await;
    let read = daemon.metrics().render();
    daemon.shutdown().await.unwrap();
    assert_eq!(rules_of(&out), ["auth_failure_burst"]);
    // Only the two new lines were read: the first three counted from the
    // saved state.
    assert!(
        read.contains("mcp_alertd_events_total{type=\"auth.failure\"} 2\n"),
        "{read}"
    );
}

#[test]
fn units_of_version_2_are_read_as_they_are() {
    // Version 3 only added the self-monitoring's unit.
    for saved in [
        Saved::Router(vec![(0, "k".to_owned(), 5)]),
        Saved::Engine(EngineUnit {
            next_offset: Some(7),
            engine: vec![1, 2, 3],
            ..EngineUnit::default()
        }),
    ] {
        let mut bytes = checkpoint::encode(MAIN_UNIT, &saved).unwrap();
        assert_eq!(bytes[0], checkpoint::STATE_VERSION as u8);
        bytes[0] = 2;
        assert_eq!(checkpoint::decode(MAIN_UNIT, &bytes).unwrap(), saved);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_state_of_another_format_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut bytes = checkpoint::encode(
            MAIN_UNIT,
            &Saved::Engine(EngineUnit {
                engine: vec![1, 2, 3],
                ..EngineUnit::default()
            }),
        )
        .unwrap();
        bytes[0] = 9; // postcard varint of the version
        store
            .write(&[], 0, &[UnitState::whole(MAIN_UNIT, bytes)])
            .unwrap();
    }
    let text = format!(
        "state_dir = \"{}\"\n[metrics]\nenabled = false\n[[sources]]\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n",
        dir.path().display()
    );
    let config = Config::parse(&text).unwrap();
    let rules = config.load_rules().unwrap();
    let err = match Daemon::start(config, rules, Box::new(Capture::default())).await {
        Ok(_) => panic!("started on state it cannot read"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("`main`"), "{err}");
    assert!(err.contains("format version 9"), "{err}");
    assert!(err.contains("mcp-alertd state reset"), "{err}");
    // The state is still there: nothing was dropped.
    let store = Store::open(dir.path()).unwrap();
    assert!(store.state(MAIN_UNIT).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_list_and_reset_show_and_drop_saved_units() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let issued = jiff::Timestamp::now().as_millisecond() - 2 * DAY_MS;
    append(
        &log,
        &[format!(
            r#"{{"ts":{issued},"event":"credential.issued","tenant":"acme","agent_id":"a1","credential_id":"k1"}}"#
        )],
    );
    let (daemon, _) = start(&file_config(&log), dir.path()).await;
    wait_events(&daemon, "credential.issued", 1).await;
    daemon.shutdown().await.unwrap();

    let bin = assert_cmd::cargo::cargo_bin("mcp-alertd");
    let list = std::process::Command::new(&bin)
        .args(["state", "list", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(list.status.success());
    let text = String::from_utf8(list.stdout).unwrap();
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(text.contains(&format!("audit@{size}")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("main ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("router ")), "{text}");
    // The self-monitoring's sources that delivered (for source_silent).
    assert!(
        text.lines()
            .any(|l| l.starts_with("monitor ") && l.ends_with("delivering=audit")),
        "{text}"
    );

    let reset = std::process::Command::new(&bin)
        .args(["state", "reset", "main", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(reset.status.success());
    assert_eq!(
        String::from_utf8(reset.stdout).unwrap(),
        "1 saved units dropped\n"
    );
    let store = Store::open(dir.path()).unwrap();
    assert!(store.state(MAIN_UNIT).unwrap().is_none());
    assert!(store.state(checkpoint::ROUTER_UNIT).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_source_derives_sessions_that_survive_a_restart() {
    // ToolHive audit events (no session id, no tenant) from a followed
    // file: three denials, a restart, two more in the same derived session
    // make the injection incident; the application log line is unmapped.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("toolhive.log");
    let cfg = file_config(&log).replace(
        "type = \"file\"",
        "type = \"file\"\nformat = \"toolhive\"\ntenant = \"acme\"\nderive_sessions = \"30m\"",
    );
    let denied = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/formats/toolhive.jsonl"),
    )
    .unwrap()
    .lines()
    .nth(3)
    .unwrap()
    .to_owned();
    let at = |m: u32| denied.replace("09:15:44.007290Z", &format!("09:{:02}:44.007290Z", 15 + m));
    append(
        &log,
        &[
            at(0),
            r#"{"time":"2026-11-28T09:15:45Z","level":"INFO","msg":"proxy started"}"#.to_owned(),
            at(1),
            at(2),
        ],
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    wait_events(&daemon, "tool.denied", 3).await;
    let text = daemon.metrics().render();
    assert!(
        text.contains("mcp_alertd_records_unmapped_total{source=\"audit\",format=\"toolhive\"} 1"),
        "{text}"
    );
    daemon.shutdown().await.unwrap();
    assert!(
        rules_of(&out)
            .iter()
            .all(|r| r == "unauthorized_tool_attempt")
    );

    let (daemon, out) = start(&cfg, dir.path()).await;
    append(&log, &[at(3), at(4)]);
    wait_for("the incident", || {
        out.alerts()
            .iter()
            .any(|a| a["rule"] == "session_injection_incident")
    })
    .await;
    daemon.shutdown().await.unwrap();
    let incident = out
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "session_injection_incident")
        .unwrap();
    assert_eq!(incident["tenant"], "acme");
    assert_eq!(
        incident["key"]["session_id"],
        "agent-build-7@2026-11-28T09:15:44.007Z"
    );
}

/// The events of one scenario per new kind, split in two halves: a
/// revocation, a session's allowlist and five identities failing from one
/// address before; the revoked credential's use, a tool outside the
/// allowlist and five more identities after.
fn correlation_halves(base: i64) -> (Vec<String>, Vec<String>) {
    let ev = |ms: i64, body: &str| format!(r#"{{"ts":{},"tenant":"acme",{body}}}"#, base + ms);
    let fail = |ms: i64, i: i64| {
        ev(
            ms,
            &format!(r#""event":"auth.failure","agent_id":"probe-{i}","source_ip":"198.51.100.9""#),
        )
    };
    let mut first = vec![
        ev(
            0,
            r#""event":"credential.revoked","agent_id":"etl","credential_id":"k-old""#,
        ),
        ev(
            1,
            r#""event":"session.start","agent_id":"coder","session_id":"s1","allowed_tools":["read_file"]"#,
        ),
    ];
    first.extend((0..5).map(|i| fail(10 + i, i)));
    let mut second = vec![
        ev(
            100,
            r#""event":"credential.used","agent_id":"etl","credential_id":"k-old""#,
        ),
        ev(
            101,
            r#""event":"tool.invoke","agent_id":"coder","session_id":"s1","tool":"delete_repo""#,
        ),
    ];
    second.extend((5..10).map(|i| fail(110 + i, i)));
    (first, second)
}

const CORRELATION_RULES: [&str; 3] = [
    "allowlist_bypass",
    "credential_spraying",
    "revoked_credential_use",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_membership_and_cardinality_state_spans_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = file_config(&log);
    let (first, second) = correlation_halves(jiff::Timestamp::now().as_millisecond() - 3_600_000);
    append(&log, &first);
    let (daemon, out) = start(&cfg, dir.path()).await;
    wait_events(&daemon, "auth.failure", 5).await;
    daemon.shutdown().await.unwrap();
    assert!(out.alerts().is_empty(), "{:?}", out.alerts());
    let (daemon, out) = start(&cfg, dir.path()).await;
    append(&log, &second);
    wait_for("three alerts", || out.alerts().len() >= 3).await;
    let read = daemon.metrics().render();
    daemon.shutdown().await.unwrap();
    assert_eq!(rules_of(&out), CORRELATION_RULES);
    // Only the second half was read: the first came from the saved state.
    assert!(
        read.contains("mcp_alertd_events_total{type=\"auth.failure\"} 5\n"),
        "{read}"
    );
}

#[test]
fn sequence_membership_and_cardinality_state_survives_sigkill() {
    use crate::support::{Proc, metric_opt, scrape_blocking, wait_until};
    // A sample may not exist yet at the first scrapes.
    let metric = |text: &str, sample: &str| metric_opt(text, sample).unwrap_or(0.0);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = format!(
        "{}[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\n[routing]\ndefault = [\"file\"]\n",
        file_config(&log)
            .replace("enabled = false", "address = \"127.0.0.1:0\"")
            .replace("[engine]\n", "[engine]\nsnapshot_interval = \"100ms\"\n"),
        dir.path().join("delivered.jsonl").display()
    );
    let (first, second) = correlation_halves(jiff::Timestamp::now().as_millisecond() - 3_600_000);
    append(&log, &first);
    let p = Proc::start(dir.path(), &cfg);
    let m = p.metrics_addr();
    wait_until("the first half saved", || {
        let text = scrape_blocking(m);
        metric(&text, "mcp_alertd_events_total{type=\"auth.failure\"}") >= 5.0
            && metric(&text, "mcp_alertd_state_saves_total") >= 1.0
    });
    // A save covers the lines read before it, with their file position:
    // killed before or after the last one, a restart resumes consistently
    // (re-reading what the save did not cover).
    std::thread::sleep(std::time::Duration::from_millis(500));
    p.signal("KILL");
    let mut p = p;
    let _ = p.child.wait();
    append(&log, &second);
    let mut p = Proc::start(dir.path(), &cfg);
    let delivered = || -> Vec<String> {
        let mut rules: Vec<String> = std::fs::read_to_string(dir.path().join("delivered.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|a| a["rule"].as_str().unwrap_or_default().to_owned())
            .collect();
        rules.sort();
        rules
    };
    wait_until("three alerts delivered", || delivered().len() >= 3);
    p.signal("TERM");
    let _ = p.child.wait();
    assert_eq!(delivered(), CORRELATION_RULES);
}

const BURST_AND_UNUSED: &str = r#"
[[rule]]
id = "burst"
title = "t"
severity = "high"
kind = "threshold"
match = { event = "auth.failure" }
group_by = ["agent_id"]
window = "60s"
condition = { gte = 3 }

[[rule]]
id = "unused"
title = "t"
severity = "low"
kind = "absence"
start = { event = "credential.issued" }
stop = { event = "credential.used" }
key = ["credential_id"]
deadline = "1h"
"#;

fn feed(engine: &mut Engine, lines: &[String]) -> Vec<Alert> {
    let decoder = Decoder::default();
    let mut out = Vec::new();
    for l in lines {
        let ev = decoder.decode(l.as_bytes()).unwrap();
        engine.advance_to(ev.ts - 5_000, &mut out);
        engine.on_event(&ev, None, &mut out);
    }
    out.into_iter().map(|d| render(d, None)).collect()
}

fn failures(agents: std::ops::Range<usize>, ts: i64) -> Vec<String> {
    agents
        .map(|i| line(ts, "auth.failure", &format!(r#""agent_id":"agent-{i}""#)))
        .collect()
}

fn credentials(event: &str, ids: std::ops::Range<usize>, ts: i64) -> Vec<String> {
    ids.map(|i| {
        line(
            ts,
            event,
            &format!(r#""agent_id":"a","credential_id":"key-{i}""#),
        )
    })
    .collect()
}

/// One incremental save of `engine` into the store as the `main` unit.
fn save(store: &Store, engine: &mut Engine) -> Vec<(String, usize, usize)> {
    let state =
        checkpoint::engine_state(MAIN_UNIT.to_owned(), engine, BTreeMap::new(), None).unwrap();
    let written = state
        .tables
        .iter()
        .flatten()
        .map(|t| {
            let removed = t.rows().filter(|(_, v)| v.is_none()).count();
            (t.name.clone(), t.len() - removed, removed)
        })
        .collect();
    store.write(&[], 0, &[state]).unwrap();
    written
}

fn restore(store: &Store, rules: Arc<RuleSet>) -> Engine {
    let bytes = store.state(MAIN_UNIT).unwrap().unwrap();
    let Saved::Engine(unit) = checkpoint::decode(MAIN_UNIT, &bytes).unwrap() else {
        panic!("not an engine unit");
    };
    store
        .restore_engine(MAIN_UNIT, &unit.engine, rules, EngineConfig::default())
        .unwrap()
}

fn tables(store: &Store) -> Vec<(String, u64)> {
    store.state_tables(MAIN_UNIT).unwrap()
}

/// A save writes only the keys that changed (and removes the ones that
/// went); the table of a removed rule leaves the store (its state is kept
/// in the head for the removal grace); the engine read back from the rows
/// raises what the uninterrupted one raises; `state reset` drops the rows.
#[test]
fn incremental_saves_write_only_changed_rows_and_restore_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let both = crate::rules(BURST_AND_UNUSED);
    let mut engine = Engine::new(both.clone(), EngineConfig::default());
    feed(&mut engine, &failures(0..100, s(0)));
    feed(&mut engine, &credentials("credential.issued", 0..50, s(1)));
    let first = save(&store, &mut engine);
    assert!(
        first.contains(&("burst/window".to_owned(), 100, 0)),
        "{first:?}"
    );
    assert!(
        first.contains(&("unused/absence".to_owned(), 50, 0)),
        "{first:?}"
    );
    let sessions = ("sessions".to_owned(), 0);
    assert_eq!(
        tables(&store),
        [
            ("burst/window".to_owned(), 100),
            sessions.clone(),
            ("unused/absence".to_owned(), 50)
        ]
    );

    // Five agents fail again, three credentials are used: 5 rows set, 3
    // removed, nothing else written.
    feed(&mut engine, &failures(0..5, s(2)));
    feed(&mut engine, &credentials("credential.used", 10..13, s(3)));
    let second = save(&store, &mut engine);
    assert!(
        second.contains(&("burst/window".to_owned(), 5, 0)),
        "{second:?}"
    );
    assert!(
        second.contains(&("unused/absence".to_owned(), 0, 3)),
        "{second:?}"
    );
    assert_eq!(
        tables(&store),
        [
            ("burst/window".to_owned(), 100),
            sessions.clone(),
            ("unused/absence".to_owned(), 47)
        ]
    );
    // Nothing changed: nothing written.
    let idle = save(&store, &mut engine);
    assert!(
        idle.iter().all(|(_, set, removed)| set + removed == 0),
        "{idle:?}"
    );

    // Read back, both engines go on alike: agents 0-4 reach 3 failures,
    // the 47 unused credentials pass their deadline.
    let mut restored = restore(&store, both.clone());
    let rest: Vec<String> = failures(0..10, s(4))
        .into_iter()
        .chain(credentials("credential.used", 20..21, s(5)))
        .chain(failures(0..1, s(2 * 3600)))
        .collect();
    let want = feed(&mut engine, &rest);
    let got = feed(&mut restored, &rest);
    assert_eq!(got, want);
    let fired = |rule: &str| want.iter().filter(|a| a.rule == rule).count();
    assert_eq!((fired("burst"), fired("unused")), (5, 46));

    // The rule `unused` is removed: its table goes, its state is parked in
    // the head and comes back with the rule.
    let mut engine = restore(&store, both.clone());
    feed(
        &mut engine,
        &credentials("credential.issued", 100..101, s(6)),
    );
    engine.reload(
        crate::rules(
            &BURST_AND_UNUSED[..BURST_AND_UNUSED.find("[[rule]]\nid = \"unused\"").unwrap()],
        ),
        EngineConfig::default(),
    );
    save(&store, &mut engine);
    assert!(
        tables(&store).iter().all(|(t, _)| t != "unused/absence"),
        "{:?}",
        tables(&store)
    );
    let mut back = restore(&store, both.clone());
    let late = feed(&mut back, &failures(0..1, s(3 * 3600)));
    assert_eq!(late.iter().filter(|a| a.rule == "unused").count(), 48);
    // Written whole again at its next save, now that it is back.
    let again = save(&store, &mut back);
    assert!(
        again.iter().any(|(t, _, _)| t == "unused/absence"),
        "{again:?}"
    );

    assert_eq!(store.remove_states(None).unwrap(), 1);
    assert!(tables(&store).is_empty(), "{:?}", tables(&store));
}

/// Keys that come and go faster than the saves: past twice the live keys
/// (and a floor of 4096) the list of changes goes and the table is written
/// whole, so memory stays bounded by the live keys.
#[test]
fn a_table_whose_changes_outgrow_it_is_written_whole() {
    let rules = crate::rules(BURST_AND_UNUSED);
    let mut engine = Engine::new(rules.clone(), EngineConfig::default());
    let mut saved = SavedRows::default();
    feed(&mut engine, &credentials("credential.issued", 0..10, s(0)));
    saved.save(&mut engine);
    for round in 0..3 {
        let ids = 1_000 + round * 2_000..1_000 + (round + 1) * 2_000;
        feed(
            &mut engine,
            &credentials("credential.issued", ids.clone(), s(1)),
        );
        feed(&mut engine, &credentials("credential.used", ids, s(2)));
    }
    let changes = engine.save_changes().unwrap();
    let whole = unused_rows(&changes);
    assert_eq!(
        whole,
        (true, 10),
        "12,000 changes of 10 live keys were kept"
    );
    saved.apply(changes);
    assert_eq!(saved.resets, 1);
    assert_eq!(saved.rows(), 10);
    alerts_after_restart(&saved, rules, &mut engine);
}

/// Whether a save writes the `unused` rule's table whole, and its rows.
fn unused_rows(changes: &StateChanges) -> (bool, usize) {
    let t = changes.tables.iter().find(|t| t.name == "unused/absence");
    t.map_or((false, 0), |t| (t.reset, t.len()))
}

/// The alerts two hours on of an engine read back from `saved`, which
/// must be those of `engine`, which ran on.
fn alerts_after_restart(saved: &SavedRows, rules: Arc<RuleSet>, engine: &mut Engine) -> Vec<Alert> {
    let mut restored = saved.restore(rules, EngineConfig::default());
    let after = failures(0..1, s(2 * 3600));
    let alerts = feed(&mut restored, &after);
    assert_eq!(alerts, feed(engine, &after));
    alerts
}

/// Changes handed out by a save that never reached the store are not
/// lost: after `unsync` the next save writes every table whole, and the
/// engine read back from it raises what the uninterrupted one raises.
#[test]
fn a_save_that_did_not_reach_the_store_is_followed_by_a_whole_one() {
    let rules = crate::rules(BURST_AND_UNUSED);
    let mut engine = Engine::new(rules.clone(), EngineConfig::default());
    let mut saved = SavedRows::default();
    feed(&mut engine, &credentials("credential.issued", 0..10, s(0)));
    saved.save(&mut engine);
    feed(&mut engine, &credentials("credential.issued", 10..15, s(1)));
    // Drained and dropped, as when a later unit of the same checkpoint
    // fails to encode.
    let lost = engine.save_changes().unwrap();
    assert_eq!(unused_rows(&lost), (false, 5));
    engine.unsync();
    let changes = engine.save_changes().unwrap();
    let whole = unused_rows(&changes);
    assert_eq!(whole, (true, 15), "an unsynced table is written whole");
    saved.apply(changes);
    let alerts = alerts_after_restart(&saved, rules, &mut engine);
    assert_eq!(alerts.len(), 15, "{alerts:?}");
}

/// A row of a table the head does not list is refused, not ignored.
#[test]
fn a_row_of_an_unknown_table_is_an_error() {
    let rules = crate::rules(BURST_AND_UNUSED);
    let mut engine = Engine::new(rules, EngineConfig::default());
    let changes = engine.save_changes().unwrap();
    let mut restoring = mcp_alertd::engine::Restoring::new(&changes.head).unwrap();
    let n = restoring.tables().len();
    let e = restoring.row(n, "k", &[]).unwrap_err();
    assert!(e.to_string().contains("does not list"), "{e}");
}

/// State saved whole (as builds before incremental saves did) is read
/// back, and the first save after it writes every key as rows.
#[test]
fn state_saved_whole_is_read_and_then_saved_as_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rules = crate::rules(BURST_AND_UNUSED);
    let mut engine = Engine::new(rules.clone(), EngineConfig::default());
    feed(&mut engine, &failures(0..20, s(0)));
    feed(&mut engine, &credentials("credential.issued", 0..30, s(1)));
    let unit = Saved::Engine(EngineUnit {
        engine: engine.snapshot().unwrap(),
        ..EngineUnit::default()
    });
    let whole = UnitState::whole(MAIN_UNIT, checkpoint::encode(MAIN_UNIT, &unit).unwrap());
    store.write(&[], 0, &[whole]).unwrap();
    assert!(tables(&store).is_empty());

    let mut restored = restore(&store, rules.clone());
    let first = save(&store, &mut restored);
    assert!(
        first.contains(&("burst/window".to_owned(), 20, 0)),
        "{first:?}"
    );
    assert!(
        first.contains(&("unused/absence".to_owned(), 30, 0)),
        "{first:?}"
    );
    let mut from_rows = restore(&store, rules);
    let after = failures(0..2, s(2 * 3600));
    let want = feed(&mut engine, &after);
    assert_eq!(want.len(), 30);
    assert_eq!(feed(&mut from_rows, &after), want);
}

/// A sequence's kept `then` events (the log by time) are saved like keys:
/// a save writes the ones added since the last, removes the ones that
/// went, and a late `first` after a restart still finds a kept one.
#[test]
fn kept_events_are_saved_incrementally_and_found_after_a_restart() {
    let rules = crate::rules(
        r#"
[[rule]]
id = "revoked"
title = "t"
severity = "high"
kind = "sequence"
first = { event = "credential.revoked" }
then = { event = "credential.used" }
key = ["credential_id"]
within = "1h"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut engine = Engine::new(rules.clone(), EngineConfig::default());
    feed(&mut engine, &credentials("credential.used", 0..40, s(10)));
    let first = save(&store, &mut engine);
    assert!(
        first.contains(&("revoked/sequence.log".to_owned(), 40, 0)),
        "{first:?}"
    );
    feed(&mut engine, &credentials("credential.used", 40..42, s(11)));
    let second = save(&store, &mut engine);
    assert!(
        second.contains(&("revoked/sequence.log".to_owned(), 2, 0)),
        "{second:?}"
    );
    // Past the lateness the first 42 go (the clock at s(30) - 5 s).
    feed(&mut engine, &credentials("credential.used", 42..43, s(30)));
    let third = save(&store, &mut engine);
    assert!(
        third.contains(&("revoked/sequence.log".to_owned(), 1, 42)),
        "{third:?}"
    );
    assert!(
        tables(&store).contains(&("revoked/sequence.log".to_owned(), 1)),
        "{:?}",
        tables(&store)
    );
    // A revocation 1 ms before the kept use, arriving after it: found
    // after a restart from the rows.
    let mut restored = restore(&store, rules);
    let late = credentials("credential.revoked", 42..43, s(30) - 1);
    let want = feed(&mut engine, &late);
    assert_eq!(want.len(), 1);
    assert_eq!(feed(&mut restored, &late), want);
}
