//! An Elastic Common Schema 9.4 document: `event.kind: alert`, the
//! category and type of the triggering event, `rule.*` for the rule,
//! `event.start`/`event.end` for the window, `organization.id` for the
//! tenant, `user.id` and `gen_ai.agent.id` for the agent, `gen_ai.tool.name`
//! for the tool, `source.ip` for an address key. What ECS has no field for
//! lives under the custom `mcp` object: `mcp.session.id` (the OpenTelemetry
//! MCP name), `mcp.credential.id`, `mcp.alert.{count,key,events}`.
//! `event.severity` and `event.risk_score` are Elastic's rule risk scores
//! of the severity (low 21, medium 47, high 73, critical 99).

use serde_json::{Map, Value, json};

use super::{PRODUCT, VERSION};
use crate::alert::{Alert, Severity, format_ts};

/// The ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "9.4.0";

/// Elastic's risk score of a severity.
pub fn risk_score(s: Severity) -> u8 {
    match s {
        Severity::Low => 21,
        Severity::Medium => 47,
        Severity::High => 73,
        Severity::Critical => 99,
    }
}

/// `event.category` and `event.type` of an alert from its triggering event
/// kind (ECS's allowed values and their expected pairings).
fn category(event: &str) -> (&'static str, &'static str) {
    match event.split('.').next().unwrap_or("") {
        "auth" => ("authentication", "info"),
        "session" => ("session", "info"),
        "credential" => ("iam", "info"),
        _ if event == "tool.denied" => ("intrusion_detection", "denied"),
        _ => ("intrusion_detection", "info"),
    }
}

/// The ECS document of an alert.
pub fn document(alert: &Alert) -> Value {
    let trigger = super::trigger(alert).map_or("", |e| e.event.as_str());
    let (cat, kind) = category(trigger);
    let mut event = json!({
        "kind": "alert",
        "category": [cat],
        "type": [kind],
        "id": alert.id,
        "severity": risk_score(alert.severity),
        "risk_score": risk_score(alert.severity),
        "module": "mcp_alertd",
        "dataset": "mcp_alertd.alert",
        "provider": PRODUCT,
        "reason": alert.summary,
    });
    if let Some(s) = alert.window_start {
        event["start"] = format_ts(s).into();
    }
    if let Some(e) = alert.window_end {
        event["end"] = format_ts(e).into();
    }
    if let Some(at) = alert.detected_at {
        event["created"] = format_ts(at).into();
    }
    let mut doc = json!({
        "@timestamp": format_ts(alert.ts),
        "message": alert.summary,
        "ecs": {"version": ECS_VERSION},
        "event": event,
        "rule": {
            "id": alert.rule,
            "name": alert.title,
            "ruleset": PRODUCT,
            "version": VERSION,
        },
        "organization": {"id": alert.tenant},
        "observer": {"vendor": PRODUCT, "product": PRODUCT, "version": VERSION, "type": "siem"},
        "labels": {"severity": alert.severity.name()},
    });
    let mut gen_ai = Map::new();
    if let Some(agent) = alert.key.get("agent_id") {
        doc["user"] = json!({"id": agent});
        gen_ai.insert("agent".into(), json!({"id": agent}));
    }
    if let Some(tool) = super::tool(alert) {
        gen_ai.insert("tool".into(), json!({"name": tool}));
    }
    if !gen_ai.is_empty() {
        doc["gen_ai"] = Value::Object(gen_ai);
    }
    if let Some(ip) = alert.key.get("source_ip") {
        doc["source"] = json!({"ip": ip});
    }
    let mut mcp = json!({
        "alert": {
            "count": alert.count,
            "key": alert.key,
            "events": alert.events,
        }
    });
    if let Some(s) = alert.key.get("session_id") {
        mcp["session"] = json!({"id": s});
    }
    if let Some(c) = alert.key.get("credential_id") {
        mcp["credential"] = json!({"id": c});
    }
    doc["mcp"] = mcp;
    doc
}
