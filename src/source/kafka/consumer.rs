//! The Kafka source (DESIGN §1, §6, §7): one consumer in a consumer group
//! (cooperative-sticky assignment, optional static membership), on a thread
//! of its own because librdkafka's rebalance callbacks run on the polling
//! thread and must wait for the engine.
//!
//! At-least-once, with state:
//! - Each partition's records go to an engine unit of their own; its
//!   position (the offset after the last record applied, rejected records
//!   included) is saved with its state. Offsets are committed to Kafka only
//!   after that save is durable (`enable.auto.commit` and
//!   `enable.auto.offset.store` are off; this thread commits what
//!   [`DurableOffsets`] says), so a Kafka commit always follows the
//!   snapshot that covers it.
//! - On assignment, a partition with saved state here resumes from the
//!   saved offset (records after it are applied again, and raise alerts
//!   with the same ids); without, it starts at the committed offset, or
//!   `rebuild_window` of record time before it, so windows and timers are
//!   rebuilt from the log.
//! - On revocation, the partition's state is saved and released, and its
//!   offset committed, before the partition is given up.
//! - A record that does not decode is rejected and counted like any other
//!   source's; its offset still advances (a poison message never blocks a
//!   partition).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::kafka::{StartFrom, client_config};
use crate::source::framing::{FrameRef, Frames};
use crate::source::{Batch, DurableOffsets, KafkaMark, SavedOffset, SourceCtx, SourceMsg};
use crate::telemetry::metrics::PartitionLabels;

/// Records taken from the consumer before they are handed on.
const MAX_POLL_RECORDS: usize = 2048;
/// How long a revocation waits for the engine to save the state.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of the broker requests made while assigning partitions.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer with this source's callbacks.
pub type KafkaConsumer = BaseConsumer<Context>;

/// A configured Kafka source.
pub struct KafkaSource {
    pub settings: super::Settings,
    /// Where a partition's saved state ends (its next offset), if this
    /// daemon has it.
    pub saved_offset: SavedOffset,
    pub durable: Arc<DurableOffsets>,
}

/// The consumer's callbacks: rebalances (with the engine) and statistics.
pub struct Context {
    ctx: SourceCtx,
    saved_offset: SavedOffset,
    durable: Arc<DurableOffsets>,
    rebuild_window: Duration,
    assigned: Mutex<BTreeSet<(Arc<str>, i32)>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let source = &*self.ctx.name;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(source, "kafka: {fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(source, "kafka: {fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(source, "kafka: {fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(source, "kafka: {fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(source = &*self.ctx.name, "kafka: {error}: {reason}");
    }

    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.ctx
                    .metrics
                    .kafka_lag
                    .get_or_create(&PartitionLabels {
                        source: self.ctx.name.to_string(),
                        topic: topic.clone(),
                        partition: partition.to_string(),
                    })
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let start = self.assign(consumer, tpl);
                let result = if cooperative {
                    consumer.incremental_assign(&start)
                } else {
                    consumer.assign(&start)
                };
                if let Err(e) = result {
                    tracing::error!(source = &*self.ctx.name, "kafka: cannot assign: {e}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl);
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(source = &*self.ctx.name, "kafka: cannot unassign: {e}");
                }
            }
            other => {
                tracing::error!(
                    source = &*self.ctx.name,
                    "kafka: rebalance failed: {other:?}"
                );
                let all = self.take_assigned();
                self.release(consumer, all, false);
                let _ = consumer.unassign();
            }
        }
    }
}

impl Context {
    fn partitions(tpl: &TopicPartitionList) -> Vec<(Arc<str>, i32)> {
        tpl.elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect()
    }

    fn take_assigned(&self) -> Vec<(Arc<str>, i32)> {
        self.assigned
            .lock()
            .map(|mut a| std::mem::take(&mut *a).into_iter().collect())
            .unwrap_or_default()
    }

    /// The saved next offset of a partition, if this daemon has its state.
    fn saved_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        (self.saved_offset)(topic, partition)
    }

