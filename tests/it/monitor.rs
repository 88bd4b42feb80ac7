//! Self-monitoring: the daemon's alerts about itself (`source_silent`,
//! `delivery_dead_letter`, `store_unavailable`, `clock_stalled`, and
//! `state_pressure` turned off). The monitor's rules with made-up times at
//! every boundary, its configuration, and end to end through a daemon whose
//! alerts are routed like any other.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mcp_alertd::alert::{Detection, render};
use mcp_alertd::config::Config;
use mcp_alertd::outbox::watch::{DeadLetters, DeadTally, Outage, StoreOutage};
use mcp_alertd::pipeline::monitor::{Monitor, MonitorSettings, Observed, UnitView};
use serde_json::Value;

use crate::support::webhook::{Hook, webhook_server};
use crate::support::{TCP, metric_opt, scrape_blocking, send_tcp, start, wait_for};

const T0: i64 = 1_790_000_000_000;

const MIN: i64 = 60_000;

fn settings() -> MonitorSettings {
    MonitorSettings {
        source_silent: Some(Duration::from_secs(600)),
        delivery_dead_letter: Some(Duration::from_secs(300)),
        store_unavailable: Some(Duration::from_secs(30)),
        clock_stalled: Some(Duration::from_secs(300)),
        state_pressure: true,
    }
}

fn monitor(s: MonitorSettings) -> Monitor {
    Monitor::new(
        s,
        vec![
            ("tcp".into(), Some(Duration::from_secs(600))),
            ("udp".into(), Some(Duration::from_secs(600))),
            ("quiet".into(), None),
        ],
    )
}

/// One check at `now` with nothing else observed.
fn check(m: &mut Monitor, now: i64) -> Vec<Detection> {
    check_with(m, now, &[], BTreeMap::new(), None)
}

