//! Durable engine state: long timers and windows survive restarts, and
//! saved state of an unknown format stops the start with a clear message.

use mcp_alertd::app::Daemon;
use mcp_alertd::config::Config;
use mcp_alertd::store::Store;
use mcp_alertd::store::state::{self as checkpoint, EngineUnit, MAIN_UNIT, Saved};

use crate::support::{Capture, append, file_config, start, wait_for};

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
            .write(&[], 0, &[(MAIN_UNIT.to_owned(), bytes)])
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
