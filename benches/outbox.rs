//! Outbox throughput: durable appends (one fsync'ed redb transaction per
//! group commit), and end-to-end delivery through a webhook sink to an HTTP
//! receiver on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_alertd::config::{Config, OutboxSettings};
use mcp_alertd::sink::{self, Sink};
use mcp_alertd::store::{Enqueue, Store};
use mcp_alertd::telemetry::metrics::Metrics;

fn alerts(n: usize, tag: &str) -> Vec<(String, Vec<u8>)> {
    let line = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/examples.alerts.jsonl"
    ))
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i:08}");
            v["id"] = serde_json::Value::String(id.clone());
            (id, serde_json::to_vec(&v).unwrap())
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_append");
    group.sample_size(10);
    let sinks = vec!["siem".to_owned()];
    for batch in [1usize, 100, 1000] {
        let n = 2000;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("durable_batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for it in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Store::open(dir.path()).unwrap();
                    let rows = alerts(n, &format!("a{it}"));
                    let start = Instant::now();
                    for chunk in rows.chunks(batch) {
                        let items: Vec<Enqueue<'_>> = chunk
                            .iter()
                            .map(|(id, json)| Enqueue {
                                id,
                                json,
                                sinks: &sinks,
                            })
                            .collect();
                        store.enqueue(&items, 0).unwrap();
                    }
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

fn webhook(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(|_body: axum::body::Bytes| async { "ok" }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let text =
        format!("[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://{addr}/hook\"\n");
    let config = Config::parse(&text).unwrap();
    let mut group = c.benchmark_group("outbox_delivery");
    group.sample_size(10);
    let n = 2000;
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("webhook_loopback", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for it in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(Store::open(dir.path()).unwrap());
                let rows = alerts(n, &format!("w{it}"));
                let sinks = vec!["hook".to_owned()];
                for chunk in rows.chunks(500) {
                    let items: Vec<Enqueue<'_>> = chunk
                        .iter()
                        .map(|(id, json)| Enqueue {
                            id,
                            json,
                            sinks: &sinks,
                        })
                        .collect();
                    store.enqueue(&items, 0).unwrap();
                }
                let metrics = Arc::new(Metrics::new());
                let start = Instant::now();
                rt.block_on(async {
                    let writer: sink::SharedWriter =
                        Arc::new(std::sync::Mutex::new(Box::new(std::io::sink())));
                    let reopen = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let s = Sink::build(&config.sinks[0], &writer, &reopen).unwrap();
                    let cancel = tokio_util::sync::CancellationToken::new();
                    let task = tokio::spawn(mcp_alertd::outbox::dispatch::dispatch(
                        s,
                        store.clone(),
                        OutboxSettings::default(),
                        None,
                        Arc::new(tokio::sync::Notify::new()),
                        metrics.clone(),
                        cancel.clone(),
                    ));
                    while store.counts().unwrap().1 > 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    cancel.cancel();
                    task.await.unwrap();
                });
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, append, webhook);
criterion_main!(benches);
