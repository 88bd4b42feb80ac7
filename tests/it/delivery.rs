//! Alert delivery through the durable outbox to real receivers: a webhook
//! server (signatures, retries, permanent failures, an outage), a SIEM
//! syslog receiver (RFC 5424 + CEF), an SMTP server, and a rate-limited
//! storm. Waits are bounded polls; nothing asserts on timing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use base64::Engine as _;
use mcp_alertd::sink::webhook_signature;
use serde_json::Value;

use crate::support::webhook::{Hook, webhook_server};
use crate::support::{metric, replay_ids, scenario, scrape_blocking, send_tcp, start, wait_for};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook_config(dir: &Path, url: &str) -> String {
    let key = dir.join("webhook.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    format!(
        r#"[engine]
idle_after = "1h"
[metrics]
address = "127.0.0.1:0"
[outbox]
retry_initial = "20ms"
retry_max = "100ms"
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
[[sinks]]
name = "hook"
type = "webhook"
url = "{url}"
headers = {{ "X-Env" = "test" }}
signing_key_file = "{}"
timeout = "2s"
"#,
        key.display()
    )
}

const ALERTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_are_signed_and_retried_and_permanent_failures_go_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook = Hook::default();
    // The first alert's first two attempts fail (503), then 400 for one.
    *hook.script.lock().unwrap() = vec![503, 503, 400];
    tokio::spawn(webhook_server(hook.clone(), listener));
    let (daemon, _out) = start(&webhook_config(dir.path(), &url), dir.path()).await;
    let lines = scenario("hook");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("deliveries and one dead letter", || {
        let t = scrape_blocking(m);
        metric(&t, "mcp_alertd_alerts_sent_total{sink=\"hook\"}") == (ALERTS - 1) as f64
            && metric(&t, "mcp_alertd_alerts_dead_total{sink=\"hook\"}") == 1.0
    })
    .await;
    let text = scrape_blocking(m);
    assert_eq!(
        metric(&text, "mcp_alertd_alert_send_errors_total{sink=\"hook\"}"),
        3.0
    );
    daemon.shutdown().await.unwrap();

    let key = mcp_alertd::sink::decode_webhook_key(KEY).unwrap();
    let wrong =
        mcp_alertd::sink::decode_webhook_key("whsec_c2VjcmV0LW9mLXNvbWVib2R5LWVsc2U=").unwrap();
    let got = hook.got.lock().unwrap().clone();
    assert_eq!(got.len(), ALERTS - 1);
    for (headers, body) in &got {
        let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
        let id = h("webhook-id");
        let ts: i64 = h("webhook-timestamp").parse().unwrap();
        let alert: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(alert["id"], id);
        assert_eq!(h("x-env"), "test");
        assert_eq!(
            h("webhook-signature"),
            webhook_signature(&key, &id, ts, body)
        );
        assert_ne!(
            h("webhook-signature"),
            webhook_signature(&wrong, &id, ts, body)
        );
        assert_ne!(
            h("webhook-signature"),
            webhook_signature(&key, &id, ts + 1, body),
            "the timestamp is signed"
        );
    }
    // The dead letter is listed by the CLI with its error.
    let text = crate::support::outbox_list(dir.path());
    assert!(text.contains("dead") && text.contains("HTTP 400"), "{text}");
    let mut all = hook.ids();
    all.extend(
        text.lines()
            .filter(|l| l.contains("dead"))
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned)),
    );
    all.sort();
    assert_eq!(all, replay_ids(&lines));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_webhook_delays_but_never_loses_or_duplicates_alerts() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port with nothing listening on it yet.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let (daemon, _out) = start(
        &webhook_config(dir.path(), &format!("http://{addr}/hook")),
        dir.path(),
    )
    .await;
    let lines = scenario("outage");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("failed attempts while down", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_alert_send_errors_total{sink=\"hook\"}",
        ) >= 2.0 * ALERTS as f64
    })
    .await;
    let hook = Hook::default();
    tokio::spawn(webhook_server(
        hook.clone(),
        tokio::net::TcpListener::bind(addr).await.unwrap(),
    ));
    wait_for("every alert delivered", || hook.ids().len() >= ALERTS).await;
    daemon.shutdown().await.unwrap();
    assert_eq!(hook.ids(), replay_ids(&lines), "each alert exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_alert_is_never_delivered_twice_to_a_sink() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook = Hook::default();
    tokio::spawn(webhook_server(hook.clone(), listener));
    let (daemon, _out) = start(&webhook_config(dir.path(), &url), dir.path()).await;
    let lines = scenario("dup");
    // The same events twice (a replayed log): the same alert ids.
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    wait_for("first delivery", || hook.ids().len() >= ALERTS).await;
    daemon.shutdown().await.unwrap();
    // And again after a restart: the delivered ids are remembered.
    let (daemon, _out) = start(&webhook_config(dir.path(), &url), dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("the events processed", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_events_total{type=\"tool.denied\"}",
        ) == 6.0
    })
    .await;
    daemon.shutdown().await.unwrap();
    assert_eq!(hook.ids(), replay_ids(&lines));
}