fn check_with(
    m: &mut Monitor,
    now: i64,
    units: &[UnitView<'_>],
    dead: BTreeMap<String, DeadTally>,
    outage: Option<Outage>,
) -> Vec<Detection> {
    let mut out = Vec::new();
    m.check(
        Observed {
            now_ms: now,
            arriving_ms: 10_000,
            units,
            dead_letters: dead,
            outage,
        },
        &mut out,
    );
    out
}

fn keys(out: &[Detection]) -> Vec<(String, String)> {
    out.iter()
        .map(|d| {
            let a = render(d.clone(), None);
            let (field, value) = a.key.into_iter().next().unwrap();
            (a.rule, format!("{field}={value}"))
        })
        .collect()
}

#[test]
fn a_source_that_delivered_is_reported_once_per_silence_at_its_bound() {
    let mut m = monitor(settings());
    m.arrived(0, T0);
    m.arrived(2, T0);
    assert!(check(&mut m, T0 + 10 * MIN - 1).is_empty());
    let out = check(&mut m, T0 + 10 * MIN);
    assert_eq!(
        keys(&out),
        [("source_silent".to_owned(), "source=tcp".to_owned())],
        "udp never delivered and quiet has no bound"
    );
    let a = render(out[0].clone(), Some(T0 + 10 * MIN));
    assert_eq!(a.tenant, "_daemon");
    assert_eq!(a.severity.name(), "high");
    assert_eq!(a.window_start, Some(T0));
    assert_eq!(a.window_end, Some(T0 + 10 * MIN));
    assert!(
        a.summary
            .contains("Source tcp has delivered no record for 10m"),
        "{}",
        a.summary
    );
    // Once per silence; a record re-arms it.
    assert!(check(&mut m, T0 + 60 * MIN).is_empty());
    m.arrived(0, T0 + 61 * MIN);
    assert!(check(&mut m, T0 + 71 * MIN - 1).is_empty());
    let again = check(&mut m, T0 + 71 * MIN);
    assert_eq!(keys(&again).len(), 1);
    assert_ne!(
        render(again[0].clone(), None).id,
        a.id,
        "each silence has an alert of its own"
    );
}

#[test]
fn a_source_that_delivered_before_a_restart_must_deliver_within_its_bound_of_the_start() {
    let mut m = monitor(settings());
    // Saved by the last run: tcp delivered, and a source no longer
    // configured. Down for an hour: the silence counts from the start.
    m.resume(&["tcp".to_owned(), "gone".to_owned()], T0);
    assert_eq!(m.delivering(), ["tcp"]);
    assert!(check(&mut m, T0 + 10 * MIN - 1).is_empty());
    let out = check(&mut m, T0 + 10 * MIN);
    assert_eq!(
        keys(&out),
        [("source_silent".to_owned(), "source=tcp".to_owned())]
    );
    m.arrived(1, T0 + 11 * MIN);
    assert_eq!(m.delivering(), ["tcp", "udp"]);
}

fn tally(count: u64, first_ms: i64, last_id: &str) -> DeadTally {
    DeadTally {
        count,
        first_ms,
        last_id: last_id.to_owned(),
        last_rule: "unauthorized_tool_attempt".to_owned(),
        last_error: "HTTP 400 Bad Request".to_owned(),
    }
}

#[test]
fn dead_letters_are_reported_at_once_then_at_most_once_per_interval_per_sink() {
    let mut m = monitor(settings());
    let dead = BTreeMap::from([("hook".to_owned(), tally(2, T0, "a2"))]);
    let out = check_with(&mut m, T0 + 1, &[], dead, None);
    assert_eq!(
        keys(&out),
        [("delivery_dead_letter".to_owned(), "sink=hook".to_owned())]
    );
    assert_eq!(out[0].count, 2);
    let a = render(out[0].clone(), None);
    assert!(
        a.summary
            .contains("2 alerts became dead letters on sink hook")
            && a.summary.contains("a2")
            && a.summary.contains("HTTP 400"),
        "{}",
        a.summary
    );
    // Within the interval: counted, not reported; another sink is not held.
    let dead = BTreeMap::from([
        ("hook".to_owned(), tally(3, T0 + MIN, "a5")),
        ("mail".to_owned(), tally(1, T0 + MIN, "m1")),
    ]);
    let out = check_with(&mut m, T0 + MIN, &[], dead, None);
    assert_eq!(
        keys(&out),
        [("delivery_dead_letter".to_owned(), "sink=mail".to_owned())]
    );
    let dead = BTreeMap::from([("hook".to_owned(), tally(1, T0 + 2 * MIN, "a6"))]);
    assert!(check_with(&mut m, T0 + 5 * MIN, &[], dead, None).is_empty());
    let out = check(&mut m, T0 + 5 * MIN + 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].count, 4, "what died during the interval");
    let a = render(out[0].clone(), None);
    assert_eq!(a.window_start, Some(T0 + MIN), "since the first of them");
    assert!(a.summary.contains("a6"), "{}", a.summary);
    // Nothing new: nothing more.
    assert!(check(&mut m, T0 + 20 * MIN).is_empty());
}

