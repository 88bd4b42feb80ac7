//! The binary's commands, exit codes and summary (DESIGN §10).

use assert_cmd::Command;

fn bin() -> Command {
    Command::cargo_bin("mcp-alertd").unwrap()
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_lists_the_default_rules() {
    let out = bin()
        .arg("check")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("rules OK: 15 rules from embedded"), "{text}");
    // Descriptions are shown, for people deciding what an alert means.
    assert!(text.contains("brute-forced or stolen credential"), "{text}");
    for id in [
        "auth_failure_burst",
        "unauthorized_tool_attempt",
        "session_injection_incident",
        "credential_unused",
        "credential_unused_revoke",
        "session_overrun",
        "allowlist_bypass",
        "revoked_credential_use",
        "compromise_after_burst",
        "credential_spraying",
        "persistent_injection",
        "credential_rotation_overdue",
        "rotation_overlap_exceeded",
        "missing_operation_token",
        "cross_tenant_credential",
    ] {
        assert!(text.contains(id), "{id} missing from {text}");
    }
}

#[test]
fn check_of_the_shipped_rules_directory_succeeds() {
    bin()
        .args(["check", "--rules"])
        .arg(root().join("rules"))
        .assert()
        .success();
}

#[test]
fn check_of_invalid_rules_exits_78_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        r#"[[rule]]
id = "one"
title = "t"
severity = "high"
kind = "threshold"
match = { event = "auth.failure" }
window = "60"
condition = { gt = 3 }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        r#"[[rule]]
id = "two"
title = "t"
severity = "urgent"
kind = "match"
match = { event = "x" }
"#,
    )
    .unwrap();
    let out = bin()
        .args(["check", "--rules"])
        .arg(dir.path())
        .assert()
        .code(78)
        .get_output()
        .clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("a.toml: rule `one`: `window`: `60` has no unit"),
        "{err}"
    );
    assert!(err.contains("b.toml: rule `two`:"), "{err}");
    assert!(err.contains("urgent"), "{err}");
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    bin()
        .arg("replay")
        .arg("--format")
        .arg("xml")
        .assert()
        .code(2);
    bin().arg("no-such-command").assert().code(2);
    bin()
        .args(["replay", "--allowed-lateness", "5"])
        .assert()
        .code(2);
}

#[test]
fn oversize_records_are_rejected_with_their_position_and_the_rest_is_read() {
    let big = format!(
        "{{\"ts\":1,\"event\":\"auth.failure\",\"pad\":\"{}\"}}",
        "x".repeat(500)
    );
    let small = r#"{"ts":2,"event":"tool.denied","agent_id":"a","session_id":"s","tool":"t"}"#;
    let out = bin()
        .args(["replay", "--max-record-bytes", "200"])
        .write_stdin(format!("{big}\n{small}\n"))
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("too_large              1 (at stdin:1)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 records, 1 events, 1 rejected"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    bin()
        .args(["replay", "--max-record-bytes", "0"])
        .assert()
        .code(2);
}

#[test]
fn a_missing_input_file_exits_1() {
    let out = bin()
        .args(["replay", "/nonexistent/audit.log"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/audit.log"));
}

#[test]
fn replay_prints_alerts_on_stdout_and_a_summary_on_stderr() {
    let out = bin()
        .arg("replay")
        .arg(root().join("examples/audit.jsonl"))
        .arg(root().join("examples/audit.syslog"))
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 36);
    assert!(
        stdout
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    for want in [
        "replay: 894 records, 892 events, 2 rejected, 0 late, 36 alerts",
        "events/s",
        "tool.invoke",
        "not_json               1 (at ",
        "audit.jsonl:104",
        "auth_failure_burst           4",
        "session_overrun              3",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in\n{stderr}");
    }
}

#[test]
fn replay_reads_stdin_with_positions_and_the_syslog_format() {
    let input = "<110>1 2026-11-27T15:04:32Z h app - - - @cee:{\"ts\":1,\"event\":\"tool.denied\",\"agent_id\":\"a\",\"session_id\":\"s\",\"tool\":\"t\"}\nnot syslog at all\n";
    let out = bin()
        .args(["replay", "--framing", "syslog", "-"])
        .write_stdin(input)
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains(r#""position":"stdin:1""#), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("not_syslog             1 (at stdin:2)"),
        "{stderr}"
    );
}

#[test]
fn generate_is_deterministic_and_replayable() {
    let a = bin()
        .args(["generate", "--events", "2000", "--seed", "9"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let b = bin()
        .args(["generate", "--events", "2000", "--seed", "9"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(a, b);
    let c = bin()
        .args(["generate", "--events", "2000", "--seed", "10"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_ne!(a, c);
    let out = bin()
        .args(["replay", "--framing", "jsonl"])
        .write_stdin(a)
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("2000 events, 0 rejected"));
}

#[test]
fn help_explains_every_command() {
    for cmd in ["replay", "check", "generate"] {
        let out = bin()
            .args([cmd, "--help"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert!(!out.is_empty());
    }
    let out = bin()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("replay") && text.contains("check"));
}