/// Splits an octet-counted stream into messages.
fn octet_frames(mut data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
        out.push(String::from_utf8(data[sp + 1..sp + 1 + len].to_vec()).unwrap());
        data = &data[sp + 1 + len..];
    }
    out
}

/// A CEF:0 parser: 7 header fields split on unescaped `|`, then
/// `key=value` extensions with `\=`, `\\` and `\n` escapes.
pub fn parse_cef(s: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while fields.len() < 7 {
        match chars.next() {
            Some('\\') => cur.push(chars.next().unwrap()),
            Some('|') => fields.push(std::mem::take(&mut cur)),
            Some(c) => cur.push(c),
            None => panic!("short CEF header: {s}"),
        }
    }
    let rest: String = chars.collect();
    // Extension keys are [A-Za-z0-9]+ followed by an unescaped '='.
    let mut ext = BTreeMap::new();
    let mut key = String::new();
    let mut val = String::new();
    let mut in_val = false;
    let bytes: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if !in_val {
            if c == '=' {
                in_val = true;
            } else if c != ' ' {
                key.push(c);
            }
            i += 1;
            continue;
        }
        if c == '\\' {
            let n = bytes[i + 1];
            val.push(match n {
                'n' => '\n',
                'r' => '\r',
                other => other,
            });
            i += 2;
            continue;
        }
        // A space followed by `key=` starts the next pair.
        if c == ' ' {
            let next: String = bytes[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if !next.is_empty() && bytes.get(i + 1 + next.len()) == Some(&'=') {
                ext.insert(std::mem::take(&mut key), std::mem::take(&mut val));
                in_val = false;
                i += 1;
                continue;
            }
        }
        val.push(c);
        i += 1;
    }
    ext.insert(key, val);
    (fields, ext)
}

