//! The daemon as a process: signals (SIGTERM drain, SIGHUP reload valid and
//! invalid), JSON logs, `check --config`, and interop with the syslog
//! clients users have: util-linux `logger` and rsyslog forwarding. The
//! alerts must equal those of `replay` on the same events.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Proc, metric, replay_ids, scenario, scrape_blocking, wait_until};

const CONFIG: &str = r#"
[engine]
idle_after = "1h"
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
"#;

const ALERTS: usize = 8;

fn logger(args: &[&str], addr: SocketAddr, file: &Path) {
    let status = Command::new("logger")
        .args(args)
        .args([
            "-n",
            &addr.ip().to_string(),
            "-P",
            &addr.port().to_string(),
            "-t",
            "mcp-audit",
            "-f",
        ])
        .arg(file)
        .status()
        .expect("util-linux logger must be installed");
    assert!(status.success(), "logger {args:?} failed");
}

#[test]
fn util_linux_logger_over_udp_and_tcp_in_every_format_gives_the_replay_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), CONFIG);
    let cases: [(&str, &[&str]); 5] = [
        ("udp5424", &["--udp", "--rfc5424"]),
        ("udp3164", &["--udp", "--rfc3164"]),
        ("tcp5424", &["--tcp", "--rfc5424"]),
        ("tcp3164", &["--tcp", "--rfc3164"]),
        ("octets", &["--tcp", "--octet-count", "--rfc5424"]),
    ];
    let mut want = Vec::new();
    for (i, (tag, args)) in cases.iter().enumerate() {
        let lines = scenario(tag);
        let file = dir.path().join(format!("{tag}.txt"));
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        let source = if args.contains(&"--udp") {
            "udp"
        } else {
            "tcp"
        };
        if source == "udp" {
            // UDP has no backpressure: one line per datagram, paced by the
            // daemon's own count so that this test is about formats.
            let m = p.metrics_addr();
            for (j, l) in lines.iter().enumerate() {
                let one = dir.path().join("one.txt");
                std::fs::write(&one, format!("{l}\n")).unwrap();
                logger(args, p.addr(source), &one);
                let before: f64 = cases[..i]
                    .iter()
                    .filter(|(_, a)| a.contains(&"--udp"))
                    .count() as f64
                    * lines.len() as f64;
                wait_until("the datagram received", || {
                    metric(
                        &scrape_blocking(m),
                        "mcp_alertd_records_received_total{source=\"udp\"}",
                    ) >= before + j as f64 + 1.0
                });
            }
        } else {
            logger(args, p.addr(source), &file);
        }
        want.extend(replay_ids(&lines));
        p.wait_alerts(ALERTS * (i + 1));
    }
    assert_eq!(p.stop(), 0);
    want.sort();
    assert_eq!(p.ids(), want);
}

#[test]
fn rsyslog_forwarding_from_a_file_with_octet_counting_gives_the_replay_alerts() {
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(rsyslogd) = rsyslogd else {
        assert!(
            std::env::var_os("CI").is_none(),
            "rsyslogd must be installed in CI (scripts/test.sh installs it)"
        );
        eprintln!("skipping: rsyslogd is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), CONFIG);
    let lines = scenario("rsyslog");
    let log = dir.path().join("mcp-audit.log");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imfile")
input(type="imfile" File="{log}" Tag="mcp-audit" ruleset="forward")
ruleset(name="forward") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"#,
            work = work.display(),
            log = log.display(),
            port = p.addr("tcp").port()
        ),
    )
    .unwrap();
    let mut rs = Command::new(rsyslogd)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    p.wait_alerts(ALERTS);
    let _ = rs.kill();
    let _ = rs.wait();
    assert_eq!(p.stop(), 0);
    assert_eq!(p.ids(), replay_ids(&lines));
}

