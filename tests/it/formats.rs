//! Declarative input formats (DESIGN §2b, FORMATS.md): each built-in format
//! on the wire shapes of FORMATS.md, quirks included; `auto` detection;
//! fan-out positions and ids; secrets dropped before mapping; identity
//! and derived sessions; format files validated like rules.

use std::path::Path;
use std::sync::Arc;

use assert_cmd::Command;
use mcp_alertd::decode::{DecodeError, Decoded, Decoder, FormatSet, Framing, Selector};
use mcp_alertd::event::{Event, EventKind};
use serde_json::Value;

fn fixture(name: &str) -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/formats/{name}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn set() -> Arc<FormatSet> {
    Arc::new(FormatSet::built_in().expect("built-in formats compile"))
}

fn decoder(format: &str) -> Decoder {
    let mut d = Decoder::new(Framing::Auto, 65536);
    d.format = Selector::named(format, &set()).unwrap();
    d.derive_sessions_ms = Some(30 * 60_000);
    d
}

/// Every event of one record (rejected ones as errors).
fn events<'a>(
    d: &Decoder,
    line: &'a str,
) -> Result<Vec<Result<Event<'a>, DecodeError>>, DecodeError> {
    Ok(match d.decode_record(line.as_bytes())? {
        Decoded::One(ev) => vec![Ok(ev)],
        Decoded::Many(evs) => evs,
    })
}

