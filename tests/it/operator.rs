//! Operator commands: `rules test` (events in, expected alerts out) and
//! `status` (a summary of a running daemon from its /metrics).

use std::io::Write as _;
use std::process::Command;

use crate::support::{SOURCES, scenario, start, wait_for};

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("mcp-alertd")
}

#[test]
fn the_shipped_rule_tests_pass() {
    let out = Command::new(bin())
        .args(["rules", "test", "rules/tests"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.ends_with("25 passed, 0 failed\n"), "{text}");
}

#[test]
fn a_failing_rule_test_says_why_and_an_invalid_one_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing.toml");
    std::fs::write(
        &failing,
        r#"[[case]]
name = "three failures are not a burst"
events = [
  '{"ts":"2026-10-01T08:00:00Z","event":"auth.failure","tenant":"acme","agent_id":"bot"}',
  '{"ts":"2026-10-01T08:00:01Z","event":"auth.failure","tenant":"acme","agent_id":"bot"}',
  '{"ts":"2026-10-01T08:00:02Z","event":"auth.failure","tenant":"acme","agent_id":"bot"}',
]
[[case.expect]]
rule = "auth_failure_burst"
"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["rules", "test"])
        .arg(&failing)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED"), "{text}");
    assert!(text.contains("0 alerts raised, 1 expected"), "{text}");

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[[case]]\nname = \"x\"\nevents = []\nbogus = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["rules", "test"])
        .arg(&invalid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_summarizes_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    // The TCP source detects formats: one record of no known format is
    // counted as unmapped.
    let cfg = SOURCES.replace(
        "type = \"syslog_tcp\"",
        "type = \"syslog_tcp\"\nformat = \"auto\"",
    );
    assert_ne!(cfg, SOURCES);
    let (daemon, out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let lines = scenario("status");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for l in &lines {
        writeln!(s, "{l}").unwrap();
    }
    writeln!(s, r#"{{"level":"info","msg":"not an audit record"}}"#).unwrap();
    s.flush().unwrap();
    wait_for("alerts", || out.alerts().len() >= 8).await;
    let m = daemon.metrics().clone();
    wait_for("the unmapped record", || {
        m.render()
            .contains("mcp_alertd_records_unmapped_total{source=\"tcp\",format=\"auto\"} 1")
    })
    .await;
    let metrics = daemon.metrics_addr().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["status", "--interval", "100ms", "--metrics"])
            .arg(metrics.to_string())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(s);
    daemon.shutdown().await.unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("mcp-alertd at {metrics}: ready")),
        "{text}"
    );
    assert!(text.contains("  tcp "), "{text}");
    assert!(text.contains("12 records"), "{text}");
    assert!(text.contains("1 unmapped"), "{text}");
    assert!(text.contains("alerts: 8 "), "{text}");
    assert!(text.contains("auth_failure_burst 1"), "{text}");
    assert!(text.contains("1 connections"), "{text}");

    // Nothing listening: a clear error, exit 1.
    let gone = Command::new(bin())
        .args(["status", "--metrics", &metrics.to_string()])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot connect"));
}

#[test]
fn status_prints_counters_without_samples_as_zero() {
    // A daemon that raised nothing exports no per-rule alert samples.
    let text = mcp_alertd::status::summary("127.0.0.1:9464".parse().unwrap(), true, &[], &[], 1.0);
    assert!(
        text.contains("alerts: 0 (0.0/s); 0 suppressed, 0 grouped"),
        "{text}"
    );
    assert!(!text.contains("-0"), "{text}");
}
