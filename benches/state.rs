//! Durable engine state at scale, for an engine holding 2M live keys
//! (500k agents inside an `auth_failure_burst` window and 500k issued
//! credentials waiting for the deadlines of three absence rules;
//! `MCP_ALERTD_BENCH_AGENTS=250000` for 1M keys:
//! `credential_unused`, `credential_unused_revoke` and
//! `credential_rotation_overdue`):
//! - `save_whole`: the whole state in one value (engine snapshot + unit
//!   encoding + one fsync'ed store transaction), as builds before
//!   incremental saves did;
//! - `save_changes_1pct/engine`: what an incremental save costs the engine
//!   thread when 1% of the keys changed since the last save (drain the
//!   changed keys, encode them and the head), and `.../store`: the store
//!   transaction that writes them (the outbox writer's thread);
//! - `restore`: read the head and the 2M rows back into an engine.
//!
//! Prints the encoded state and the store file's size after the first
//! incremental save and after every round of changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};
use mcp_alertd::store::state::{self as checkpoint, EngineUnit, MAIN_UNIT, Saved};
use mcp_alertd::store::{Store, UnitState};

/// The daemon's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Agents, each with a burst window and an issued credential
/// (`MCP_ALERTD_BENCH_AGENTS`, default 500k).
fn agents() -> usize {
    std::env::var("MCP_ALERTD_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000)
}
const BASE: i64 = 1_790_000_000_000;

fn config() -> EngineConfig {
    EngineConfig {
        max_keys_per_rule: 2_000_000,
        ..EngineConfig::default()
    }
}

fn apply(engine: &mut Engine, decoder: &Decoder, lines: impl Iterator<Item = String>) {
    let mut out = Vec::new();
    for line in lines {
        engine.on_event(&decoder.decode(line.as_bytes()).unwrap(), None, &mut out);
        out.clear();
    }
}

fn failure(i: usize, ts: i64) -> String {
    format!(
        r#"{{"ts":{ts},"event":"auth.failure","tenant":"t{}","agent_id":"agent-{i}","reason":"invalid_token"}}"#,
        i % 100
    )
}

fn engine_with_keys(rules: &Arc<RuleSet>, decoder: &Decoder) -> Engine {
    let mut engine = Engine::new(rules.clone(), config());
    apply(
        &mut engine,
        decoder,
        (0..agents()).flat_map(|i| {
            let ts = BASE + (i as i64 % 50_000);
            let issued = format!(
                r#"{{"ts":{ts},"event":"credential.issued","tenant":"t{}","agent_id":"agent-{i}","credential_id":"key-{i}","server":"mcp-1"}}"#,
                i % 100
            );
            [failure(i, ts), issued]
        }),
    );
    let live: usize = engine.live_keys().iter().map(|(_, n)| n).sum();
    assert_eq!(live, 4 * agents(), "{live} live keys");
    engine
}

/// 1% of the keys change, none expires and the state keeps its size: 1%
/// of the credentials are issued again (a new deadline for each of the
/// three absence rules that wait on them) and 1% of the agents fail once
/// more (round `r`).
fn change_one_percent(engine: &mut Engine, decoder: &Decoder, r: usize) {
    let ts = BASE + 49_999;
    let n = agents() / 100;
    let picked = move |j: usize| (r * 2 * n + j) * 7919 % agents();
    let issued = (0..n).map(picked).map(|i| {
        format!(
            r#"{{"ts":{ts},"event":"credential.issued","tenant":"t{}","agent_id":"agent-{i}","credential_id":"key-{i}","server":"mcp-1"}}"#,
            i % 100
        )
    });
    let failed = (n..2 * n).map(picked).map(|i| failure(i, ts));
    apply(engine, decoder, issued.chain(failed));
}

fn save_whole(engine: &Engine, store: &Store) -> usize {
    let unit = Saved::Engine(EngineUnit {
        engine: engine.snapshot().unwrap(),
        ..EngineUnit::default()
    });
    let bytes = checkpoint::encode(MAIN_UNIT, &unit).unwrap();
    let n = bytes.len();
    store
        .write(&[], 0, &[UnitState::whole(MAIN_UNIT, bytes)])
        .unwrap();
    n
}

/// The engine thread's part of an incremental save.
fn changes(engine: &mut Engine) -> UnitState {
    checkpoint::engine_state(MAIN_UNIT.to_owned(), engine, BTreeMap::new(), None).unwrap()
}

fn restore(rules: &Arc<RuleSet>, store: &Store) -> Engine {
    let bytes = store.state(MAIN_UNIT).unwrap().unwrap();
    let Saved::Engine(u) = checkpoint::decode(MAIN_UNIT, &bytes).unwrap() else {
        unreachable!()
    };
    store
        .restore_engine(MAIN_UNIT, &u.engine, rules.clone(), config())
        .unwrap()
}

fn file_mb(store: &Store) -> f64 {
    std::fs::metadata(store.path()).unwrap().len() as f64 / 1e6
}

fn bench(c: &mut Criterion) {
    let rules = Arc::new(RuleSet::embedded().unwrap());
    let decoder = Decoder::default();
    let t = Instant::now();
    let mut engine = engine_with_keys(&rules, &decoder);
    let keys = 4 * agents();
    eprintln!("built an engine with {keys} live keys in {:?}", t.elapsed());

    let mut group = c.benchmark_group("state");
    group.sample_size(10);
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let size = save_whole(&engine, &store);
        eprintln!(
            "whole state: {:.1} MB encoded ({:.0} bytes/key); store file {:.1} MB",
            size as f64 / 1e6,
            size as f64 / keys as f64,
            file_mb(&store)
        );
        group.bench_function("save_whole", |b| b.iter(|| save_whole(&engine, &store)));
        eprintln!(
            "store file after repeated whole saves: {:.1} MB",
            file_mb(&store)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let encoded = engine.snapshot().unwrap().len() as f64;
    let t = Instant::now();
    let first = changes(&mut engine);
    let took = t.elapsed();
    store.write(&[], 0, std::slice::from_ref(&first)).unwrap();
    eprintln!(
        "first incremental save (every row): {} bytes in {:?} on the engine thread, {:?} in all; store file {:.1} MB ({:.2}x the {:.1} MB encoded state)",
        first.size(),
        took,
        t.elapsed(),
        file_mb(&store),
        file_mb(&store) * 1e6 / encoded,
        encoded / 1e6
    );
    for t in first.tables.iter().flatten().filter(|t| !t.is_empty()) {
        let keys: usize = t.rows().map(|(k, _)| k.len()).sum();
        eprintln!(
            "  table {:<40} {:>8} rows, {:>6.1} MB keys, {:>6.1} MB values",
            t.name,
            t.len(),
            keys as f64 / 1e6,
            t.value_bytes() as f64 / 1e6
        );
    }
    eprintln!("  head {} bytes", first.bytes.len());
    drop(first);

    let mut round = 0;
    let mut pending: Option<UnitState> = None;
    group.bench_function("save_changes_1pct/engine", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                change_one_percent(&mut engine, &decoder, round);
                round += 1;
                let t = Instant::now();
                let state = changes(&mut engine);
                spent += t.elapsed();
                store.write(&[], 0, std::slice::from_ref(&state)).unwrap();
            }
            spent
        })
    });
    group.bench_function("save_changes_1pct/store", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                change_one_percent(&mut engine, &decoder, round);
                round += 1;
                let state = changes(&mut engine);
                let t = Instant::now();
                store.write(&[], 0, std::slice::from_ref(&state)).unwrap();
                spent += t.elapsed();
                pending = Some(state);
            }
            spent
        })
    });
    let last = pending.take().map_or(0, |s| s.size());
    let encoded = engine.snapshot().unwrap().len() as f64;
    eprintln!(
        "after {round} rounds of 1% changed: last save {last} bytes; store file {:.1} MB ({:.2}x the {:.1} MB encoded state)",
        file_mb(&store),
        file_mb(&store) * 1e6 / encoded,
        encoded / 1e6
    );
    let restored = restore(&rules, &store);
    let live = |e: &Engine| -> Vec<(Arc<str>, usize)> { e.live_keys() };
    assert_eq!(live(&restored), live(&engine));
    drop(restored);
    group.bench_function("restore", |b| {
        b.iter_with_large_drop(|| restore(&rules, &store))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
