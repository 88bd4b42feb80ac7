//! Scaffolding shared by the integration tests: the in-process daemon and
//! its captured output, the daemon as a child process, waits, loopback
//! connections, metric scrapes, a scriptable webhook receiver, and the
//! events and configurations the tests share. Test modules import from here, never from each other.

pub mod daemon;
pub mod proc;
pub mod saved;
pub mod webhook;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_alertd::engine::RuleSet;
use mcp_alertd::replay::{Input, ReplayOptions, replay};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

pub use daemon::{Capture, start};
pub use proc::Proc;

/// How often waits poll, and how many times: 20 ms × 3000 = 60 s, far
/// beyond what a busy machine needs (nothing asserts on timing).
const POLL: Duration = Duration::from_millis(20);
const POLLS: usize = 3000;

/// The daemon's self-monitoring alerts would add to the alerts of tests of
/// other things (their events are hours old, so the engine clock lags the
/// wall clock while they arrive): they are off unless a test's
/// configuration has a `[self_monitoring]` section of its own.
pub fn with_self_monitoring_off(config: &str) -> String {
    if config.contains("[self_monitoring]") {
        return config.to_owned();
    }
    format!(
        "{config}\n[self_monitoring]\nsource_silent = false\ndelivery_dead_letter = false\nstore_unavailable = false\nclock_stalled = false\n"
    )
}

/// The `i`-th of a run of denials that each raise one alert: agent `a<i>`
/// in session `s<i>`, dated `base + i` (epoch ms).
pub fn denial(base: i64, i: i64) -> String {
    format!(
        r#"{{"ts":{},"event":"tool.denied","agent_id":"a{i}","session_id":"s{i}","tool":"t"}}"#,
        base + i
    )
}

/// Polls `cond` until it holds (async tests).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..POLLS {
        if cond() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting for {what}");
}

/// Polls `cond` until it holds (tests without a runtime).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..POLLS {
        if cond() {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("timed out waiting for {what}");
}

/// Metrics and one TCP source named `tcp`, on loopback ports the kernel
/// picks; keys that follow belong to the source.
pub const TCP: &str = r#"
[metrics]
address = "127.0.0.1:0"
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
"#;

pub const SOURCES: &str = r#"
[engine]
idle_after = "1h"           # tests drive the clock with event time only

[metrics]
address = "127.0.0.1:0"

[[sources]]
name = "udp"
type = "syslog_udp"
address = "127.0.0.1:0"

[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
idle_timeout = "2s"
"#;

/// Events an hour old (well within max_future_skew) that raise threshold
/// and match alerts: 5 failures of one agent, 6 denials in one session.
pub fn scenario(tag: &str) -> Vec<String> {
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let mut lines = Vec::new();
    for i in 0..5 {
        lines.push(format!(
            r#"{{"ts":{},"event":"auth.failure","tenant":"{tag}","agent_id":"intruder","reason":"invalid_token","n":{i}}}"#,
            base + i * 1000
        ));
    }
    for i in 0..6 {
        lines.push(format!(
            r#"{{"ts":{},"event":"tool.denied","tenant":"{tag}","agent_id":"bot","session_id":"s1","tool":"shell_exec","reason":"not_in_allowlist","n":{i}}}"#,
            base + 10_000 + i * 1000
        ));
    }
    lines
}

/// Alert ids that `replay` gives for the same events.
pub fn replay_ids(lines: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut out = Vec::new();
    replay(
        &[Input::File(path)],
        Arc::new(RuleSet::embedded().unwrap()),
        &ReplayOptions::default(),
        &mut out,
    )
    .unwrap();
    let alerts: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    sorted_ids(&alerts)
}

/// The ids of alerts (JSON), sorted.
pub fn sorted_ids(alerts: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = alerts
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// A loopback port free a moment ago, for the few tools that take no port
/// 0 (aiosmtpd, systemd-socket-activate): their callers retry with another
/// one when a test running beside them took it first.
pub fn port_to_try() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends lines over one TCP connection (newline framing) and closes it.
pub async fn send_tcp(addr: SocketAddr, lines: &[String]) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for l in lines {
        s.write_all(format!("{l}\n").as_bytes()).await.unwrap();
    }
    s.shutdown().await.unwrap();
}

/// Sends each message as one UDP datagram from one socket.
pub async fn send_udp(addr: SocketAddr, messages: &[String]) {
    let bind = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.unwrap();
    for m in messages {
        sock.send_to(m.as_bytes(), addr).await.unwrap();
    }
}

/// The value of one sample line of a scrape (`name{labels}`); fails the
/// test when the sample is not there (a renamed or never exported metric
/// must not read as 0).
pub fn metric(text: &str, sample: &str) -> f64 {
    metric_opt(text, sample)
        .unwrap_or_else(|| panic!("no sample `{sample}` in the scrape:\n{text}"))
}

/// The value of one sample line of a scrape, `None` when absent.
pub fn metric_opt(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// `GET /metrics` over a blocking socket (for tests without a runtime).
pub fn scrape_blocking(addr: SocketAddr) -> String {
    get_blocking(addr, "/metrics")
}

/// The whole HTTP/1.1 response (status line, headers, body) to a GET.
pub fn get_blocking(addr: SocketAddr, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

pub fn file_config(log: &Path) -> String {
    format!(
        r#"[engine]
idle_after = "1h"
[metrics]
enabled = false
[[sources]]
name = "audit"
type = "file"
path = "{}"
poll_interval = "20ms"
"#,
        log.display()
    )
}

pub fn append(log: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// Checks the examples of a document: each `<!-- example: NAME -->` line is
/// followed by a fenced block that must equal `want`'s text for NAME. With
/// `MCP_ALERTD_BLESS=1` the blocks are rewritten instead (after a change
/// to a renderer, then reviewed in the diff).
pub fn doc_examples(path: &Path, want: &[(&str, String)]) {
    let doc = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = doc.lines().peekable();
    let mut seen = Vec::new();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().expect("a fenced block after the marker");
        assert!(fence.starts_with("```"), "{name}: {fence}");
        let mut body = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        let (_, text) = want
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{}: no expected text for example {name}", path.display()));
        if std::env::var_os("MCP_ALERTD_BLESS").is_none() {
            assert_eq!(
                body.trim_end(),
                text.trim_end(),
                "{}: example {name} is stale (MCP_ALERTD_BLESS=1 rewrites it)",
                path.display()
            );
        }
        out.push_str(fence);
        out.push('\n');
        out.push_str(text.trim_end());
        out.push_str("\n```\n");
        seen.push(name.to_owned());
    }
    for (name, _) in want {
        assert!(
            seen.iter().any(|s| s == name),
            "{}: example {name} is missing",
            path.display()
        );
    }
    if std::env::var_os("MCP_ALERTD_BLESS").is_some() {
        std::fs::write(path, out).unwrap();
    }
}

/// What `mcp-alertd outbox list` prints for a state directory.
pub fn outbox_list(state: &Path) -> String {
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["outbox", "list", "--state-dir"])
        .arg(state)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}
