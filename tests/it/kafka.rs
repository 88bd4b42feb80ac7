//! The Kafka source against librdkafka's mock cluster: alerts equal
//! `replay`'s, poison records are rejected without blocking, state moves
//! with partitions on rebalance, and several daemons in one group give
//! together the alerts of one.

use std::collections::BTreeSet;
use std::time::Duration;

use mcp_alertd::store::Store;
use mcp_alertd::store::state::{self as checkpoint, Saved};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use serde_json::Value;

use crate::support::{Capture, replay_ids, start, wait_for, wait_until};

pub type Mock = MockCluster<'static, DefaultProducerContext>;

/// A one-broker mock cluster with `topic` of `partitions` partitions.
pub fn mock(topic: &str, partitions: i32) -> Mock {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(topic, partitions, 1).unwrap();
    mock
}

/// The record key MCP servers use: `tenant/agent_id`.
pub fn key_of(line: &str) -> String {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => format!(
            "{}/{}",
            v["tenant"].as_str().unwrap_or(""),
            v["agent_id"].as_str().unwrap_or("")
        ),
        Err(_) => "garbage".to_owned(),
    }
}

/// Produces `lines` keyed by `tenant/agent_id` and waits until acked.
pub fn produce(bootstrap: &str, topic: &str, lines: &[String]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for line in lines {
        let key = key_of(line);
        let mut record = BaseRecord::to(topic).key(&key).payload(line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// The example events, one per line (with their poison records), less
/// the two scenarios whose rule keys span the topic's message key
/// (`tenant/agent_id`): spraying (one address, many agents) and one
/// credential in two tenants. Each partition keeps its own state, so those
/// rules see only their partition's events (rules/README.md, "Kinds").
pub fn examples() -> Vec<String> {
    const CROSS_PARTITION: [&str; 4] = [
        r#""source_ip":"198.51.100.23""#,
        r#""source_ip":"198.51.100.24""#,
        r#""credential_id":"key-sync-1""#,
        r#""credential_id":"key-report-1""#,
    ];
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audit.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !CROSS_PARTITION.iter().any(|c| l.contains(c)))
        .map(str::to_owned)
        .collect()
}

pub fn kafka_source(bootstrap: &str, topic: &str, group: &str, extra: &str) -> String {
    format!(
        r#"[engine]
idle_after = "1h"
snapshot_interval = "200ms"
[metrics]
enabled = false
[[sources]]
name = "kafka"
type = "kafka"
topics = ["{topic}"]
group_id = "{group}"
{extra}
[sources.kafka]
brokers = "{bootstrap}"
options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
"#
    )
}

fn received(render: &str) -> u64 {
    render
        .lines()
        .find_map(|l| l.strip_prefix("mcp_alertd_records_received_total{source=\"kafka\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn id_set(out: &Capture) -> BTreeSet<String> {
    out.ids().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_give_the_replay_alerts_and_poison_is_skipped() {
    let mock = mock("audit", 1);
    let lines = examples();
    produce(&mock.bootstrap_servers(), "audit", &lines);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_source(&mock.bootstrap_servers(), "audit", "g1", "");
    let (daemon, out) = start(&cfg, dir.path()).await;
    let m = daemon.metrics().clone();
    wait_for("every record read", || {
        received(&m.render()) == lines.len() as u64
    })
    .await;
    let want = replay_ids(&lines);
    wait_for("the replay alerts", || out.ids().len() >= want.len()).await;
    // Offsets are committed after the state is saved; the lag (from
    // librdkafka's statistics) drops to zero.
    wait_for("lag 0", || {
        m.render().contains(
            "mcp_alertd_kafka_consumer_lag_records{source=\"kafka\",topic=\"audit\",partition=\"0\"} 0\n",
        )
    })
    .await;
    let render = m.render();
    daemon.shutdown().await.unwrap();
    assert_eq!(out.ids(), want);
    // The example log's poison lines were rejected, not stuck.
    assert!(
        render
            .contains("mcp_alertd_records_rejected_total{source=\"kafka\",reason=\"not_json\"} 1"),
        "{render}"
    );
    // The partition's state and position were saved with the offset after
    // the last record.
    let store = Store::open(dir.path()).unwrap();
    let unit = checkpoint::kafka_unit("kafka", "audit", 0);
    match checkpoint::decode(&unit, &store.state(&unit).unwrap().unwrap()).unwrap() {
        Saved::Engine(u) => assert_eq!(u.next_offset, Some(lines.len() as i64)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_saved_offset_with_the_saved_state() {
    let mock = mock("audit", 2);
    let bootstrap = mock.bootstrap_servers();
    let base = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let failure = |i: i64| {
        format!(
            r#"{{"ts":{},"event":"auth.failure","tenant":"acme","agent_id":"intruder","reason":"invalid_token","n":{i}}}"#,
            base + i * 1000
        )
    };
    let first: Vec<String> = (0..3).map(failure).collect();
    produce(&bootstrap, "audit", &first);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_source(&bootstrap, "audit", "g2", "");
    let (daemon, out) = start(&cfg, dir.path()).await;
    let m = daemon.metrics().clone();
    wait_for("three records", || received(&m.render()) == 3).await;
    daemon.shutdown().await.unwrap();
    assert!(out.alerts().is_empty());

    let second: Vec<String> = (3..5).map(failure).collect();
    produce(&bootstrap, "audit", &second);
    let (daemon, out) = start(&cfg, dir.path()).await;
    let m = daemon.metrics().clone();
    wait_for("the burst", || !out.alerts().is_empty()).await;
    let render = m.render();
    daemon.shutdown().await.unwrap();
    // Only the new records were read; the burst counts the saved three.
    assert_eq!(received(&render), 2, "{render}");
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(out.ids(), replay_ids(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_in_one_group_give_the_alerts_of_one() {
    let topic = "audit";
    let mock = mock(topic, 4);
    let bootstrap = mock.bootstrap_servers();
    let lines = examples();
    produce(&bootstrap, topic, &lines);

    // One daemon alone.
    let one = tempfile::tempdir().unwrap();
    let cfg = kafka_source(&bootstrap, topic, "alone", "");
    let (daemon, out) = start(&cfg, one.path()).await;
    let m = daemon.metrics().clone();
    wait_for("every record read", || {
        received(&m.render()) == lines.len() as u64
    })
    .await;
    // Drained: the last batch's alerts are in the outbox; stop and compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.shutdown().await.unwrap();
    let alone = id_set(&out);
    // Every rule key lives on one partition (keyed by tenant/agent_id), so
    // per-partition state gives `replay`'s alerts.
    assert_eq!(alone, replay_ids(&lines).into_iter().collect());

    // Two daemons in another group; the second joins while the first may
    // already be reading, so partitions move between them. A partition
    // taken over without saved state is rebuilt from the log.
    let cfg = kafka_source(&bootstrap, topic, "pair", r#"rebuild_window = "30d""#);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_out) = start(&cfg, a_dir.path()).await;
    let (b, b_out) = start(&cfg, b_dir.path()).await;
    let union = || -> BTreeSet<String> { id_set(&a_out).union(&id_set(&b_out)).cloned().collect() };
    wait_for("the union of alerts", || union().len() >= alone.len()).await;
    // Both hold partitions once the group settled.
    let (am, bm) = (a.metrics().clone(), b.metrics().clone());
    wait_for("both daemons read", || {
        received(&am.render()) > 0 && received(&bm.render()) > 0
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(union(), alone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_go_to_a_kafka_topic_keyed_by_tenant_and_rule() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};

    let mock = mock("audit", 2);
    mock.create_topic("alerts", 3, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let lines = examples();
    produce(&bootstrap, "audit", &lines);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{}
[[sinks]]
name = "siem"
type = "kafka"
topic = "alerts"
[sinks.kafka]
brokers = "{bootstrap}"
[routing]
default = ["siem"]
"#,
        kafka_source(&bootstrap, "audit", "g-sink", "")
    );
    let (daemon, _) = start(&cfg, dir.path()).await;
    let want = replay_ids(&lines);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["alerts"]).unwrap();
    let mut got = Vec::new();
    for _ in 0..3000 {
        if got.len() >= want.len() {
            break;
        }
        match consumer.poll(Duration::from_millis(10)) {
            Some(Ok(m)) => {
                let alert: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_owned();
                assert_eq!(
                    key,
                    format!(
                        "{}/{}",
                        alert["tenant"].as_str().unwrap(),
                        alert["rule"].as_str().unwrap()
                    )
                );
                let header = m.headers().unwrap().get(0);
                assert_eq!(header.key, "alert-id");
                assert_eq!(
                    header.value.unwrap(),
                    alert["id"].as_str().unwrap().as_bytes()
                );
                got.push(alert["id"].as_str().unwrap().to_owned());
            }
            Some(Err(e)) => panic!("{e}"),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    daemon.shutdown().await.unwrap();
    got.sort();
    got.dedup();
    assert_eq!(got, want);
}

/// A daemon process reading `topic` that appends its alerts to a file in
/// `dir` (kept across restarts), with frequent snapshots.
fn kafka_proc_config(dir: &std::path::Path, bootstrap: &str, group: &str, extra: &str) -> String {
    format!(
        r#"{}
[[sinks]]
name = "file"
type = "file"
path = "{}"
[routing]
default = ["file"]
"#,
        kafka_source(
            bootstrap,
            "audit",
            group,
            &format!("rebuild_window = \"30d\"\n{extra}")
        )
        .replace("enabled = false", "address = \"127.0.0.1:0\""),
        dir.join("delivered.jsonl").display()
    )
}

fn delivered(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("delivered.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sigkill_mid_stream_and_restarts_deliver_the_alerts_of_an_uninterrupted_run() {
    use crate::support::Proc;
    let mock = mock("audit", 3);
    let bootstrap = mock.bootstrap_servers();
    let lines = examples();
    let want: BTreeSet<String> = replay_ids(&lines).into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    // Static membership: a restarted daemon gets its partitions back at
    // once (as under systemd's Restart=).
    let cfg = kafka_proc_config(
        dir.path(),
        &bootstrap,
        "crash",
        r#"group_instance_id = "crash-1""#,
    );
    let resumed = |p: &Proc| {
        p.wait_log("kafka: assigned");
        p.logs().iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("resuming from saved state"))
        })
    };
    let mut p = Proc::start(dir.path(), &cfg);
    let chunks: Vec<&[String]> = lines.chunks(100).collect();
    let (mut kills, mut resumes) = (0, 0);
    for (i, chunk) in chunks.iter().enumerate() {
        produce(&bootstrap, "audit", chunk);
        // Killed right after a chunk is produced, while it is being read.
        if i % 2 == 1 {
            resumes += usize::from(resumed(&p));
            if kills == 0 {
                // The first run is killed only after it saved state (a
                // save happens only when records changed a partition's
                // state), so the next run must resume; later kills land
                // wherever they land.
                let m = p.metrics_addr();
                wait_until("a state save", || {
                    crate::support::metric(
                        &crate::support::scrape_blocking(m),
                        "mcp_alertd_state_saves_total",
                    ) >= 1.0
                });
            }
            std::thread::sleep(Duration::from_millis(100 * i as u64));
            p.signal("KILL");
            let _ = p.child.wait();
            kills += 1;
            p = Proc::start(dir.path(), &cfg);
        }
    }
    resumes += usize::from(resumed(&p));
    assert_eq!(kills, 4);
    // The run after the first kill resumed from its saved state and
    // offsets (the first run had none).
    assert!(resumes >= 1, "{resumes} of {} runs resumed", kills + 1);
    wait_until("every alert delivered", || {
        delivered(dir.path()).len() >= want.len()
    });
    assert_eq!(p.stop(), 0);
    assert_eq!(delivered(dir.path()), want);
}

#[test]
fn a_survivor_takes_over_the_partitions_of_a_killed_daemon() {
    use crate::support::Proc;
    let mock = mock("audit", 4);
    let bootstrap = mock.bootstrap_servers();
    let lines = examples();
    let want: BTreeSet<String> = replay_ids(&lines).into_iter().collect();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Proc::start(
        a_dir.path(),
        &kafka_proc_config(a_dir.path(), &bootstrap, "pair", ""),
    );
    let mut b = Proc::start(
        b_dir.path(),
        &kafka_proc_config(b_dir.path(), &bootstrap, "pair", ""),
    );
    let chunks: Vec<&[String]> = lines.chunks(100).collect();
    let half = chunks.len() / 2;
    for chunk in &chunks[..half] {
        produce(&bootstrap, "audit", chunk);
    }
    // Both own partitions before one dies.
    wait_until("both daemons assigned", || {
        [&a, &b].iter().all(|p| {
            p.logs().iter().any(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("kafka: assigned"))
            })
        })
    });
    a.signal("KILL");
    let _ = a.child.wait();
    for chunk in &chunks[half..] {
        produce(&bootstrap, "audit", chunk);
    }
    let union = || -> BTreeSet<String> {
        delivered(a_dir.path())
            .union(&delivered(b_dir.path()))
            .cloned()
            .collect()
    };
    wait_until("the union of alerts", || union().len() >= want.len());
    assert_eq!(b.stop(), 0);
    assert_eq!(union(), want);
    drop(a);
}

/// The broker `scripts/test.sh` starts (tansu, a Kafka-protocol broker).
fn real_broker() -> String {
    match std::env::var("MCP_ALERTD_KAFKA_BROKER") {
        Ok(b) => b,
        Err(_) => panic!(
            "set MCP_ALERTD_KAFKA_BROKER to a broker's host:port (scripts/test.sh starts one)"
        ),
    }
}

async fn create_topic(broker: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka-protocol broker in MCP_ALERTD_KAFKA_BROKER; scripts/test.sh starts tansu"]
async fn a_real_broker_across_a_restart_gives_the_replay_alerts() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;

    let broker = real_broker();
    // Fresh names: the broker keeps data across test runs.
    let run = jiff::Timestamp::now().as_millisecond();
    let (audit, alerts) = (format!("audit-{run}"), format!("alerts-{run}"));
    create_topic(&broker, &audit, 3).await;
    create_topic(&broker, &alerts, 1).await;
    let lines = examples();
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{}
[[sinks]]
name = "stdout"
type = "stdout"
[[sinks]]
name = "siem"
type = "kafka"
topic = "{alerts}"
[sinks.kafka]
brokers = "{broker}"
options = {{ "compression.type" = "none" }}
[routing]
default = ["stdout", "siem"]
"#,
        kafka_source(&broker, &audit, &format!("g-{run}"), "")
    );

    produce(&broker, &audit, first);
    let (daemon, out1) = start(&cfg, dir.path()).await;
    let m = daemon.metrics().clone();
    wait_for("the first half read", || {
        received(&m.render()) == first.len() as u64
    })
    .await;
    daemon.shutdown().await.unwrap();

    produce(&broker, &audit, second);
    let (daemon, out2) = start(&cfg, dir.path()).await;
    let m = daemon.metrics().clone();
    wait_for("the second half read", || {
        received(&m.render()) == second.len() as u64
    })
    .await;
    let want: BTreeSet<String> = replay_ids(&lines).into_iter().collect();
    wait_for("every alert", || {
        id_set(&out1).union(&id_set(&out2)).count() >= want.len()
    })
    .await;
    daemon.shutdown().await.unwrap();
    let got: BTreeSet<String> = id_set(&out1).union(&id_set(&out2)).cloned().collect();
    assert_eq!(got, want);

    // The SIEM topic has each alert (a redelivery would carry the same id).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("group.id", format!("reader-{run}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[alerts.as_str()]).unwrap();
    let mut siem = BTreeSet::new();
    for _ in 0..3000 {
        if siem.len() >= want.len() {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
            let alert: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            siem.insert(alert["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(siem, want);
}

#[test]
fn kafka_settings_are_validated_and_secrets_stay_in_their_files() {
    use mcp_alertd::config::Config;
    let errors = Config::parse(
        r#"
[[sources]]
name = "k"
type = "kafka"
topics = []
address = "127.0.0.1:1"
[sources.kafka]
brokers = ""
sasl = { mechanism = "GSSAPI", username = "u" }
options = { "sasl.password" = "hunter2", "enable.auto.offset.store" = "true" }
[[sinks]]
name = "out"
type = "kafka"
[sinks.kafka]
brokers = "127.0.0.1:9092"
"#,
    )
    .unwrap_err();
    let text = errors.join("\n");
    for want in [
        "`address` does not apply to type `kafka`",
        "kafka.brokers is empty",
        "`topics` must name at least one topic",
        "kafka.sasl.mechanism `GSSAPI` is not supported",
        "kafka.sasl needs password_file or password_credential",
        "kafka.options.`sasl.password` is set by mcp-alertd",
        "kafka.options.`enable.auto.offset.store` is set by mcp-alertd",
        "`topic` is required for type `kafka`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("hunter2"));

    // `check` reads the SASL password and checks every librdkafka property
    // without contacting a broker; it never prints the secret.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("kafka.pass");
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let cfg = dir.path().join("config.toml");
    let write = |options: &str| {
        std::fs::write(
            &cfg,
            format!(
                r#"state_dir = "{}"
[[sources]]
name = "k"
type = "kafka"
topics = ["audit"]
[sources.kafka]
brokers = "127.0.0.1:9"
sasl = {{ mechanism = "SCRAM-SHA-512", username = "alertd", password_file = "{}" }}
options = {{ {options} }}
"#,
                dir.path().display(),
                secret.display()
            ),
        )
        .unwrap()
    };
    let bin = assert_cmd::cargo::cargo_bin("mcp-alertd");
    write(r#""fetch.max.bytes" = "1048576""#);
    let ok = std::process::Command::new(&bin)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ok.status.success(), "{all}");
    assert!(!all.contains("s3cr3t"), "{all}");
    write(r#""no.such.property" = "1""#);
    let bad = std::process::Command::new(&bin)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(78));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("source `k`") && err.contains("no.such.property"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}