/// The one event of a record.
fn one<'a>(d: &Decoder, line: &'a str) -> Event<'a> {
    let mut evs = events(d, line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(evs.len(), 1, "{line}");
    evs.pop().unwrap().unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn s<'a>(v: &'a Option<std::borrow::Cow<'a, str>>) -> Option<&'a str> {
    v.as_deref()
}

/// The tool and reason of the `tool.denied` a record maps to.
fn denied(d: &Decoder, line: &str) -> Denial {
    let ev = one(d, line);
    assert_eq!(ev.kind, EventKind::ToolDenied, "{line}");
    Denial {
        tool: s(&ev.tool).map(str::to_owned),
        reason: s(&ev.reason).map(str::to_owned),
    }
}

#[derive(Debug, PartialEq)]
struct Denial {
    tool: Option<String>,
    reason: Option<String>,
}

impl From<(&str, &str)> for Denial {
    fn from((tool, reason): (&str, &str)) -> Denial {
        Denial {
            tool: Some(tool.to_owned()),
            reason: Some(reason.to_owned()),
        }
    }
}

#[test]
fn toolhive_audit_events() {
    let d = decoder("toolhive");
    let lines = fixture("toolhive");
    let ev = one(&d, &lines[0]);
    assert_eq!(ev.kind, EventKind::AuthFailure);
    assert!(ev.unclaimed, "a 401 carries no identity");
    assert_eq!(s(&ev.agent_id), Some("unknown"));
    assert_eq!(s(&ev.source_ip), Some("203.0.113.24"));
    assert_eq!(s(&ev.reason), Some("unauthenticated"));
    assert_eq!(s(&ev.server), Some("github-mcp"));
    // `logged_at`, not slog's `time`.
    assert_eq!(ev.ts, 1_795_857_302_412);
    let ev = one(&d, &lines[1]);
    assert_eq!(ev.kind, EventKind::SessionStart);
    assert_eq!(s(&ev.agent_id), Some("agent-build-7"));
    assert_eq!(s(&ev.session_id), None, "ToolHive logs no session id");
    let ev = one(&d, &lines[2]);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("create_issue"))
    );
    let ev = one(&d, &lines[3]);
    assert_eq!(ev.kind, EventKind::ToolDenied);
    assert_eq!(s(&ev.tool), Some("delete_repository"));
    assert_eq!(s(&ev.reason), Some("policy_denied"));
    let ev = one(&d, &lines[4]);
    assert_eq!(ev.kind, EventKind::ToolInvoke);
    assert_eq!(
        s(&ev.server),
        Some("postgres-mcp"),
        "vMCP backend before component"
    );
    assert_eq!(s(&ev.reason), Some("jsonrpc:-32602"));
    // Product fields are kept for rule conditions, under their input paths.
    assert_eq!(ev.extra("outcome"), Some(&Value::from("application_error")));

    // The RFC 8693 actor is the agent, not the subject it acts for.
    let delegated = lines[2].replace(
        r#""chain":[{"iss":"https://auth.example.com","sub":"agent-build-7"}]"#,
        r#""chain":[{"iss":"https://auth.example.com","sub":"agent-runner-2"}]"#,
    );
    assert_ne!(delegated, lines[2]);
    assert_eq!(s(&one(&d, &delegated).agent_id), Some("agent-runner-2"));
    // The proxy runner's own log lines on the same stream are unmapped.
    let app =
        r#"{"time":"2026-11-28T09:15:02.4Z","level":"INFO","msg":"starting proxy","port":8080}"#;
    assert!(
        matches!(d.decode_record(app.as_bytes()), Err(DecodeError::Unmapped(f)) if &*f == "toolhive")
    );
    // An audit type no mapping names (tools/list) is unmapped too.
    let list = lines[2].replace(r#""type":"mcp_tool_call""#, r#""type":"mcp_tools_list""#);
    assert!(matches!(
        d.decode_record(list.as_bytes()),
        Err(DecodeError::Unmapped(_))
    ));
    // An authenticated refusal of another request is a custom
    // `request.denied`; of a prompt or resource (FORMATS §1.9), nothing.
    let refused =
        |ty: &str| lines[3].replace(r#""type":"mcp_tool_call""#, &format!(r#""type":"{ty}""#));
    let other = refused("mcp_request");
    let ev = one(&d, &other);
    assert_eq!(
        (&*ev.event, s(&ev.reason)),
        ("request.denied", Some("policy_denied"))
    );
    for ty in ["mcp_prompt_get", "mcp_resource_read", "mcp_resources_list"] {
        assert!(
            matches!(
                d.decode_record(refused(ty).as_bytes()),
                Err(DecodeError::Unmapped(_))
            ),
            "{ty}"
        );
    }
}

#[test]
fn agentgateway_request_log() {
    let d = decoder("agentgateway");
    let lines = fixture("agentgateway");
    let ev = one(&d, &lines[0]);
    assert_eq!(ev.kind, EventKind::AuthFailure);
    assert_eq!(s(&ev.reason), Some("expired_token"));
    assert_eq!(s(&ev.source_ip), Some("203.0.113.40"), "port stripped");
    assert_eq!(s(&ev.trace_id), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    let ev = one(&d, &lines[1]);
    assert_eq!(ev.kind, EventKind::SessionStart);
    assert_eq!(
        s(&ev.session_id),
        Some("0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f")
    );
    // `.77102Z` is 77,102 µs: 13.077 s, not 13.771 s.
    assert_eq!(ev.ts % 60_000, 13_077);
    let ev = one(&d, &lines[2]);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("create_issue"))
    );
    assert_eq!(s(&ev.server), Some("github"));
    let ev = one(&d, &lines[3]);
    assert_eq!(ev.kind, EventKind::ToolDenied);
    assert_eq!(
        s(&ev.tool),
        Some("delete_repository"),
        "the resolved name, not the prefixed one"
    );
    assert_eq!(s(&ev.reason), Some("policy_denied"));
    assert_eq!(ev.ts % 60_000, 16_003, "`.3399Z` is 3,399 µs");
    let ev = one(&d, &lines[4]);
    assert_eq!(ev.kind, EventKind::SessionEnd, "DELETE ends the session");
    // Missing token, guardrail denial.
    let missing = lines[0].replace(
        "the token is invalid or malformed: Error(ExpiredSignature)",
        "no bearer token found",
    );
    assert_eq!(s(&one(&d, &missing).reason), Some("missing_token"));
    let other = lines[0].replace("Error(ExpiredSignature)", "Error(InvalidSignature)");
    assert_eq!(s(&one(&d, &other).reason), Some("invalid_token"));
    let guard = lines[3].replace(
        "mcp: Unknown tool: github_delete_repository",
        "mcp: mcpGuardrails rejected: secrets in arguments",
    );
    let ev = one(&d, &guard);
    assert_eq!(
        (ev.kind, s(&ev.reason)),
        (EventKind::ToolDenied, Some("guardrail"))
    );
    // A denial whose record lacks `gen_ai.tool.name` is still a denial (not
    // the tools/call it answered), of the tool the error names.
    let bare = lines[3].replace(r#""gen_ai.tool.name":"delete_repository","#, "");
    assert_ne!(bare, lines[3]);
    assert_eq!(
        denied(&d, &bare),
        ("github_delete_repository", "policy_denied").into()
    );
    // A tool no target serves ("unknown tool <name>", lower case, no
    // colon): the agent called a tool it cannot see (FORMATS §7.2), as the
    // gateway writes it for legacy and for 2026-07-28 clients.
    for error in [
        "mcp: failed to send message: invalid request: unknown tool github_drop_db",
        "mcp: invalid request parameters: unknown tool github_drop_db",
    ] {
        let unknown = bare.replace("mcp: Unknown tool: github_delete_repository", error);
        assert_eq!(
            denied(&d, &unknown),
            ("github_drop_db", "unknown_or_hidden_tool").into()
        );
    }
    // Other failures of a call stay invokes (the upstream answered).
    let failed = lines[3].replace(
        "mcp: Unknown tool: github_delete_repository",
        "mcp: upstream closed on receive",
    );
    assert_eq!(one(&d, &failed).kind, EventKind::ToolInvoke);
}

#[test]
fn ocsf_authentication_api_activity_and_account_change() {
    let d = decoder("ocsf");
    let lines = fixture("ocsf");
    let ev = one(&d, &lines[0]);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("create_issue"))
    );
    assert_eq!(&*ev.tenant, "acme", "metadata.tenant_uid");
    assert_eq!(s(&ev.credential_id), Some("cred-9f2e"));
    assert_eq!(
        s(&ev.session_id),
        Some("0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f")
    );
    assert_eq!(s(&ev.server), Some("github"));
    assert_eq!(ev.ts, 1_795_858_815_218);
    let ev = one(&d, &lines[1]);
    assert_eq!(
        (ev.kind, s(&ev.reason)),
        (EventKind::AuthFailure, Some("expired_token"))
    );
    assert_eq!(s(&ev.agent_id), Some("agent-build-7"));
    let ev = one(&d, &lines[2]);
    assert_eq!(ev.kind, EventKind::ToolDenied);
    assert_eq!(s(&ev.reason), Some("not_in_allowlist"));
    // A Logon that opens a new session is an auth success and a session start.
    let evs: Vec<_> = events(&d, &lines[3])
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let kinds: Vec<_> = evs.iter().map(|e| (e.kind, e.part)).collect();
    assert_eq!(
        kinds,
        [(EventKind::AuthSuccess, 1), (EventKind::SessionStart, 2)]
    );
    assert_eq!(one(&d, &lines[4]).kind, EventKind::SessionEnd, "Logoff");
    // `user` is required in 3002: `{"name":"unknown"}` claims no identity.
    let anon = lines[1].replace(r#""user":{"uid":"agent-build-7","type_id":99,"type":"Agent","credential_uid":"cred-9f2e"}"#, r#""user":{"name":"unknown"}"#);
    assert_ne!(anon, lines[1]);
    assert!(one(&d, &anon).unclaimed);
    // Native fields OCSF has no attribute for, from `unmapped`.
    let start = r#"{"class_uid":6003,"activity_id":99,"time":1795858813000,"status_id":1,"api":{"operation":"initialize"},"actor":{"user":{"uid":"a1"},"session":{"uid":"s1"}},"metadata":{"tenant_uid":"acme"},"unmapped":{"declared_task":"triage","expected_runtime_s":600,"allowed_tools":["search","read"],"role":"support"}}"#;
    let ev = one(&d, start);
    assert_eq!(ev.kind, EventKind::SessionStart);
    assert_eq!(s(&ev.declared_task), Some("triage"));
    assert_eq!(ev.expected_runtime_s, Some(600.0));
    assert_eq!(s(&ev.role), Some("support"));
    assert_eq!(ev.allowed_tools.as_ref().map(Vec::len), Some(2));
    // Account Change: a credential issued and revoked.
    let issued = r#"{"class_uid":3001,"activity_id":1,"time":1795858800000,"user":{"uid":"a1","credential_uid":"key-7"},"metadata":{"tenant_uid":"acme"}}"#;
    let ev = one(&d, issued);
    assert_eq!(
        (ev.kind, s(&ev.credential_id)),
        (EventKind::CredentialIssued, Some("key-7"))
    );
    let revoked = issued.replace(r#""activity_id":1"#, r#""activity_id":6"#);
    assert_eq!(one(&d, &revoked).kind, EventKind::CredentialRevoked);
    // Another OCSF class is not this format's.
    let other = r#"{"class_uid":4001,"time":1795858800000}"#;
    assert!(matches!(
        d.decode_record(other.as_bytes()),
        Err(DecodeError::Unmapped(_))
    ));
}

#[test]
fn kong_fans_out_calls_and_acl_decisions() {
    let d = decoder("kong");
    let lines = fixture("kong");
    let kinds = |line: &str| -> Vec<(EventKind, u32)> {
        events(&d, line)
            .unwrap()
            .into_iter()
            .map(|e| e.map(|e| (e.kind, e.part)).unwrap())
            .collect()
    };
    assert_eq!(
        kinds(&lines[0]),
        [(EventKind::CredentialUsed, 1), (EventKind::SessionStart, 2)]
    );
    assert_eq!(
        kinds(&lines[1]),
        [(EventKind::CredentialUsed, 1), (EventKind::ToolInvoke, 2)]
    );
    let evs = events(&d, &lines[2]).unwrap();
    let denied = evs[0].as_ref().unwrap();
    assert_eq!(denied.kind, EventKind::ToolDenied);
    assert_eq!(s(&denied.tool), Some("delete-pet"));
    assert_eq!(s(&denied.reason), Some("acl_deny"));
    // The ACL's matched subject is a consumer group, never the identity.
    assert_eq!(s(&denied.agent_id), Some("bob"));
    assert_eq!(denied.ts, 1_795_858_810_450, "started_at is epoch ms");
    let ev = one(&d, &lines[3]);
    assert_eq!(
        (ev.kind, s(&ev.source_ip)),
        (EventKind::AuthFailure, Some("198.51.100.77"))
    );
    // Two denials in one record: two events with their own positions.
    let two = lines[2].replace(
        r#""action":"deny"}]"#,
        r#""action":"deny"},{"primitive":"tool","scope":"primitive","primitive_name":"drop-db","consumer":{"name":"support","id":"0d1e","identifier":"consumer_group"},"action":"deny"}]"#,
    );
    let evs = events(&d, &two).unwrap();
    let tools: Vec<_> = evs
        .iter()
        .map(|e| (e.as_ref().unwrap().part, s(&e.as_ref().unwrap().tool)))
        .collect();
    assert_eq!(tools, [(1, Some("delete-pet")), (2, Some("drop-db"))]);
    // A call whose record has no `consumer` object: the ACL decision's
    // consumer id is the caller, its name (a group) never is.
    let bare = lines[1].replace(
        r#""consumer":{"id":"5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d","username":"alice"},"#,
        "",
    );
    assert_ne!(bare, lines[1]);
    let evs = events(&d, &bare).unwrap();
    let invoke = evs
        .iter()
        .flatten()
        .find(|e| e.kind == EventKind::ToolInvoke);
    assert_eq!(
        invoke.map(|e| s(&e.agent_id)),
        Some(Some("5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"))
    );
}

#[test]
fn cloudflare_portal_and_access_logs() {
    let d = decoder("cloudflare");
    let lines = fixture("cloudflare");
    assert_eq!(one(&d, &lines[0]).kind, EventKind::SessionStart);
    let ev = one(&d, &lines[1]);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("create_ticket"))
    );
    let ev = one(&d, &lines[2]);
    assert_eq!(ev.kind, EventKind::ToolDenied);
    // `Datetime` as Unix nanoseconds (the Logpush default).
    assert_eq!(ev.ts, 1_795_857_619_000);
    let ev = one(&d, &lines[3]);
    assert_eq!(
        (ev.kind, s(&ev.reason)),
        (EventKind::AuthFailure, Some("access_denied"))
    );
    assert_eq!(s(&ev.source_ip), Some("198.51.100.7"));
    // A Logpush job lists the fields it writes (`field_names`): one
    // without the portal and server ids is read too, named or detected.
    let lean = r#"{"Datetime":1795857619000000000,"Method":"tools/call","ToolCallName":"delete_project","Success":false,"Error":"tool not available in this portal","UserID":"u-1","ClientIP":"198.51.100.7"}"#;
    for d in [&d, &decoder("auto")] {
        let ev = one(d, lean);
        assert_eq!(
            (ev.kind, s(&ev.tool), s(&ev.agent_id)),
            (EventKind::ToolDenied, Some("delete_project"), Some("u-1"))
        );
    }
}

