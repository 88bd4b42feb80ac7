//! Kafka consumption end to end: N generated events are produced to a
//! 4-partition topic (librdkafka's mock cluster, or the broker in
//! `MCP_ALERTD_KAFKA_BROKER`), then read (1) by a bare librdkafka consumer
//! doing nothing with the records: the client's own ceiling; (2) by the
//! daemon (Kafka source -> decode -> per-partition engines -> outbox in
//! redb, snapshots every 5 s). Prints events/s of both. `MCP_ALERTD_BENCH_EVENTS`
//! sets N (default 1,000,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Dates the generated events from the wall clock, as a producer would.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use mcp_alertd::app::Daemon;
use mcp_alertd::config::Config;
use mcp_alertd::corpus::{Corpus, CorpusConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TOPIC: &str = "bench-audit";

fn produce(broker: &str, n: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let mut corpus = Corpus::new(CorpusConfig {
        start_ms: jiff::Timestamp::now().as_millisecond() - n as i64 - 3_600_000,
        ..CorpusConfig::default()
    });
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        corpus.next_line(&mut line);
        let key = format!("k{}", i % 10_000);
        let mut record = BaseRecord::to(TOPIC).key(&key).payload(line.trim_end());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

fn bare_consumer(broker: &str, n: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set(
            "group.id",
            format!("bare-{}", jiff::Timestamp::now().as_millisecond()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut seen = 0;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    assert_eq!(seen, n, "the bare consumer read everything");
    n as f64 / started.map_or(1.0, |s| s.elapsed().as_secs_f64())
}

/// CPU seconds used so far by this process's threads, by thread name.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let tick = 100.0; // USER_HZ
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / tick;
        *by_name.entry(name).or_insert(0.0) += cpu;
    }
    by_name
}

fn counter(render: &str, prefix: &str) -> u64 {
    render
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn daemon(broker: &str, n: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"state_dir = "{}"
[metrics]
enabled = false
[[sources]]
name = "kafka"
type = "kafka"
topics = ["{TOPIC}"]
group_id = "daemon-{}"
[sources.kafka]
brokers = "{broker}"
"#,
        dir.path().display(),
        jiff::Timestamp::now().as_millisecond()
    );
    let config = Config::parse(&text).unwrap();
    let rules = config.load_rules().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::start(config, rules, Box::new(std::io::sink()))
            .await
            .unwrap();
        let m = d.metrics().clone();
        let cpu_before = thread_cpu();
        let mut started = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut done = 0;
        while Instant::now() < deadline {
            let r = m.render();
            let received = counter(&r, "mcp_alertd_records_received_total");
            if received > 0 {
                started.get_or_insert_with(Instant::now);
            }
            // Processed: decoded into events or rejected.
            done = counter(&r, "mcp_alertd_events_total")
                + counter(&r, "mcp_alertd_records_rejected_total");
            if done >= n as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.map_or(1.0, |s| s.elapsed().as_secs_f64());
        // Where the time went: CPU per thread over the run (threads that
        // exited before the end are not counted).
        let cpu_after = thread_cpu();
        for (name, after) in &cpu_after {
            let used = after - cpu_before.get(name).copied().unwrap_or(0.0);
            if used >= 0.01 {
                eprintln!(
                    "  thread {name:<16} {used:6.2} s CPU ({:3.0}% of the run)",
                    100.0 * used / secs
                );
            }
        }
        let alerts = counter(&m.render(), "mcp_alertd_alerts_total");
        d.shutdown().await.unwrap();
        assert_eq!(done, n as u64, "the daemon processed everything");
        (n as f64 / secs, alerts)
    })
}

fn main() {
    let n: usize = std::env::var("MCP_ALERTD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mock;
    let broker = match std::env::var("MCP_ALERTD_KAFKA_BROKER") {
        Ok(b) => b,
        Err(_) => {
            mock = MockCluster::new(1).unwrap();
            mock.create_topic(TOPIC, 4, 1).unwrap();
            mock.bootstrap_servers()
        }
    };
    let t = Instant::now();
    produce(&broker, n);
    eprintln!("produced {n} events in {:.1} s", t.elapsed().as_secs_f64());
    let bare = bare_consumer(&broker, n);
    eprintln!("bare librdkafka consumer: {:.0} records/s", bare);
    let (rate, alerts) = daemon(&broker, n);
    eprintln!("daemon (Kafka source -> engine -> outbox): {rate:.0} events/s, {alerts} alerts");
}
