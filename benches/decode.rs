//! Decoder throughput on generated corpora: JSON lines and RFC 5424 syslog;
//! then each built-in format on the same corpus rendered as that product's
//! records (`generate --format`), beside the native decoder on the native
//! records of the same events: `formats/<name>` vs `formats/native_<name>`
//! (records/s; events per record differ only for fan-out formats), and
//! `formats/scan_<name>`: serde_json skipping the same records unread, the
//! floor of any decoder built on it (product records are 2-4 times the
//! size of native ones).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_alertd::corpus::{Corpus, CorpusConfig};
use mcp_alertd::decode::{Decoded, Decoder, FormatSet, Framing, Selector};

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

fn formats(c: &mut Criterion) {
    let n = 10_000;
    let native = Decoder::new(Framing::Jsonl, 65536);
    let set = std::sync::Arc::new(FormatSet::built_in().unwrap());
    let all = lines(false, n * 2);
    let mut group = c.benchmark_group("formats");
    for name in mcp_alertd::corpus::render::FORMATS {
        // The first n events this product writes a record for, both ways.
        let (natives, records): (Vec<&String>, Vec<String>) = all
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let ev = native.decode(l.as_bytes()).unwrap();
                mcp_alertd::corpus::render::render(name, &ev, i as u64).map(|r| (l, r.to_string()))
            })
            .take(n)
            .unzip();
        let mut decoder = Decoder::new(Framing::Jsonl, 65536);
        decoder.format = Selector::named(name, &set).unwrap();
        decoder.derive_sessions_ms = Some(1_800_000);
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut events = 0usize;
                for l in &records {
                    events += match decoder.decode_record(l.as_bytes()) {
                        Ok(Decoded::One(_)) => 1,
                        Ok(Decoded::Many(evs)) => evs.len(),
                        Err(e) => panic!("{name}: {e}: {l}"),
                    };
                }
                std::hint::black_box(events);
            });
        });
        // The floor of any serde_json-based decoder: scanning the records.
        group.bench_function(format!("scan_{name}"), |b| {
            b.iter(|| {
                for l in &records {
                    let v: serde::de::IgnoredAny = serde_json::from_str(l).unwrap();
                    std::hint::black_box(v);
                }
            });
        });
        group.bench_function(format!("native_{name}"), |b| {
            b.iter(|| {
                for l in &natives {
                    std::hint::black_box(native.decode(l.as_bytes()).unwrap());
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench, formats);
criterion_main!(benches);
