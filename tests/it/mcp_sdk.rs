//! Interop with the official MCP Python SDK (`mcp` on PyPI): an SDK server
//! (FastMCP over Streamable HTTP, `integrations/python/example_server.py`)
//! enforcing a session allowlist logs native events over syslog to a
//! running daemon; the SDK's own client fails to authenticate, calls an
//! allowed tool and, like an injected agent, a forbidden one five times.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::Proc;

fn integrations() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integrations/python")
}

#[test]
fn an_sdk_client_against_an_sdk_server_raises_the_expected_alerts() {
    let sdk = Command::new("python3")
        .args(["-c", "import mcp, uvicorn, httpx"])
        .status()
        .unwrap();
    assert!(
        sdk.success(),
        "the MCP Python SDK is missing: scripts/test.sh installs it (pip install mcp==1.30.0)"
    );
    let dir = tempfile::tempdir().unwrap();
    let daemon = Proc::start(
        dir.path(),
        "[metrics]\nenabled = false\n[[sources]]\nname = \"syslog\"\ntype = \"syslog_udp\"\naddress = \"127.0.0.1:0\"\n",
    );
    let syslog = daemon.addr("syslog");
    let mut server = Command::new("python3")
        .current_dir(integrations())
        .args([
            "example_server.py",
            "--syslog",
            &syslog.to_string(),
            "--tenant",
            "acme",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first:?}");
    let client = Command::new("python3")
        .current_dir(integrations())
        .args([
            "example_client.py",
            "--url",
            &url,
            "--failures",
            "4",
            "--denials",
            "5",
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        client.status.success(),
        "{}{}\nserver: {}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr),
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    );
    daemon.wait_alerts(7);
    let alerts = daemon.alerts();
    let count = |rule: &str| alerts.iter().filter(|a| a["rule"] == rule).count();
    assert_eq!(count("unauthorized_tool_attempt"), 5, "{alerts:?}");
    assert_eq!(count("session_injection_incident"), 1, "{alerts:?}");
    assert_eq!(count("auth_failure_burst"), 1, "{alerts:?}");
    let burst = alerts
        .iter()
        .find(|a| a["rule"] == "auth_failure_burst")
        .unwrap();
    // The refused logins claim no identity: keyed by the client address.
    assert_eq!(burst["key"], serde_json::json!({"source_ip": "127.0.0.1"}));
    let denied = alerts
        .iter()
        .find(|a| a["rule"] == "unauthorized_tool_attempt")
        .unwrap();
    assert_eq!(denied["tenant"], "acme");
    assert_eq!(denied["key"]["agent_id"], "build-bot");
    assert_eq!(denied["events"][0]["tool"], "delete_repository");
    assert_eq!(denied["events"][0]["reason"], "not_in_allowlist");
}
