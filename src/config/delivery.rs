//! Delivery configuration: `[outbox]`, `[[sinks]]`, `[[routes]]` and
//! `[routing]`. Secrets (SMTP password, webhook signing key) come from
//! files or systemd credentials, never from the configuration itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{OutboxSettings, SinkConfig, SinkKind, SmtpTls, SyslogMessage, SyslogProtocol};
use crate::options::SecretRef;
use crate::router::{Route, Router};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    max_age: Option<String>,
    max_pending: Option<u64>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    delivered_retention: Option<String>,
}

impl RawOutbox {
    pub(super) fn validate(self, errors: &mut Vec<String>) -> OutboxSettings {
        let d = OutboxSettings::default();
        let dur = |errors: &mut Vec<String>,
                   name: &str,
                   v: Option<String>,
                   default: Duration|
         -> Duration {
            match v.map(|t| crate::duration::parse_ms(&t)) {
                None => default,
                Some(Ok(ms)) if ms > 0 => Duration::from_millis(ms as u64),
                Some(Ok(_)) => {
                    errors.push(format!("outbox.{name}: must be positive"));
                    default
                }
                Some(Err(e)) => {
                    errors.push(format!("outbox.{name}: {e}"));
                    default
                }
            }
        };
        let max_pending = match self.max_pending {
            Some(0) => {
                errors.push("outbox.max_pending: must be at least 1".to_owned());
                d.max_pending
            }
            Some(n) => n,
            None => d.max_pending,
        };
        OutboxSettings {
            max_age: dur(errors, "max_age", self.max_age, d.max_age),
            max_pending,
            retry_initial: dur(errors, "retry_initial", self.retry_initial, d.retry_initial),
            retry_max: dur(errors, "retry_max", self.retry_max, d.retry_max),
            delivered_retention: dur(
                errors,
                "delivered_retention",
                self.delivered_retention,
                d.delivered_retention,
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    rate_limit: Option<u32>,
    burst: Option<u32>,
    timeout: Option<String>,
    path: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    signing_key_file: Option<PathBuf>,
    signing_key_credential: Option<String>,
    ca_file: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
    from: Option<String>,
    to: Option<Vec<String>>,
    address: Option<String>,
    protocol: Option<SyslogProtocol>,
    message: Option<SyslogMessage>,
    server_name: Option<String>,
    facility: Option<u8>,
    topic: Option<String>,
    kafka: Option<super::kafka::RawKafka>,
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RawSink {
    pub(super) fn validate(self, errors: &mut Vec<String>) -> Option<SinkConfig> {
        let at = format!("sinks ({})", self.name);
        let before = errors.len();
        if self.name.is_empty() {
            errors.push("sinks: `name` must not be empty".to_owned());
        }
        let need = |field: &str, present: bool, errors: &mut Vec<String>| {
            if !present {
                errors.push(format!(
                    "{at}: `{field}` is required for type `{}`",
                    self.kind
                ));
            }
        };
        let kind = match self.kind.as_str() {
            "stdout" => SinkKind::Stdout,
            "file" => {
                need("path", self.path.is_some(), errors);
                SinkKind::File {
                    path: self.path.clone().unwrap_or_default(),
                }
            }
            "webhook" => {
                need("url", self.url.is_some(), errors);
                let url = self.url.clone().unwrap_or_default();
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    && self.url.is_some()
                {
                    errors.push(format!("{at}: `url` must be http:// or https://"));
                }
                SinkKind::Webhook {
                    url,
                    headers: self.headers.clone().into_iter().collect(),
                    signing_key: SecretRef::from(
                        self.signing_key_file.clone(),
                        self.signing_key_credential.clone(),
                        &at,
                        errors,
                    ),
                    ca_file: self.ca_file.clone(),
                }
            }
            "email" => {
                need("host", self.host.is_some(), errors);
                need("from", self.from.is_some(), errors);
                need(
                    "to",
                    self.to.as_ref().is_some_and(|t| !t.is_empty()),
                    errors,
                );
                let tls = self.tls.unwrap_or(SmtpTls::Starttls);
                let host = self.host.clone().unwrap_or_default();
                if tls == SmtpTls::None && !is_loopback_host(&host) {
                    errors.push(format!(
                        "{at}: `tls = \"none\"` is allowed only for a loopback SMTP host"
                    ));
                }
                let password = SecretRef::from(
                    self.password_file.clone(),
                    self.password_credential.clone(),
                    &at,
                    errors,
                );
                if password.is_some() != self.username.is_some() {
                    errors.push(format!("{at}: `username` and a password (`password_file` or `password_credential`) go together"));
                }
                SinkKind::Email {
                    port: self.port.unwrap_or(match tls {
                        SmtpTls::Implicit => 465,
                        SmtpTls::Starttls => 587,
                        SmtpTls::None => 25,
                    }),
                    host,
                    tls,
                    username: self.username.clone(),
                    password,
                    from: self.from.clone().unwrap_or_default(),
                    to: self.to.clone().unwrap_or_default(),
                    ca_file: self.ca_file.clone(),
                }
            }
            "syslog" => {
                need("address", self.address.is_some(), errors);
                let address = match self.address.as_deref().map(str::parse::<SocketAddr>) {
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        errors.push(format!("{at}: address: {e}"));
                        SocketAddr::from(([127, 0, 0, 1], 514))
                    }
                    None => SocketAddr::from(([127, 0, 0, 1], 514)),
                };
                if self.facility.is_some_and(|f| f > 23) {
                    errors.push(format!("{at}: facility must be 0..=23"));
                }
                SinkKind::Syslog {
                    address,
                    protocol: self.protocol.unwrap_or(SyslogProtocol::Tcp),
                    message: self.message.unwrap_or(SyslogMessage::Cef),
                    server_name: self.server_name.clone(),
                    ca_file: self.ca_file.clone(),
                    facility: self.facility.unwrap_or(13),
                }
            }
            "kafka" => {
                if !cfg!(feature = "kafka") {
                    errors.push(format!(
                        "{at}: this build has no Kafka support (built without the `kafka` feature)"
                    ));
                }
                need("topic", self.topic.is_some(), errors);
                let topic = self.topic.clone().unwrap_or_default();
                if self.topic.is_some() && topic.trim().is_empty() {
                    errors.push(format!("{at}: `topic` is empty"));
                }
                let Some(raw) = self.kafka else {
                    errors.push(format!(
                        "{at}: `kafka` (at least kafka.brokers) is required for type `kafka`"
                    ));
                    return None;
                };
                SinkKind::Kafka {
                    client: raw.validate(&at, errors),
                    topic,
                }
            }
            other => {
                errors.push(format!(
                    "{at}: unknown type `{other}` (stdout, file, webhook, email, syslog, kafka)"
                ));
                return None;
            }
        };
        // Keys that do not belong to this type are errors, not ignored.
        let t = self.kind.as_str();
        let applies: [(&str, bool, &[&str]); 19] = [
            ("topic", self.topic.is_some(), &["kafka"]),
            ("path", self.path.is_some(), &["file"]),
            ("url", self.url.is_some(), &["webhook"]),
            ("headers", !self.headers.is_empty(), &["webhook"]),
            (
                "signing_key_file",
                self.signing_key_file.is_some(),
                &["webhook"],
            ),
            (
                "signing_key_credential",
                self.signing_key_credential.is_some(),
                &["webhook"],
            ),
            (
                "ca_file",
                self.ca_file.is_some(),
                &["webhook", "email", "syslog"],
            ),
            ("host", self.host.is_some(), &["email"]),
            ("port", self.port.is_some(), &["email"]),
            ("tls", self.tls.is_some(), &["email"]),
            ("username", self.username.is_some(), &["email"]),
            ("password_file", self.password_file.is_some(), &["email"]),
            (
                "password_credential",
                self.password_credential.is_some(),
                &["email"],
            ),
            ("from", self.from.is_some(), &["email"]),
            ("to", self.to.is_some(), &["email"]),
            ("address", self.address.is_some(), &["syslog"]),
            ("protocol", self.protocol.is_some(), &["syslog"]),
            ("message", self.message.is_some(), &["syslog"]),
            ("server_name", self.server_name.is_some(), &["syslog"]),
        ];
        for (field, present, types) in applies {
            if present && !types.contains(&t) {
                errors.push(format!("{at}: `{field}` does not apply to type `{t}`"));
            }
        }
        if self.facility.is_some() && t != "syslog" {
            errors.push(format!("{at}: `facility` does not apply to type `{t}`"));
        }
        let timeout = match self.timeout.as_deref().map(crate::duration::parse_ms) {
            None => Duration::from_secs(10),
            Some(Ok(ms)) if ms > 0 => Duration::from_millis(ms as u64),
            Some(Ok(_)) => {
                errors.push(format!("{at}: timeout must be positive"));
                Duration::from_secs(10)
            }
            Some(Err(e)) => {
                errors.push(format!("{at}: timeout: {e}"));
                Duration::from_secs(10)
            }
        };
        let rate_limit = match (self.rate_limit, self.burst) {
            (Some(0), _) | (_, Some(0)) => {
                errors.push(format!("{at}: rate_limit and burst must be at least 1"));
                None
            }
            (Some(r), b) => Some((r, b.unwrap_or(r))),
            (None, Some(_)) => {
                errors.push(format!("{at}: `burst` needs `rate_limit`"));
                None
            }
            (None, None) => None,
        };
        (errors.len() == before).then_some(SinkConfig {
            name: self.name,
            kind,
            rate_limit,
            timeout,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    severities: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
    sinks: Vec<String>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    repeat_interval: Option<String>,
    group_window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    default: Option<Vec<String>>,
}

/// Validates sinks, routes and the default route together.
pub(super) fn validate_delivery(
    sinks: Option<Vec<RawSink>>,
    routes: Option<Vec<RawRoute>>,
    routing: Option<RawRouting>,
    errors: &mut Vec<String>,
) -> (Vec<SinkConfig>, Router) {
    let sinks: Vec<SinkConfig> = match sinks {
        None => vec![SinkConfig::stdout()],
        Some(list) => list
            .into_iter()
            .filter_map(|s| s.validate(errors))
            .collect(),
    };
    for (i, s) in sinks.iter().enumerate() {
        if sinks[..i].iter().any(|o| o.name == s.name) {
            errors.push(format!("sinks: the name `{}` is used twice", s.name));
        }
    }
    let known = |name: &str| sinks.iter().any(|s| s.name == name);
    let mut out_routes = Vec::new();
    for (i, r) in routes.unwrap_or_default().into_iter().enumerate() {
        if r.sinks.is_empty() {
            errors.push(format!(
                "routes[{}]: `sinks` must name at least one sink",
                i + 1
            ));
        }
        for s in &r.sinks {
            if !known(s) {
                errors.push(format!("routes[{}]: unknown sink `{s}`", i + 1));
            }
        }
        for sev in &r.severities {
            if !["low", "medium", "high", "critical"].contains(&sev.as_str()) {
                errors.push(format!(
                    "routes[{}]: unknown severity `{sev}` (low, medium, high, critical)",
                    i + 1
                ));
            }
        }
        let mut dur = |name: &str, v: &Option<String>| -> Option<i64> {
            match v.as_deref().map(crate::duration::parse_ms) {
                None => None,
                Some(Ok(ms)) if ms > 0 => Some(ms),
                Some(Ok(_)) => {
                    errors.push(format!("routes[{}]: {name} must be positive", i + 1));
                    None
                }
                Some(Err(e)) => {
                    errors.push(format!("routes[{}]: {name}: {e}", i + 1));
                    None
                }
            }
        };
        let repeat_interval_ms = dur("repeat_interval", &r.repeat_interval);
        let group_window_ms = dur("group_window", &r.group_window);
        out_routes.push(Route {
            rules: r.rules,
            severities: r.severities,
            tenants: r.tenants,
            sinks: r.sinks,
            continue_: r.continue_,
            repeat_interval_ms,
            group_window_ms,
        });
    }
    let default_sinks = match routing.and_then(|r| r.default) {
        Some(d) => {
            for s in &d {
                if !known(s) {
                    errors.push(format!("routing.default: unknown sink `{s}`"));
                }
            }
            d
        }
        None => sinks.iter().map(|s| s.name.clone()).collect(),
    };
    (
        sinks,
        Router {
            routes: out_routes,
            default_sinks,
        },
    )
}
