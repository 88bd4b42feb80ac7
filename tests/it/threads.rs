//! Engine threads: each engine holds a share of the keys (a rule in an
//! alert chain whole) and sees every event; together they raise exactly
//! the alerts of one engine, ids included, and count the same summary.

use std::sync::Arc;

use mcp_alertd::alert;
use mcp_alertd::corpus::{Corpus, CorpusConfig};
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleKind, RuleSet, Shard};
use mcp_alertd::event::Position;
use mcp_alertd::pipeline::step::Record;
use mcp_alertd::replay::{Input, ReplayOptions, Replayer, Summary, replay};
use proptest::prelude::*;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The alerts of a replay on `threads` engine threads, each without
/// `detected_at`, sorted; and its summary.
fn run(inputs: &[Input], threads: usize, max_keys_per_rule: usize) -> (Vec<String>, Summary) {
    let rules = Arc::new(RuleSet::embedded().unwrap());
    run_rules(&rules, inputs, threads, max_keys_per_rule)
}

fn run_rules(
    rules: &Arc<RuleSet>,
    inputs: &[Input],
    threads: usize,
    max_keys_per_rule: usize,
) -> (Vec<String>, Summary) {
    let opts = ReplayOptions {
        threads,
        engine: EngineConfig {
            max_keys_per_rule,
            ..EngineConfig::default()
        },
        ..ReplayOptions::default()
    };
    let mut out = Vec::new();
    let summary = replay(inputs, rules.clone(), &opts, &mut out).unwrap();
    let mut alerts: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v.to_string()
        })
        .collect();
    alerts.sort();
    (alerts, summary)
}

/// Everything a summary says but the time it took and the keys held at
/// the end (expired keys leave memory in sweeps, which run by each
/// engine's own growth: results never depend on them).
fn counted(s: &Summary) -> String {
    let mut s = s.clone();
    s.elapsed = Default::default();
    s.live_keys.clear();
    format!("{s:?}")
}

fn assert_same_as_one_thread(inputs: &[Input], cap: usize) -> usize {
    let (one, summary) = run(inputs, 1, cap);
    for threads in [2, 3] {
        let (many, s) = run(inputs, threads, cap);
        assert_eq!(one.len(), many.len(), "{threads} threads");
        assert!(one == many, "{threads} threads raised other alerts");
        assert_eq!(counted(&summary), counted(&s), "{threads} threads");
    }
    one.len()
}

fn corpus_file(dir: &tempfile::TempDir, cfg: CorpusConfig, events: usize) -> Input {
    let mut corpus = Corpus::new(cfg);
    let (mut text, mut line) = (String::new(), String::new());
    for _ in 0..events {
        corpus.next_line(&mut line);
        text.push_str(&line);
        text.push('\n');
    }
    let path = dir.path().join("corpus.jsonl");
    std::fs::write(&path, text).unwrap();
    Input::File(path)
}

#[test]
fn engine_threads_raise_the_alerts_of_one_on_the_examples() {
    let inputs = [
        Input::File(root().join("examples/audit.jsonl")),
        Input::File(root().join("examples/audit.syslog")),
    ];
    assert!(assert_same_as_one_thread(&inputs, 1_000_000) > 0);
}

#[test]
fn engine_threads_raise_the_alerts_of_one_on_a_generated_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CorpusConfig {
        seed: 7,
        tenants: 3,
        agents: 40,
        spacing_ms: 400,
        disorder_ms: 4_000,
        ..CorpusConfig::default()
    };
    let input = corpus_file(&dir, cfg, 30_000);
    let (alerts, summary) = run(std::slice::from_ref(&input), 1, 1_000_000);
    // A corpus that exercises most rules, chains included.
    assert!(summary.alerts_by_rule.len() >= 8, "{summary}");
    assert!(alerts.len() > 100);
    assert_same_as_one_thread(&[input], 1_000_000);
}

