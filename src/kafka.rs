//! Kafka client settings shared by the Kafka source and sink (a leaf both
//! import): brokers, TLS, SASL (secrets from files or systemd credentials)
//! and extra librdkafka properties, validated, and the librdkafka client
//! configuration made from them.

use std::collections::BTreeMap;
use std::path::PathBuf;

#[cfg(feature = "kafka")]
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use serde::Deserialize;

use crate::options::SecretRef;

/// Where a Kafka consumer group starts reading a partition it has no
/// committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// SASL mechanisms librdkafka supports without extra system libraries.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// librdkafka properties set from the typed settings; `options` may not
/// override them (secrets must come from files, offsets are managed).
const MANAGED: [&str; 12] = [
    "bootstrap.servers",
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "enable.auto.offset.store",
    "group.id",
    "ssl.key.password",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSasl {
    pub mechanism: String,
    pub username: String,
    pub password: SecretRef,
}

/// How to reach a Kafka cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaClient {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub tls: Option<KafkaTls>,
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties (not the managed ones).
    pub options: BTreeMap<String, String>,
}

impl KafkaClient {
    /// `security.protocol` for these settings.
    pub fn security_protocol(&self) -> &'static str {
        match (&self.tls, &self.sasl) {
            (None, None) => "plaintext",
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaSasl {
    mechanism: String,
    username: String,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    brokers: String,
    tls: Option<RawKafkaTls>,
    sasl: Option<RawKafkaSasl>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

impl RawKafka {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> KafkaClient {
        if self.brokers.trim().is_empty() {
            errors.push(format!("{at}: kafka.brokers is empty"));
        }
        let tls = self.tls.map(|t| {
            for (what, file) in [
                ("ca_file", &t.ca_file),
                ("cert_file", &t.cert_file),
                ("key_file", &t.key_file),
            ] {
                if let Some(file) = file
                    && let Err(e) = std::fs::metadata(file)
                {
                    errors.push(format!("{at}: kafka.tls.{what} {}: {e}", file.display()));
                }
            }
            if t.cert_file.is_some() != t.key_file.is_some() {
                errors.push(format!(
                    "{at}: kafka.tls: give both cert_file and key_file, or neither"
                ));
            }
            KafkaTls {
                ca_file: t.ca_file,
                cert_file: t.cert_file,
                key_file: t.key_file,
            }
        });
        let sasl = self.sasl.and_then(|s| {
            let what = format!("{at}: kafka.sasl.password");
            if !SASL_MECHANISMS.contains(&s.mechanism.as_str()) {
                errors.push(format!(
                    "{at}: kafka.sasl.mechanism `{}` is not supported ({})",
                    s.mechanism,
                    SASL_MECHANISMS.join(", ")
                ));
            }
            let password = SecretRef::from(s.password_file, s.password_credential, &what, errors);
            if password.is_none() {
                errors.push(format!(
                    "{at}: kafka.sasl needs password_file or password_credential"
                ));
            }
            password.map(|password| KafkaSasl {
                mechanism: s.mechanism,
                username: s.username,
                password,
            })
        });
        for key in self.options.keys() {
            if MANAGED.contains(&key.as_str())
                || key.starts_with("sasl.")
                || key.ends_with(".password")
            {
                errors.push(format!(
                    "{at}: kafka.options.`{key}` is set by mcp-alertd (use brokers, tls, sasl or the source settings)"
                ));
            }
        }
        KafkaClient {
            brokers: self.brokers,
            tls,
            sasl,
            options: self.options,
        }
    }
}

/// librdkafka settings of a client (source or sink): brokers, TLS, SASL
/// (the password read from its file now), then the extra options.
#[cfg(feature = "kafka")]
pub fn client_config(c: &KafkaClient) -> Result<ClientConfig, String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &c.brokers)
        .set("security.protocol", c.security_protocol())
        .set_log_level(RDKafkaLogLevel::Warning);
    if let Some(tls) = &c.tls {
        for (key, file) in [
            ("ssl.ca.location", &tls.ca_file),
            ("ssl.certificate.location", &tls.cert_file),
            ("ssl.key.location", &tls.key_file),
        ] {
            if let Some(f) = file {
                cfg.set(key, f.display().to_string());
            }
        }
    }
    if let Some(sasl) = &c.sasl {
        let password = sasl.password.read()?;
        cfg.set("sasl.mechanism", &sasl.mechanism)
            .set("sasl.username", &sasl.username)
            .set("sasl.password", password);
    }
    for (k, v) in &c.options {
        cfg.set(k, v);
    }
    Ok(cfg)
}

/// Checks a client's settings as librdkafka would take them (the SASL
/// password read from its file, every property known and valid) without
/// creating a client or contacting a broker.
#[cfg(feature = "kafka")]
pub fn check_client(c: &KafkaClient) -> Result<(), String> {
    client_config(c)?
        .create_native_config()
        .map(drop)
        .map_err(|e| format!("kafka: {e}"))
}
