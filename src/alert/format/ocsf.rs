//! OCSF 1.8 Detection Finding (class 2004, category Findings): the alert id
//! is `finding_info.uid` and `metadata.uid`, the rule is
//! `finding_info.analytic` (type Rule), the window is
//! `first_seen_time`/`last_seen_time` (and `start_time`/`end_time`), each
//! triggering event is one of `evidences` (the actor from the alert's key,
//! the MCP method as `api.operation`, the tool as a `resources` entry), the
//! tenant is `metadata.tenant_uid`, the count is `count`, and the whole key
//! is kept in `unmapped.key`. Alerts of an incident rule (the session
//! injection incident by default) carry the `incident` profile
//! (`is_suspected_breach`, `priority_id`): one alert is one finding that
//! needs incident workflow, which the class description says is the
//! profile's use, not an Incident Finding (2005), which aggregates findings.
//! Times are epoch milliseconds (`timestamp_t`).

use serde_json::{Map, Value, json};

use super::{PRODUCT, VERSION};
use crate::alert::{Alert, EventRef, Severity};

/// The OCSF schema version written in `metadata.version`.
pub const SCHEMA_VERSION: &str = "1.8.0";

/// OCSF `severity_id`: 2 Low, 3 Medium, 4 High, 5 Critical.
pub fn severity_id(s: Severity) -> u8 {
    match s {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

fn caption(s: Severity) -> &'static str {
    match s {
        Severity::Low => "Low",
        Severity::Medium => "Medium",
        Severity::High => "High",
        Severity::Critical => "Critical",
    }
}

/// The MCP method an event kind stands for (`api.operation`).
fn operation(event: &str) -> &str {
    match event {
        "tool.invoke" | "tool.denied" => "tools/call",
        "session.start" => "initialize",
        other => other,
    }
}

/// The actor of the alert's key: the agent (an OCSF user of type Other,
/// "Agent") and its session.
fn actor(alert: &Alert) -> Option<Value> {
    let mut actor = Map::new();
    if let Some(agent) = alert.key.get("agent_id") {
        actor.insert(
            "user".into(),
            json!({"uid": agent, "type_id": 99, "type": "Agent"}),
        );
    }
    if let Some(session) = alert.key.get("session_id") {
        actor.insert("session".into(), json!({"uid": session}));
    }
    (!actor.is_empty()).then_some(Value::Object(actor))
}

fn evidence(alert: &Alert, actor: &Option<Value>, e: &EventRef) -> Value {
    let mut ev = Map::new();
    if let Some(a) = actor {
        ev.insert("actor".into(), a.clone());
    }
    let mut api = Map::new();
    api.insert("operation".into(), operation(&e.event).into());
    if let Some(server) = &e.server {
        api.insert("service".into(), json!({"name": server}));
    }
    ev.insert("api".into(), Value::Object(api));
    if let Some(tool) = &e.tool {
        ev.insert("resources".into(), json!([{"name": tool, "type": "tool"}]));
    }
    if let Some(ip) = alert.key.get("source_ip") {
        ev.insert("src_endpoint".into(), json!({"ip": ip}));
    }
    let mut data = Map::new();
    data.insert("event".into(), e.event.clone().into());
    data.insert("time".into(), e.ts.into());
    for (k, v) in [("reason", &e.reason), ("position", &e.position)] {
        if let Some(v) = v {
            data.insert(k.into(), v.clone().into());
        }
    }
    ev.insert("data".into(), Value::Object(data));
    Value::Object(ev)
}

/// The Detection Finding of an alert; `incident` applies the incident
/// profile.
pub fn finding(alert: &Alert, incident: bool) -> Value {
    let first = alert.window_start.unwrap_or(alert.ts);
    let last = alert.window_end.unwrap_or(alert.ts);
    let actor = actor(alert);
    let mut metadata = json!({
        "version": SCHEMA_VERSION,
        "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": VERSION},
        "uid": alert.id,
        "tenant_uid": alert.tenant,
        "log_name": "alerts",
    });
    let mut finding_info = json!({
        "uid": alert.id,
        "title": alert.title,
        "desc": alert.summary,
        "analytic": {"uid": alert.rule, "name": alert.rule, "desc": alert.title, "type_id": 1, "type": "Rule"},
        "first_seen_time": first,
        "last_seen_time": last,
        "related_events_count": alert.events.len(),
    });
    let mut out = json!({
        "activity_id": 1,
        "activity_name": "Create",
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "severity_id": severity_id(alert.severity),
        "severity": caption(alert.severity),
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "time": alert.ts,
        "start_time": first,
        "end_time": last,
        "count": alert.count,
        "message": alert.summary,
        "evidences": alert.events.iter().map(|e| evidence(alert, &actor, e)).collect::<Vec<_>>(),
        "unmapped": {"key": alert.key},
    });
    if let Some(at) = alert.detected_at {
        finding_info["created_time"] = at.into();
        metadata["logged_time"] = at.into();
    }
    if incident {
        metadata["profiles"] = json!(["incident"]);
        out["is_suspected_breach"] = true.into();
        out["priority_id"] = match alert.severity {
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 3,
            Severity::Critical => 4,
        }
        .into();
    }
    out["metadata"] = metadata;
    out["finding_info"] = finding_info;
    out
}
