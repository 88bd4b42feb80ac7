//! Secret-looking fields never reach an alert or a log line (DESIGN §2).

use assert_cmd::Command;

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