#[test]
fn azure_apim_rows_and_event_hubs_batches() {
    let d = decoder("azure_apim");
    let lines = fixture("azure_apim");
    assert_eq!(one(&d, &lines[0]).kind, EventKind::SessionStart);
    let ev = one(&d, &lines[1]);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("create_quote"))
    );
    assert_eq!(ev.ts, 1_795_858_209_881, "7 fraction digits");
    assert_eq!(
        s(&ev.agent_id),
        Some("unknown"),
        "the MCP log carries no identity"
    );
    // A policy 403 without a joinable MCP row says nothing mappable.
    assert!(matches!(
        d.decode_record(lines[2].as_bytes()),
        Err(DecodeError::Unmapped(_))
    ));
    let ev = one(&d, &lines[3]);
    assert_eq!(
        (ev.kind, s(&ev.reason)),
        (EventKind::AuthFailure, Some("expired_token"))
    );
    assert_eq!(s(&ev.source_ip), Some("203.0.113.9"));
    // An Event Hubs batch: one event per row, positions `#n`.
    let batch = format!(r#"{{"records":[{},{},{}]}}"#, lines[0], lines[2], lines[3]);
    let evs = events(&d, &batch).unwrap();
    let kinds: Vec<_> = evs
        .iter()
        .map(|e| {
            let e = e.as_ref().unwrap();
            (e.kind, e.part)
        })
        .collect();
    assert_eq!(
        kinds,
        [(EventKind::SessionStart, 1), (EventKind::AuthFailure, 2)]
    );
}