    /// Decides where each assigned partition starts, and has the engine
    /// restore its state first.
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> TopicPartitionList {
        let parts = Self::partitions(tpl);
        let mut start = TopicPartitionList::with_capacity(parts.len());
        let mut fresh = Vec::new();
        for (topic, partition) in &parts {
            match self.saved_offset(topic, *partition) {
                Some(next) => {
                    let _ = start.add_partition_offset(topic, *partition, Offset::Offset(next));
                    tracing::info!(
                        source = &*self.ctx.name,
                        topic = &**topic,
                        partition,
                        offset = next,
                        "kafka: assigned; resuming from saved state"
                    );
                }
                None => {
                    let _ = start.add_partition_offset(topic, *partition, Offset::Stored);
                    fresh.push((topic.clone(), *partition));
                }
            }
        }
        if !fresh.is_empty() && !self.rebuild_window.is_zero() {
            self.rewind(consumer, &fresh, &mut start);
        }
        for (topic, partition) in &fresh {
            tracing::info!(
                source = &*self.ctx.name,
                topic = &**topic,
                partition,
                "kafka: assigned; no saved state here"
            );
        }
        if let Ok(mut a) = self.assigned.lock() {
            a.extend(parts.iter().cloned());
        }
        self.ctx
            .metrics
            .kafka_rebalances
            .get_or_create(&self.ctx.label)
            .inc();
        let msg = SourceMsg::Assign {
            source: self.ctx.index,
            partitions: parts,
        };
        if self.ctx.tx.blocking_send(msg).is_err() {
            tracing::warn!(source = &*self.ctx.name, "kafka: the engine has stopped");
        }
        start
    }

    /// Partitions without saved state start `rebuild_window` of record
    /// time before their committed offset (or at it, when that is earlier).
    fn rewind(
        &self,
        consumer: &BaseConsumer<Self>,
        fresh: &[(Arc<str>, i32)],
        start: &mut TopicPartitionList,
    ) {
        let since = crate::clock::now_ms() - crate::duration::millis(self.rebuild_window);
        let mut query = TopicPartitionList::new();
        let mut committed_q = TopicPartitionList::new();
        for (topic, partition) in fresh {
            let _ = query.add_partition_offset(topic, *partition, Offset::Offset(since.max(0)));
            committed_q.add_partition(topic, *partition);
        }
        let by_time = match consumer.offsets_for_times(query, REQUEST_TIMEOUT) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    source = &*self.ctx.name,
                    "kafka: cannot look up offsets by time, starting at the committed offsets: {e}"
                );
                return;
            }
        };
        let committed = consumer
            .committed_offsets(committed_q, REQUEST_TIMEOUT)
            .ok();
        for (topic, partition) in fresh {
            let t = by_time
                .find_partition(topic, *partition)
                .map(|e| e.offset());
            let c = committed
                .as_ref()
                .and_then(|c| c.find_partition(topic, *partition))
                .map(|e| e.offset());
            let from = match (t, c) {
                (Some(Offset::Offset(t)), Some(Offset::Offset(c))) => Offset::Offset(t.min(c)),
                (Some(Offset::Offset(t)), _) => Offset::Offset(t),
                // No record since then: the committed offset (or the reset
                // policy) is where the rebuild would end anyway.
                _ => Offset::Stored,
            };
            if let Offset::Offset(o) = from {
                tracing::info!(
                    source = &*self.ctx.name,
                    topic = &**topic,
                    partition,
                    offset = o,
                    "kafka: rebuilding state from an earlier offset"
                );
            }
            let _ = start.set_partition_offset(topic, *partition, from);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let parts = Self::partitions(tpl);
        if let Ok(mut a) = self.assigned.lock() {
            for p in &parts {
                a.remove(p);
            }
        }
        self.ctx
            .metrics
            .kafka_rebalances
            .get_or_create(&self.ctx.label)
            .inc();
        let lost = consumer.assignment_lost();
        self.release(consumer, parts, !lost);
    }

    /// Has the engine save and drop the partitions' state, then commits
    /// their durable offsets (unless the assignment was lost).
    fn release(&self, consumer: &BaseConsumer<Self>, parts: Vec<(Arc<str>, i32)>, commit: bool) {
        if parts.is_empty() {
            return;
        }
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let msg = SourceMsg::Release {
            source: self.ctx.index,
            partitions: parts.clone(),
            done,
        };
        if self.ctx.tx.blocking_send(msg).is_err() {
            tracing::warn!(
                source = &*self.ctx.name,
                "kafka: the engine has stopped; partitions released without saving"
            );
            return;
        }
        if wait.recv_timeout(RELEASE_TIMEOUT).is_err() {
            tracing::error!(
                source = &*self.ctx.name,
                "kafka: partition state not saved within {RELEASE_TIMEOUT:?}; offsets not committed"
            );
            return;
        }
        if commit {
            let offsets: Vec<_> = self
                .durable
                .of_source(self.ctx.index)
                .into_iter()
                .filter(|(t, p, _)| parts.iter().any(|(pt, pp)| pt == t && pp == p))
                .collect();
            commit_offsets(consumer, &self.ctx.name, &offsets, CommitMode::Sync);
        }
        for (topic, partition) in parts {
            self.durable.forget(&(self.ctx.index, topic, partition));
        }
    }
}

