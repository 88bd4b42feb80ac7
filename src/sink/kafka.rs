//! Alerts to a Kafka topic, for SIEMs that read Kafka: value = the alert
//! JSON, key = `tenant/rule` (one tenant's alerts of a rule stay in order
//! on one partition), header `alert-id`. The producer is idempotent with
//! `acks=all`; an alert is acknowledged in the outbox only after the broker
//! has it. Consumers drop redeliveries by `alert-id` (the same id after a
//! retry or a restart).

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::SendError;
use super::{SinkConfig, SinkKind};

pub struct Kafka {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl Kafka {
    pub fn build(cfg: &SinkConfig) -> Result<Kafka, String> {
        let SinkKind::Kafka { client, topic } = &cfg.kind else {
            return Err("not a kafka sink".to_owned());
        };
        let mut config = crate::kafka::client_config(client)?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                cfg.timeout.as_millis().max(1000).to_string(),
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
            timeout: cfg.timeout,
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