#[test]
fn contextforge_and_couchbase() {
    let d = decoder("contextforge");
    let lines = fixture("contextforge");
    let ev = one(&d, &lines[0]);
    assert_eq!(ev.kind, EventKind::AuthFailure);
    assert!(ev.unclaimed, "`unknown` is no identity");
    assert_eq!(s(&ev.reason), Some("Token validation failed"));
    assert_eq!(s(&ev.source_ip), Some("203.0.113.61"));
    // The whole detail, colons included.
    let detail = lines[0].replace(
        "Token validation failed",
        "Token validation failed: signature expired",
    );
    assert_eq!(
        s(&one(&d, &detail).reason),
        Some("Token validation failed: signature expired")
    );
    let ev = one(&d, &lines[1]);
    assert_eq!(
        (ev.kind, s(&ev.agent_id)),
        (EventKind::AuthSuccess, Some("build-bot@example.com"))
    );
    let ev = one(&d, &lines[2]);
    assert_eq!(
        (ev.kind, &*ev.event),
        (EventKind::Other, "audit_update_tool")
    );

    let d = decoder("couchbase");
    let lines = fixture("couchbase");
    let ev = one(&d, &lines[0]);
    assert_eq!(
        (ev.kind, s(&ev.reason)),
        (EventKind::AuthFailure, Some("token_invalid"))
    );
    assert!(ev.unclaimed, "an anonymous domain is no identity");
    assert_eq!(one(&d, &lines[1]).kind, EventKind::SessionStart);
    let ev = one(&d, &lines[2]);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("get_document_by_id"))
    );
    let ev = one(&d, &lines[3]);
    assert_eq!(ev.kind, EventKind::ToolDenied);
    assert_eq!(s(&ev.credential_id), Some("agent-runtime-prod"));
    assert_eq!(s(&ev.reason), Some("insufficient_scope"));
}

