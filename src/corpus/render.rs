//! Native events rendered as the records of the products the built-in
//! formats read (FORMATS.md wire shapes), for `generate --format`, the
//! per-format benchmarks and the round-trip tests: a rendered record read
//! back through its format gives the native event again, as far as the
//! product can carry it. What each product cannot carry is left out (no
//! tenant, no session id, no credential events, ...); an event a product
//! has no record for renders to nothing.

use serde_json::{Value, json};

use crate::alert::format_ts;
use crate::event::{Event, EventKind};

/// The formats [`render`] knows (every built-in one).
pub const FORMATS: [&str; 9] = [
    "toolhive",
    "agentgateway",
    "ocsf",
    "kong",
    "cloudflare",
    "azure_apim",
    "contextforge",
    "couchbase",
    "ecs",
];

/// `ev` as a record of `format`; `n` numbers the record (ids). `None`:
/// the product writes no record for such an event, or `format` is unknown.
pub fn render(format: &str, ev: &Event<'_>, n: u64) -> Option<Value> {
    let r = Render { ev, n };
    match format {
        "toolhive" => r.toolhive(),
        "agentgateway" => r.agentgateway(),
        "ocsf" => r.ocsf(),
        "kong" => r.kong(),
        "cloudflare" => r.cloudflare(),
        "azure_apim" => r.azure_apim(),
        "contextforge" => r.contextforge(),
        "couchbase" => r.couchbase(),
        "ecs" => r.ecs(),
        _ => None,
    }
}

struct Render<'e, 'a> {
    ev: &'e Event<'a>,
    n: u64,
}