#[test]
fn a_dead_letter_alert_that_dies_itself_is_not_noted() {
    let notes = DeadLetters::default();
    let alert = |rule: &str| format!(r#"{{"id":"x","rule":"{rule}"}}"#);
    notes.note(
        "hook",
        "a1",
        alert("unauthorized_tool_attempt").as_bytes(),
        "HTTP 400",
        T0,
    );
    notes.note(
        "hook",
        "d1",
        alert("delivery_dead_letter").as_bytes(),
        "HTTP 400",
        T0 + 1,
    );
    notes.note("hook", "a2", b"not json", "HTTP 400", T0 + 2);
    let taken = notes.take();
    assert_eq!(taken["hook"].count, 2);
    assert_eq!(taken["hook"].first_ms, T0);
    assert_eq!(taken["hook"].last_id, "a2");
    assert!(notes.take().is_empty(), "taken once");
}

#[test]
fn a_store_outage_is_reported_once_when_it_lasts_past_its_bound() {
    let mut m = monitor(settings());
    let outage = StoreOutage::default();
    outage.failed("no_space", T0);
    outage.failed("io", T0 + 5_000);
    let o = outage.latest();
    assert_eq!(o.unwrap().kind, "no_space", "the outage's first failure");
    assert!(check_with(&mut m, T0 + 29_999, &[], BTreeMap::new(), o).is_empty());
    let out = check_with(&mut m, T0 + 30_000, &[], BTreeMap::new(), o);
    assert_eq!(
        keys(&out),
        [("store_unavailable".to_owned(), "kind=no_space".to_owned())]
    );
    let a = render(out[0].clone(), None);
    assert_eq!(a.severity.name(), "critical");
    assert!(
        a.summary.contains("has refused writes since"),
        "{}",
        a.summary
    );
    // Its end is not another outage.
    outage.recovered(T0 + 40_000);
    assert!(check_with(&mut m, T0 + 41_000, &[], BTreeMap::new(), outage.latest()).is_empty());
    // A short one is not reported; a long one seen only once it is over
    // (the engine waited for the store meanwhile) still is.
    outage.failed("io", T0 + 100_000);
    outage.recovered(T0 + 129_999);
    assert!(check_with(&mut m, T0 + 200_000, &[], BTreeMap::new(), outage.latest()).is_empty());
    outage.failed("io", T0 + 300_000);
    outage.recovered(T0 + 400_000);
    let out = check_with(&mut m, T0 + 500_000, &[], BTreeMap::new(), outage.latest());
    assert_eq!(out.len(), 1);
    let a = render(out[0].clone(), None);
    assert!(
        a.summary.contains("refused writes from") && a.summary.contains("(1m 40s, io)"),
        "{}",
        a.summary
    );
    assert_eq!(a.window_end, Some(T0 + 400_000));
}

#[test]
fn a_clock_behind_while_records_arrive_is_reported_once_per_episode() {
    let mut m = monitor(settings());
    let now = T0 + 60 * MIN;
    let unit = |clock: i64, last: i64| UnitView {
        name: "main",
        group: "main",
        clock: Some(clock),
        last_record_ms: Some(last),
    };
    let none = BTreeMap::new;
    // At the bound: not yet. Past it, but no record for longer than
    // `arriving`: the clock is not stalled, nothing comes.
    assert!(check_with(&mut m, now, &[unit(now - 5 * MIN, now)], none(), None).is_empty());
    assert!(
        check_with(
            &mut m,
            now,
            &[unit(now - 5 * MIN - 1, now - 10_001)],
            none(),
            None
        )
        .is_empty()
    );
    let out = check_with(
        &mut m,
        now,
        &[unit(now - 5 * MIN - 1, now - 10_000)],
        none(),
        None,
    );
    assert_eq!(
        keys(&out),
        [("clock_stalled".to_owned(), "unit=main".to_owned())]
    );
    let a = render(out[0].clone(), None);
    assert!(
        a.summary.contains("5m behind") && a.summary.contains("clock of `main`"),
        "{}",
        a.summary
    );
    assert!(
        check_with(
            &mut m,
            now + 1000,
            &[unit(now - 20 * MIN, now + 1000)],
            none(),
            None
        )
        .is_empty()
    );
    // Caught up, then behind again: a new episode.
    assert!(check_with(&mut m, now + 2000, &[unit(now, now + 2000)], none(), None).is_empty());
    // A Kafka source's partitions: one alert for all of them, naming the
    // furthest behind; a partition without records (its clock stays at
    // its last event) is not stalled.
    let part = |p: &'static str, clock: i64, last: i64| UnitView {
        name: p,
        group: "kafka/k",
        clock: Some(clock),
        last_record_ms: Some(last),
    };
    let t = now + 3000;
    let out = check_with(
        &mut m,
        t,
        &[
            unit(now - 10 * MIN, t),
            part("kafka/k/audit/0", t - 51 * 60 * MIN, t),
            part("kafka/k/audit/1", t - 6 * MIN, t),
            part("kafka/k/audit/2", t - 90 * 24 * 60 * MIN, t - 60 * MIN),
        ],
        none(),
        None,
    );
    assert_eq!(
        keys(&out),
        [
            ("clock_stalled".to_owned(), "unit=kafka/k".to_owned()),
            ("clock_stalled".to_owned(), "unit=main".to_owned()),
        ]
    );
    assert_eq!(out[0].count, 2);
    let a = render(out[0].clone(), None);
    assert!(
        a.summary
            .contains("`kafka/k` (2 partitions; the furthest behind)")
            && a.summary.contains("2d 3h behind"),
        "{}",
        a.summary
    );
    // Another partition stalls while the source's stall goes on: nothing
    // new. All caught up, then one behind again: a new alert.
    let t = now + 4000;
    let quiet = [
        unit(t, t),
        part("kafka/k/audit/0", t - 6 * MIN, t),
        part("kafka/k/audit/1", t - 6 * MIN, t),
        part("kafka/k/audit/2", t - 6 * MIN, t),
    ];
    assert!(check_with(&mut m, t, &quiet, none(), None).is_empty());
    let caught_up = [part("kafka/k/audit/0", t, t), part("kafka/k/audit/1", t, t)];
    assert!(check_with(&mut m, t, &caught_up, none(), None).is_empty());
    let again = [part("kafka/k/audit/1", t - 6 * MIN, t)];
    assert_eq!(keys(&check_with(&mut m, t, &again, none(), None)).len(), 1);
}