/// The examples' burst alert of `acme-coder`.
fn burst_alert() -> mcp_alertd::alert::Alert {
    serde_json::from_str(
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/examples.alerts.jsonl"),
        )
        .unwrap()
        .lines()
        .find(|l| l.contains(r#""rule":"auth_failure_burst""#) && l.contains("acme-coder"))
        .unwrap(),
    )
    .unwrap()
}

#[test]
fn cef_escapes_header_and_extension_values() {
    let mut alert = burst_alert();
    alert.title = "pipe | back\\slash".to_owned();
    alert.summary = "a=b c\\d\nnext line | pipe".to_owned();
    alert.tenant = "t=1".to_owned();
    let cef = mcp_alertd::alert::format::cef::render(&alert, "1.0");
    assert!(!cef.contains('\n'));
    let (header, ext) = parse_cef(&cef);
    assert_eq!(header[0], "CEF:0");
    assert_eq!(header[4], "auth_failure_burst");
    assert_eq!(header[5], "pipe | back\\slash");
    assert_eq!(header[6], "8");
    assert_eq!(ext["msg"], "a=b c\\d\nnext line | pipe");
    assert_eq!(ext["cs1"], "t=1");
    assert_eq!(ext["suser"], "acme-coder");
    assert_eq!(ext["externalId"], alert.id);
}

#[test]
fn a_value_with_line_breaks_cannot_forge_lines_in_mail_or_siem_output() {
    let mut alert = burst_alert();
    alert
        .key
        .insert("agent_id".to_owned(), "bob\r\nAlert id: forged".to_owned());
    alert.tenant = "acme\u{2028}Rule: forged".to_owned();
    alert.summary = "two\nlines".to_owned();
    alert.events[0].reason = Some("bad\rTo: victim@example.com".to_owned());
    let body = mcp_alertd::sink::email::body(&alert);
    let lines: Vec<&str> = body.lines().collect();
    assert!(!body.contains(['\r', '\u{2028}']), "{body}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("Alert id:")).count(),
        1,
        "{body}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("Rule: forged")),
        "{body}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("To:")), "{body}");
    assert!(body.contains("bob  Alert id: forged"), "{body}");
    let subject = mcp_alertd::sink::email::subject(&alert);
    assert!(!subject.contains(['\r', '\n', '\u{2028}']), "{subject}");
    let leef = mcp_alertd::alert::format::leef::render(&alert, '\t');
    assert!(!leef.contains(['\r', '\n', '\u{2028}']), "{leef}");
    let cef = mcp_alertd::alert::format::cef::render(&alert, "1.0");
    assert!(!cef.contains(['\r', '\n', '\u{2028}']), "{cef}");
    let framed = mcp_alertd::sink::syslog::render(&alert, cef.as_bytes(), 1, "host");
    let framed = String::from_utf8(framed).unwrap();
    assert!(!framed.contains(['\r', '\n', '\u{2028}']), "{framed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siem_receives_rfc5424_with_structured_data_and_cef() {
    let dir = tempfile::tempdir().unwrap();
    let siem = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let siem_addr = siem.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let (mut s, _) = siem.accept().await.unwrap();
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
[metrics]
enabled = false
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
[[sinks]]
name = "siem"
type = "syslog"
address = "{siem_addr}"
protocol = "tcp"
message = "cef"
[[sinks]]
name = "stdout"
type = "stdout"
[[routes]]
severities = ["critical"]
sinks = ["siem"]
continue = true
[[routes]]
sinks = ["stdout"]
"#
    );
    let (daemon, out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("siem")).await;
    wait_for("stdout alerts", || out.alerts().len() >= ALERTS).await;
    // Only the critical alert is routed to the SIEM (and also to stdout).
    wait_for("the critical alert at the SIEM", || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    daemon.shutdown().await.unwrap();
    let frames = octet_frames(&received.lock().unwrap());
    assert_eq!(frames.len(), 1, "{frames:?}");
    let msg = &frames[0];
    // <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG; facility 13, crit (2).
    assert!(msg.starts_with("<106>1 "), "{msg}");
    let parsed = syslog_loose::parse_message(msg, syslog_loose::Variant::RFC5424);
    assert_eq!(parsed.appname, Some("mcp-alertd"));
    assert_eq!(parsed.msgid, Some("alert"));
    let sd = &parsed.structured_data[0];
    assert_eq!(sd.id, "mcp-alertd@32473");
    let params: BTreeMap<String, String> = sd
        .params()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(params["rule"], "session_injection_incident");
    assert_eq!(params["severity"], "critical");
    assert_eq!(params["tenant"], "siem");
    let (header, ext) = parse_cef(parsed.msg);
    assert_eq!(header[4], "session_injection_incident");
    assert_eq!(header[6], "10");
    assert_eq!(ext["cs2"], "s1");
    assert_eq!(out.alerts().len(), ALERTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_100k_alerts_is_rate_limited_without_loss_and_the_outbox_stays_bounded() {
    let n = 100_000;
    let storm = storm(n, 20_000, 100, 2000).await;
    assert_eq!(storm.unique, n, "every alert once");
    assert_eq!(storm.ids, n, "no duplicates");
    // Bounded: the engine waited for room instead of growing the outbox.
    assert!(
        storm.max_pending <= 2000.0,
        "outbox grew to {}",
        storm.max_pending
    );
    // The rate limit, counted: no second of arrivals holds more than the
    // rate plus the burst.
    assert!(
        storm.most <= 20_000 + 100,
        "{} deliveries within one second",
        storm.most
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_the_sink_could_outrun_holds_deliveries_to_the_rate_plus_the_burst() {
    // 50/s with a burst of 5: any build delivers 200 alerts to a loopback
    // receiver in well under a second, so without the limiter one second
    // of arrivals would hold far more than 55.
    let n = 200;
    let storm = storm(n, 50, 5, 1000).await;
    assert_eq!(storm.unique, n, "every alert once");
    assert_eq!(storm.ids, n, "no duplicates");
    // Sends are sequential, so arrivals can only spread out; a few more in
    // a window allow for uneven request latency.
    assert!(
        storm.most <= 50 + 5 + 5,
        "{} deliveries within one second",
        storm.most
    );
}

/// What a storm of `n` alerts through a rate-limited webhook gave.
struct Storm {
    ids: usize,
    unique: usize,
    max_pending: f64,
    /// The most arrivals within any one second.
    most: usize,
}

async fn storm(n: usize, rate: u32, burst: u32, max_pending: u32) -> Storm {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook = Hook::default();
    tokio::spawn(webhook_server(hook.clone(), listener));
    let mut cfg = webhook_config(dir.path(), &url);
    cfg = cfg.replace(
        "[outbox]\n",
        // A storm drains faster with one acknowledgement commit per due
        // batch (what a crash may repeat does not matter here).
        &format!("[outbox]\nmax_pending = {max_pending}\nack_window = 512\n"),
    );
    cfg.push_str(&format!("rate_limit = {rate}\nburst = {burst}\n"));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let lines: Vec<String> = (0..n as i64)
        .map(|i| crate::support::denial(base, i))
        .collect();
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    let mut most_pending = 0.0f64;
    // A longer bound than other waits: 100k deliveries in a debug build.
    for _ in 0..3000 {
        let t = scrape_blocking(m);
        most_pending = most_pending.max(metric(&t, "mcp_alertd_outbox_pending_deliveries"));
        if hook.got.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    daemon.shutdown().await.unwrap();
    let ids = hook.ids();
    let mut unique = ids.clone();
    unique.dedup();
    let arrivals = hook.arrivals.lock().unwrap().clone();
    let mut most = 0;
    let mut j = 0;
    for (i, t) in arrivals.iter().enumerate() {
        // Two pointers: arrivals are in order, so the window only slides.
        while j < arrivals.len()
            && arrivals[j].duration_since(*t) < std::time::Duration::from_secs(1)
        {
            j += 1;
        }
        most = most.max(j - i);
    }
    Storm {
        ids: ids.len(),
        unique: unique.len(),
        max_pending: most_pending,
        most,
    }
}

#[test]
fn invalid_sinks_and_routes_are_reported_together() {
    let text = r#"
[[sinks]]
name = "mail"
type = "email"
host = "smtp.example.com"
tls = "none"
from = "alerts@example.com"
to = []
url = "https://nope"
[[sinks]]
name = "hook"
type = "webhook"
url = "ftp://x"
signing_key_file = "/a"
signing_key_credential = "b"
[[sinks]]
name = "hook"
type = "pager"
[[routes]]
severities = ["urgent"]
sinks = ["nowhere"]
[routing]
default = ["ghost"]
"#;
    let errors = mcp_alertd::config::Config::parse(text)
        .unwrap_err()
        .join("\n");
    for want in [
        "`to` is required for type `email`",
        "`tls = \"none\"` is allowed only for a loopback SMTP host",
        "`url` does not apply to type `email`",
        "`url` must be http:// or https://",
        "give `_file` or `_credential`, not both",
        "unknown type `pager`",
        "unknown severity `urgent`",
        "unknown sink `nowhere`",
        "routing.default: unknown sink `ghost`",
    ] {
        assert!(errors.contains(want), "missing {want:?} in\n{errors}");
    }
}

#[test]
fn standard_webhooks_reference_implementation_verifies_our_signature() {
    // The receivers' own library (PyPI `standardwebhooks`) must accept our
    // signature, and reject it for another key.
    let python = ["python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        assert!(
            std::env::var_os("CI").is_none(),
            "standardwebhooks must be installed in CI (scripts/test.sh installs it)"
        );
        eprintln!("skipping: python package standardwebhooks is not installed");
        return;
    };
    let key = mcp_alertd::sink::decode_webhook_key(KEY).unwrap();
    let body = br#"{"id":"8d1c2a49-1e50-8a1b-9f3e-0123456789ab","rule":"auth_failure_burst"}"#;
    let id = "8d1c2a49-1e50-8a1b-9f3e-0123456789ab";
    let ts = jiff::Timestamp::now().as_second();
    let sig = webhook_signature(&key, id, ts, body);
    let script = r#"
import sys
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, sig, body = sys.argv[1:6]
headers = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig}
try:
    Webhook(secret).verify(body, headers)
    print("verified")
except Exception as e:
    print("rejected", e)
"#;
    let run = |secret: &str| {
        let out = std::process::Command::new(python)
            .args([
                "-c",
                script,
                secret,
                id,
                &ts.to_string(),
                &sig,
                std::str::from_utf8(body).unwrap(),
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(KEY).trim(), "verified");
    let other = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"another key entirely")
    );
    assert!(run(&other).starts_with("rejected"));
}

/// A real SMTP server (aiosmtpd, from Debian's python3-aiosmtpd) writing
/// what it receives to a maildir; `tls` = (cert, key) enables STARTTLS.
struct Smtp {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

impl Smtp {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Option<Smtp> {
        let mut args: Vec<String> = Vec::new();
        if let Some((cert, key)) = tls {
            args.extend([
                "--starttls".to_owned(),
                cert.display().to_string(),
                key.display().to_string(),
            ]);
        }
        Smtp::start_with(dir, &args)
    }

    /// Starts tests/data/smtp_server.py with extra flags (--starttls,
    /// --smtps, --auth; see the script).
    fn start_with(dir: &Path, args: &[String]) -> Option<Smtp> {
        let python = "/usr/bin/python3";
        let ok = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3-aiosmtpd must be installed in CI (scripts/test.sh installs it)"
            );
            eprintln!("skipping: python3-aiosmtpd is not installed");
            return None;
        }
        let maildir = dir.join("maildir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/smtp_server.py");
        // aiosmtpd takes no port 0: a port is picked and, should another
        // test take it first (the server then exits before "ready"),
        // another one.
        for _ in 0..20 {
            let port = crate::support::port_to_try();
            let mut child = std::process::Command::new(python)
                .arg(&script)
                .arg(port.to_string())
                .arg(&maildir)
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let stdout = child.stdout.take().unwrap();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            // Owned at once, so that Drop reaps the child on every path.
            let smtp = Smtp {
                child,
                port,
                maildir: maildir.clone(),
            };
            if line.trim() == "ready" {
                return Some(smtp);
            }
        }
        panic!("aiosmtpd did not start");
    }

    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn email_config(host: &str, port: u16, tls: &str, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|c| format!("ca_file = \"{}\"\n", c.display()))
        .unwrap_or_default();
    format!(
        r#"[engine]
idle_after = "1h"
[metrics]
enabled = false
[outbox]
retry_initial = "50ms"
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
[[sinks]]
name = "mail"
type = "email"
host = "{host}"
port = {port}
tls = "{tls}"
from = "mcp-alertd <alerts@example.com>"
to = ["secops@example.com", "oncall@example.com"]
{ca}
[[routes]]
severities = ["critical"]
sinks = ["mail"]
[routing]
default = []
"#
    )
}

/// Decodes a quoted-printable body (soft line breaks and `=XX`).
fn unquote(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn check_incident_mail(messages: &[String]) {
    assert_eq!(
        messages.len(),
        1,
        "only the critical alert is mailed: {messages:?}"
    );
    let m = &unquote(&messages[0]);
    let unfolded = m.replace("\r\n ", " ").replace("\n ", " ");
    assert!(
        unfolded.contains("Subject: [CRITICAL] session_injection_incident session_id=s1 (mail)"),
        "{m}"
    );
    assert!(m.contains("From: mcp-alertd <alerts@example.com>"), "{m}");
    assert!(
        m.contains("secops@example.com") && m.contains("oncall@example.com"),
        "{m}"
    );
    for want in [
        "Repeated denied tool calls",
        "Tenant:    mail",
        "session_id: s1",
        "Count:     5",
        "tool=shell_exec",
        "What to check next:",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reaches_a_real_smtp_server_in_plain_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let Some(smtp) = Smtp::start(dir.path(), None) else {
        return;
    };
    let (daemon, _out) = start(
        &email_config("127.0.0.1", smtp.port, "none", None),
        dir.path(),
    )
    .await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("mail")).await;
    wait_for("the mail", || !smtp.messages().is_empty()).await;
    daemon.shutdown().await.unwrap();
    check_incident_mail(&smtp.messages());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_verifies_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::TestCa::new();
    let (cert, key) = ca.issue("localhost");
    let cert_path = dir.path().join("smtp.pem");
    let key_path = dir.path().join("smtp.key");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let Some(smtp) = Smtp::start(dir.path(), Some((&cert_path, &key_path))) else {
        return;
    };
    let (daemon, _out) = start(
        &email_config("localhost", smtp.port, "starttls", Some(&ca_path)),
        dir.path(),
    )
    .await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("mail")).await;
    wait_for("the mail over STARTTLS", || !smtp.messages().is_empty()).await;
    daemon.shutdown().await.unwrap();
    check_incident_mail(&smtp.messages());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_retried_and_purged_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/hook");
    let hook = Hook::default();
    // Every delivery is refused for good at first: all become dead letters.
    *hook.script.lock().unwrap() = vec![400; ALERTS];
    tokio::spawn(webhook_server(hook.clone(), listener));
    let (daemon, _out) = start(&webhook_config(dir.path(), &url), dir.path()).await;
    let lines = scenario("cli");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("dead letters", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_alerts_dead_total{sink=\"hook\"}",
        ) == ALERTS as f64
    })
    .await;
    daemon.shutdown().await.unwrap();
    let cli = |args: &[&str]| {
        let out = assert_cmd::Command::cargo_bin("mcp-alertd")
            .unwrap()
            .arg("outbox")
            .args(["--state-dir"])
            .arg(dir.path())
            .args(args)
            .assert()
            .success()
            .get_output()
            .clone();
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["list", "--json"]);
    let rows: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), ALERTS);
    assert!(rows.iter().all(|r| r["state"] == "dead"
        && r["sink"] == "hook"
        && r["error"].as_str().unwrap().contains("400")));
    // Purge one, retry the rest: the next start delivers them.
    let one = rows[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(cli(&["purge", &one]).trim(), "1 entries deleted");
    assert_eq!(
        cli(&["retry", "--sink", "hook"]).trim(),
        format!("{} dead letters moved back to pending", ALERTS - 1)
    );
    let (daemon, _out) = start(&webhook_config(dir.path(), &url), dir.path()).await;
    wait_for("the retried alerts", || hook.ids().len() >= ALERTS - 1).await;
    daemon.shutdown().await.unwrap();
    let mut want = replay_ids(&lines);
    want.retain(|id| *id != one);
    assert_eq!(hook.ids(), want);
    assert!(cli(&["list"]).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_reopens_its_file_on_reload_for_logrotate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.jsonl");
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
[metrics]
enabled = false
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
[[sinks]]
name = "archive"
type = "file"
path = "{}"
"#,
        path.display()
    );
    let (mut daemon, _out) = start(&cfg, dir.path()).await;
    let count = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("before")).await;
    wait_for("alerts in the file", || count(&path) >= ALERTS).await;
    // logrotate: move the file away, then SIGHUP (here: reload).
    let rotated = dir.path().join("alerts.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    let config = mcp_alertd::config::Config::parse(&format!(
        "state_dir = \"{}\"\n{cfg}",
        dir.path().display()
    ))
    .unwrap();
    let rules = config.load_rules().unwrap();
    daemon.reload(config, rules).await.unwrap();
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("after")).await;
    wait_for("alerts in the new file", || count(&path) >= ALERTS).await;
    daemon.shutdown().await.unwrap();
    assert_eq!(count(&rotated), ALERTS);
    assert_eq!(count(&path), ALERTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_refuses_an_unknown_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::TestCa::new().issue("localhost");
    let cert_path = dir.path().join("smtp.pem");
    let key_path = dir.path().join("smtp.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let Some(smtp) = Smtp::start(dir.path(), Some((&cert_path, &key_path))) else {
        return;
    };
    // No ca_file: the test CA is not trusted, so nothing may be sent.
    let cfg = email_config("localhost", smtp.port, "starttls", None).replace(
        "[metrics]\nenabled = false",
        "[metrics]\naddress = \"127.0.0.1:0\"",
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("mail")).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("failed attempts", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_alert_send_errors_total{sink=\"mail\"}",
        ) >= 2.0
    })
    .await;
    daemon.shutdown().await.unwrap();
    assert!(smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_turns_retries_into_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook = Hook::default();
    *hook.script.lock().unwrap() = vec![503; 10_000];
    tokio::spawn(webhook_server(hook.clone(), listener));
    let cfg = webhook_config(dir.path(), &url).replace(
        "retry_max = \"100ms\"",
        "retry_max = \"100ms\"\nmax_age = \"1s\"",
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("aged")).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("every alert aged out", || {
        metric(
            &scrape_blocking(m),
            "mcp_alertd_alerts_dead_total{sink=\"hook\"}",
        ) == ALERTS as f64
    })
    .await;
    daemon.shutdown().await.unwrap();
    let rows = list_json(dir.path());
    assert_eq!(rows.len(), ALERTS);
    assert!(
        rows.iter()
            .all(|r| r["state"] == "dead" && r["attempts"].as_u64().unwrap() >= 2),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_header_sets_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let app_hook = Hook::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let calls = app_hook.calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "3600")],
                    "slow down",
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (daemon, _out) = start(&webhook_config(dir.path(), &url), dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("later")).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("a first attempt, refused", || {
        let t = scrape_blocking(m);
        metric(&t, "mcp_alertd_alert_send_errors_total{sink=\"hook\"}") >= 1.0
            && metric(&t, "mcp_alertd_outbox_pending_deliveries") == ALERTS as f64
    })
    .await;
    daemon.shutdown().await.unwrap();
    // retry_max is 100 ms, but the server asked for an hour: the sink as a
    // whole waits an hour (a shared retry schedule), so the refused alert
    // is scheduled an hour out and no other alert was tried in between.
    let now = jiff::Timestamp::now().as_millisecond();
    let rows = list_json(dir.path());
    assert_eq!(rows.len(), ALERTS);
    let later: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            let at: jiff::Timestamp = r["at"].as_str().unwrap().parse().unwrap();
            at.as_millisecond() - now > 3_000_000
        })
        .collect();
    assert_eq!(later.len(), 1, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "pending"));
    assert_eq!(app_hook.calls.load(Ordering::SeqCst), 1);
}

