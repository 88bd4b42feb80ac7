//! The live daemon in process, over real loopback sockets: UDP, TCP in both
//! framings, TLS and mutual TLS, oversize and garbage input, idle
//! connections, reload, graceful shutdown and file following. Waits are
//! bounded polls; nothing asserts on timing.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use mcp_alertd::config::Config;
use mcp_alertd::engine::RuleSet;
use mcp_alertd::replay::{Input, ReplayOptions, replay};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::{
    SOURCES, metric, metric_opt, replay_ids, scenario, scrape_blocking, send_tcp, send_udp, start,
    wait_for,
};

const EXPECTED_ALERTS: usize = 8; // 1 burst + 6 denials + 1 incident

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_in_both_syslog_formats_give_the_replay_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out) = start(SOURCES, dir.path()).await;
    let addr = daemon.local_addr("udp").unwrap();
    let lines = scenario("udp");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, l) in lines.iter().enumerate() {
        let msg = if i % 2 == 0 {
            format!("<110>1 2026-11-27T10:00:00Z host mcp - audit - @cee:{l}")
        } else {
            format!("<110>Nov 27 10:00:00 host mcp[1]: {l}")
        };
        sock.send_to(msg.as_bytes(), addr).await.unwrap();
        // One datagram at a time: UDP has no backpressure, and this test
        // is about decoding, not loss (see the load tool for that).
        let m = daemon.metrics_addr().unwrap();
        wait_for("the datagram received", || {
            metric(
                &scrape_blocking(m),
                "mcp_alertd_records_received_total{source=\"udp\"}",
            ) >= i as f64 + 1.0
        })
        .await;
    }
    wait_for("udp alerts", || out.alerts().len() >= EXPECTED_ALERTS).await;
    daemon.shutdown().await.unwrap();
    assert_eq!(out.ids(), replay_ids(&lines));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_in_both_framings_gives_the_replay_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out) = start(SOURCES, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let octets = scenario("octets");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for l in &octets {
        let msg = format!("<110>1 2026-11-27T10:00:00Z host mcp - audit - {l}");
        s.write_all(format!("{} {msg}", msg.len()).as_bytes())
            .await
            .unwrap();
    }
    s.shutdown().await.unwrap();
    let lf = scenario("lines");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Written in small pieces so frames straddle reads.
    let all: String = lf.iter().map(|l| format!("{l}\n")).collect();
    for chunk in all.as_bytes().chunks(37) {
        s.write_all(chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    wait_for("tcp alerts", || out.alerts().len() >= 2 * EXPECTED_ALERTS).await;
    daemon.shutdown().await.unwrap();
    let mut want = replay_ids(&octets);
    want.extend(replay_ids(&lf));
    want.sort();
    assert_eq!(out.ids(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_garbage_are_rejected_and_counted_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SOURCES.replace("[engine]\n", "[engine]\nmax_record_bytes = 1024\n");
    let (daemon, out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));
    let mut payload = String::new();
    payload.push_str(&format!("{big}\n"));
    payload.push_str("\u{1}\u{2}garbage that is no syslog\n");
    payload.push_str("{\"ts\":\"not a time\",\"event\":\"auth.failure\"}\n");
    for l in scenario("after") {
        payload.push_str(&l);
        payload.push('\n');
    }
    s.write_all(payload.as_bytes()).await.unwrap();
    s.write_all(&[0xff, 0xfe, b'\n']).await.unwrap();
    s.shutdown().await.unwrap();
    wait_for("alerts after the bad records", || {
        out.alerts().len() >= EXPECTED_ALERTS
    })
    .await;
    let m = daemon.metrics_addr().unwrap();
    let mut text = String::new();
    wait_for("rejection counters", || {
        text = scrape_blocking(m);
        metric(
            &text,
            "mcp_alertd_records_rejected_total{source=\"tcp\",reason=\"not_utf8\"}",
        ) == 1.0
    })
    .await;
    for (reason, n) in [
        ("too_large", 1.0),
        ("not_syslog", 1.0),
        ("bad_timestamp", 1.0),
        ("not_utf8", 1.0),
    ] {
        let sample =
            format!("mcp_alertd_records_rejected_total{{source=\"tcp\",reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &sample), n, "{reason}\n{text}");
    }
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_octet_counted_frame_over_the_bound_is_skipped_and_a_bad_header_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SOURCES.replace("[engine]\n", "[engine]\nmax_record_bytes = 1024\n");
    let (daemon, out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let lines = scenario("octet-big");
    let big = "y".repeat(100_000);
    s.write_all(format!("{} {big}", big.len()).as_bytes())
        .await
        .unwrap();
    for l in &lines {
        s.write_all(format!("{} {l}", l.len()).as_bytes())
            .await
            .unwrap();
    }
    s.write_all(b"12x not a header").await.unwrap();
    wait_for("alerts after the oversize frame", || {
        out.alerts().len() >= EXPECTED_ALERTS
    })
    .await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("bad framing counted", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_records_rejected_total{source=\"tcp\",reason=\"bad_framing\"}",
        ) == 1.0
    })
    .await;
    let text = scrape_blocking(m);
    assert_eq!(
        metric(
            &text,
            "mcp_alertd_records_rejected_total{source=\"tcp\",reason=\"too_large\"}"
        ),
        1.0
    );
    daemon.shutdown().await.unwrap();
    assert_eq!(out.ids(), replay_ids(&lines));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_closed_and_the_connection_cap_replaces_the_idlest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SOURCES.replace(
        "idle_timeout = \"2s\"",
        "idle_timeout = \"1s\"\nmax_connections = 2",
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let m = daemon.metrics_addr().unwrap();
    // Two silent connections (one with half a frame) fill the cap.
    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    a.write_all(b"120 <13>1 half a frame").await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
    wait_for("two open connections", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_connections_open{source=\"tcp\"}",
        ) == 2.0
    })
    .await;
    // A third takes the place of the first (the longest without a record):
    // its half frame is a counted truncation.
    let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let metric = |text: &str, sample: &str| metric_opt(text, sample).unwrap_or(0.0);
    wait_for("the first replaced", || {
        let text = scrape_blocking(m);
        metric(
            &text,
            "mcp_alertd_connections_closed_total{source=\"tcp\",reason=\"evicted\"}",
        ) == 1.0
            && metric(
                &text,
                "mcp_alertd_records_rejected_total{source=\"tcp\",reason=\"truncated\"}",
            ) == 1.0
    })
    .await;
    let mut gone = [0u8; 1];
    let n = tokio::io::AsyncReadExt::read(&mut a, &mut gone).await;
    assert!(n.is_err() || n.unwrap() == 0, "the first was closed");
    wait_for("idle connections closed", || {
        let text = scrape_blocking(m);
        metric(&text, "mcp_alertd_connections_open{source=\"tcp\"}") == 0.0
            && metric(
                &text,
                "mcp_alertd_connections_closed_total{source=\"tcp\",reason=\"idle\"}",
            ) == 2.0
    })
    .await;
    assert_eq!(
        metric(
            &scrape_blocking(m),
            "mcp_alertd_connections_refused_total{source=\"tcp\"}"
        ),
        0.0
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_slows_tcp_senders_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SOURCES.replace("[engine]\n", "[engine]\nqueue_capacity = 1\n");
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let n: u32 = 20_000;
    let mut payload = String::new();
    for i in 0..n {
        payload.push_str(&format!(
            r#"{{"ts":{},"event":"tool.invoke","agent_id":"a{}","session_id":"s","tool":"t"}}"#,
            base + i64::from(i),
            i % 100
        ));
        payload.push('\n');
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(payload.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let m = daemon.metrics_addr().unwrap();
    wait_for("every event processed", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_events_total{type=\"tool.invoke\"}",
        ) == f64::from(n)
    })
    .await;
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_accepted_record() {
    let dir = tempfile::tempdir().unwrap();
    // What is tested is the drain, not its speed: a grace no busy machine
    // runs out of.
    let cfg = SOURCES.replacen("[engine]\n", "[engine]\nshutdown_grace = \"300s\"\n", 1);
    assert_ne!(cfg, SOURCES);
    let (daemon, out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut payload = String::new();
    for i in 0..20_000 {
        payload.push_str(&format!(
            r#"{{"ts":{},"event":"tool.denied","agent_id":"a","session_id":"s{}","tool":"t"}}"#,
            base + i,
            i
        ));
        payload.push('\n');
    }
    s.write_all(payload.as_bytes()).await.unwrap();
    // Stop while records are in flight (once the source has read some);
    // every record it accepted (counted as received) must come out as an
    // alert (one per denial).
    let metrics = daemon.metrics().clone();
    let m = metrics.clone();
    wait_for("the first records read", || {
        metric(
            &m.render(),
            "mcp_alertd_records_received_total{source=\"tcp\"}",
        ) > 0.0
    })
    .await;
    daemon.shutdown().await.unwrap();
    let text = metrics.render();
    let received = metric(&text, "mcp_alertd_records_received_total{source=\"tcp\"}");
    assert!(received > 0.0);
    let denials = out
        .alerts()
        .iter()
        .filter(|a| a["rule"] == "unauthorized_tool_attempt")
        .count();
    // What the grace period did not leave time to deliver stays in the
    // outbox for the next start (DESIGN §10): delivered + pending = accepted;
    // a record cut off by the stop is counted as truncated.
    let store = mcp_alertd::store::Store::open(dir.path()).unwrap();
    let (_, pending, dead) = store.counts().unwrap();
    assert_eq!(dead, 0);
    let truncated = crate::support::metric_opt(
        &text,
        "mcp_alertd_records_rejected_total{source=\"tcp\",reason=\"truncated\"}",
    )
    .unwrap_or(0.0);
    assert!(truncated <= 1.0, "{text}");
    assert_eq!(
        (denials as u64 + pending) as f64 + truncated,
        received,
        "accepted records lost in shutdown"
    );
}

fn write_rules(dir: &Path, threshold: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("burst.toml"),
        format!(
            r#"[[rule]]
id = "burst"
title = "burst"
severity = "high"
kind = "threshold"
match = {{ event = "auth.failure" }}
group_by = ["agent_id"]
window = "1h"
condition = {{ gt = {threshold} }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("denied.toml"),
        r#"[[rule]]
id = "denied"
title = "denied"
severity = "low"
kind = "threshold"
match = { event = "tool.denied" }
group_by = ["session_id"]
condition = { gte = 2 }
"#,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_state_of_unchanged_rules_and_resets_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    write_rules(&rules, 3);
    let cfg = format!("rules_dir = \"{}\"\n{SOURCES}", rules.display());
    let (mut daemon, out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let failure = |i: i64| {
        format!(
            "{{\"ts\":{},\"event\":\"auth.failure\",\"agent_id\":\"x\",\"n\":{i}}}\n",
            base + i * 1000
        )
    };
    let denial = |i: i64| {
        format!(
            "{{\"ts\":{},\"event\":\"tool.denied\",\"agent_id\":\"x\",\"session_id\":\"s\",\"tool\":\"t\",\"n\":{i}}}\n",
            base + i * 1000
        )
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{}{}{}{}", failure(0), failure(1), failure(2), denial(3)).as_bytes())
        .await
        .unwrap();
    let m = daemon.metrics_addr().unwrap();
    wait_for("4 events", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_events_total{type=\"auth.failure\"}",
        ) == 3.0
    })
    .await;

    // `burst` changes (gt 3 -> gt 4: its state starts over); `denied` does not.
    write_rules(&rules, 4);
    let config =
        Config::parse(&format!("state_dir = \"{}\"\n{cfg}", dir.path().display())).unwrap();
    let kept = daemon
        .reload(config.clone(), config.load_rules().unwrap())
        .await
        .unwrap();
    assert_eq!(kept, 1);
    s.write_all(format!("{}{}", failure(4), denial(5)).as_bytes())
        .await
        .unwrap();
    wait_for("the denial alert", || {
        out.alerts().iter().any(|a| a["rule"] == "denied")
    })
    .await;
    // The unchanged rule counted across the reload: 2 denials fired it. The
    // changed one lost its 3 earlier failures: 1 failure is no burst.
    assert!(!out.alerts().iter().any(|a| a["rule"] == "burst"));
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_a_known_client_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::TestCa::new();
    let (server_pem, server_key) = ca.issue("localhost");
    let (client_pem, client_key) = ca.issue("agent-relay");
    // A client with a certificate from another CA.
    let (rogue_pem, rogue_key) = crate::TestCa::new().issue("rogue");

    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = write("ca.pem", ca.pem.clone());
    let cert = write("server.pem", server_pem);
    let key = write("server.key", server_key);
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
[metrics]
address = "127.0.0.1:0"
[[sources]]
name = "tls"
type = "syslog_tcp"
address = "127.0.0.1:0"
tls = {{ cert_file = "{}", key_file = "{}", client_ca_file = "{}" }}
"#,
        cert.display(),
        key.display(),
        ca_pem.display()
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    let addr = daemon.local_addr("tls").unwrap();

    let connector = |cert_pem: String, key_pem: String| {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // The rogue client: the handshake (or the first write) fails.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let rogue_result = async {
        let mut s = connector(rogue_pem, rogue_key)
            .connect(name.clone(), tcp)
            .await?;
        s.write_all(format!("{}\n", scenario("rogue")[0]).as_bytes())
            .await?;
        s.flush().await?;
        s.shutdown().await
    }
    .await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("the rogue client refused", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_connections_refused_total{source=\"tls\"}",
        ) == 1.0
    })
    .await;
    let _ = rogue_result;

    let lines = scenario("mtls");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = connector(client_pem, client_key)
        .connect(name, tcp)
        .await
        .unwrap();
    for l in &lines {
        let msg = format!("<110>1 2026-11-27T10:00:00Z relay mcp - audit - @cee:{l}");
        s.write_all(format!("{} {msg}", msg.len()).as_bytes())
            .await
            .unwrap();
    }
    s.flush().await.unwrap();
    wait_for("alerts over mTLS", || out.alerts().len() >= EXPECTED_ALERTS).await;
    s.shutdown().await.unwrap();
    daemon.shutdown().await.unwrap();
    assert_eq!(
        out.ids(),
        replay_ids(&lines),
        "only the known client's events alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_file_survives_rotation_and_truncation_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = crate::support::file_config(&log);
    let append = |lines: &[String]| crate::support::append(&log, lines);
    let first = scenario("first");
    append(&first[..3]);
    let (daemon, out) = start(&cfg, dir.path()).await;
    append(&first[3..]);
    wait_for("alerts of the first file", || {
        out.alerts().len() >= EXPECTED_ALERTS
    })
    .await;

    // Rotation by rename: the old file gets one more line, then a new file.
    let second = scenario("second");
    std::fs::rename(&log, dir.path().join("audit.jsonl.1")).unwrap();
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("audit.jsonl.1"))
        .unwrap();
    writeln!(old, "{}", second[0]).unwrap();
    drop(old);
    append(&second[1..]);
    wait_for("alerts across rotation", || {
        out.alerts().len() >= 2 * EXPECTED_ALERTS
    })
    .await;
    daemon.shutdown().await.unwrap();
    // The file's position is saved with the engine state it covers.
    let store = mcp_alertd::store::Store::open(dir.path()).unwrap();
    let main = store
        .state(mcp_alertd::store::state::MAIN_UNIT)
        .unwrap()
        .unwrap();
    match mcp_alertd::store::state::decode("main", &main).unwrap() {
        mcp_alertd::store::state::Saved::Engine(u) => {
            assert!(u.files.contains_key("audit"), "{u:?}")
        }
        other => panic!("{other:?}"),
    }
    drop(store);

    // Restart: nothing already read is read again; new lines are.
    let third = scenario("third");
    append(&third);
    let (daemon, out2) = start(&cfg, dir.path()).await;
    wait_for("alerts after restart", || {
        out2.alerts().len() >= EXPECTED_ALERTS
    })
    .await;
    daemon.shutdown().await.unwrap();
    assert_eq!(
        out2.ids(),
        replay_ids(&third),
        "only the new lines after a restart"
    );

    // Truncation: the file is emptied and written again from the start.
    std::fs::write(&log, "").unwrap();
    let (daemon, out3) = start(&cfg, dir.path()).await;
    let fourth = scenario("fourth");
    append(&fourth);
    wait_for("alerts after truncation", || {
        out3.alerts().len() >= EXPECTED_ALERTS
    })
    .await;
    daemon.shutdown().await.unwrap();
    assert_eq!(out3.ids(), replay_ids(&fourth));
    let mut want = replay_ids(&first);
    want.extend(replay_ids(&second));
    want.sort();
    assert_eq!(out.ids(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_serve_what_operators_need() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out) = start(SOURCES, dir.path()).await;
    let addr = daemon.local_addr("tcp").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for l in scenario("m") {
        s.write_all(format!("{l}\n").as_bytes()).await.unwrap();
    }
    s.shutdown().await.unwrap();
    wait_for("alerts", || out.alerts().len() >= EXPECTED_ALERTS).await;
    let m = daemon.metrics_addr().unwrap();
    let mut text = String::new();
    // The quantiles are set one after another, 0.999 last: a scrape in
    // between sees only the first ones.
    wait_for("latency exported", || {
        text = scrape_blocking(m);
        text.contains("mcp_alertd_ingest_to_alert_latency_seconds{quantile=\"0.999\"}")
    })
    .await;
    for want in [
        "mcp_alertd_records_received_total{source=\"tcp\"} 11",
        "mcp_alertd_events_total{type=\"auth.failure\"} 5",
        "mcp_alertd_alerts_total{rule=\"session_injection_incident\",severity=\"critical\"} 1",
        "mcp_alertd_live_keys{rule=\"auth_failure_burst\"} 1",
        "mcp_alertd_udp_datagrams_dropped_total{source=\"udp\"} 0",
        "mcp_alertd_ingest_to_alert_latency_seconds{quantile=\"0.5\"}",
        "mcp_alertd_ingest_to_alert_latency_seconds{quantile=\"0.999\"}",
        "mcp_alertd_engine_lag_seconds",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    for (path, want) in [("/healthz", "200 OK"), ("/readyz", "200 OK")] {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect(m).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).unwrap();
        assert!(body.contains(want), "{path}: {body}");
    }
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_the_example_log_as_a_backlog_gives_the_same_alerts_as_replay() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/audit.jsonl");
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
max_future_skew = "3650d"
[metrics]
enabled = false
[[sources]]
name = "backlog"
type = "file"
path = "{}"
"#,
        example.display()
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    let mut replayed = Vec::new();
    replay(
        &[Input::File(example)],
        Arc::new(RuleSet::embedded().unwrap()),
        &ReplayOptions::default(),
        &mut replayed,
    )
    .unwrap();
    let want: Vec<Value> = String::from_utf8(replayed)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(want.len() > 10);
    wait_for("the backlog's alerts", || out.alerts().len() >= want.len()).await;
    daemon.shutdown().await.unwrap();
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("detected_at");
        for e in v["events"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("position");
        }
        v
    };
    let got: Vec<Value> = out.alerts().iter().map(strip).collect();
    let want: Vec<Value> = want.iter().map(strip).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_the_future_are_rejected_and_ipv6_listeners_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"[engine]
idle_after = "1h"
[metrics]
address = "[::1]:0"
[[sources]]
name = "tcp6"
type = "syslog_tcp"
address = "[::1]:0"
[[sources]]
name = "udp6"
type = "syslog_udp"
address = "[::1]:0"
"#;
    let (daemon, out) = start(cfg, dir.path()).await;
    let addr = daemon.local_addr("tcp6").unwrap();
    assert!(addr.is_ipv6());
    let future = jiff::Timestamp::now().as_millisecond() + 3_600_000;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{{\"ts\":{future},\"event\":\"tool.denied\",\"agent_id\":\"a\",\"session_id\":\"s\",\"tool\":\"t\"}}\n").as_bytes()).await.unwrap();
    let lines = scenario("v6");
    for l in &lines {
        s.write_all(format!("{l}\n").as_bytes()).await.unwrap();
    }
    s.shutdown().await.unwrap();
    // The TCP alerts first, then the datagram (a repeat of the first
    // event, which raises nothing new): sent earlier, it could reach the
    // engine between the TCP records and change which event fires.
    wait_for("alerts over IPv6", || out.alerts().len() >= EXPECTED_ALERTS).await;
    send_udp(daemon.local_addr("udp6").unwrap(), &lines[..1]).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("the UDP datagram", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_records_received_total{source=\"udp6\"}",
        ) == 1.0
    })
    .await;
    let text = scrape_blocking(m);
    assert_eq!(
        metric(
            &text,
            "mcp_alertd_records_rejected_total{source=\"tcp6\",reason=\"future_timestamp\"}"
        ),
        1.0,
        "{text}"
    );
    daemon.shutdown().await.unwrap();
    assert_eq!(out.ids(), replay_ids(&lines));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_fire_while_nothing_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"[engine]
idle_after = "200ms"
allowed_lateness = "0s"
[metrics]
enabled = false
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
"#;
    let (daemon, out) = start(cfg, dir.path()).await;
    let now = jiff::Timestamp::now().as_millisecond();
    let mut s = tokio::net::TcpStream::connect(daemon.local_addr("tcp").unwrap())
        .await
        .unwrap();
    s.write_all(
        format!("{{\"ts\":{now},\"event\":\"session.start\",\"agent_id\":\"a\",\"session_id\":\"quiet\",\"expected_runtime_s\":1}}\n").as_bytes(),
    )
    .await
    .unwrap();
    // No more records: once the partition is idle the wall clock moves the
    // engine clock past the 1 s deadline.
    wait_for("the overrun alert", || {
        out.alerts().iter().any(|a| a["rule"] == "session_overrun")
    })
    .await;
    let alert = &out.alerts()[0];
    assert_eq!(alert["key"]["session_id"], "quiet");
    assert_eq!(alert["count"], 1);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_held_back_by_a_route_are_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{SOURCES}\n[[routes]]\nsinks = [\"stdout\"]\nrepeat_interval = \"1h\"\n");
    let (daemon, out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("repeats")).await;
    let m = daemon.metrics_addr().unwrap();
    // Every alert the engine raised is either delivered or held back.
    let held = |text: &str| metric(text, "mcp_alertd_alerts_suppressed_total");
    wait_for("every alert delivered or held back", || {
        held(&scrape_blocking(m)) as usize + out.alerts().len() == EXPECTED_ALERTS
    })
    .await;
    // The six denials of one session repeat one rule and key.
    assert!(held(&scrape_blocking(m)) >= 1.0);
    assert_eq!(
        metric(&scrape_blocking(m), "mcp_alertd_alerts_grouped_total"),
        0.0
    );
    daemon.shutdown().await.unwrap();
}