impl Render<'_, '_> {
    fn agent(&self) -> Option<&str> {
        (!self.ev.unclaimed)
            .then_some(self.ev.agent_id.as_deref())
            .flatten()
    }
    fn s(v: &Option<std::borrow::Cow<'_, str>>) -> Value {
        v.as_deref().map_or(Value::Null, Value::from)
    }
    fn ip(&self) -> &str {
        self.ev.source_ip.as_deref().unwrap_or("192.0.2.1")
    }
    fn uuid(&self) -> String {
        let n = self.n;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            n as u32,
            (n >> 32) as u16,
            n % 0xfff,
            n % 0x7ff,
            n
        )
    }
    fn rfc3339(&self) -> String {
        format_ts(self.ev.ts)
    }
    /// agentgateway's time: the fraction is whole microseconds, unpadded.
    fn unpadded_micros(&self) -> String {
        let t = format_ts(self.ev.ts);
        let micros = self.ev.ts.rem_euclid(1000) * 1000;
        format!("{}.{micros}Z", &t[..19])
    }
    /// Native fields no product has a slot for, kept as custom input fields
    /// (OCSF's `unmapped`).
    fn task_fields(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(t) = &self.ev.declared_task {
            m.insert("declared_task".into(), t.as_ref().into());
        }
        if let Some(r) = &self.ev.role {
            m.insert("role".into(), r.as_ref().into());
        }
        if let Some(x) = self.ev.expected_runtime_s {
            m.insert("expected_runtime_s".into(), x.into());
        }
        if let Some(tools) = &self.ev.allowed_tools {
            m.insert(
                "allowed_tools".into(),
                tools.iter().map(|t| t.as_ref()).collect::<Vec<_>>().into(),
            );
        }
        Value::Object(m)
    }

    fn toolhive(&self) -> Option<Value> {
        let ev = self.ev;
        let (kind, outcome, method, target_type) = match ev.kind {
            EventKind::AuthFailure => ("http_request", "denied", "POST", "endpoint"),
            EventKind::SessionStart => ("mcp_initialize", "success", "initialize", "endpoint"),
            EventKind::SessionEnd => ("http_request", "success", "DELETE", "endpoint"),
            EventKind::ToolInvoke => ("mcp_tool_call", "success", "tools/call", "tool"),
            EventKind::ToolDenied => ("mcp_tool_call", "denied", "tools/call", "tool"),
            _ => return None,
        };
        let subjects = match (ev.kind, self.agent()) {
            (EventKind::AuthFailure, _) | (_, None) => json!({"user": "anonymous"}),
            (_, Some(a)) => json!({"user_id": a, "user": a}),
        };
        let mut target = json!({"endpoint": "/mcp", "method": method, "type": target_type});
        if let Some(tool) = &ev.tool {
            target["name"] = tool.as_ref().into();
        }
        Some(json!({
            "time": self.rfc3339(), "level": "AUDIT", "msg": "audit_event",
            "audit_id": self.uuid(), "type": kind, "logged_at": self.rfc3339(),
            "outcome": outcome, "component": Render::s(&ev.server),
            "source": {"type": "network", "value": self.ip()},
            "subjects": subjects, "target": target,
            "metadata": {"extra": {"duration_ms": 1, "transport": "http"}},
        }))
    }

    fn agentgateway(&self) -> Option<Value> {
        let ev = self.ev;
        let mut r = json!({
            "level": "info", "time": self.unpadded_micros(), "scope": "request",
            "src.addr": format!("{}:50000", self.ip()), "http.method": "POST",
            "http.path": "/mcp", "http.version": "HTTP/1.1", "http.status": 200,
        });
        let set = |r: &mut Value, k: &str, v: Value| {
            if !v.is_null() {
                r[k] = v;
            }
        };
        set(&mut r, "trace.id", Render::s(&ev.trace_id));
        set(&mut r, "mcp.target", Render::s(&ev.server));
        if ev.kind != EventKind::AuthFailure {
            set(
                &mut r,
                "jwt.sub",
                self.agent().map_or(Value::Null, Value::from),
            );
            set(&mut r, "mcp.session.id", Render::s(&ev.session_id));
        }
        match ev.kind {
            EventKind::AuthFailure => {
                let why = match ev.reason.as_deref() {
                    Some("missing_token") => "no bearer token found".to_owned(),
                    Some("expired_token") => {
                        "the token is invalid or malformed: Error(ExpiredSignature)".to_owned()
                    }
                    Some("wrong_audience") => {
                        "the token is invalid or malformed: Error(InvalidAudience)".to_owned()
                    }
                    _ => "the token is invalid or malformed: Error(InvalidSignature)".to_owned(),
                };
                r["http.status"] = 401.into();
                r["reason"] = "JwtAuth".into();
                r["error"] =
                    format!("mcp authentication failure: authentication failure: {why}").into();
            }
            EventKind::SessionStart => r["mcp.method.name"] = "initialize".into(),
            EventKind::SessionEnd => {
                r["http.method"] = "DELETE".into();
                r["http.status"] = 202.into();
            }
            EventKind::ToolInvoke | EventKind::ToolDenied => {
                r["mcp.method.name"] = "tools/call".into();
                r["mcp.resource.type"] = "tool".into();
                set(&mut r, "gen_ai.tool.name", Render::s(&ev.tool));
                if ev.kind == EventKind::ToolDenied {
                    r["http.status"] = 400.into();
                    r["reason"] = "MCP".into();
                    r["error"] = format!(
                        "mcp: Unknown tool: {}",
                        ev.tool.as_deref().unwrap_or_default()
                    )
                    .into();
                }
            }
            _ => return None,
        }
        Some(r)
    }

    fn ocsf(&self) -> Option<Value> {
        let ev = self.ev;
        let user = match self.agent() {
            Some(a) => {
                json!({"uid": a, "type_id": 99, "type": "Agent", "credential_uid": Render::s(&ev.credential_id)})
            }
            None => json!({"name": "unknown"}),
        };
        let mut r = json!({
            "time": ev.ts, "severity_id": 1,
            "metadata": {"version": "1.8.0", "product": {"name": "mcp-gateway", "vendor_name": "example"},
                         "uid": self.uuid(), "tenant_uid": ev.tenant.as_ref(),
                         "correlation_uid": Render::s(&ev.trace_id)},
            "src_endpoint": {"ip": self.ip()},
            "unmapped": self.task_fields(),
        });
        let status = |ok: bool| if ok { (1, "Success") } else { (2, "Failure") };
        let api = |r: &mut Value, operation: &str, ok: bool| {
            let (id, name) = status(ok);
            r["class_uid"] = 6003.into();
            r["category_uid"] = 6.into();
            r["activity_id"] = 99.into();
            r["activity_name"] = "Invoke".into();
            r["type_uid"] = 600399.into();
            r["status_id"] = id.into();
            r["status"] = name.into();
            r["api"] = json!({"operation": operation, "service": {"name": Render::s(&ev.server)}});
            r["actor"] =
                json!({"user": user.clone(), "session": {"uid": Render::s(&ev.session_id)}});
        };
        match ev.kind {
            EventKind::AuthFailure | EventKind::AuthSuccess | EventKind::CredentialUsed => {
                let (id, name) = status(ev.kind != EventKind::AuthFailure);
                r["class_uid"] = 3002.into();
                r["category_uid"] = 3.into();
                // A credential's use is an Authentication Ticket (3).
                let activity = if ev.kind == EventKind::CredentialUsed {
                    3
                } else {
                    1
                };
                r["activity_id"] = activity.into();
                r["type_uid"] = (300200 + activity).into();
                r["status_id"] = id.into();
                r["status"] = name.into();
                r["status_detail"] = Render::s(&ev.reason);
                r["user"] = user;
                r["service"] = json!({"name": Render::s(&ev.server)});
            }
            EventKind::ToolInvoke => {
                api(&mut r, "tools/call", true);
                r["resources"] = json!([{"name": Render::s(&ev.tool), "type": "tool"}]);
                r["actor"]["authorizations"] = json!([{"decision": "allowed"}]);
            }
            EventKind::ToolDenied => {
                api(&mut r, "tools/call", false);
                r["resources"] = json!([{"name": Render::s(&ev.tool), "type": "tool"}]);
                r["actor"]["authorizations"] = json!([{"decision": "denied"}]);
                r["status_detail"] = ev.reason.as_deref().unwrap_or("policy_denied").into();
                r["http_response"] = json!({"code": 403});
            }
            EventKind::SessionStart => api(&mut r, "initialize", true),
            EventKind::SessionEnd => {
                api(&mut r, "session/delete", true);
                r["http_request"] = json!({"http_method": "DELETE"});
            }
            EventKind::CredentialIssued | EventKind::CredentialRevoked => {
                r["class_uid"] = 3001.into();
                r["category_uid"] = 3.into();
                let activity = if ev.kind == EventKind::CredentialIssued {
                    1
                } else {
                    6
                };
                r["activity_id"] = activity.into();
                r["type_uid"] = (300100 + activity).into();
                r["status_id"] = 1.into();
                r["user"] = user;
            }
            EventKind::Other => return None,
        }
        Some(r)
    }

    fn kong(&self) -> Option<Value> {
        let ev = self.ev;
        let mut r = json!({
            "started_at": ev.ts, "client_ip": self.ip(), "workspace": ev.tenant.as_ref(),
            "request": {"method": "POST", "uri": "/mcp"}, "response": {"status": 200},
            "service": {"name": Render::s(&ev.server)},
        });
        let consumer = self
            .agent()
            .map(|a| json!({"id": format!("c-{a}"), "username": a}));
        let mut mcp = json!({"mcp_server_id": Render::s(&ev.server)});
        if let Some(s) = &ev.session_id {
            mcp["mcp_session_id"] = s.as_ref().into();
        }
        match ev.kind {
            EventKind::AuthFailure => {
                r["response"]["status"] = 401.into();
                return Some(r);
            }
            EventKind::SessionStart => {
                mcp["rpc"] = json!([{"method": "initialize", "latency": 1, "id": "0"}]);
            }
            EventKind::SessionEnd => {
                r["request"]["method"] = "DELETE".into();
                r["request"]["headers"] = json!({"mcp-session-id": Render::s(&ev.session_id)});
                r["response"]["status"] = 202.into();
            }
            EventKind::ToolInvoke => {
                mcp["rpc"] = json!([{"method": "tools/call", "tool_name": Render::s(&ev.tool), "latency": 1, "id": self.n.to_string()}]);
            }
            EventKind::ToolDenied => {
                r["response"]["status"] = 403.into();
                mcp["audit"] = json!([{"primitive": "tool", "scope": "primitive",
                    "primitive_name": Render::s(&ev.tool),
                    "consumer": {"name": "agents", "id": format!("c-{}", self.agent().unwrap_or_default()), "identifier": "consumer_group"},
                    "action": "deny"}]);
            }
            _ => return None,
        }
        r["consumer"] = consumer?;
        r["ai"] = json!({"mcp": mcp});
        Some(r)
    }

    fn cloudflare(&self) -> Option<Value> {
        let ev = self.ev;
        match ev.kind {
            EventKind::AuthFailure | EventKind::AuthSuccess => {
                let agent = self.agent()?;
                Some(json!({
                    "Action": "login", "Allowed": ev.kind == EventKind::AuthSuccess,
                    "AppDomain": Render::s(&ev.server), "CreatedAt": self.rfc3339(),
                    "Email": format!("{agent}@example.com"), "IPAddress": self.ip(),
                    "RayID": format!("{:016x}", self.n), "UserUID": agent,
                }))
            }
            EventKind::SessionStart | EventKind::ToolInvoke | EventKind::ToolDenied => {
                let agent = self.agent()?;
                let mut r = json!({
                    "Datetime": ev.ts.saturating_mul(1_000_000), "ClientIP": self.ip(),
                    "SessionID": Render::s(&ev.session_id), "Success": true, "Error": "",
                    "UserID": agent, "PortalID": "portal", "ServerID": Render::s(&ev.server),
                    "Method": "initialize",
                });
                if ev.kind != EventKind::SessionStart {
                    r["Method"] = "tools/call".into();
                    r["ToolCallName"] = Render::s(&ev.tool);
                }
                if ev.kind == EventKind::ToolDenied {
                    r["Success"] = false.into();
                    r["Error"] = "tool not available in this portal".into();
                }
                Some(r)
            }
            _ => None,
        }
    }

    fn azure_apim(&self) -> Option<Value> {
        let ev = self.ev;
        let time = {
            let t = self.rfc3339();
            format!("{}0000Z", &t[..23])
        };
        match ev.kind {
            EventKind::AuthFailure => {
                let reason = match ev.reason.as_deref() {
                    Some("expired_token") => "TokenExpired",
                    Some("missing_token") => "TokenNotPresent",
                    Some("wrong_audience") => "TokenAudienceNotAllowed",
                    _ => "TokenSignatureInvalid",
                };
                let mut r = json!({
                    "Type": "ApiManagementGatewayLogs", "TimeGenerated": time,
                    "CorrelationId": self.uuid(), "Method": "POST", "ApiId": Render::s(&ev.server),
                    "ResponseCode": 401, "IsRequestSuccess": false, "CallerIpAddress": self.ip(),
                    "LastErrorSource": "validate-jwt", "LastErrorSection": "inbound",
                    "LastErrorReason": reason,
                });
                if let Some(a) = self.agent() {
                    r["UserId"] = a.into();
                }
                Some(r)
            }
            EventKind::SessionStart | EventKind::ToolInvoke | EventKind::ToolDenied => {
                let mut r = json!({
                    "Type": "ApiManagementGatewayMCPLog", "TimeGenerated": time,
                    "CorrelationId": self.uuid(), "Method": "initialize",
                    "SessionId": Render::s(&ev.session_id), "ServerName": Render::s(&ev.server),
                    "Error": "", "ErrorType": "",
                    // What a `trace` policy adds: the caller's identity.
                    "UserId": self.agent()?,
                });
                if ev.kind != EventKind::SessionStart {
                    r["Method"] = "tools/call".into();
                    r["ToolName"] = Render::s(&ev.tool);
                }
                if ev.kind == EventKind::ToolDenied {
                    r["Error"] = "Tool is not permitted by the gateway allow-list".into();
                    r["ErrorType"] = "PolicyDenied".into();
                }
                Some(r)
            }
            _ => None,
        }
    }

    fn contextforge(&self) -> Option<Value> {
        let ev = self.ev;
        let (kind, user, description) = match ev.kind {
            EventKind::AuthFailure => (
                "authentication_failure",
                self.agent().unwrap_or("unknown"),
                format!(
                    "Authentication failed for user {}: {}",
                    self.agent().unwrap_or("unknown"),
                    ev.reason.as_deref().unwrap_or("Token validation failed")
                ),
            ),
            EventKind::AuthSuccess => (
                "authentication_success",
                self.agent()?,
                format!("Authentication successful for user {}", self.agent()?),
            ),
            _ => return None,
        };
        Some(json!({
            "schema_version": "1.0", "event_id": format!("evt_{:012x}", self.n),
            "timestamp": format!("{}+00:00", &self.rfc3339()[..23]), "event_type": kind,
            "severity": "LOW", "category": "authentication", "description": description,
            "source": {"service": "mcpgateway", "version": "1.0.8", "instance_id": Render::s(&ev.server), "event_source": "auth"},
            "actor": {"user_id": user, "client_ip": self.ip()},
            "context": {"auth_method": "bearer_token", "correlation_id": Render::s(&ev.trace_id)},
            "action_taken": if ev.kind == EventKind::AuthFailure { "denied" } else { "allowed" },
        }))
    }

    fn couchbase(&self) -> Option<Value> {
        let ev = self.ev;
        let user = match self.agent() {
            Some(a) if ev.kind != EventKind::AuthFailure => json!({"domain": "oauth", "user": a}),
            _ => json!({"domain": "anonymous", "user": "anonymous"}),
        };
        let mut r = json!({
            "timestamp": self.rfc3339(), "real_userid": user,
            "server": {"version": "1.1.0", "host": Render::s(&ev.server)},
            "cid": self.uuid(), "outcome": "success",
        });
        let (id, name) = match ev.kind {
            EventKind::AuthFailure => {
                r["outcome"] = "denied".into();
                r["reason"] = "token_invalid".into();
                (57376, "token rejected")
            }
            EventKind::SessionStart => (57360, "session initialized"),
            EventKind::ToolInvoke => (61490, "document read"),
            EventKind::ToolDenied => {
                r["outcome"] = "denied".into();
                r["reason"] = "insufficient_scope".into();
                (57377, "scope check denied")
            }
            _ => return None,
        };
        r["id"] = id.into();
        r["name"] = name.into();
        r["description"] = name.into();
        if let Some(t) = &ev.tool {
            r["tool_name"] = t.as_ref().into();
        }
        Some(r)
    }

    fn ecs(&self) -> Option<Value> {
        let ev = self.ev;
        let (category, kind, action, outcome) = match ev.kind {
            EventKind::AuthFailure => ("authentication", "start", "login", "failure"),
            EventKind::AuthSuccess => ("authentication", "start", "login", "success"),
            EventKind::ToolInvoke => ("api", "access", "tools/call", "success"),
            EventKind::ToolDenied => ("api", "denied", "tools/call", "failure"),
            EventKind::SessionStart => ("session", "start", "initialize", "success"),
            _ => return None,
        };
        let mut r = json!({
            "@timestamp": self.rfc3339(),
            "event": {"kind": "event", "category": [category], "type": [kind], "action": action,
                      "outcome": outcome, "id": self.uuid(), "reason": Render::s(&ev.reason)},
            "organization": {"id": ev.tenant.as_ref()},
            "source": {"ip": self.ip()},
            "service": {"name": Render::s(&ev.server)},
            "trace": {"id": Render::s(&ev.trace_id)},
        });
        if let Some(a) = self.agent() {
            r["user"] = json!({"id": a});
            r["gen_ai"] = json!({"agent": {"id": a}});
        }
        if let Some(s) = &ev.session_id {
            r["mcp"] = json!({"session": {"id": s.as_ref()}});
        }
        if let Some(t) = &ev.tool {
            r["gen_ai"]["tool"] = json!({"name": t.as_ref()});
            r["gen_ai"]["operation"] = json!({"name": "execute_tool"});
        }
        Some(r)
    }
}
