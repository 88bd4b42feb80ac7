//! The daemon under faults an operator meets: every byte a source reads is
//! accounted for (received = decoded + unmapped + rejected, per source),
//! whatever mix of garbage, framing errors and cut-off streams it gets.

use std::io::Write as _;
use std::path::Path;

use tokio::io::AsyncWriteExt;

use crate::support::{
    SOURCES, TCP, metric, metric_opt, scenario, scrape_blocking, send_udp, start, wait_for,
};

/// The counts of one source in a scrape: (received, decoded, unmapped,
/// rejected by reason).
fn accounts(text: &str, source: &str) -> (f64, f64, f64, Vec<(String, f64)>) {
    let get = |name: &str| {
        metric_opt(
            text,
            &format!("mcp_alertd_{name}_total{{source=\"{source}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let unmapped = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "mcp_alertd_records_unmapped_total{{source=\"{source}\""
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let prefix = format!("mcp_alertd_records_rejected_total{{source=\"{source}\",reason=\"");
    let rejected = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_owned(), value.parse().ok()?))
        })
        .collect();
    (
        get("records_received"),
        get("records_decoded"),
        unmapped,
        rejected,
    )
}

fn rejected(r: &[(String, f64)], reason: &str) -> f64 {
    r.iter().find(|(k, _)| k == reason).map_or(0.0, |(_, v)| *v)
}

fn config(log: &Path) -> String {
    format!(
        "{SOURCES}\n[[sources]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\npoll_interval = \"20ms\"\n",
        log.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_a_source_reads_is_decoded_unmapped_or_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    std::fs::write(&log, "").unwrap();
    let (daemon, _out) = start(&config(&log), &dir.path().join("state")).await;
    let tcp = daemon.local_addr("tcp").unwrap();
    let good = scenario("acct");

    // Newline framing: NUL ends a record like LF, blank lines are no
    // records, garbage is rejected, and the last line without a newline is
    // a record when the sender closes.
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let stream = format!(
        "{}\0{}\n   \r\n\0\0not json at all\n{}",
        good[0], good[1], good[2]
    );
    s.write_all(stream.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();

    // Octet counting: two frames, then one the sender cuts off.
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let frames = format!(
        "{} {}{} {}\0 80 {{\"ts\":1,",
        good[3].len(),
        good[3],
        good[4].len(),
        good[4]
    );
    s.write_all(frames.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();

    // A bad header after one frame: counted, and the connection closed.
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    s.write_all(format!("{} {}12x rest is lost", good[5].len(), good[5]).as_bytes())
        .await
        .unwrap();
    s.shutdown().await.unwrap();

    // UDP: a blank datagram is no record; a trailing NUL is no part of one.
    let udp = daemon.local_addr("udp").unwrap();
    send_udp(
        udp,
        &[
            good[6].clone(),
            " \n".to_owned(),
            "{\"ts\":\"x\"".to_owned(),
            format!("{}\0", good[7]),
        ],
    )
    .await;

    // A file whose last line is unterminated when it is rotated away.
    std::fs::write(
        &log,
        format!("{}\n\n{}\0garbage\n{}", good[8], good[9], good[10]),
    )
    .unwrap();
    let m = daemon.metrics_addr().unwrap();
    wait_for("the file's complete lines", || {
        accounts(&scrape_blocking(m), "file").0 >= 3.0
    })
    .await;
    std::fs::rename(&log, dir.path().join("audit.log.1")).unwrap();
    std::fs::write(&log, "").unwrap();

    // tcp: 4 records + 1 (LF) + 2 + truncated + 1 + bad framing.
    let want = [("tcp", 9.0), ("udp", 3.0), ("file", 4.0)];
    let mut text = String::new();
    wait_for("every record counted", || {
        text = scrape_blocking(m);
        want.iter().all(|(source, n)| {
            let (received, decoded, unmapped, rejected) = accounts(&text, source);
            let r: f64 = rejected.iter().map(|(_, v)| v).sum();
            received == *n && decoded + unmapped + r == received
        })
    })
    .await;
    let (_, decoded, _, r) = accounts(&text, "tcp");
    assert_eq!(decoded, 6.0, "{text}");
    assert_eq!(rejected(&r, "not_syslog"), 1.0, "{text}");
    assert_eq!(rejected(&r, "truncated"), 1.0, "{text}");
    assert_eq!(rejected(&r, "bad_framing"), 1.0, "{text}");
    let (_, decoded, _, r) = accounts(&text, "udp");
    assert_eq!(decoded, 2.0, "{text}");
    assert_eq!(r.iter().map(|(_, v)| v).sum::<f64>(), 1.0, "{text}");
    let (_, decoded, _, r) = accounts(&text, "file");
    assert_eq!(decoded, 3.0, "{text}");
    assert_eq!(rejected(&r, "not_syslog"), 1.0, "{text}");
    assert!(
        text.contains("mcp_alertd_udp_kernel_drops_total{source=\"udp\"} 0"),
        "{text}"
    );
    daemon.shutdown().await.unwrap();
}

#[test]
fn the_kernel_drop_count_is_read_by_the_sockets_inode() {
    use mcp_alertd::source::syslog_udp::{drops_of, socket_inode};
    let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:158A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 818\n\
  124: 0100007F:158B 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41235 2 0000000000000000 0\n";
    assert_eq!(drops_of(table, 41234), Some(818));
    assert_eq!(drops_of(table, 41235), Some(0));
    assert_eq!(drops_of(table, 9), None);
    assert_eq!(socket_inode("socket:[41234]"), Some(41234));
    assert_eq!(socket_inode("pipe:[1]"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_the_kernel_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest receive buffer, so a burst overflows it.
    let cfg = SOURCES.replace(
        "type = \"syslog_udp\"\naddress = \"127.0.0.1:0\"\n",
        "type = \"syslog_udp\"\naddress = \"127.0.0.1:0\"\nreceive_buffer_bytes = 4096\n",
    );
    assert_ne!(cfg, SOURCES);
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let udp = daemon.local_addr("udp").unwrap();
    let m = daemon.metrics_addr().unwrap();
    let line = scenario("drops")[0].clone();
    let sent = tokio::task::spawn_blocking(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0u64;
        // Bursts until the kernel has dropped some (bounded by count).
        for _ in 0..20 {
            for _ in 0..20_000 {
                if sock.send_to(line.as_bytes(), udp).is_ok() {
                    sent += 1;
                }
            }
            let text = scrape_blocking(m);
            if metric_opt(&text, "mcp_alertd_udp_kernel_drops_total{source=\"udp\"}")
                .is_some_and(|d| d > 0.0)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        sent
    })
    .await
    .unwrap();
    // Every datagram sent is received, dropped at the full queue or dropped
    // by the kernel (polled up to 60 s; the counts are in the failure).
    let mut text = String::new();
    let mut counts = [0.0; 3];
    for _ in 0..3000 {
        text = scrape_blocking(m);
        let get = |s: &str| metric_opt(&text, s).unwrap_or(0.0);
        counts = [
            get("mcp_alertd_records_received_total{source=\"udp\"}"),
            get("mcp_alertd_udp_datagrams_dropped_total{source=\"udp\"}"),
            get("mcp_alertd_udp_kernel_drops_total{source=\"udp\"}"),
        ];
        if counts.iter().sum::<f64>() == sent as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        counts.iter().sum::<f64>(),
        sent as f64,
        "received, dropped at the full queue, dropped by the kernel: {counts:?}; {}",
        std::fs::read_to_string("/proc/net/snmp").unwrap_or_default()
    );
    assert!(
        metric_opt(&text, "mcp_alertd_udp_kernel_drops_total{source=\"udp\"}").unwrap() > 0.0,
        "{text}"
    );
    daemon.shutdown().await.unwrap();
}

/// `n` auth successes dated an hour ago, numbered from `from`.
fn numbered(from: usize, n: usize) -> String {
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"event\":\"auth.success\",\"tenant\":\"rot\",\"agent_id\":\"agent-{i:05}\"}}\n",
                base + i as i64
            )
        })
        .collect()
}

/// Appends text to a file (in place: same inode).
fn append_text(log: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Runs the daemon over the file until it has read `want` records, and
/// stops it (saving the position).
async fn read_file(log: &Path, state: &Path, want: f64) {
    let (daemon, _out) = start(&config(log), state).await;
    let metrics = daemon.metrics().clone();
    wait_for("the file read", || {
        accounts(&metrics.render(), "file").1 >= want
    })
    .await;
    daemon.shutdown().await.unwrap();
    // Counted after the stop: nothing more was read either.
    let text = metrics.render();
    let (received, decoded, _, _) = accounts(&text, "file");
    assert_eq!((received, decoded), (want, want), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copytruncated_while_stopped_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let state = dir.path().join("state");
    std::fs::write(&log, numbered(0, 200)).unwrap();
    read_file(&log, &state, 200.0).await;
    // copytruncate: the old lines go elsewhere, the file is emptied in
    // place (same inode) and grows past the saved offset before the start.
    std::fs::write(dir.path().join("audit.log.1"), std::fs::read(&log).unwrap()).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(0).unwrap();
    drop(f);
    append_text(&log, &numbered(1000, 300));
    read_file(&log, &state, 300.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_while_stopped_is_read_to_its_end_then_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let state = dir.path().join("state");
    std::fs::write(&log, numbered(0, 100)).unwrap();
    read_file(&log, &state, 100.0).await;
    // Lines written after the stop, then the file rotated by rename and a
    // new one started: both are read, nothing twice.
    append_text(&log, &numbered(100, 50));
    std::fs::rename(&log, dir.path().join("audit.log.1")).unwrap();
    std::fs::write(&log, numbered(150, 70).as_bytes()).unwrap();
    read_file(&log, &state, 120.0).await;
    // And an unchanged file resumes where it was: nothing read again.
    append_text(&log, &numbered(220, 5));
    read_file(&log, &state, 5.0).await;
}

#[test]
fn state_saved_before_file_fingerprints_is_read() {
    // Version 1 of a unit: file positions of (dev, ino, offset).
    #[derive(serde::Serialize)]
    struct Position {
        dev: u64,
        ino: u64,
        offset: u64,
    }
    #[derive(serde::Serialize)]
    struct EngineUnit {
        files: std::collections::BTreeMap<String, Position>,
        next_offset: Option<i64>,
        engine: Vec<u8>,
    }
    #[derive(serde::Serialize)]
    enum Saved {
        Engine(EngineUnit),
    }
    let mut files = std::collections::BTreeMap::new();
    files.insert(
        "audit".to_owned(),
        Position {
            dev: 7,
            ino: 9,
            offset: 1234,
        },
    );
    let unit = Saved::Engine(EngineUnit {
        files,
        next_offset: None,
        engine: vec![1, 2, 3],
    });
    let bytes = postcard::to_allocvec(&(1u32, unit)).unwrap();
    match mcp_alertd::store::state::decode("main", &bytes).unwrap() {
        mcp_alertd::store::state::Saved::Engine(u) => {
            let p = u.files["audit"];
            assert_eq!((p.dev, p.ino, p.offset, p.head), (7, 9, 1234, None));
            assert_eq!(u.engine, vec![1, 2, 3]);
        }
        other => panic!("{other:?}"),
    }
}

const UNUSED: &str = r#"[[rule]]
id = "unused"
title = "unused"
severity = "medium"
kind = "absence"
start = { event = "credential.issued" }
stop = { event = "credential.used" }
key = ["credential_id"]
deadline = "1h"
"#;

const DENIED: &str = r#"[[rule]]
id = "denied"
title = "denied"
severity = "low"
kind = "threshold"
match = { event = "tool.denied" }
group_by = ["session_id"]
condition = { gte = 2 }
"#;

fn rule_set(files: &[&str]) -> std::sync::Arc<mcp_alertd::engine::RuleSet> {
    let files = files
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i}.toml"), (*t).to_owned()))
        .collect();
    std::sync::Arc::new(mcp_alertd::engine::RuleSet::from_files(files, "test").unwrap())
}

/// An engine that saw one credential issued at `s(0)` (its `unused`
/// deadline at `s(3600)`).
fn engine_with_pending_deadline(
    cfg: &mcp_alertd::engine::EngineConfig,
) -> mcp_alertd::engine::Engine {
    use mcp_alertd::engine::Engine;
    let mut engine = Engine::new(rule_set(&[UNUSED, DENIED]), *cfg);
    let line = crate::line(
        crate::s(0),
        "credential.issued",
        r#""tenant":"t","credential_id":"c1","agent_id":"a""#,
    );
    let ev = mcp_alertd::decode::Decoder::default()
        .decode(line.as_bytes())
        .unwrap();
    let mut out = Vec::new();
    engine.advance_to(ev.ts, &mut out);
    engine.on_event(&ev, None, &mut out);
    assert!(out.is_empty());
    engine
}

fn fired(engine: &mut mcp_alertd::engine::Engine, to: i64) -> Vec<String> {
    let mut out = Vec::new();
    engine.advance_to(to, &mut out);
    out.into_iter()
        .map(|d| mcp_alertd::alert::render(d, None).rule)
        .collect()
}

#[test]
fn a_rule_removed_by_a_reload_gets_its_pending_deadline_back_within_the_grace() {
    use mcp_alertd::engine::EngineConfig;
    let cfg = EngineConfig::default();
    let mut engine = engine_with_pending_deadline(&cfg);
    // The file of `unused` vanishes: the reload parks its state.
    engine.reload(rule_set(&[DENIED]), cfg);
    assert_eq!(engine.parked_rules().len(), 1);
    assert!(fired(&mut engine, crate::s(1800)).is_empty());
    // It comes back before the grace ends: the deadline fires.
    assert_eq!(engine.reload(rule_set(&[UNUSED, DENIED]), cfg), 2);
    assert!(engine.parked_rules().is_empty());
    assert_eq!(fired(&mut engine, crate::s(3601)), vec!["unused"]);

    // Beyond the grace the state is gone: the rule comes back empty.
    let short = EngineConfig {
        removed_rule_grace_ms: 600_000,
        ..cfg
    };
    let mut engine = engine_with_pending_deadline(&short);
    engine.reload(rule_set(&[DENIED]), short);
    assert!(fired(&mut engine, crate::s(3 * 3600)).is_empty());
    assert!(engine.parked_rules().is_empty());
    assert_eq!(engine.reload(rule_set(&[UNUSED, DENIED]), short), 1);
    assert!(fired(&mut engine, crate::s(4 * 3600)).is_empty());
}

#[test]
fn a_rule_missing_at_a_restart_keeps_its_state_in_the_snapshot_until_it_is_back() {
    use mcp_alertd::engine::{Engine, EngineConfig};
    let cfg = EngineConfig::default();
    let engine = engine_with_pending_deadline(&cfg);
    let bytes = engine.snapshot().unwrap();
    // Restarted without the rule: parked, and saved as parked.
    let without = Engine::restore(rule_set(&[DENIED]), cfg, &bytes).unwrap();
    assert_eq!(without.parked_rules().len(), 1);
    let bytes = without.snapshot().unwrap();
    // Restarted with it again: the deadline is there.
    let mut with = Engine::restore(rule_set(&[UNUSED, DENIED]), cfg, &bytes).unwrap();
    assert!(with.parked_rules().is_empty());
    assert_eq!(fired(&mut with, crate::s(3601)), vec!["unused"]);
}

#[test]
fn a_rule_file_that_is_not_really_there_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("denied.toml"), DENIED).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.toml"), rules.join("unused.toml")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "rules_dir = \"{}\"\nstate_dir = \"{}\"\n",
            rules.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("unused.toml") && err.contains("cannot read"),
        "{err}"
    );
    // A directory named like a rule file too.
    std::fs::remove_file(rules.join("unused.toml")).unwrap();
    std::fs::create_dir(rules.join("unused.toml")).unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn a_snapshot_of_the_version_before_parked_rules_is_read() {
    use mcp_alertd::engine::{Engine, EngineConfig};
    let cfg = EngineConfig::default();
    let mut bytes = engine_with_pending_deadline(&cfg).snapshot().unwrap();
    // Version 3 is version 4 without the (here empty) parked list at its end.
    assert_eq!((bytes[0], bytes.last()), (4, Some(&0)));
    bytes[0] = 3;
    bytes.pop();
    let mut engine = Engine::restore(rule_set(&[UNUSED, DENIED]), cfg, &bytes).unwrap();
    assert_eq!(fired(&mut engine, crate::s(3601)), vec!["unused"]);
}

/// A daemon on TCP with one `unused` rule of `deadline`, the engine idle
/// after `idle_after`.
async fn clock_daemon(
    dir: &Path,
    deadline: &str,
    idle_after: &str,
) -> (mcp_alertd::app::Daemon, crate::support::Capture) {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("unused.toml"),
        UNUSED.replace("deadline = \"1h\"", &format!("deadline = \"{deadline}\"")),
    )
    .unwrap();
    let cfg = format!(
        r#"rules_dir = "{}"
[engine]
idle_after = "{idle_after}"
allowed_lateness = "0s"
{TCP}"#,
        rules.display()
    );
    start(&cfg, &dir.join("state")).await
}

fn cred(event: &str, ts: i64) -> String {
    format!(
        "{{\"ts\":{ts},\"event\":\"{event}\",\"tenant\":\"t\",\"agent_id\":\"a\",\"credential_id\":\"c1\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dated_long_ago_on_one_connection_do_not_hold_the_clock_back() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out) = clock_daemon(dir.path(), "2s", "300ms").await;
    let tcp = daemon.local_addr("tcp").unwrap();
    let m = daemon.metrics_addr().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut a = tokio::net::TcpStream::connect(tcp).await.unwrap();
    a.write_all(cred("credential.issued", now).as_bytes())
        .await
        .unwrap();
    // Another sender keeps sending events dated 1970, more often than
    // idle_after, until the deadline alert is there (bounded by count).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut b = tokio::net::TcpStream::connect(tcp).await.unwrap();
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 3000 {
                let line = format!(
                    "{{\"ts\":{},\"event\":\"auth.success\",\"tenant\":\"t\",\"agent_id\":\"old\"}}\n",
                    1000 + i64::from(sent)
                );
                b.write_all(line.as_bytes()).await.unwrap();
                sent += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            sent
        })
    };
    wait_for("the attacker's partition seen as stale", || {
        metric_opt(&scrape_blocking(m), "mcp_alertd_stale_partitions") == Some(1.0)
    })
    .await;
    wait_for("the deadline alert while old events keep coming", || {
        out.alerts().iter().any(|a| a["rule"] == "unused")
    })
    .await;
    let still_sending = !attacker.is_finished();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = attacker.await.unwrap();
    assert!(still_sending && sent < 3000, "sent {sent}");
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_dated_minutes_ahead_does_not_fire_deadlines_early() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out) = clock_daemon(dir.path(), "120s", "100ms").await;
    let tcp = daemon.local_addr("tcp").unwrap();
    let metrics = daemon.metrics().clone();
    let events = |m: &mcp_alertd::telemetry::metrics::Metrics| {
        let text = m.render();
        metric_opt(&text, "mcp_alertd_events_total{type=\"credential.issued\"}").unwrap_or(0.0)
            + metric_opt(&text, "mcp_alertd_events_total{type=\"auth.success\"}").unwrap_or(0.0)
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let mut a = tokio::net::TcpStream::connect(tcp).await.unwrap();
    a.write_all(cred("credential.issued", now).as_bytes())
        .await
        .unwrap();
    // One forged event 290 s ahead (inside max_future_skew = 5 m) on a
    // connection of its own, alone once the first one is idle.
    wait_for("the issue applied", || events(&metrics) == 1.0).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut b = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let forged = format!(
        "{{\"ts\":{},\"event\":\"auth.success\",\"tenant\":\"t\",\"agent_id\":\"forger\"}}\n",
        now + 290_000
    );
    b.write_all(forged.as_bytes()).await.unwrap();
    wait_for("the forged event applied", || events(&metrics) == 2.0).await;
    // The credential is used 1 s after it was issued: no deadline passed.
    a.write_all(cred("credential.used", now + 1000).as_bytes())
        .await
        .unwrap();
    wait_for("the use applied", || {
        metric_opt(
            &metrics.render(),
            "mcp_alertd_events_total{type=\"credential.used\"}",
        ) == Some(1.0)
    })
    .await;
    daemon.shutdown().await.unwrap();
    assert!(
        !out.alerts().iter().any(|a| a["rule"] == "unused"),
        "{:?}",
        out.alerts()
    );
}

/// Point 2: a file sink killed (SIGKILL) again and again while it drains a
/// backlog delivers every alert, and each kill delivers at most
/// `ack_window` alerts twice (the file sink takes one alert per request).
#[test]
fn sigkill_during_a_backlog_repeats_at_most_the_ack_window_per_kill() {
    use crate::support::{Proc, proc::json_lines};
    const N: usize = 3000;
    const KILLS: usize = 5;
    const WINDOW: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sink.jsonl");
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
{TCP}[outbox]
ack_window = {WINDOW}
[[sinks]]
name = "file"
type = "file"
path = "{}"
rate_limit = 1500
burst = 1
"#,
        out.display()
    );
    let lines_in = || json_lines(&out).len();
    let mut p = Proc::start(dir.path(), &cfg);
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let mut s = std::net::TcpStream::connect(p.addr("tcp")).unwrap();
    for i in 0..N as i64 {
        writeln!(s, "{}", crate::support::denial(base, i)).unwrap();
    }
    s.flush().unwrap();
    drop(s);
    let m = p.metrics_addr();
    let raised = || {
        scrape_blocking(m)
            .lines()
            .filter(|l| l.starts_with("mcp_alertd_alerts_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as usize
    };
    crate::support::wait_until("an alert per event in the outbox", || raised() >= N);
    let n = raised();
    for kill in 0..KILLS {
        let before = lines_in();
        crate::support::wait_until("some deliveries", || {
            lines_in() >= before + 200 || lines_in() >= n
        });
        p.signal("KILL");
        let _ = p.child.wait();
        if kill + 1 < KILLS {
            p = Proc::start(dir.path(), &cfg);
        }
    }
    let mut p = Proc::start(dir.path(), &cfg);
    let unique = || {
        let mut ids: Vec<String> = json_lines(&out)
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    crate::support::wait_until("every alert delivered", || unique() >= n);
    assert_eq!(p.stop(), 0);
    let total = lines_in();
    assert_eq!(unique(), n, "every alert delivered");
    assert!(
        total - n <= KILLS * WINDOW,
        "{} repeated over {KILLS} kills, at most {WINDOW} per kill",
        total - n
    );
}

#[test]
fn a_sink_secret_that_cannot_be_read_is_a_configuration_error_for_run_too() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hook.key");
    let config = dir.path().join("config.toml");
    let text = |key_path: &Path| {
        format!(
            "state_dir = \"{}\"\n[metrics]\nenabled = false\n[[sources]]\nname = \"udp\"\ntype = \"syslog_udp\"\naddress = \"127.0.0.1:0\"\n[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsigning_key_file = \"{}\"\n",
            dir.path().display(),
            key_path.display()
        )
    };
    let exit = |command: &str| {
        let out = assert_cmd::Command::cargo_bin("mcp-alertd")
            .unwrap()
            .args([command, "--config"])
            .arg(&config)
            // Bounds a daemon that would wrongly start.
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The key file does not exist.
    std::fs::write(&config, text(&key)).unwrap();
    for command in ["check", "run"] {
        let (code, err) = exit(command);
        assert_eq!(code, Some(78), "{command}: {err}");
        assert!(err.contains("hook.key"), "{command}: {err}");
    }
    // A malformed key: the error names where, never the character.
    std::fs::write(&key, "whsec_QUJD$WFla\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for command in ["check", "run"] {
        let (code, err) = exit(command);
        assert_eq!(code, Some(78), "{command}: {err}");
        assert!(err.contains("not base64 at offset 4"), "{command}: {err}");
        assert!(
            !err.contains('$') && !err.contains("symbol"),
            "{command}: {err}"
        );
    }
}

#[test]
fn the_store_and_alert_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sink.jsonl");
    let cfg = format!(
        "[metrics]\nenabled = false\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\n",
        out.display()
    );
    let p = crate::support::Proc::start_with_umask(dir.path(), &cfg, "000");
    send_one_denied(p.addr("tcp"));
    crate::support::wait_until("the alert in the file sink", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("unauthorized_tool_attempt"))
    });
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o640, "the file sink's file");
    let store = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "redb"))
        .expect("a store file");
    assert_eq!(mode(&store), 0o600, "{}", store.display());
    let mut p = p;
    assert_eq!(p.stop(), 0);
}

