//! Outbox throughput: durable appends (one fsync'ed redb transaction per
//! group commit), and end-to-end delivery from the outbox to a loopback
//! HTTP receiver through each HTTP sink (webhook as native JSON, as OCSF,
//! through the Slack template; Splunk HEC batches, plain and gzip; an
//! Elasticsearch bulk of ECS documents).
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

/// Enqueues `rows` for `sinks` in transactions of `batch` alerts.
fn enqueue(store: &Store, rows: &[(String, Vec<u8>)], batch: usize, sinks: &[String]) {
    for chunk in rows.chunks(batch) {
        let items: Vec<Enqueue<'_>> = chunk
            .iter()
            .map(|(id, json)| Enqueue { id, json, sinks })
            .collect();
        store.enqueue(&items, 0).unwrap();
    }
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
                    enqueue(&store, &rows, batch, &sinks);
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

/// A loopback receiver for every HTTP sink: a webhook, a Splunk HEC event
/// endpoint and an Elasticsearch `_bulk` endpoint, each answering success.
async fn receiver() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|_body: axum::body::Bytes| async { "ok" }),
        )
        .route(
            "/services/collector/event",
            axum::routing::post(|_body: axum::body::Bytes| async {
                r#"{"text":"Success","code":0}"#
            }),
        )
        .route(
            "/_bulk",
            axum::routing::post(|body: axum::body::Bytes| async move {
                let n = body.iter().filter(|b| **b == b'\n').count() / 2;
                let item = r#"{"create":{"status":201}}"#;
                format!(
                    r#"{{"took":1,"errors":false,"items":[{}]}}"#,
                    vec![item; n].join(",")
                )
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Alerts per second from the outbox to a loopback receiver, per sink
/// kind, format and template.
fn delivery(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(receiver());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let token = token.display();
    let cases = [
        (
            "webhook_loopback",
            format!("type = \"webhook\"\nurl = \"http://{addr}/hook\""),
        ),
        (
            "webhook_ocsf",
            format!("type = \"webhook\"\nurl = \"http://{addr}/hook\"\nformat = \"ocsf\""),
        ),
        (
            "webhook_slack_template",
            format!("type = \"webhook\"\nurl = \"http://{addr}/hook\"\ntemplate = \"slack\""),
        ),
        (
            "splunk_hec_batch_100",
            format!("type = \"splunk_hec\"\nurl = \"http://{addr}\"\ntoken_file = \"{token}\""),
        ),
        (
            "splunk_hec_gzip_ocsf",
            format!(
                "type = \"splunk_hec\"\nurl = \"http://{addr}\"\ntoken_file = \"{token}\"\ngzip = true\nformat = \"ocsf\""
            ),
        ),
        (
            "elasticsearch_bulk_ecs",
            format!("type = \"elasticsearch\"\nurl = \"http://{addr}\""),
        ),
    ];
    let mut group = c.benchmark_group("outbox_delivery");
    group.sample_size(10);
    let n = 2000;
    group.throughput(Throughput::Elements(n as u64));
    for (name, sink) in cases {
        let text = format!("[[sinks]]\nname = \"hook\"\n{sink}\n");
        let config = Config::parse(&text).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for it in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Arc::new(Store::open(dir.path()).unwrap());
                    let rows = alerts(n, &format!("w{it}"));
                    let sinks = vec!["hook".to_owned()];
                    enqueue(&store, &rows, 500, &sinks);
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
                            mcp_alertd::outbox::dispatch::Shared {
                                store: store.clone(),
                                metrics: metrics.clone(),
                                dead_letters: Default::default(),
                            },
                            OutboxSettings::default(),
                            None,
                            Arc::new(tokio::sync::Notify::new()),
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
    }
    group.finish();
}

criterion_group!(benches, append, delivery);
criterion_main!(benches);
