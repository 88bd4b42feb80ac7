//! Durable engine state at scale: save (engine snapshot + unit encoding +
//! one fsync'ed store transaction) and restore (read + decode + rebuild)
//! of an engine holding 1M live keys: 500k agents inside an
//! `auth_failure_burst` window and 500k issued credentials waiting for
//! their `credential_unused` deadlines. Prints the sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};
use mcp_alertd::store::Store;
use mcp_alertd::store::state::{self as checkpoint, EngineUnit, MAIN_UNIT, Saved};

const KEYS: usize = 1_000_000;

fn engine_with_keys(rules: &Arc<RuleSet>) -> Engine {
    let mut engine = Engine::new(
        rules.clone(),
        EngineConfig {
            max_keys_per_rule: 2_000_000,
            ..EngineConfig::default()
        },
    );
    let decoder = Decoder::default();
    let base = 1_790_000_000_000i64;
    let mut out = Vec::new();
    for i in 0..KEYS / 2 {
        let ts = base + (i as i64 % 50_000);
        let line = format!(
            r#"{{"ts":{ts},"event":"auth.failure","tenant":"t{}","agent_id":"agent-{i}","reason":"invalid_token"}}"#,
            i % 100
        );
        engine.on_event(&decoder.decode(line.as_bytes()).unwrap(), None, &mut out);
        let line = format!(
            r#"{{"ts":{ts},"event":"credential.issued","tenant":"t{}","agent_id":"agent-{i}","credential_id":"key-{i}","server":"mcp-1"}}"#,
            i % 100
        );
        engine.on_event(&decoder.decode(line.as_bytes()).unwrap(), None, &mut out);
        out.clear();
    }
    let live: usize = engine.live_keys().iter().map(|(_, n)| n).sum();
    assert!(live >= KEYS, "{live} live keys");
    engine
}

fn save(engine: &Engine, store: &Store) -> usize {
    let unit = Saved::Engine(EngineUnit {
        engine: engine.snapshot().unwrap(),
        ..EngineUnit::default()
    });
    let bytes = checkpoint::encode(MAIN_UNIT, &unit).unwrap();
    let n = bytes.len();
    store
        .write(&[], 0, &[(MAIN_UNIT.to_owned(), bytes)])
        .unwrap();
    n
}

fn restore(rules: &Arc<RuleSet>, store: &Store) -> Engine {
    let bytes = store.state(MAIN_UNIT).unwrap().unwrap();
    match checkpoint::decode(MAIN_UNIT, &bytes).unwrap() {
        Saved::Engine(u) => Engine::restore(
            rules.clone(),
            EngineConfig {
                max_keys_per_rule: 2_000_000,
                ..EngineConfig::default()
            },
            &u.engine,
        )
        .unwrap(),
        Saved::Router(_) | Saved::Sources(_) => unreachable!(),
    }
}

fn bench(c: &mut Criterion) {
    let rules = Arc::new(RuleSet::embedded().unwrap());
    let t = Instant::now();
    let engine = engine_with_keys(&rules);
    eprintln!("built an engine with {KEYS} live keys in {:?}", t.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let size = save(&engine, &store);
    let file = std::fs::metadata(store.path()).unwrap().len();
    eprintln!(
        "state of {KEYS} keys: {:.1} MB encoded ({:.0} bytes/key); store file {:.1} MB",
        size as f64 / 1e6,
        size as f64 / KEYS as f64,
        file as f64 / 1e6
    );
    let mut group = c.benchmark_group("state_1m_keys");
    group.sample_size(10);
    group.bench_function("save", |b| b.iter(|| save(&engine, &store)));
    group.bench_function("restore", |b| b.iter(|| restore(&rules, &store)));
    group.finish();
    let file = std::fs::metadata(store.path()).unwrap().len();
    eprintln!(
        "store file after repeated saves: {:.1} MB",
        file as f64 / 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
