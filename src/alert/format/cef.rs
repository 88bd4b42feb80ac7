//! ArcSight Common Event Format (CEF:0): header fields escape `\`
//! and `|`; extension values escape `\`, `=` and CR/LF; any other line
//! break (VT, FF, NEL, U+2028, U+2029) becomes a space.

use crate::alert::Alert;
use crate::alert::Severity;
use crate::alert::format::{LINE_BREAKS, one_line};

fn header(s: &str) -> String {
    one_line(&s.replace('\\', "\\\\").replace('|', "\\|"))
}

fn ext(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace("\r\n", "\\n")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        // The line breaks CEF has no escape for.
        .replace(LINE_BREAKS, " ")
}

/// CEF severity 0-10.
pub fn severity(s: Severity) -> u8 {
    super::severity_10(s)
}

/// One alert as a CEF:0 record.
pub fn render(alert: &Alert, version: &str) -> String {
    let mut out = format!(
        "CEF:0|mcp-alertd|mcp-alertd|{}|{}|{}|{}|",
        header(version),
        header(&alert.rule),
        header(&alert.title),
        severity(alert.severity)
    );
    let mut pairs: Vec<(&str, String)> = vec![
        ("rt", alert.ts.to_string()),
        ("externalId", alert.id.clone()),
        ("cs1Label", "tenant".to_owned()),
        ("cs1", alert.tenant.clone()),
        ("cnt", alert.count.to_string()),
        ("msg", alert.summary.clone()),
    ];
    if let Some(agent) = alert.key.get("agent_id") {
        pairs.push(("suser", agent.clone()));
    }
    if let Some(s) = alert.key.get("session_id") {
        pairs.push(("cs2Label", "session_id".to_owned()));
        pairs.push(("cs2", s.clone()));
    }
    if let Some(c) = alert.key.get("credential_id") {
        pairs.push(("cs3Label", "credential_id".to_owned()));
        pairs.push(("cs3", c.clone()));
    }
    if let Some(t) = super::tool(alert) {
        pairs.push(("act", t.to_owned()));
    }
    if let Some(start) = alert.window_start {
        pairs.push(("start", start.to_string()));
    }
    if let Some(end) = alert.window_end {
        pairs.push(("end", end.to_string()));
    }
    let ext_text: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", ext(v)))
        .collect();
    out.push_str(&ext_text.join(" "));
    out
}
