//! Bytes per live key of each correlation kind at 1M keys: an engine with
//! one default rule, fed one event per key, measured as the growth of the
//! process's resident memory (allocator overhead included). Each kind runs
//! in a child process of its own so one kind's freed memory does not hide
//! another's. `cargo bench --bench memory`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/rss.rs"]
mod rss;

use std::sync::Arc;

use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};

const KEYS: usize = 1_000_000;
const KIND_VAR: &str = "MCP_ALERTD_MEMORY_KIND";

/// (kind, default rule, one event line per key `i`).
type Case = (&'static str, &'static str, fn(usize) -> String);

const CASES: [Case; 5] = [
    ("sequence", "revoked_credential_use", |i| {
        format!(
            r#"{{"ts":{},"event":"credential.revoked","tenant":"t{}","agent_id":"agent-{i}","credential_id":"key-{i}","server":"mcp-1"}}"#,
            ts(i),
            i % 100
        )
    }),
    ("cardinality", "persistent_injection", |i| {
        format!(
            r#"{{"ts":{},"event":"tool.denied","tenant":"t{}","agent_id":"agent-{i}","session_id":"sess-{i}","tool":"shell_exec"}}"#,
            ts(i),
            i % 100
        )
    }),
    (
        "cardinality across tenants",
        "cross_tenant_credential",
        |i| {
            format!(
                r#"{{"ts":{},"event":"auth.success","tenant":"t{}","agent_id":"agent-{i}","credential_id":"key-{i}"}}"#,
                ts(i),
                i % 100
            )
        },
    ),
    ("membership", "allowlist_bypass", |i| {
        format!(
            r#"{{"ts":{},"event":"session.start","tenant":"t{}","agent_id":"agent-{i}","session_id":"sess-{i}","allowed_tools":["search_docs","read_file","create_ticket"]}}"#,
            ts(i),
            i % 100
        )
    }),
    (
        "absence (for comparison)",
        "credential_rotation_overdue",
        |i| {
            format!(
                r#"{{"ts":{},"event":"credential.issued","tenant":"t{}","agent_id":"agent-{i}","credential_id":"key-{i}","server":"mcp-1"}}"#,
                ts(i),
                i % 100
            )
        },
    ),
];

fn ts(i: usize) -> i64 {
    1_790_000_000_000 + (i as i64 % 50_000)
}

/// The default rule `id` alone, as a rule set.
fn one_rule(id: &str) -> Arc<RuleSet> {
    let all = RuleSet::embedded().unwrap();
    let rule = all.get(id).unwrap();
    let text = mcp_alertd::engine::rules::EMBEDDED
        .iter()
        .map(|(_, t)| *t)
        .find(|t| t.contains(&format!("id = \"{id}\"")))
        .unwrap();
    // The rule's own [[rule]] table, cut out of its file.
    let start = text.find(&format!("[[rule]]\nid = \"{id}\"")).unwrap();
    let end = text[start + 8..]
        .find("[[rule]]")
        .map_or(text.len(), |e| start + 8 + e);
    let set = RuleSet::from_files(
        vec![("one.toml".to_owned(), text[start..end].to_owned())],
        id,
    )
    .unwrap();
    assert_eq!(set.rules()[0].kind.name(), rule.kind.name());
    Arc::new(set)
}

fn measure(kind: &str) {
    let (_, id, line) = CASES.iter().find(|(k, _, _)| *k == kind).unwrap();
    let rules = one_rule(id);
    let decoder = Decoder::default();
    let lines: Vec<String> = (0..KEYS).map(line).collect();
    let before = rss::rss();
    let mut engine = Engine::new(
        rules,
        EngineConfig {
            max_keys_per_rule: 2 * KEYS,
            ..EngineConfig::default()
        },
    );
    let mut out = Vec::new();
    for l in &lines {
        engine.on_event(&decoder.decode(l.as_bytes()).unwrap(), None, &mut out);
        out.clear();
    }
    let after = rss::rss();
    let live: usize = engine.live_keys().iter().map(|(_, n)| n).sum();
    assert_eq!(live, KEYS, "{kind}: {live} live keys");
    let snapshot = engine.snapshot().unwrap().len();
    println!(
        "{kind:<28} {id:<28} {:>6} bytes/key resident, {:>4} bytes/key in the snapshot",
        (after - before) / KEYS,
        snapshot / KEYS
    );
}

fn main() {
    if let Ok(kind) = std::env::var(KIND_VAR) {
        measure(&kind);
        return;
    }
    println!("{KEYS} live keys per kind (one default rule, one event per key):");
    for (kind, _, _) in CASES {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env(KIND_VAR, kind)
            .status()
            .unwrap();
        assert!(status.success(), "{kind} failed");
    }
}