#[test]
fn ecs_events() {
    let d = decoder("ecs");
    let base = r#"{"@timestamp":"2026-11-28T09:40:16.339Z","event":{"kind":"event","category":["api"],"type":["access"],"action":"tools/call","outcome":"success"},"organization":{"id":"acme"},"gen_ai":{"agent":{"id":"agent-build-7"},"tool":{"name":"create_issue"},"operation":{"name":"execute_tool"}},"mcp":{"session":{"id":"s-1"}},"source":{"ip":"203.0.113.40"},"service":{"name":"github"}}"#;
    let ev = one(&d, base);
    assert_eq!(
        (ev.kind, s(&ev.tool)),
        (EventKind::ToolInvoke, Some("create_issue"))
    );
    assert_eq!((&*ev.tenant, s(&ev.session_id)), ("acme", Some("s-1")));
    // A deny is decided from `event.type`, whatever `event.outcome` says.
    for outcome in ["success", "failure"] {
        let denied = base
            .replace(r#""type":["access"]"#, r#""type":["denied"]"#)
            .replace(
                r#""outcome":"success""#,
                &format!(r#""outcome":"{outcome}""#),
            );
        assert_eq!(one(&d, &denied).kind, EventKind::ToolDenied, "{outcome}");
    }
    let auth = r#"{"@timestamp":"2026-11-28T09:40:12.504Z","event":{"kind":"event","category":["authentication"],"type":["start"],"outcome":"failure","reason":"expired_token"},"source":{"ip":"203.0.113.40"}}"#;
    let ev = one(&d, auth);
    assert_eq!(
        (ev.kind, s(&ev.reason)),
        (EventKind::AuthFailure, Some("expired_token"))
    );
    // Pipelines often leave `event.kind` out; with flat dotted keys too,
    // named or detected.
    let lean = r#"{"@timestamp":"2026-11-28T09:40:17.000Z","event.action":"tools/call","event.type":["denied"],"gen_ai.agent.id":"agent-build-7","gen_ai.tool.name":"drop_table"}"#;
    for d in [&d, &decoder("auto")] {
        let ev = one(d, lean);
        assert_eq!(
            (ev.kind, s(&ev.tool), s(&ev.agent_id)),
            (
                EventKind::ToolDenied,
                Some("drop_table"),
                Some("agent-build-7")
            )
        );
    }
}

#[test]
fn a_key_given_twice_in_a_mapped_record_is_a_bad_field() {
    let d = decoder("ocsf");
    let line = &fixture("ocsf")[0];
    assert!(line.contains("\"metadata\""), "{line}");
    let forged = line.replacen('{', r#"{"metadata":{"tenant_uid":"other"},"#, 1);
    let err = events(&d, &forged).unwrap_err();
    assert_eq!(err.reason(), "bad_field", "{forged}");
    assert!(
        err.to_string().contains("duplicate key `metadata`"),
        "{err}"
    );
    one(&d, line);
}

#[test]
fn auto_detects_every_format_and_native_first() {
    let d = decoder("auto");
    for name in mcp_alertd::corpus::render::FORMATS {
        let explicit = decoder(name);
        for line in fixture(name) {
            let a = events(&d, &line).map(|v| {
                v.into_iter()
                    .map(|e| e.map(|e| (e.kind, e.ts, e.part)))
                    .collect::<Vec<_>>()
            });
            let b = events(&explicit, &line).map(|v| {
                v.into_iter()
                    .map(|e| e.map(|e| (e.kind, e.ts, e.part)))
                    .collect::<Vec<_>>()
            });
            assert_eq!(a, b, "{name}: {line}");
        }
    }
    let native = r#"{"ts":"2026-11-28T09:00:00Z","event":"auth.failure","agent_id":"a1"}"#;
    assert_eq!(one(&d, native).kind, EventKind::AuthFailure);
    assert!(
        matches!(d.decode_record(br#"{"hello":"world"}"#), Err(DecodeError::Unmapped(f)) if &*f == "auto")
    );
}

#[test]
fn secrets_are_dropped_before_mapping_in_every_format() {
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.planted-secret";
    let planted = [
        (
            "toolhive",
            2,
            r#""data":{"request":{"params":{"access_token":"TOKEN"}}},"#,
        ),
        ("agentgateway", 2, r#""authorization":"Bearer TOKEN","#),
        (
            "kong",
            1,
            r#""request_headers":{"authorization":"Bearer TOKEN","apikey":"TOKEN"},"#,
        ),
        (
            "ocsf",
            0,
            r#""unmapped":{"password":"TOKEN","client_secret":"TOKEN"},"#,
        ),
        ("cloudflare", 1, r#""api_key":"TOKEN","#),
        (
            "azure_apim",
            1,
            r#""Headers":{"Ocp-Apim-Subscription-Key":"k","authorization":"TOKEN"},"#,
        ),
        ("contextforge", 1, r#""metadata":{"token":"TOKEN"},"#),
        ("couchbase", 2, r#""args":{"secret":"TOKEN"},"#),
    ];
    for (name, index, field) in planted {
        let d = decoder(name);
        let line =
            fixture(name)[index].replacen('{', &format!("{{{}", field.replace("TOKEN", TOKEN)), 1);
        for ev in events(&d, &line).unwrap() {
            let ev = ev.unwrap();
            let kept = serde_json::to_string(
                &ev.extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            assert!(ev.extras().count() > 2, "{name}: the input fields are kept");
            assert!(!kept.contains("planted-secret"), "{name}: {kept}");
            for f in mcp_alertd::event::FieldId::ALL {
                assert!(
                    !ev.get(f).unwrap_or_default().contains("planted-secret"),
                    "{name}: {f:?}"
                );
            }
        }
    }
}

/// `replay` with each format: the alerts, by rule.
fn replay_rules(args: &[&str], input: &str) -> Vec<Value> {
    let out = Command::cargo_bin("mcp-alertd")
        .unwrap()
        .arg("replay")
        .args(args)
        .arg("-")
        .write_stdin(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn failures_without_identity_are_keyed_by_source_address() {
    // Four anonymous 401s from one address, four from another: one burst
    // alert per address, keyed by `source_ip`.
    let mut input = String::new();
    for (i, ip) in ["203.0.113.24", "198.51.100.9"].iter().enumerate() {
        for n in 0..4 {
            input += &fixture("toolhive")[0]
                .replace("203.0.113.24", ip)
                .replace("09:15:02.412871Z", &format!("09:15:0{}.{}00000Z", 2 + n, i));
            input.push('\n');
        }
    }
    let alerts = replay_rules(&["--format", "toolhive"], &input);
    let keys: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["rule"] == "auth_failure_burst")
        .map(|a| &a["key"])
        .collect();
    assert_eq!(
        keys,
        [
            &serde_json::json!({"source_ip": "203.0.113.24"}),
            &serde_json::json!({"source_ip": "198.51.100.9"})
        ]
    );
}

#[test]
fn derived_sessions_split_on_idle_time_and_initialize() {
    // ToolHive logs no session id: five denials in one derived session are
    // an incident; the same denials split by an idle hour are not.
    let denied = &fixture("toolhive")[3];
    let at = |min: u32| {
        denied.replace(
            "09:15:44.007290Z",
            &format!("{:02}:{:02}:44.007290Z", 9 + min / 60, min % 60),
        )
    };
    let close: String = (0..5).map(|m| at(m) + "\n").collect();
    let alerts = replay_rules(
        &["--format", "toolhive", "--derive-sessions", "30m"],
        &close,
    );
    let incidents: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["rule"] == "session_injection_incident")
        .collect();
    assert_eq!(incidents.len(), 1);
    assert_eq!(
        incidents[0]["key"]["session_id"],
        "agent-build-7@2026-11-28T09:00:44.007Z"
    );
    let apart: String = [0, 1, 2, 40, 41].iter().map(|&m| at(m) + "\n").collect();
    let alerts = replay_rules(
        &["--format", "toolhive", "--derive-sessions", "30m"],
        &apart,
    );
    assert!(
        alerts
            .iter()
            .all(|a| a["rule"] != "session_injection_incident")
    );
    let sessions: std::collections::BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a["rule"] == "unauthorized_tool_attempt")
        .map(|a| a["key"]["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    // A successful initialize starts a new session at once, and derived
    // sessions raise no session.start of their own (no overrun alert).
    let init = fixture("toolhive")[1].replace("09:15:40.118490Z", "09:02:10.000000Z");
    let mixed = format!(
        "{}\n{}\n{}\n{init}\n{}\n{}\n",
        at(0),
        at(1),
        at(2),
        at(3),
        at(4)
    );
    let alerts = replay_rules(
        &["--format", "toolhive", "--derive-sessions", "30m"],
        &mixed,
    );
    assert!(
        alerts
            .iter()
            .all(|a| a["rule"] != "session_injection_incident" && a["rule"] != "session_overrun")
    );
    // Without `--derive-sessions`, tool events lack the required session.
    let out = Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["replay", "--format", "toolhive", "-"])
        .write_stdin(close)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing_field"));
}

#[test]
fn fanned_out_events_have_their_own_positions_and_ids() {
    let line = fixture("kong")[2].replace(
        r#""action":"deny"}]"#,
        r#""action":"deny"},{"primitive":"tool","scope":"primitive","primitive_name":"drop-db","consumer":{"id":"0d1e"},"action":"deny"}]"#,
    );
    let alerts = replay_rules(&["--format", "kong"], &format!("{line}\n"));
    let denied: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["rule"] == "unauthorized_tool_attempt")
        .collect();
    assert_eq!(denied.len(), 2);
    assert_ne!(denied[0]["id"], denied[1]["id"]);
    assert_eq!(denied[0]["events"][0]["position"], "stdin:1#1");
    assert_eq!(denied[1]["events"][0]["position"], "stdin:1#2");
    // The same input replayed gives the same ids.
    let again = replay_rules(&["--format", "kong"], &format!("{line}\n"));
    assert_eq!(
        alerts.iter().map(|a| &a["id"]).collect::<Vec<_>>(),
        again.iter().map(|a| &a["id"]).collect::<Vec<_>>()
    );
}

#[test]
fn unmapped_records_are_counted_not_rejected() {
    let input = format!(
        "{}\n{{\"msg\":\"starting\",\"level\":\"INFO\"}}\nnot json\n",
        fixture("toolhive")[0]
    );
    let out = Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["replay", "--format", "toolhive", "--framing", "jsonl", "-"])
        .write_stdin(input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 records, 1 events, 1 rejected"), "{err}");
    assert!(err.contains("unmapped 1"), "{err}");
}

#[test]
fn user_formats_are_validated_with_every_error_and_used() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        r#"
format = "other"
signature = { "a..b" = 1 }
[fields]
ts = { path = "t", time = "fortnights" }
agent = { nope = 1 }
[[map]]
event = "tool.denied"
when = { kind = { re = "(" } }
"#,
    )
    .unwrap();
    let out = Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--formats"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "does not match the file name",
        "empty segment",
        "`time` is one of",
        "unknown key `nope`",
        "invalid regex",
        "`agent_id` is required for tool.denied",
        "`tool` is required",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // A working user format, named by a source of replay.
    std::fs::remove_file(dir.path().join("broken.toml")).unwrap();
    std::fs::write(
        dir.path().join("envoy.toml"),
        r#"
title = "Envoy AI Gateway access log"
signature = { start_time = { exists = true }, response_code = { exists = true } }
[fields]
ts = "start_time"
agent_id = { path = "x-auth-identity", value = "unknown" }
session_id = "mcp.session.id"
tool = "mcp.tool.name"
source_ip = "x-forwarded-for"
[[map]]
event = "auth.failure"
when = { response_code = "401" }
[[map]]
event = "tool.denied"
when = { "mcp.method.name" = "tools/call", response_code = "403" }
fields.reason = { value = "insufficient_scope" }
[[map]]
event = "tool.invoke"
when = { "mcp.method.name" = "tools/call", response_code = { lt = 300 } }
"#,
    )
    .unwrap();
    let envoy = [
        r#"{"start_time":"2026-11-28T10:05:00.012Z","method":"POST","response_code":"401","x-forwarded-for":"203.0.113.80","mcp.session.id":null}"#,
        r#"{"start_time":"2026-11-28T10:05:02.401Z","method":"POST","response_code":"200","x-forwarded-for":"203.0.113.80","mcp.session.id":"c3Vi","mcp.method.name":"tools/call","mcp.tool.name":"search_docs"}"#,
        r#"{"start_time":"2026-11-28T10:05:04.950Z","method":"POST","response_code":"403","x-forwarded-for":"203.0.113.80","mcp.session.id":"c3Vi","mcp.method.name":"tools/call","mcp.tool.name":"delete_index"}"#,
    ];
    let alerts = replay_rules(
        &[
            "--formats",
            dir.path().to_str().unwrap(),
            "--format",
            "envoy",
        ],
        &(envoy.join("\n") + "\n"),
    );
    let rules: Vec<&str> = alerts.iter().map(|a| a["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["unauthorized_tool_attempt"]);
    assert_eq!(alerts[0]["events"][0]["tool"], "delete_index");
    // An unknown format name is a usage error.
    Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["replay", "--format", "nope", "-"])
        .write_stdin("")
        .assert()
        .code(2);
}

fn with_config(command: &str, cfg: &Path) -> std::process::Output {
    Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args([command, "--config"])
        .arg(cfg)
        .output()
        .unwrap()
}

#[test]
fn sources_name_their_format_and_check_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let write = |text: &str| {
        std::fs::write(
            &cfg,
            format!("state_dir = \"{}\"\n{text}", dir.path().display()),
        )
        .unwrap()
    };
    // A framing where the format goes, an empty tenant, a bad duration:
    // every problem at once.
    write(
        r#"[[sources]]
type = "syslog_udp"
address = "127.0.0.1:0"
format = "syslog"
tenant = ""
derive_sessions = "soon"
"#,
    );
    let out = with_config("check", &cfg);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "write `framing = \"syslog\"`",
        "tenant: must not be empty",
        "derive_sessions",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // An unknown format name refuses the start too.
    write("[[sources]]\ntype = \"syslog_udp\"\naddress = \"127.0.0.1:0\"\nformat = \"nope\"\n");
    let out = with_config("check", &cfg);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format `nope`"));
    let out = with_config("run", &cfg);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A valid one: check lists the source's format and which are in use.
    write(
        r#"[metrics]
enabled = false
[[sources]]
name = "gateway"
type = "syslog_udp"
address = "127.0.0.1:0"
format = "agentgateway"
tenant = "acme"
[[sources]]
name = "mixed"
type = "syslog_tcp"
address = "127.0.0.1:0"
format = "auto"
derive_sessions = "30m"
"#,
    );
    let out = with_config("check", &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("format agentgateway, tenant acme"), "{text}");
    assert!(
        text.contains("format auto, sessions derived after 30m"),
        "{text}"
    );
    assert!(text.contains("formats OK: 9 formats"), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap()
            .to_owned()
    };
    assert!(line("agentgateway").contains("in use"), "{text}");
    assert!(line("toolhive").contains("in use (auto)"), "{text}");
}

/// What each format can carry of the examples: the rules whose alerts must
/// equal the native run's, the key fields compared without (derived in
/// place of the product's), whether records carry the tenant and the
/// session id (else `--tenant` per tenant, and derived sessions).
/// (format, rules compared, key fields lost, carries the tenant, carries
/// the session id).
type RoundTrip = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    bool,
    bool,
);

const ROUND_TRIP: [RoundTrip; 9] = [
    (
        "ocsf",
        &[
            "auth_failure_burst",
            "unauthorized_tool_attempt",
            "session_injection_incident",
            "credential_unused",
            "credential_unused_revoke",
            "session_overrun",
        ],
        &[],
        true,
        true,
    ),
    (
        "ecs",
        &[
            "auth_failure_burst",
            "unauthorized_tool_attempt",
            "session_injection_incident",
        ],
        &[],
        true,
        true,
    ),
    (
        "kong",
        &["unauthorized_tool_attempt", "session_injection_incident"],
        &[],
        true,
        true,
    ),
    (
        "agentgateway",
        &["unauthorized_tool_attempt", "session_injection_incident"],
        &[],
        false,
        true,
    ),
    (
        "cloudflare",
        &[
            "auth_failure_burst",
            "unauthorized_tool_attempt",
            "session_injection_incident",
        ],
        &[],
        false,
        true,
    ),
    (
        "azure_apim",
        &[
            "auth_failure_burst",
            "unauthorized_tool_attempt",
            "session_injection_incident",
        ],
        &[],
        false,
        true,
    ),
    ("contextforge", &["auth_failure_burst"], &[], false, true),
    (
        "toolhive",
        &["unauthorized_tool_attempt"],
        &["session_id"],
        false,
        false,
    ),
    (
        "couchbase",
        &["unauthorized_tool_attempt"],
        &["session_id"],
        false,
        false,
    ),
];

/// Alerts of lines through one decoder, projected to what a format keeps.
fn projected(d: &Decoder, lines: &[String], rules: &[&str], lost: &[&str]) -> Vec<String> {
    use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};
    use mcp_alertd::event::Position;
    use mcp_alertd::pipeline::step::Record;
    use mcp_alertd::replay::Replayer;
    let set = Arc::new(RuleSet::embedded().unwrap());
    let mut replayer = Replayer::new(Engine::new(set, EngineConfig::default()), 5_000);
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let pos = Position::Stdin { line: i as u64 + 1 };
        replayer
            .apply(
                Record::Bytes(line.as_bytes()),
                d,
                &pos,
                &mut out,
                &mut |r, at| {
                    if let Err(e) = r {
                        panic!("{at}: {e}: {line}");
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    replayer.finish(&mut out);
    let mut got: Vec<String> = out
        .into_iter()
        .map(|d| mcp_alertd::alert::render(d, None))
        .filter(|a| rules.contains(&a.rule.as_str()))
        .map(|a| {
            let key: Vec<String> = a
                .key
                .iter()
                .filter(|(k, _)| !lost.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(
                "{} {} {} {} {}",
                a.rule,
                a.tenant,
                a.ts,
                a.count,
                key.join(",")
            )
        })
        .collect();
    got.sort();
    got
}

#[test]
fn the_examples_rendered_as_each_format_give_the_native_alerts() {
    use mcp_alertd::corpus::render::render;
    let examples =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/audit.jsonl"))
            .unwrap();
    let native = Decoder::default();
    let events: Vec<(String, String)> = examples
        .lines()
        .filter_map(|l| {
            native
                .decode(l.as_bytes())
                .ok()
                .map(|ev| (l.to_owned(), ev.tenant.to_string()))
        })
        .collect();
    for (format, rules, lost, has_tenant, has_session) in ROUND_TRIP {
        let mut pairs: Vec<(String, String, String)> = Vec::new();
        for (n, (line, tenant)) in events.iter().enumerate() {
            let ev = native.decode(line.as_bytes()).unwrap();
            if let Some(record) = render(format, &ev, n as u64) {
                pairs.push((line.clone(), record.to_string(), tenant.clone()));
            }
        }
        let tenants: std::collections::BTreeSet<&str> = if has_tenant {
            ["*"].into()
        } else {
            pairs.iter().map(|p| p.2.as_str()).collect()
        };
        let mut total = 0;
        for tenant in tenants {
            let group: Vec<&(String, String, String)> = pairs
                .iter()
                .filter(|p| tenant == "*" || p.2 == tenant)
                .collect();
            let natives: Vec<String> = group.iter().map(|p| p.0.clone()).collect();
            let records: Vec<String> = group.iter().map(|p| p.1.clone()).collect();
            let mut d = decoder(format);
            if !has_session {
                d.derive_sessions_ms = Some(30 * 60_000);
            } else {
                d.derive_sessions_ms = None;
            }
            if !has_tenant {
                d.tenant = Some(tenant.into());
            }
            let want = projected(&native, &natives, rules, lost);
            let got = projected(&d, &records, rules, lost);
            assert_eq!(got, want, "{format}, tenant {tenant}");
            total += want.len();
        }
        assert!(total > 0, "{format}: no alert to compare");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_format_files_again_and_refuses_invalid_ones() {
    use crate::support::{append, file_config, start, wait_for};
    let dir = tempfile::tempdir().unwrap();
    let formats = dir.path().join("formats");
    std::fs::create_dir(&formats).unwrap();
    let mine = |event: &str| {
        format!(
            "signature = {{ kind = {{ exists = true }} }}\n[fields]\nts = \"t\"\nagent_id = \"who\"\nsession_id = \"s\"\ntool = \"what\"\n[[map]]\nevent = \"{event}\"\nwhen = {{ kind = \"call\" }}\n"
        )
    };
    std::fs::write(formats.join("mine.toml"), mine("tool.invoke")).unwrap();
    let log = dir.path().join("audit.log");
    let cfg = format!(
        "formats_dir = \"{}\"\n{}",
        formats.display(),
        file_config(&log).replace("type = \"file\"", "type = \"file\"\nformat = \"mine\"")
    );
    let (mut daemon, out) = start(&cfg, dir.path()).await;
    let t = jiff::Timestamp::now().as_millisecond() - 60_000;
    let record = |n: i64| {
        format!(
            r#"{{"t":{},"kind":"call","who":"a1","s":"s1","what":"drop_db","n":{n}}}"#,
            t + n
        )
    };
    append(&log, &[record(0)]);
    let m = daemon.metrics().clone();
    wait_for("a tool.invoke", || {
        m.render()
            .contains("mcp_alertd_events_total{type=\"tool.invoke\"} 1")
    })
    .await;

    // An invalid format file: the reload is refused, the running one stays.
    std::fs::write(formats.join("mine.toml"), "[[map]]\nevent = 3\n").unwrap();
    let config = mcp_alertd::config::Config::parse(&format!(
        "state_dir = \"{}\"\n{cfg}",
        dir.path().display()
    ))
    .unwrap();
    let refused = daemon
        .reload(config.clone(), config.load_rules().unwrap())
        .await;
    assert!(refused.is_err());
    // The file now maps calls to denials: after the reload they alert.
    std::fs::write(formats.join("mine.toml"), mine("tool.denied")).unwrap();
    daemon
        .reload(config.clone(), config.load_rules().unwrap())
        .await
        .unwrap();
    append(&log, &[record(1)]);
    wait_for("the denial alert", || {
        out.alerts()
            .iter()
            .any(|a| a["rule"] == "unauthorized_tool_attempt")
    })
    .await;
    daemon.shutdown().await.unwrap();
}

#[test]
fn rule_tests_read_events_through_a_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("toolhive.toml");
    let denied = fixture("toolhive")[3].replace('\'', "");
    std::fs::write(
        &file,
        format!(
            "[[case]]\nname = \"a denied call\"\nevents = ['{denied}']\n[[case.expect]]\nrule = \"unauthorized_tool_attempt\"\ntenant = \"acme\"\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::cargo_bin("mcp-alertd")
            .unwrap()
            .args(["rules", "test"])
            .args(args)
            .arg(&file)
            .output()
            .unwrap()
    };
    let ok = run(&[
        "--format",
        "toolhive",
        "--tenant",
        "acme",
        "--derive-sessions",
        "30m",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // The same events read as native ones are not events at all.
    let bad = run(&[]);
    assert_eq!(bad.status.code(), Some(78));
}
