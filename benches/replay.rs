//! `replay` against the floor of any JSON-lines detector built on
//! serde_json, measured in the same run on the same file:
//!
//! - `replay/parse_only`: each line read and deserialized into a borrowed
//!   struct of the five fields every rule keys on (`ts`, `event`, `tenant`,
//!   `agent_id`, `session_id`), nothing else;
//! - `replay/default_rules`: `mcp_alertd::replay::replay` of the same file
//!   with the built-in rules, alerts rendered to a sink;
//! - `replay/default_rules_2_threads`: the same on two engine threads,
//!   each holding half of the keys (`replay --threads 2`).
//!
//! Events/s of the second over the first is how close replay runs to the
//! parse limit (README, Performance).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_alertd::corpus::{Corpus, CorpusConfig};
use mcp_alertd::replay::{Input, ReplayOptions, replay};

/// Events in the corpus.
const N: usize = 200_000;

/// The fields every default rule keys on, borrowed from the line.
#[derive(serde::Deserialize)]
struct Keys<'a> {
    ts: &'a str,
    event: &'a str,
    tenant: Option<&'a str>,
    agent_id: Option<&'a str>,
    session_id: Option<&'a str>,
}

fn corpus(path: &std::path::Path) {
    let mut corpus = Corpus::new(CorpusConfig::default());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut line = String::new();
    for _ in 0..N {
        corpus.next_line(&mut line);
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.jsonl");
    corpus(&path);
    let rules = Arc::new(mcp_alertd::config::load_rules(None).unwrap());
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let file = std::fs::File::open(&path).unwrap();
            let mut reader = BufReader::with_capacity(256 * 1024, file);
            let mut line = String::new();
            let mut n = 0usize;
            while reader.read_line(&mut line).unwrap() > 0 {
                let keys: Keys<'_> = serde_json::from_str(line.trim_end()).unwrap();
                std::hint::black_box((
                    keys.ts,
                    keys.event,
                    keys.tenant,
                    keys.agent_id,
                    keys.session_id,
                ));
                n += 1;
                line.clear();
            }
            assert_eq!(n, N);
        });
    });
    let inputs = [Input::File(path.clone())];
    for (name, threads) in [("default_rules", 1), ("default_rules_2_threads", 2)] {
        let opts = ReplayOptions {
            threads,
            ..ReplayOptions::default()
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let summary = replay(&inputs, rules.clone(), &opts, &mut std::io::sink()).unwrap();
                assert_eq!(summary.events, N as u64);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