#[test]
fn every_self_monitoring_alert_can_be_turned_off() {
    // A source's bound comes resolved from the configuration (tested
    // below): off is `None`.
    let mut m = Monitor::new(
        MonitorSettings {
            source_silent: None,
            delivery_dead_letter: None,
            store_unavailable: None,
            clock_stalled: None,
            state_pressure: false,
        },
        vec![("tcp".into(), None)],
    );
    m.arrived(0, T0);
    let unit = [UnitView {
        name: "main",
        group: "main",
        clock: Some(T0),
        last_record_ms: Some(T0 + 1000 * MIN),
    }];
    let dead = BTreeMap::from([("hook".to_owned(), tally(1, T0, "a1"))]);
    let outage = Some(Outage {
        since_ms: T0,
        until_ms: None,
        kind: "io",
    });
    assert!(check_with(&mut m, T0 + 1000 * MIN, &unit, dead, outage).is_empty());
    assert!(!m.state_pressure());
}

#[test]
fn self_monitoring_configuration_takes_durations_booleans_and_per_source_bounds() {
    let c = Config::parse(
        r#"
[self_monitoring]
source_silent = "1h"
delivery_dead_letter = false
store_unavailable = true
clock_stalled = "90s"
state_pressure = false

[[sources]]
name = "busy"
type = "syslog_tcp"
address = "127.0.0.1:0"
silent_after = "2m"

[[sources]]
name = "rare"
type = "syslog_udp"
address = "127.0.0.1:0"
silent_after = false

[[sources]]
name = "usual"
type = "syslog_udp"
address = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let m = &c.monitor;
    assert_eq!(m.source_silent, Some(Duration::from_secs(3600)));
    assert_eq!(m.delivery_dead_letter, None);
    assert_eq!(
        m.store_unavailable,
        Some(Duration::from_secs(30)),
        "true: the default"
    );
    assert_eq!(m.clock_stalled, Some(Duration::from_secs(90)));
    assert!(!m.state_pressure);
    let formats = c.load_formats().unwrap();
    let silent: Vec<_> = c
        .pipeline(&formats)
        .unwrap()
        .sources
        .iter()
        .map(|s| s.silent_after)
        .collect();
    assert_eq!(
        silent,
        [
            Some(Duration::from_secs(120)),
            None,
            Some(Duration::from_secs(3600))
        ]
    );
    assert_eq!(Config::builtin().monitor, MonitorSettings::default());

    let errors = Config::parse(
        "[self_monitoring]\nsource_silent = 5\nclock_stalled = \"10ms\"\nstore_unavailable = \"soon\"\nsilence = true\n",
    )
    .unwrap_err();
    assert!(errors.iter().any(|e| e.contains("silence")), "{errors:?}");
    let errors = Config::parse(
        "[self_monitoring]\nsource_silent = 5\nclock_stalled = \"10ms\"\nstore_unavailable = \"soon\"\n[[sources]]\ntype = \"syslog_udp\"\nsilent_after = []\n",
    )
    .unwrap_err();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].contains("sources[1] (syslog_udp_1): silent_after: expected a duration")
            && errors[1].contains(
                "self_monitoring.source_silent: expected a duration such as \"15m\", or false"
            )
            && errors[2].contains("self_monitoring.store_unavailable")
            && errors[3].contains("self_monitoring.clock_stalled: must be at least"),
        "{errors:?}"
    );
}