/// Each engine raises a part of the alerts, no alert is raised twice, and
/// the parts make the whole: the keys really are shared out.
#[test]
fn each_engine_raises_its_share_and_no_alert_twice() {
    let rules = Arc::new(RuleSet::embedded().unwrap());
    let text = std::fs::read_to_string(root().join("examples/audit.jsonl")).unwrap();
    let ids = |shard: Shard| {
        let engine = Engine::new(rules.clone(), EngineConfig::default()).with_shard(shard);
        let mut replayer = Replayer::new(engine, 5_000);
        let mut found = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let pos = Position::Stdin { line: i as u64 + 1 };
            let _ = replayer.apply(
                Record::Bytes(line.as_bytes()),
                &Decoder::default(),
                &pos,
                &mut found,
                &mut |_, _| {},
            );
        }
        replayer.finish(&mut found);
        let mut ids: Vec<String> = found
            .into_iter()
            .map(|d| alert::render(d, None).id)
            .collect();
        ids.sort();
        ids
    };
    let whole = ids(Shard::WHOLE);
    let parts: Vec<Vec<String>> = Shard::all(2).map(ids).collect();
    assert!(parts.iter().all(|p| !p.is_empty() && p.len() < whole.len()));
    assert!(
        parts[0]
            .iter()
            .all(|id| parts[1].binary_search(id).is_err())
    );
    let mut joined = [parts[0].clone(), parts[1].clone()].concat();
    joined.sort();
    assert_eq!(joined, whole);
}

/// A rule that names another's alerts sees all of them although it keys
/// them differently (here by tenant, the other by agent): an engine holds
/// the rules of an alert chain whole.
#[test]
fn a_rule_sees_every_alert_it_names_whatever_its_key() {
    let rule = |id: &str, body: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\ntitle = \"{id}\"\nseverity = \"high\"\nkind = \"threshold\"\n{body}\n"
        )
    };
    let text = rule(
        "burst",
        "match = { event = \"auth.failure\" }\ngroup_by = [\"agent_id\"]\nwindow = \"60s\"\ncondition = { gt = 1 }",
    ) + &rule(
        "wave",
        "match = { alert = \"burst\" }\nwindow = \"10m\"\ncondition = { gte = 3 }",
    );
    let rules = Arc::new(RuleSet::from_files(vec![("chain.toml".into(), text)], "test").unwrap());
    // Twenty agents fail twice each, a second apart: twenty bursts, one
    // tenant-wide wave once three have come.
    let mut log = String::new();
    for agent in 0..20 {
        for n in 0..2 {
            let ts = 1_795_000_000_000i64 + agent * 2_000 + n * 1_000;
            log.push_str(&format!(
                "{{\"ts\":{ts},\"event\":\"auth.failure\",\"tenant\":\"t\",\"agent_id\":\"a{agent}\",\"reason\":\"bad_key\"}}\n"
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.jsonl");
    std::fs::write(&path, log).unwrap();
    let inputs = [Input::File(path)];
    let (one, summary) = run_rules(&rules, &inputs, 1, 1_000_000);
    assert_eq!(summary.alerts_by_rule["burst"], 20);
    assert!(summary.alerts_by_rule.contains_key("wave"), "{summary}");
    for threads in [2, 3] {
        let (many, _) = run_rules(&rules, &inputs, threads, 1_000_000);
        assert!(one == many, "{threads} threads raised other alerts");
    }
}

/// The cap of keys per rule is shared out too: together the engines hold
/// no more keys of a rule than one engine may.
#[test]
fn the_key_cap_is_shared_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CorpusConfig {
        seed: 3,
        tenants: 2,
        agents: 500,
        spacing_ms: 50,
        ..CorpusConfig::default()
    };
    let input = corpus_file(&dir, cfg, 5_000);
    let cap = 40;
    let (_, summary) = run(&[input], 2, cap);
    assert!(summary.evicted_keys > 0, "{summary}");
    let rules = RuleSet::embedded().unwrap();
    for (rule, n) in &summary.live_keys {
        // Sequences and membership rules also hold up to `cap` kept events.
        let kept = match rules.get(rule).unwrap().kind {
            RuleKind::Sequence { .. } | RuleKind::Membership { .. } => cap,
            _ => 0,
        };
        assert!(*n <= cap + kept, "{rule} holds {n} keys");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random streams: few agents and tenants (keys that collide), event
    /// times out of order by up to the lateness and beyond, equal
    /// milliseconds.
    #[test]
    fn engine_threads_raise_the_alerts_of_one(
        seed in any::<u64>(),
        tenants in 1u32..4,
        agents in 2u32..30,
        spacing_ms in 0i64..3_000,
        disorder_ms in 0i64..12_000,
        events in 200usize..800,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CorpusConfig {
            seed,
            tenants,
            agents,
            spacing_ms,
            disorder_ms,
            ..CorpusConfig::default()
        };
        let input = corpus_file(&dir, cfg, events);
        let inputs = [input];
        let (one, s1) = run(&inputs, 1, 1_000_000);
        let (two, s2) = run(&inputs, 2, 1_000_000);
        prop_assert_eq!(one, two);
        prop_assert_eq!(counted(&s1), counted(&s2));
    }
}
