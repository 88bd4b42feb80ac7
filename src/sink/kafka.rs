//! Alerts to a Kafka topic, for SIEMs that read Kafka: value = the alert
//! JSON, key = `tenant/rule` (one tenant's alerts of a rule stay in order
//! on one partition), header `alert-id`. The producer is idempotent with
//! `acks=all`; an alert is acknowledged in the outbox only after the broker
//! has it. Consumers drop redeliveries by `alert-id` (the same id after a
//! retry or a restart).

#[cfg(feature = "kafka")]
use std::time::Duration;

#[cfg(feature = "kafka")]
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
#[cfg(feature = "kafka")]
use rdkafka::message::{Header, OwnedHeaders};
#[cfg(feature = "kafka")]
use rdkafka::producer::{FutureProducer, FutureRecord};

#[cfg(feature = "kafka")]
use super::SendError;
use crate::kafka::{KafkaClient, RawKafka};

/// `type = "kafka"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    topic: Option<String>,
    kafka: Option<RawKafka>,
}

/// A Kafka sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub client: KafkaClient,
    pub topic: String,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Option<Settings> {
        if !cfg!(feature = "kafka") {
            errors.push(format!(
                "{at}: this build has no Kafka support (built without the `kafka` feature)"
            ));
        }
        let topic = match self.topic {
            Some(t) if t.trim().is_empty() => {
                errors.push(format!("{at}: `topic` is empty"));
                t
            }
            Some(t) => t,
            None => {
                errors.push(format!("{at}: `topic` is required for type `kafka`"));
                String::new()
            }
        };
        let Some(raw) = self.kafka else {
            errors.push(format!(
                "{at}: `kafka` (at least kafka.brokers) is required for type `kafka`"
            ));
            return None;
        };
        Some(Settings {
            client: raw.validate(at, errors),
            topic,
        })
    }
}

#[cfg(feature = "kafka")]
pub struct Kafka {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

#[cfg(feature = "kafka")]
impl Kafka {
    pub fn build(settings: &Settings, timeout: Duration) -> Result<Kafka, String> {
        let Settings { client, topic } = settings;
        let mut config = crate::kafka::client_config(client)?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                timeout.as_millis().max(1000).to_string(),
            );
        for (k, v) in &client.options {
            config.set(k, v);
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        Ok(Kafka {
            producer,
            topic: topic.clone(),
            timeout,
        })
    }

    pub async fn send(
        &self,
        id: &str,
        tenant: &str,
        rule: &str,
        json: &[u8],
    ) -> Result<(), SendError> {
        let key = format!("{tenant}/{rule}");
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(json)
            .headers(OwnedHeaders::new().insert(Header {
                key: "alert-id",
                value: Some(id),
            }));
        match self.producer.send(record, self.timeout).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(classify(&self.topic, e)),
        }
    }
}

#[cfg(feature = "kafka")]
fn classify(topic: &str, e: KafkaError) -> SendError {
    let message = format!("kafka topic {topic}: {e}");
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic,
        ) => SendError::permanent(message),
        _ => SendError::retry(message),
    }
}
