//! The Kafka source: a consumer group over audit topics, each partition an
//! engine unit of its own whose state and offsets are saved together. The
//! settings are here (always built, so a configuration is checked the same
//! way by every build); the consumer is in `consumer` (feature `kafka`).

#[cfg(feature = "kafka")]
pub mod consumer;

use std::time::Duration;

use super::{BindEnv, Bound, SourceCtx};
use crate::kafka::{KafkaClient, RawKafka, StartFrom};
use crate::options::{dur, ms_duration};

/// `type = "kafka"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    kafka: Option<RawKafka>,
    topics: Option<Vec<String>>,
    group_id: Option<String>,
    group_instance_id: Option<String>,
    start_from: Option<StartFrom>,
    rebuild_window: Option<String>,
}

/// A Kafka source's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub client: KafkaClient,
    pub topics: Vec<String>,
    pub group_id: String,
    /// Static group membership (`group.instance.id`).
    pub group_instance_id: Option<String>,
    pub start_from: StartFrom,
    /// Taking over a partition without saved state: replay records of
    /// this much time before the committed offset to rebuild windows and
    /// timers (0: start at the committed offset, state empty).
    pub rebuild_window: Duration,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Option<Settings> {
        if !cfg!(feature = "kafka") {
            errors.push(format!(
                "{at}: this build has no Kafka support (built without the `kafka` feature)"
            ));
        }
        let client = match self.kafka {
            Some(k) => k.validate(at, errors),
            None => {
                errors.push(format!(
                    "{at}: `kafka` (at least kafka.brokers) is required for type `kafka`"
                ));
                return None;
            }
        };
        let topics = self.topics.unwrap_or_default();
        if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
            errors.push(format!("{at}: `topics` must name at least one topic"));
        }
        let group_id = self.group_id.unwrap_or_else(|| "mcp-alertd".to_owned());
        if group_id.trim().is_empty() {
            errors.push(format!("{at}: `group_id` is empty"));
        }
        Some(Settings {
            client,
            topics,
            group_id,
            group_instance_id: self.group_instance_id,
            start_from: self.start_from.unwrap_or(StartFrom::Earliest),
            rebuild_window: ms_duration(dur(
                errors,
                &format!("{at}: rebuild_window"),
                self.rebuild_window.as_deref(),
                0,
                0,
            )),
        })
    }
}

/// Creates the consumer (and checks its settings) without joining the
/// group yet; it joins when started.
#[cfg(feature = "kafka")]
pub fn bind_source(
    settings: &Settings,
    ctx: SourceCtx,
    env: &mut BindEnv,
) -> Result<Bound, String> {
    let src = consumer::KafkaSource {
        settings: settings.clone(),
        saved_offset: (env.saved_offset)(&ctx.name),
        durable: env.durable.clone(),
    };
    let consumer = consumer::connect(&ctx, &src)?;
    tracing::info!(source = %ctx.name, brokers = %settings.client.brokers, topics = ?settings.topics, group = %settings.group_id, "consuming (Kafka)");
    let tracker = env.tracker.clone();
    Ok(Bound {
        local: None,
        start: Box::new(move || {
            tracker.spawn_blocking(move || consumer::run(ctx, consumer));
        }),
    })
}

/// Without the `kafka` feature a Kafka source cannot start.
#[cfg(not(feature = "kafka"))]
pub fn bind_source(_: &Settings, _: SourceCtx, _: &mut BindEnv) -> Result<Bound, String> {
    Err("this build has no Kafka support".to_owned())
}