#[test]
fn sigterm_drains_and_exits_0_and_sighup_refuses_an_invalid_rule_set() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for (name, text) in mcp_alertd::engine::rules::EMBEDDED {
        std::fs::write(rules.join(name), text).unwrap();
    }
    let mut p = Proc::start(
        dir.path(),
        &format!("rules_dir = \"{}\"\n{CONFIG}", rules.display()),
    );
    let m = p.metrics_addr();

    // An invalid rule set: refused, logged, counted; the old one keeps running.
    std::fs::write(
        rules.join("broken.toml"),
        "[[rule]]\nid = \"broken\"\nkind = \"nope\"\n",
    )
    .unwrap();
    p.signal("HUP");
    p.wait_log("reload refused");
    assert_eq!(
        metric(
            &scrape_blocking(m),
            "mcp_alertd_reloads_total{result=\"error\"}"
        ),
        1.0
    );
    let mut s = std::net::TcpStream::connect(p.addr("tcp")).unwrap();
    let lines = scenario("hup");
    for l in &lines {
        writeln!(s, "{l}").unwrap();
    }
    s.flush().unwrap();
    p.wait_alerts(ALERTS);

    // Fixed: the reload goes through.
    std::fs::remove_file(rules.join("broken.toml")).unwrap();
    p.signal("HUP");
    p.wait_log("reloaded");
    assert_eq!(
        metric(
            &scrape_blocking(m),
            "mcp_alertd_reloads_total{result=\"ok\"}"
        ),
        1.0
    );
    drop(s);
    assert_eq!(p.stop(), 0);
    p.wait_log("stopped");
    assert_eq!(p.ids(), replay_ids(&lines));
}

#[test]
fn check_validates_config_and_rules_together_and_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"rules_dir = "/nonexistent/rules"
colour = "blue"
"#,
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&cfg)
        .assert()
        .code(78)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `colour`"), "{err}");

    std::fs::write(
        &cfg,
        r#"[engine]
allowed_lateness = "5"
queue_capacity = 0
[[sources]]
type = "syslog_tcp"
address = "localhost"
tls = { cert_file = "/nonexistent/cert.pem", key_file = "/nonexistent/key.pem" }
[[sources]]
type = "carrier_pigeon"
[[sources]]
type = "syslog_udp"
path = "/var/log/x"
"#,
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&cfg)
        .assert()
        .code(78)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "engine.allowed_lateness: `5` has no unit",
        "engine.queue_capacity: 0 is outside",
        "address: invalid socket address",
        "tls.cert_file /nonexistent/cert.pem",
        "unknown type `carrier_pigeon`",
        "`path` does not apply to type `syslog_udp`",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, CONFIG).unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&ok)
        .assert()
        .success()
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("config OK") && text.contains("rules OK: 15 rules"),
        "{text}"
    );
}

#[test]
fn run_with_an_invalid_config_exits_78_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[metrics]\naddress = \"nowhere\"\n").unwrap();
    assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["run", "--config"])
        .arg(&cfg)
        .assert()
        .code(78);
}

#[test]
fn alerts_pending_when_the_daemon_is_killed_are_delivered_after_a_restart() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    // A webhook that is down: nothing listens on the reserved port yet.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let cfg = format!(
        r#"{CONFIG}
[outbox]
retry_initial = "50ms"
retry_max = "200ms"
[[sinks]]
name = "hook"
type = "webhook"
url = "http://{hook_addr}/hook"
"#
    );
    let mut p = Proc::start(dir.path(), &cfg);
    let lines = scenario("killed");
    let mut s = std::net::TcpStream::connect(p.addr("tcp")).unwrap();
    for l in &lines {
        writeln!(s, "{l}").unwrap();
    }
    s.flush().unwrap();
    let m = p.metrics_addr();
    for _ in 0..1500 {
        let t = scrape_blocking(m);
        if metric(&t, "mcp_alertd_outbox_pending_deliveries") == ALERTS as f64
            && metric(&t, "mcp_alertd_alert_send_errors_total{sink=\"hook\"}") > 0.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no shutdown, no flush.
    p.signal("KILL");
    let _ = p.child.wait();

    // The webhook comes up; a new daemon on the same state directory
    // delivers every pending alert.
    let server = std::net::TcpListener::bind(hook_addr).unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let r = received.clone();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut c) = conn else { break };
            let r = r.clone();
            std::thread::spawn(move || {
                // Minimal HTTP/1.1: read headers and a Content-Length body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let n = c.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = c.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = &buf[end + 4..end + 4 + len];
                    let id = serde_json::from_slice::<Value>(body).unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    r.lock().unwrap().push(id);
                    c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                    buf.drain(..end + 4 + len);
                }
            });
        }
    });
    let mut p2 = Proc::start(dir.path(), &cfg);
    for _ in 0..1500 {
        if received.lock().unwrap().len() >= ALERTS {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(p2.stop(), 0);
    let mut got = received.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        replay_ids(&lines),
        "every pending alert delivered once after the restart"
    );
}
