//! Routing: first match or continue, the default route, repeat suppression
//! and group windows (digests). Pure: the wall clock is an input.

use std::collections::BTreeMap;

use mcp_alertd::alert::Alert;
use mcp_alertd::alert::Severity;
use mcp_alertd::router::{Route, RouteState, Routed, Router};

fn alert(rule: &str, sev: Severity, tenant: &str, agent: &str, ts: i64) -> Alert {
    Alert {
        id: format!("{rule}-{tenant}-{agent}-{ts}"),
        rule: rule.to_owned(),
        title: format!("title of {rule}"),
        severity: sev,
        tenant: tenant.to_owned(),
        key: [("agent_id".to_owned(), agent.to_owned())]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        ts,
        detected_at: None,
        count: 1,
        window_start: None,
        window_end: None,
        summary: format!("{agent} did {rule}"),
        events: Vec::new(),
    }
}

fn route(sinks: &[&str]) -> Route {
    Route {
        rules: Vec::new(),
        severities: Vec::new(),
        tenants: Vec::new(),
        sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
        continue_: false,
        repeat_interval_ms: None,
        group_window_ms: None,
    }
}

#[test]
fn first_match_wins_unless_continue_and_unmatched_alerts_take_the_default() {
    let mut critical = route(&["pager", "siem"]);
    critical.severities = vec!["critical".to_owned()];
    critical.continue_ = true;
    let mut acme = route(&["acme-hook", "siem"]);
    acme.tenants = vec!["acme".to_owned()];
    let mut creds = route(&["archive"]);
    creds.rules = vec!["credential_unused".to_owned()];
    let router = Router {
        routes: vec![critical, acme, creds],
        default_sinks: vec!["stdout".to_owned()],
    };
    assert_eq!(
        router.sinks(&alert("x", Severity::Critical, "acme", "a", 1)),
        ["pager", "siem", "acme-hook"]
    );
    assert_eq!(
        router.sinks(&alert("x", Severity::Critical, "globex", "a", 1)),
        ["pager", "siem"]
    );
    assert_eq!(
        router.sinks(&alert(
            "credential_unused",
            Severity::Medium,
            "acme",
            "a",
            1
        )),
        ["acme-hook", "siem"]
    );
    assert_eq!(
        router.sinks(&alert(
            "credential_unused",
            Severity::Medium,
            "globex",
            "a",
            1
        )),
        ["archive"]
    );
    assert_eq!(
        router.sinks(&alert("x", Severity::Low, "globex", "a", 1)),
        ["stdout"]
    );
}

#[test]
fn repeat_interval_suppresses_the_same_rule_and_key_only() {
    let mut r = route(&["hook"]);
    r.repeat_interval_ms = Some(60_000);
    let mut state = RouteState::new(Router {
        routes: vec![r],
        default_sinks: Vec::new(),
    });
    let mut out = Routed::default();
    state.route(alert("burst", Severity::High, "t", "a", 1), 0, &mut out);
    state.route(
        alert("burst", Severity::High, "t", "a", 2),
        30_000,
        &mut out,
    ); // suppressed
    state.route(
        alert("burst", Severity::High, "t", "b", 3),
        30_000,
        &mut out,
    ); // another key
    state.route(
        alert("burst", Severity::High, "u", "a", 4),
        30_000,
        &mut out,
    ); // another tenant
    state.route(
        alert("burst", Severity::High, "t", "a", 5),
        60_000,
        &mut out,
    ); // interval passed
    let ts: Vec<i64> = out.deliver.iter().map(|(a, _)| a.ts).collect();
    assert_eq!(ts, vec![1, 3, 4, 5]);
    assert_eq!(out.suppressed, 1);
}

#[test]
fn a_group_window_turns_a_storm_into_one_digest_per_rule_and_tenant() {
    let mut r = route(&["mail"]);
    r.group_window_ms = Some(60_000);
    let mut state = RouteState::new(Router {
        routes: vec![r],
        default_sinks: Vec::new(),
    });
    let mut out = Routed::default();
    for i in 0..100 {
        state.route(
            alert(
                "unauthorized_tool_attempt",
                Severity::High,
                "acme",
                &format!("agent{}", i % 7),
                1000 + i,
            ),
            i,
            &mut out,
        );
    }
    state.route(
        alert(
            "unauthorized_tool_attempt",
            Severity::Critical,
            "globex",
            "g",
            5000,
        ),
        10,
        &mut out,
    );
    assert!(out.deliver.is_empty(), "held for the window");
    assert_eq!(out.grouped, 101);
    state.flush(59_999, false, &mut out);
    assert!(out.deliver.is_empty(), "the window has not closed");
    state.flush(60_000, false, &mut out);
    assert_eq!(
        out.deliver.len(),
        1,
        "acme's window closed; globex's opened later"
    );
    let (digest, sinks) = &out.deliver[0];
    assert_eq!(sinks, &["mail"]);
    assert_eq!(digest.count, 100);
    assert_eq!(digest.tenant, "acme");
    assert_eq!(digest.rule, "unauthorized_tool_attempt");
    assert_eq!(digest.events.len(), 0, "members without events add none");
    assert_eq!(
        (digest.window_start, digest.window_end),
        (Some(1000), Some(1099))
    );
    assert!(
        digest
            .summary
            .starts_with("100 alerts of rule unauthorized_tool_attempt for tenant acme"),
        "{}",
        digest.summary
    );
    // A lone alert in a window is sent as itself; shutdown flushes all.
    state.flush(0, true, &mut out);
    assert_eq!(out.deliver.len(), 2);
    assert_eq!(
        out.deliver[1].0.id,
        "unauthorized_tool_attempt-globex-g-5000"
    );
    assert_eq!(state.held(), 0);
}