#[test]
fn the_outbox_and_state_are_listed_while_the_daemon_runs() {
    use crate::support::{Proc, outbox_list};
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: the alert stays pending.
    let cfg = "[metrics]\nenabled = false\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";
    let mut p = Proc::start(dir.path(), cfg);
    send_one_denied(p.addr("tcp"));
    crate::support::wait_until("the pending alert listed beside the daemon", || {
        outbox_list(dir.path()).contains("unauthorized_tool_attempt")
    });
    let text = outbox_list(dir.path());
    assert!(text.starts_with("pending  hook"), "{text}");
    let cli = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("mcp-alertd")
            .unwrap()
            .args(args)
            .arg("--state-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let state = cli(&["state", "list"]);
    assert!(state.status.success(), "{state:?}");
    // A change waits for the daemon to stop, with a message saying so.
    let purge = cli(&["outbox", "purge", "--pending"]);
    assert_eq!(purge.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&purge.stderr).contains("stop it first"),
        "{purge:?}"
    );
    assert_eq!(p.stop(), 0);
    let purge = cli(&["outbox", "purge", "--pending"]);
    assert!(purge.status.success(), "{purge:?}");
    assert!(outbox_list(dir.path()).trim().is_empty());
}

/// One `tool.denied` event over TCP: one `unauthorized_tool_attempt`.
fn send_one_denied(addr: std::net::SocketAddr) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    writeln!(
        s,
        r#"{{"ts":1791000000000,"event":"tool.denied","agent_id":"a","session_id":"s","tool":"t"}}"#
    )
    .unwrap();
}