fn of_rule<'a>(alerts: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["rule"] == rule).collect()
}

/// `n` native events dated now (so the clock does not lag) of agent `a1`,
/// each in a session of its own or all in `s1`.
fn fresh(event: &str, n: usize, one_session: bool) -> Vec<String> {
    let now = mcp_alertd::clock::now_ms();
    (0..n)
        .map(|i| {
            let session = if one_session { 1 } else { i };
            format!(
                r#"{{"ts":{},"event":"{event}","agent_id":"a1","session_id":"s{session}","tool":"t{i}","reason":"not_in_allowlist"}}"#,
                now - 1000 + i as i64
            )
        })
        .collect()
}

/// A TCP source with a `silent_after` of its own and a UDP source with the
/// `[self_monitoring]` one, both `after`.
fn silent_after(after: &str) -> String {
    format!(
        r#"{TCP}silent_after = "{after}"
[[sources]]
name = "udp"
type = "syslog_udp"
address = "127.0.0.1:0"
[self_monitoring]
source_silent = "{after}"
clock_stalled = false
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_source_raises_source_silent_once_per_silence() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out) = start(&silent_after("1s"), dir.path()).await;
    let tcp = daemon.local_addr("tcp").unwrap();
    send_tcp(tcp, &fresh("auth.success", 1, false)).await;
    wait_for("source_silent", || {
        !of_rule(&out.alerts(), "source_silent").is_empty()
    })
    .await;
    send_tcp(tcp, &fresh("auth.success", 1, false)).await;
    wait_for("a second source_silent", || {
        of_rule(&out.alerts(), "source_silent").len() == 2
    })
    .await;
    daemon.shutdown().await.unwrap();
    let alerts = out.alerts();
    let silent = of_rule(&alerts, "source_silent");
    assert_eq!(silent.len(), 2, "once per silence: {silent:?}");
    for a in &silent {
        assert_eq!(a["tenant"], "_daemon");
        assert_eq!(a["key"]["source"], "tcp", "udp delivered nothing: {a}");
        assert_eq!(a["events"][0]["event"], "daemon.source_silent");
    }
    assert_ne!(silent[0]["id"], silent[1]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_delivered_before_a_restart_and_not_after_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // The first run: tcp delivers, then the daemon stops before its
    // silence is reported.
    let (daemon, _) = start(&silent_after("1h"), dir.path()).await;
    send_tcp(
        daemon.local_addr("tcp").unwrap(),
        &fresh("auth.success", 1, false),
    )
    .await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("the record", || {
        metric_opt(
            &scrape_blocking(m),
            "mcp_alertd_events_total{type=\"auth.success\"}",
        ) == Some(1.0)
    })
    .await;
    daemon.shutdown().await.unwrap();
    // The second run: nothing arrives.
    let (daemon, out) = start(&silent_after("1s"), dir.path()).await;
    wait_for("source_silent", || {
        !of_rule(&out.alerts(), "source_silent").is_empty()
    })
    .await;
    daemon.shutdown().await.unwrap();
    let alerts = out.alerts();
    let silent = of_rule(&alerts, "source_silent");
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0]["key"]["source"], "tcp", "udp never delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_raise_delivery_dead_letter_routed_like_any_alert_and_never_about_itself() {
    const DENIALS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    // A webhook that refuses every delivery for good (400).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook = Hook::default();
    *hook.script.lock().unwrap() = vec![400; 64];
    tokio::spawn(webhook_server(hook.clone(), listener));
    let calls = hook.calls.clone();
    // The alert about dead letters goes to the refusing webhook too: its
    // own death must not raise another.
    let cfg = format!(
        r#"{TCP}
[[sinks]]
name = "hook"
type = "webhook"
url = "{url}"
[[sinks]]
name = "stdout"
type = "stdout"
[[routes]]
rules = ["delivery_dead_letter"]
sinks = ["stdout", "hook"]
[routing]
default = ["hook"]
[self_monitoring]
delivery_dead_letter = "1s"
clock_stalled = false
"#
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    let m = daemon.metrics_addr().unwrap();
    // Six denials in one session: unauthorized_tool_attempt for each
    // and one session_injection_incident at the fifth.
    send_tcp(
        daemon.local_addr("tcp").unwrap(),
        &fresh("tool.denied", DENIALS, true),
    )
    .await;
    let dead = || {
        metric_opt(
            &scrape_blocking(m),
            "mcp_alertd_alerts_dead_total{sink=\"hook\"}",
        )
    };
    let reported = |alerts: &[Value]| -> u64 {
        of_rule(alerts, "delivery_dead_letter")
            .iter()
            .map(|a| a["count"].as_u64().unwrap())
            .sum()
    };
    wait_for("every input alert reported dead", || {
        reported(&out.alerts()) == DENIALS as u64 + 1
    })
    .await;
    let raised = of_rule(&out.alerts(), "delivery_dead_letter").len();
    // Each of those died on the webhook too, unreported; one interval and
    // more later there is still nothing more.
    wait_for("the reports' own dead letters", || {
        dead() == Some((DENIALS + 1 + raised) as f64)
    })
    .await;
    let before = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    daemon.shutdown().await.unwrap();
    let alerts = out.alerts();
    let reports = of_rule(&alerts, "delivery_dead_letter");
    assert_eq!(reports.len(), raised, "no report of a report: {reports:?}");
    assert_eq!(reported(&alerts), DENIALS as u64 + 1);
    assert_eq!(calls.load(Ordering::SeqCst), before, "nothing sent after");
    for a in reports {
        assert_eq!(a["key"]["sink"], "hook");
        assert_eq!(a["tenant"], "_daemon");
        assert!(a["summary"].as_str().unwrap().contains("HTTP 400"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_timestamps_arriving_raise_clock_stalled_and_state_pressure_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{TCP}
[engine]
max_keys_per_rule = 4
[self_monitoring]
clock_stalled = "1m"
state_pressure = false
"#
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    let m = daemon.metrics_addr().unwrap();
    // Ten minutes behind (inside max_past_skew, so the partition holds the
    // clock back), from twenty agents: more keys than the cap. The
    // connection stays open, so the partition stays live.
    let old = mcp_alertd::clock::now_ms() - 10 * MIN;
    let lines: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"ts":{},"event":"auth.failure","agent_id":"a{i}","reason":"invalid_token"}}"#,
                old + i
            )
        })
        .collect();
    let mut conn = tokio::net::TcpStream::connect(daemon.local_addr("tcp").unwrap())
        .await
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        conn.write_all(format!("{}\n", lines.join("\n")).as_bytes())
            .await
            .unwrap();
    }
    wait_for("clock_stalled", || {
        !of_rule(&out.alerts(), "clock_stalled").is_empty()
    })
    .await;
    wait_for("keys evicted", || {
        metric_opt(&scrape_blocking(m), "mcp_alertd_evicted_keys_total").is_some_and(|n| n > 0.0)
    })
    .await;
    drop(conn);
    daemon.shutdown().await.unwrap();
    let alerts = out.alerts();
    let stalled = of_rule(&alerts, "clock_stalled");
    assert_eq!(stalled.len(), 1, "{stalled:?}");
    assert_eq!(stalled[0]["key"]["unit"], "main");
    assert_eq!(stalled[0]["severity"], "medium");
    assert!(of_rule(&alerts, "state_pressure").is_empty(), "turned off");
}
