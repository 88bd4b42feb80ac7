//! Running under systemd: the unit files verify and are hardened (exposure
//! at most 2.0), the daemon speaks the notify protocol (READY after the
//! sources are bound, WATCHDOG pings, STOPPING) and takes its listening
//! sockets from socket activation.

use std::io::{Read, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{replay_ids, scenario};

fn unit_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd")
}

/// A copy of the units whose commands point at the built binary (verify
/// needs them to exist); the man page is checked by the package test.
fn units_for_test(dir: &Path) -> Vec<std::path::PathBuf> {
    let bin = assert_cmd::cargo::cargo_bin("mcp-alertd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(unit_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/bin/mcp-alertd", bin.to_str().unwrap())
            .lines()
            .filter(|l| !l.starts_with("Documentation="))
            .collect::<Vec<_>>()
            .join("\n");
        let copy = dir.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        out.push(copy);
    }
    out.sort();
    out
}

#[test]
fn the_units_verify_and_the_service_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_test(dir.path());
    assert_eq!(units.len(), 4, "the service and three socket units");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "verify warned:\n{stderr}");

    let service = dir.path().join("mcp-alertd.service");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for mcp-alertd.service: ")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

/// Reads notify datagrams until `want` matches one or the time is up.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_daemon_notifies_ready_after_binding_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        crate::support::with_self_monitoring_off(&format!(
            "state_dir = \"{}\"\n[metrics]\nenabled = false\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"127.0.0.1:0\"\n",
            dir.path().display()
        )),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("mcp-alertd"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "600000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(
        read_until(&sock, &mut seen, "READY=1", Duration::from_secs(30)),
        "{seen:?}"
    );
    // READY means bound: the listener (on the port it logged) accepts at once.
    let addr = crate::support::proc::listening(&log, "tcp");
    std::net::TcpStream::connect(addr).expect("bound before READY");
    // Watchdog pings keep coming (every 300 ms here); count five.
    let mut pings = 0;
    for _ in 0..5 {
        if read_until(&sock, &mut seen, "WATCHDOG=1", Duration::from_secs(10)) {
            pings += 1;
        }
    }
    assert_eq!(pings, 5, "{seen:?}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        read_until(&sock, &mut seen, "STOPPING=1", Duration::from_secs(30)),
        "{seen:?}"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn sockets_passed_by_systemd_are_used_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        crate::support::with_self_monitoring_off(&format!(
            "state_dir = \"{}\"\n[metrics]\nenabled = false\n[[sources]]\nname = \"tcp\"\ntype = \"syslog_tcp\"\naddress = \"systemd:syslog-tcp\"\n",
            dir.path().display()
        )),
    )
    .unwrap();
    let out = dir.path().join("alerts.jsonl");
    // systemd-socket-activate binds the port and starts the daemon with it
    // (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) on the first connection.
    let (mut child, port) = socket_activate(&cfg, &out);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let lines = scenario("activated");
    for l in &lines {
        writeln!(conn, "{l}").unwrap();
    }
    conn.flush().unwrap();
    drop(conn);
    let want = replay_ids(&lines);
    let ids = || -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    for _ in 0..1500 {
        if ids().len() >= want.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(ids(), want, "{log}");
    assert!(status.success(), "{log}");
}

/// Starts the daemon under `systemd-socket-activate` on a free loopback
/// port. It takes no port 0, so a port is picked and, should another test
/// take it first ("Address already in use"), another one: the child says
/// "Listening on" once it holds the socket.
fn socket_activate(cfg: &Path, out: &Path) -> (std::process::Child, u16) {
    for _ in 0..20 {
        let port = crate::support::port_to_try();
        let mut child = Command::new("systemd-socket-activate")
            .args(["-l", &format!("127.0.0.1:{port}"), "--fdname=syslog-tcp"])
            .arg(assert_cmd::cargo::cargo_bin("mcp-alertd"))
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian package systemd)");
        // Its first line, byte by byte (the rest stays for the caller).
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        let stderr = child.stderr.as_mut().unwrap();
        while stderr.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line.starts_with("Listening on") {
            return (child, port);
        }
        let _ = child.wait();
        assert!(
            line.contains("already in use"),
            "systemd-socket-activate: {line}"
        );
    }
    panic!("no free loopback port for systemd-socket-activate");
}