pub fn list_json(dir: &Path) -> Vec<Value> {
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["outbox", "--state-dir"])
        .arg(dir)
        .args(["list", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_siem_sink_speaks_udp_and_tls_with_json_messages() {
    let dir = tempfile::tempdir().unwrap();
    // UDP receiver.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    // TLS receiver with a certificate from a test CA.
    let ca = crate::TestCa::new();
    let (cert, key) = ca.issue("siem.test");
    let acceptor = {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    };
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    let tls_got = Arc::new(Mutex::new(Vec::new()));
    let g = tls_got.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (s, _) = tls.accept().await.unwrap();
        let mut s = acceptor.accept(s).await.unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            g.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
[metrics]
enabled = false
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
[[sinks]]
name = "siem-udp"
type = "syslog"
address = "{udp_addr}"
protocol = "udp"
message = "json"
[[sinks]]
name = "siem-tls"
type = "syslog"
address = "{tls_addr}"
protocol = "tls"
server_name = "siem.test"
ca_file = "{}"
message = "json"
"#,
        ca_path.display()
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("siem2");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let mut udp_msgs = Vec::new();
    let mut buf = vec![0u8; 65536];
    while udp_msgs.len() < ALERTS {
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(30), udp.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
        udp_msgs.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    wait_for("TLS messages", || {
        octet_frames(&tls_got.lock().unwrap()).len() >= ALERTS
    })
    .await;
    daemon.shutdown().await.unwrap();
    let ids = |msgs: &[String]| {
        let mut ids: Vec<String> = msgs
            .iter()
            .map(|m| {
                let p = syslog_loose::parse_message(m, syslog_loose::Variant::RFC5424);
                let alert: Value = serde_json::from_str(p.msg).unwrap();
                alert["id"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&udp_msgs), replay_ids(&lines));
    assert_eq!(
        ids(&octet_frames(&tls_got.lock().unwrap())),
        replay_ids(&lines)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_implicit_tls_with_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::TestCa::new();
    let (cert, key) = ca.issue("localhost");
    let cert_path = dir.path().join("smtp.pem");
    let key_path = dir.path().join("smtp.key");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let args = vec![
        "--smtps".to_owned(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
        "--auth".to_owned(),
        "mcp-alertd:correct horse".to_owned(),
    ];
    let Some(smtp) = Smtp::start_with(dir.path(), &args) else {
        return;
    };
    let password = dir.path().join("smtp-password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let cfg = email_config("localhost", smtp.port, "implicit", Some(&ca_path)).replace(
        "to = [",
        &format!(
            "username = \"mcp-alertd\"\npassword_file = \"{}\"\nto = [",
            password.display()
        ),
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("mail")).await;
    wait_for("the authenticated mail", || !smtp.messages().is_empty()).await;
    daemon.shutdown().await.unwrap();
    check_incident_mail(&smtp.messages());
}
