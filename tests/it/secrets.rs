//! Secret-looking fields never reach an alert or a log line (DESIGN §2).

use assert_cmd::Command;

use crate::support::TCP;

const SECRET: &str = "sk-live-DO-NOT-LEAK-4242";

#[test]
fn a_token_never_reaches_an_alert_or_a_log_line() {
    let mut input = String::new();
    for i in 0..6 {
        input.push_str(&format!(
            r#"{{"ts":{},"event":"auth.failure","agent_id":"a","access_token":"{SECRET}","Authorization":"Bearer {SECRET}","ctx":{{"password":"{SECRET}","nested":[{{"client_secret":"{SECRET}"}}]}},"session_token":"{SECRET}"}}"#,
            1_000 + i
        ));
        input.push('\n');
    }
    // Rejected records carrying secrets are logged by position only.
    input.push_str(&format!(
        "{{\"ts\":\"bad\",\"event\":\"auth.failure\",\"token\":\"{SECRET}\"}}\n"
    ));
    input.push_str(&format!(
        "{{\"ts\":1,\"event\":\"auth.failure\",\"api_key\":\"{SECRET}\"\n"
    ));
    input.push_str(&format!(
        "<110>1 2026-11-27T15:04:32Z h app - - - {SECRET}\n"
    ));
    let out = Command::cargo_bin("mcp-alertd")
        .unwrap()
        .env("MCP_ALERTD_LOG", "trace")
        .arg("replay")
        .write_stdin(input)
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stdout.contains("auth_failure_burst"),
        "the events still alert: {stdout}"
    );
    assert!(
        stderr.contains("bad_timestamp") && stderr.contains("not_json"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(SECRET) && !stdout.contains("4242"),
        "{stdout}"
    );
    assert!(
        !stderr.contains(SECRET) && !stderr.contains("4242"),
        "{stderr}"
    );
}

#[test]
fn the_decoder_drops_secret_fields_at_any_depth_and_keeps_the_rest() {
    let text = format!(
        r#"{{"ts":1,"event":"x","api_key":"{SECRET}","meta":{{"Password":"{SECRET}","keep":1,"list":[{{"refresh_token":"{SECRET}","ok":true}}]}},"note":"fine"}}"#
    );
    let ev = mcp_alertd::decode::Decoder::default()
        .decode(text.as_bytes())
        .unwrap();
    let kept = serde_json::to_string(&ev.extra).unwrap();
    assert!(!kept.contains(SECRET), "{kept}");
    assert!(
        kept.contains("keep") && kept.contains("\"ok\"") && kept.contains("fine"),
        "{kept}"
    );
    assert!(ev.extra("api_key").is_none());
}

#[test]
fn every_listener_defaults_to_loopback() {
    use mcp_alertd::config::{Config, Listen, SourceKind};
    let minimal = Config::parse(
        "[[sources]]\ntype = \"syslog_udp\"\n[[sources]]\ntype = \"syslog_tcp\"\n[metrics]\nenabled = true\n",
    )
    .unwrap();
    for config in [Config::builtin(), minimal] {
        assert!(config.metrics.unwrap().ip().is_loopback());
        for s in &config.sources {
            let address = match &s.kind {
                SourceKind::SyslogUdp(u) => &u.address,
                SourceKind::SyslogTcp(t) => &t.address,
                other => panic!("{other:?}"),
            };
            match address {
                Listen::Addr(a) => assert!(a.ip().is_loopback(), "{}: {a}", s.name),
                other => panic!("{other}"),
            }
        }
    }
}

#[test]
fn secrets_never_reach_logs_metrics_alerts_or_check_and_unsafe_files_are_reported() {
    use std::io::{Read, Write as _};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const KEY: &str = "whsec_c2VjcmV0LWtleS1ETy1OT1QtTEVBSy03Nzc3";
    const SMTP: &str = "smtp-pass-DO-NOT-LEAK-8888";
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("webhook.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let smtp = dir.path().join("smtp.pass");
    std::fs::write(&smtp, SMTP).unwrap();
    std::fs::set_permissions(&smtp, std::fs::Permissions::from_mode(0o600)).unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"state_dir = "{}"
{TCP}[[sinks]]
name = "archive"
type = "file"
path = "{}"
[[sinks]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/never"
signing_key_file = "{}"
[[sinks]]
name = "mail"
type = "email"
host = "127.0.0.1"
port = 9
tls = "none"
username = "alertd"
password_file = "{}"
from = "a@example.com"
to = ["b@example.com"]
"#,
            dir.path().display(),
            alerts.display(),
            key.display(),
            smtp.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();

    // `check` reads every secret, reports the unsafe modes, prints none.
    let check = std::process::Command::new(assert_cmd::cargo::cargo_bin("mcp-alertd"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let check_text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_text}");
    assert!(
        check_text.contains("secret file is readable by group or others"),
        "{check_text}"
    );
    assert!(
        check_text.contains("configuration file is writable by group or others"),
        "{check_text}"
    );

    // The daemon, at trace level, with events that carry secrets.
    let log = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("mcp-alertd"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env("MCP_ALERTD_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut conn =
        std::net::TcpStream::connect(crate::support::proc::listening(&log, "tcp")).unwrap();
    let metrics_addr = crate::support::proc::metrics_listening(&log);
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    for i in 0..6 {
        writeln!(
            conn,
            r#"{{"ts":{},"event":"auth.failure","tenant":"t","agent_id":"a","access_token":"{SECRET}","ctx":{{"password":"{SECRET}"}}}}"#,
            base + i * 1000
        )
        .unwrap();
    }
    writeln!(
        conn,
        r#"{{"ts":"bad","event":"auth.failure","token":"{SECRET}"}}"#
    )
    .unwrap();
    conn.flush().unwrap();
    for _ in 0..1500 {
        if std::fs::read_to_string(&alerts).is_ok_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut scrape = std::net::TcpStream::connect(metrics_addr).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    scrape.read_to_string(&mut metrics).unwrap();
    drop(conn);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let alert_text = std::fs::read_to_string(&alerts).unwrap();
    assert!(alert_text.contains("auth_failure_burst"), "{alert_text}");
    assert!(metrics.contains("mcp_alertd_alerts_total"), "{metrics}");
    assert!(logs.contains("readable by group or others"), "{logs}");
    for (what, text) in [
        ("check", &check_text),
        ("logs", &logs),
        ("metrics", &metrics),
        ("alerts", &alert_text),
    ] {
        for secret in [SECRET, KEY, SMTP, "c2VjcmV0LWtleS1ETy1OT1QtTEVBSy03Nzc3"] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
}
