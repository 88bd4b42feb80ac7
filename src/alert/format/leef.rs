//! QRadar Log Event Extended Format, LEEF 2.0:
//! `LEEF:2.0|mcp-alertd|mcp-alertd|<version>|<rule id>|<delimiter>|k=v<delimiter>k=v...`
//! with the event id the rule id, `cat` the triggering event kind, QRadar's
//! predefined keys where one fits (`devTime` with `devTimeFormat`, `sev`
//! 1-10, `usrName` the agent, `src` an address key, `resource` the tool)
//! and custom keys for the rest (`tenant`, `sessionId`, `credentialId`,
//! `alertId`, `count`, `windowStart`, `windowEnd`, `msg`). LEEF has no
//! escape: a value loses CR, LF and the delimiter (each becomes a space),
//! a header field loses `|`.

use crate::alert::Alert;
use crate::alert::format::{one_line, severity_10};

/// The `devTimeFormat` our `devTime` values follow (Java date pattern).
pub const DEV_TIME_FORMAT: &str = "yyyy-MM-dd'T'HH:mm:ss.SSSZ";

/// A delimiter as configured: one character, or its code as `xHH` /
/// `0xHH` (LEEF's own notation, e.g. `x09` for a tab). `=`, `|`, CR, LF
/// and letters or digits cannot delimit.
pub fn parse_delimiter(text: &str) -> Result<char, String> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix('x'))
        .filter(|h| (1..=2).contains(&h.len()));
    let c = match hex {
        Some(h) => u8::from_str_radix(h, 16)
            .map(char::from)
            .map_err(|_| format!("leef_delimiter `{text}`: not a hex code"))?,
        None => {
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => c,
                _ => {
                    return Err(format!(
                        "leef_delimiter `{text}`: one character or its code as xHH"
                    ));
                }
            }
        }
    };
    if c.is_alphanumeric() || matches!(c, '=' | '|' | '\r' | '\n') || !c.is_ascii() {
        return Err(format!(
            "leef_delimiter `{text}`: an ASCII character other than a letter, digit, `=`, `|`, CR or LF"
        ));
    }
    Ok(c)
}

/// The delimiter as written in the header: printable as itself, else `xHH`.
fn delimiter_field(c: char) -> String {
    if c.is_ascii_graphic() {
        c.to_string()
    } else {
        format!("x{:02X}", c as u32)
    }
}

fn header(s: &str) -> String {
    one_line(s).replace('|', " ")
}

/// `devTime` per [`DEV_TIME_FORMAT`] (UTC, `+0000`).
fn dev_time(ms: i64) -> String {
    let t = crate::alert::format_ts(ms);
    match t.strip_suffix('Z') {
        Some(base) => format!("{base}+0000"),
        None => t,
    }
}

/// One alert as a LEEF 2.0 record.
pub fn render(alert: &Alert, delimiter: char) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("devTime", dev_time(alert.ts)),
        ("devTimeFormat", DEV_TIME_FORMAT.to_owned()),
        (
            "cat",
            super::trigger(alert).map_or_else(|| alert.rule.clone(), |e| e.event.clone()),
        ),
        ("sev", severity_10(alert.severity).to_string()),
        ("alertId", alert.id.clone()),
        ("tenant", alert.tenant.clone()),
    ];
    if let Some(agent) = alert.key.get("agent_id") {
        pairs.push(("usrName", agent.clone()));
    }
    if let Some(ip) = alert.key.get("source_ip") {
        pairs.push(("src", ip.clone()));
    }
    if let Some(s) = alert.key.get("session_id") {
        pairs.push(("sessionId", s.clone()));
    }
    if let Some(c) = alert.key.get("credential_id") {
        pairs.push(("credentialId", c.clone()));
    }
    if let Some(t) = super::tool(alert) {
        pairs.push(("resource", t.to_owned()));
    }
    pairs.push(("count", alert.count.to_string()));
    if let Some(s) = alert.window_start {
        pairs.push(("windowStart", dev_time(s)));
    }
    if let Some(e) = alert.window_end {
        pairs.push(("windowEnd", dev_time(e)));
    }
    pairs.push(("msg", alert.summary.clone()));
    let mut out = format!(
        "LEEF:2.0|{p}|{p}|{}|{}|{}|",
        header(super::VERSION),
        header(&alert.rule),
        delimiter_field(delimiter),
        p = super::PRODUCT,
    );
    let mut first = true;
    for (k, v) in pairs {
        if !first {
            out.push(delimiter);
        }
        first = false;
        out.push_str(k);
        out.push('=');
        out.extend(
            one_line(&v)
                .chars()
                .map(|c| if c == delimiter { ' ' } else { c }),
        );
    }
    out
}