/// Raises this process's open-file limit to hold `n` more sockets.
fn allow_open_files(n: u64) {
    let got = rlimit::increase_nofile_limit(n).unwrap();
    assert!(
        got >= n,
        "the hard limit of open files ({got}) is below {n}"
    );
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_and_a_slowloris_sender_do_not_lock_out_a_real_sender() {
    const CAP: usize = 64;
    const PER_PEER: usize = 16;
    const REAL: usize = 100;
    // 2000 client sockets, the accepted ones (at most CAP at a time) and
    // what tests running beside it hold.
    allow_open_files(4096);
    let dir = tempfile::tempdir().unwrap();
    let cfg = SOURCES.replace(
        "idle_timeout = \"2s\"",
        &format!(
            "idle_timeout = \"1h\"\nrecord_timeout = \"2s\"\nmax_connections = {CAP}\nmax_connections_per_peer = {PER_PEER}"
        ),
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let m = daemon.metrics_addr().unwrap();
    let value = move |sample: &str| metric_opt(&scrape_blocking(m), sample).unwrap_or(0.0);
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;

    // 1000 idle connections from one peer: all but PER_PEER refused.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect_from("127.0.0.2", addr).await);
    }
    wait_for("the peer's connections beyond its limit refused", || {
        value("mcp_alertd_connections_refused_total{source=\"tcp\"}") == (1000 - PER_PEER) as f64
    })
    .await;

    // A real sender and a slowloris one, each with a first record.
    let mut real = connect_from("127.0.0.1", addr).await;
    let line = |i: usize| {
        format!(
            "{{\"ts\":{},\"event\":\"tool.invoke\",\"agent_id\":\"real\",\"session_id\":\"s\",\"tool\":\"t\",\"n\":{i}}}\n",
            base + i as i64
        )
    };
    real.write_all(line(0).as_bytes()).await.unwrap();
    let mut slow = connect_from("127.0.0.3", addr).await;
    slow.write_all(
        format!("{{\"ts\":{base},\"event\":\"auth.failure\",\"agent_id\":\"slow\"}}\n").as_bytes(),
    )
    .await
    .unwrap();
    wait_for("both first records", || {
        let text = scrape_blocking(m);
        metric_opt(&text, "mcp_alertd_events_total{type=\"tool.invoke\"}") == Some(1.0)
            && metric_opt(&text, "mcp_alertd_events_total{type=\"auth.failure\"}") == Some(1.0)
    })
    .await;

    // The slowloris sender: one byte every 200 ms, never a whole record;
    // bounded by count.
    let slowloris = tokio::spawn(async move {
        for _ in 0..600 {
            if slow.write_all(b"{").await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        false
    });
    // 1000 more idle connections from 100 peers fill the cap over and
    // over, while the real sender sends the rest of its records.
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0..1000 {
            held.push(connect_from(&format!("127.0.1.{}", 1 + i % 100), addr).await);
        }
        held
    });
    for i in 1..REAL {
        real.write_all(line(i).as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    idle.extend(flood.await.unwrap());
    wait_for("every record of the real sender", || {
        value("mcp_alertd_events_total{type=\"tool.invoke\"}") == REAL as f64
    })
    .await;
    wait_for("the slowloris sender cut off", || {
        value("mcp_alertd_connections_closed_total{source=\"tcp\",reason=\"slow\"}") == 1.0
    })
    .await;
    assert!(
        slowloris.await.unwrap(),
        "the slowloris connection was closed"
    );
    // Every connection admitted beyond the cap replaced an idle one; the
    // real sender kept its connection (it had sent records). The flood's
    // last connections may still wait in the listen backlog: wait for the
    // daemon to accept them.
    let evicted = "mcp_alertd_connections_closed_total{source=\"tcp\",reason=\"evicted\"}";
    wait_for(
        "every flood connection accepted and an idle one evicted",
        || value(evicted) >= (PER_PEER + 1000 + 2 - CAP - 1) as f64,
    )
    .await;
    let text = scrape_blocking(m);
    assert!(metric(&text, "mcp_alertd_connections_open{source=\"tcp\"}") <= CAP as f64);
    assert_eq!(
        metric(
            &text,
            "mcp_alertd_connections_refused_total{source=\"tcp\"}"
        ),
        (1000 - PER_PEER) as f64
    );
    drop(idle);
    drop(real);
    daemon.shutdown().await.unwrap();
}

#[test]
fn the_journal_chains_every_alert_and_verify_finds_an_edited_one() {
    use crate::support::Proc;
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[metrics]\nenabled = false\n[outbox]\njournal_entries = 5\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n";
    let mut p = Proc::start(dir.path(), cfg);
    let mut s = std::net::TcpStream::connect(p.addr("tcp")).unwrap();
    for i in 0..8 {
        writeln!(s, "{}", crate::support::denial(1_791_000_000_000, i)).unwrap();
    }
    drop(s);
    p.wait_alerts(8);
    assert_eq!(p.stop(), 0);
    let journal = |args: &[&str]| {
        let out = assert_cmd::Command::cargo_bin("mcp-alertd")
            .unwrap()
            .arg("journal")
            .args(args)
            .arg("--state-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Eight alerts raised, the oldest three pruned at journal_entries = 5.
    let (code, text) = journal(&["verify"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("journal OK: 5 entries (3..=7), head "),
        "{text}"
    );
    let head = text.trim().rsplit(' ').next().unwrap().to_owned();
    let (code, exported) = journal(&["export"]);
    assert_eq!(code, Some(0));
    let rows: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    for pair in rows.windows(2) {
        assert_eq!(pair[1]["prev"], pair[0]["hash"]);
    }
    assert_eq!(rows[4]["hash"], head.as_str());
    assert_eq!(rows[0]["alert"]["rule"], "unauthorized_tool_attempt");
    assert_eq!(journal(&["verify", "--head", &head]).0, Some(0));
    // A head kept earlier is any entry's hash, in either case; anything
    // else is no head of this chain.
    let middle = rows[2]["hash"].as_str().unwrap().to_ascii_uppercase();
    assert_eq!(journal(&["verify", "--head", &middle]).0, Some(0));
    for other in ["0".repeat(64), format!("+{}", &head[1..]), "xyz".to_owned()] {
        let (code, text) = journal(&["verify", "--head", &other]);
        assert_eq!(code, Some(1), "{other}: {text}");
        assert!(
            text.starts_with("journal BROKEN: no entry has the head"),
            "{text}"
        );
    }

    // Change the agent of entry 5 behind the daemon's back.
    let path = dir.path().join(mcp_alertd::store::FILE_NAME);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(mcp_alertd::store::JOURNAL).unwrap();
            let bytes = redb::ReadableTable::get(&table, 5)
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            let mut entry: mcp_alertd::store::JournalEntry = postcard::from_bytes(&bytes).unwrap();
            let text = String::from_utf8(entry.alert).unwrap();
            assert!(text.contains("\"a5\""), "{text}");
            entry.alert = text.replace("\"a5\"", "\"a9\"").into_bytes();
            table
                .insert(5, postcard::to_allocvec(&entry).unwrap().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let (code, text) = journal(&["verify"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("journal BROKEN at entry 5: its content does not match its hash"),
        "{text}"
    );
}

/// A tmpfs of `size` mounted on `dir` for the life of the guard (`None`
/// where this machine cannot mount: the test says so and is skipped).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0750"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

/// Fills the filesystem of `dir` to the last byte with one file.
fn fill(dir: &Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&[0u8; 512]);
    filler
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_under_the_store_makes_the_daemon_not_ready_until_space_returns() {
    use crate::support::{Proc, get_blocking, proc::json_lines};
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(_fs) = Tmpfs::mount(&state, "16m") else {
        eprintln!("skipped: this machine cannot mount a tmpfs (needs CAP_SYS_ADMIN)");
        return;
    };
    let out = dir.path().join("sink.jsonl");
    let cfg = format!(
        "state_dir = \"{}\"\n[engine]\nidle_after = \"1h\"\n[metrics]\naddress = \"127.0.0.1:0\"\n[outbox]\njournal_entries = 100\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\n",
        state.display(),
        out.display()
    );
    // The daemon's own state_dir line comes first: use a directory of
    // its own for the rest (log, stdout).
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let cfg = cfg.replacen(&format!("state_dir = \"{}\"\n", state.display()), "", 1);
    // The self-monitoring reports the outage (once the store takes it).
    let cfg = format!(
        "{cfg}[self_monitoring]\nstore_unavailable = \"1s\"\nsource_silent = false\nclock_stalled = false\n"
    );
    let mut p = Proc::start_in(&home, &state, &cfg);
    let m = p.metrics_addr();
    let ready = || get_blocking(m, "/readyz").starts_with("HTTP/1.1 200");
    crate::support::wait_until("ready", ready);
    let filler = fill(&state);
    // A storm of alerts the store cannot take (the sender blocks while
    // the daemon waits: backpressure).
    let addr = p.addr("tcp");
    let sender = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        for i in 0..N {
            writeln!(s, "{}", crate::support::denial(1_791_000_000_000, i as i64)).unwrap();
        }
    });
    crate::support::wait_until("the daemon not ready on the full disk", || {
        !ready() && metric_opt(&scrape_blocking(m), "mcp_alertd_store_available") == Some(0.0)
    });
    // The outage lasts past store_unavailable's bound, then space
    // returns: the daemon recovers by itself.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::remove_file(&filler).unwrap();
    sender.join().unwrap();
    let delivered = || json_lines(&out);
    let ids = || -> Vec<String> {
        delivered()
            .iter()
            .filter(|a| a["rule"] != "store_unavailable")
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    crate::support::wait_until("every alert delivered", || {
        let mut all = ids();
        all.sort();
        all.dedup();
        all.len() >= N
    });
    crate::support::wait_until("ready again", || {
        ready() && metric_opt(&scrape_blocking(m), "mcp_alertd_store_available") == Some(1.0)
    });
    let all = ids();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), N, "no alert lost");
    assert_eq!(all.len(), N, "none delivered twice");
    crate::support::wait_until("the outage reported", || {
        delivered().iter().any(|a| a["rule"] == "store_unavailable")
    });
    let outage: Vec<serde_json::Value> = delivered()
        .into_iter()
        .filter(|a| a["rule"] == "store_unavailable")
        .collect();
    assert_eq!(outage.len(), 1, "once per outage: {outage:?}");
    // The writer's first failure: the full disk itself, or the I/O error
    // redb reports after a dispatcher's write hit it first.
    assert!(
        ["no_space", "io"].contains(&outage[0]["key"]["kind"].as_str().unwrap()),
        "{outage:?}"
    );
    assert_eq!(outage[0]["tenant"], "_daemon");
    // Each kind of store failure logged once per 30 s, not per retry.
    let failures = p
        .logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot write to the store"))
        })
        .count();
    assert!(
        (1..=10).contains(&failures),
        "{failures} store failure lines"
    );
    assert_eq!(p.stop(), 0);
}

#[test]
fn sigterm_stops_the_daemon_while_the_store_cannot_be_written() {
    use crate::support::Proc;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(_fs) = Tmpfs::mount(&state, "8m") else {
        eprintln!("skipped: this machine cannot mount a tmpfs (needs CAP_SYS_ADMIN)");
        return;
    };
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let cfg = "[engine]\nidle_after = \"1h\"\nshutdown_grace = \"2s\"\n[metrics]\naddress = \"127.0.0.1:0\"\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n";
    let mut p = Proc::start_in(&home, &state, cfg);
    let m = p.metrics_addr();
    fill(&state);
    let addr = p.addr("tcp");
    // Bounded: the sender stops at the first write the daemon refuses.
    let sender = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        for i in 0..3000 {
            let line = format!("{}\n", crate::support::denial(1_791_000_000_000, i));
            if s.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    crate::support::wait_until("the store failing", || {
        metric_opt(&scrape_blocking(m), "mcp_alertd_store_available") == Some(0.0)
    });
    // It exits by itself (stop() returns -1 only when it had to kill it),
    // saying the engine could not drain.
    let code = p.stop();
    assert_eq!(code, 1, "{:?}", p.logs().last());
    let _ = sender.join();
}

/// While the engine queue is full, a UDP source holds the datagrams it
/// receives (nothing is lost) and hands them on when the queue has room,
/// in order; beyond `queue_bytes` it drops new ones and counts them.
/// Stopped while it holds datagrams, it counts them as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_source_holds_datagrams_while_the_engine_queue_is_full() {
    use std::sync::Arc;

    use mcp_alertd::source::syslog_udp;
    use mcp_alertd::source::{SourceCtx, SourceMsg};
    use mcp_alertd::telemetry::metrics::{Metrics, SourceLabel};

    for (queue_bytes, all_kept, stop_first) in [
        (1 << 20, true, false),
        (20_000, false, false),
        (1 << 20, true, true),
    ] {
        let metrics = Arc::new(Metrics::new());
        let label = SourceLabel {
            source: "udp".to_owned(),
        };
        // An engine queue of one batch that nobody reads yet.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let socket = syslog_udp::bind("127.0.0.1:0".parse().unwrap(), Some(1 << 20)).unwrap();
        let to = socket.local_addr().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let ctx = SourceCtx {
            index: 0,
            name: "udp".into(),
            label: label.clone(),
            max_record_bytes: 65_536,
            tx,
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        };
        let source = tokio::spawn(syslog_udp::run(ctx, socket, queue_bytes));
        let received = metrics.records_received.get_or_create(&label).clone();
        let dropped = metrics.udp_dropped.get_or_create(&label).clone();
        let n = 2_000;
        let record = |i: u64| format!("{{\"n\":{i:06},\"pad\":\"{}\"}}", "x".repeat(80));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0;
        while sent < n {
            for _ in 0..100 {
                sock.send_to(record(sent).as_bytes(), to).unwrap();
                sent += 1;
            }
            wait_for(&format!("{sent} datagrams received"), || {
                received.get() == sent
            })
            .await;
        }
        if stop_first {
            cancel.cancel();
            source.await.unwrap();
            let mut queued = 0;
            while let Ok(SourceMsg::Batch(b)) = rx.try_recv() {
                queued += b.frames.len() as u64;
            }
            assert!(queued < n, "the engine queue holds one batch: {queued}");
            assert_eq!(queued + dropped.get(), n, "held datagrams are counted");
            continue;
        }
        let lost = dropped.get();
        if all_kept {
            assert_eq!(lost, 0, "held within queue_bytes");
        } else {
            // 20,000 bytes hold fewer than 200 of these 100-byte records.
            assert!(lost > 1_700, "dropped beyond queue_bytes: {lost}");
        }
        // The engine reads: every datagram not dropped arrives, in order.
        let mut seen = Vec::new();
        while (seen.len() as u64) < n - lost {
            let Some(SourceMsg::Batch(b)) = rx.recv().await else {
                panic!("the source stopped");
            };
            for f in &b.frames.frames {
                let text = std::str::from_utf8(b.frames.get(f).unwrap()).unwrap();
                seen.push(text[5..11].parse::<u64>().unwrap());
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
        if all_kept {
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
        cancel.cancel();
        source.await.unwrap();
    }
}
