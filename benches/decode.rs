//! Decoder throughput on generated corpora: JSON lines and RFC 5424 syslog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_alertd::corpus::{Corpus, CorpusConfig};
use mcp_alertd::decode::{Decoder, Framing};

fn lines(syslog: bool, n: usize) -> Vec<String> {
    let mut corpus = Corpus::new(CorpusConfig {
        syslog,
        ..CorpusConfig::default()
    });
    (0..n)
        .map(|_| {
            let mut l = String::new();
            corpus.next_line(&mut l);
            l
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = 10_000;
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(n as u64));
    for (name, syslog, format) in [
        ("jsonl", false, Framing::Jsonl),
        ("jsonl_auto", false, Framing::Auto),
        ("syslog5424_cee", true, Framing::Syslog),
    ] {
        let input = lines(syslog, n);
        let decoder = Decoder::new(format, 65536);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut ok = 0usize;
                for l in &input {
                    ok += usize::from(decoder.decode(l.as_bytes()).is_ok());
                }
                assert_eq!(ok, n);
            });
        });
    }
    // Baseline: what serde_json alone costs to parse the same objects into a
    // generic Value (allocating), to show what borrowing saves.
    let input = lines(false, n);
    group.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| {
            for l in &input {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                std::hint::black_box(v);
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