fn commit_offsets(
    consumer: &BaseConsumer<Context>,
    source: &str,
    offsets: &[(Arc<str>, i32, i64)],
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, next) in offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(
            source,
            "kafka: offset commit failed (retried after the next snapshot): {e}"
        );
    }
}

/// Creates the consumer (and checks its settings) without joining the
/// group yet.
pub fn connect(ctx: &SourceCtx, src: &KafkaSource) -> Result<KafkaConsumer, String> {
    let mut cfg = client_config(&src.settings.client)?;
    cfg.set("group.id", &src.settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "auto.offset.reset",
            match src.settings.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        .set("statistics.interval.ms", "5000")
        .set(
            "message.max.bytes",
            (ctx.max_record_bytes.max(1000) + 1024).to_string(),
        );
    if let Some(id) = &src.settings.group_instance_id {
        cfg.set("group.instance.id", id);
    }
    // The user's options win over these defaults (not over managed keys).
    for (k, v) in &src.settings.client.options {
        cfg.set(k, v);
    }
    let context = Context {
        ctx: ctx.clone(),
        saved_offset: src.saved_offset.clone(),
        durable: src.durable.clone(),
        rebuild_window: src.settings.rebuild_window,
        assigned: Mutex::new(BTreeSet::new()),
    };
    let consumer: BaseConsumer<Context> = cfg
        .create_with_context(context)
        .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
    let topics: Vec<&str> = src.settings.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
    Ok(consumer)
}

/// Consumes until cancelled (blocking; run on a thread of its own), then
/// releases every partition (state saved, offsets committed) and leaves
/// the group.
pub fn run(ctx: SourceCtx, consumer: KafkaConsumer) {
    let mut committed: Vec<(Arc<str>, i32, i64)> = Vec::new();
    let mut last_commit = Instant::now();
    let mut last_error = None::<Instant>;
    let max = ctx.max_record_bytes;
    while !ctx.cancel.is_cancelled() {
        let mut batches: Vec<(KafkaMark, Frames, Instant)> = Vec::new();
        let mut taken = 0;
        let mut timeout = Duration::from_millis(100);
        while taken < MAX_POLL_RECORDS {
            let Some(result) = consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let msg = match result {
                Ok(m) => m,
                Err(e) => {
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(source = &*ctx.name, "kafka: {e}");
                        last_error = Some(Instant::now());
                    }
                    break;
                }
            };
            taken += 1;
            let topic = msg.topic();
            let partition = msg.partition();
            let at = match batches
                .iter()
                .position(|(m, _, _)| m.partition == partition && &*m.topic == topic)
            {
                Some(i) => i,
                None => {
                    batches.push((
                        KafkaMark {
                            topic: Arc::from(topic),
                            partition,
                        },
                        Frames::default(),
                        Instant::now(),
                    ));
                    batches.len() - 1
                }
            };
            let frames = &mut batches[at].1;
            let payload = msg.payload().unwrap_or_default();
            if payload.len() > max {
                frames.frames.push(FrameRef::TooLarge(payload.len()));
            } else if crate::source::framing::is_blank(payload) {
                // A tombstone or blank message is no record (as on every
                // source); the next record's offset covers it.
                continue;
            } else {
                frames.push_record(payload);
            }
            frames.ends.push(u64::try_from(msg.offset()).unwrap_or(0));
        }
        for (mark, frames, received) in batches {
            ctx.metrics
                .records_received
                .get_or_create(&ctx.label)
                .inc_by(frames.len() as u64);
            let batch = Batch {
                source: ctx.index,
                partition: 0,
                peer: None,
                received,
                frames,
                file: None,
                kafka: Some(mark),
            };
            if ctx.tx.blocking_send(SourceMsg::Batch(batch)).is_err() {
                return;
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            last_commit = Instant::now();
            let durable = consumer.context().durable.of_source(ctx.index);
            let changed: Vec<_> = durable
                .iter()
                .filter(|d| !committed.contains(d))
                .cloned()
                .collect();
            commit_offsets(&consumer, &ctx.name, &changed, CommitMode::Async);
            committed = durable;
        }
    }
    // Leaving: every partition is revoked through the rebalance callback
    // when the consumer closes (state saved, offsets committed).
    tracing::info!(source = &*ctx.name, "kafka: leaving the consumer group");
    drop(consumer);
}
