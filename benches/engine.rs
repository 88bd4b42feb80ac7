//! Engine throughput (events/s) with the default rules, on pre-decoded
//! generated events (2 s of disorder), at 10k and 1M distinct agents,
//! from an empty engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mcp_alertd::corpus::{Corpus, CorpusConfig};
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};
use mcp_alertd::replay::Replayer;

fn bench(c: &mut Criterion) {
    let rules = Arc::new(RuleSet::embedded().unwrap());
    let n = 200_000;
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    for agents in [10_000u32, 1_000_000] {
        let mut corpus = Corpus::new(CorpusConfig {
            agents,
            disorder_ms: 2_000,
            ..CorpusConfig::default()
        });
        let lines: Vec<String> = (0..n)
            .map(|_| {
                let mut l = String::new();
                corpus.next_line(&mut l);
                l
            })
            .collect();
        let decoder = Decoder::default();
        let events: Vec<_> = lines
            .iter()
            .map(|l| decoder.decode(l.as_bytes()).unwrap())
            .collect();
        group.bench_function(format!("default_rules_{agents}_agents"), |b| {
            b.iter_batched(
                || Replayer::new(Engine::new(rules.clone(), EngineConfig::default()), 5_000),
                |mut replayer| {
                    let mut out = Vec::new();
                    for ev in &events {
                        replayer.on_event(ev, None, &mut out);
                        out.clear();
                    }
                    replayer
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
