//! Sinks: one file per kind, each owning its settings section (`Raw`,
//! validated into `Settings`), its build (secrets, TLS roots, clients) and
//! its send. This module holds the one list of kinds and delegates to
//! them. A sink says whether a failure is worth retrying ([`SendError`]);
//! what to do about it (backoff, dead letters, rate limits) is the outbox
//! dispatcher's ([`crate::outbox::dispatch`]).

pub mod elasticsearch;
pub mod email;
pub mod file;
pub mod kafka;
pub mod splunk_hec;
pub mod stdout;
pub mod syslog;
pub mod template;
pub mod webhook;

pub use crate::alert::format::AlertFormat;
pub use email::{SmtpTls, body as email_body, subject as email_subject};
pub use stdout::SharedWriter;
pub use syslog::{SyslogMessage, SyslogProtocol};
pub use webhook::{decode_key as decode_webhook_key, sign as webhook_signature};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::alert::Alert;
pub use crate::outbox::SendError;
use crate::outbox::dispatch::Item;

/// The kinds of sink, each with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Stdout,
    File(file::Settings),
    Webhook(webhook::Settings),
    Email(email::Settings),
    Syslog(syslog::Settings),
    /// Alerts produced to a Kafka topic (key `tenant/rule`).
    Kafka(kafka::Settings),
    SplunkHec(splunk_hec::Settings),
    Elasticsearch(elasticsearch::Settings),
}

impl SinkKind {
    /// Every `type` a sink may have.
    pub const TYPES: &str =
        "stdout, file, webhook, email, syslog, kafka, splunk_hec, elasticsearch";

    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout => "stdout",
            SinkKind::File(_) => "file",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Email(_) => "email",
            SinkKind::Syslog(_) => "syslog",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::SplunkHec(_) => "splunk_hec",
            SinkKind::Elasticsearch(_) => "elasticsearch",
        }
    }

    /// The alert format of a sink that names none.
    pub fn default_format(&self) -> AlertFormat {
        match self {
            SinkKind::Syslog(_) => AlertFormat::Cef,
            SinkKind::Elasticsearch(_) => AlertFormat::Ecs,
            _ => AlertFormat::Native,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Deliveries per second (and burst); over the limit alerts wait in the
    /// outbox.
    pub rate_limit: Option<(u32, u32)>,
    pub timeout: Duration,
    /// How the body is written (email writes its own).
    pub format: AlertFormat,
}

impl SinkConfig {
    pub fn stdout() -> SinkConfig {
        SinkConfig {
            name: "stdout".to_owned(),
            kind: SinkKind::Stdout,
            rate_limit: None,
            timeout: Duration::from_secs(10),
            format: AlertFormat::Native,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
}

enum Kind {
    Stdout(stdout::Stdout),
    File(file::File),
    Webhook(webhook::Webhook),
    Email(email::Email),
    Syslog(syslog::Syslog),
    #[cfg(feature = "kafka")]
    Kafka(kafka::Kafka),
    SplunkHec(splunk_hec::SplunkHec),
    Elasticsearch(elasticsearch::Elasticsearch),
}

/// One configured sink, ready to send.
pub struct Sink {
    pub name: String,
    kind: Kind,
    timeout: Duration,
    format: AlertFormat,
}

impl Sink {
    /// Builds a sink: reads its secrets and TLS roots (errors say which).
    pub fn build(
        cfg: &SinkConfig,
        stdout: &SharedWriter,
        reopen: &Arc<AtomicU64>,
    ) -> Result<Sink, String> {
        let at = |e: String| format!("sink `{}`: {e}", cfg.name);
        let kind = match &cfg.kind {
            SinkKind::Stdout => Kind::Stdout(stdout::Stdout::build(stdout)),
            SinkKind::File(s) => Kind::File(file::File::build(s, reopen)),
            SinkKind::Webhook(s) => {
                Kind::Webhook(webhook::Webhook::build(s, cfg.timeout).map_err(at)?)
            }
            SinkKind::Email(s) => Kind::Email(email::Email::build(s, cfg.timeout).map_err(at)?),
            SinkKind::Syslog(s) => Kind::Syslog(syslog::Syslog::build(s).map_err(at)?),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(s) => Kind::Kafka(kafka::Kafka::build(s, cfg.timeout).map_err(at)?),
            #[cfg(not(feature = "kafka"))]
            SinkKind::Kafka(_) => return Err(at("this build has no Kafka support".into())),
            SinkKind::SplunkHec(s) => {
                Kind::SplunkHec(splunk_hec::SplunkHec::build(s, cfg.timeout).map_err(at)?)
            }
            SinkKind::Elasticsearch(s) => Kind::Elasticsearch(
                elasticsearch::Elasticsearch::build(s, cfg.timeout).map_err(at)?,
            ),
        };
        Ok(Sink {
            name: cfg.name.clone(),
            kind,
            timeout: cfg.timeout,
            format: cfg.format.clone(),
        })
    }

    /// Whether this sink renders the alert (a format other than `native`,
    /// a template, email, a Kafka key, HEC and bulk metadata) and so needs
    /// it typed.
    pub fn renders(&self) -> bool {
        self.format.needs_alert()
            || match &self.kind {
                Kind::Email(_) | Kind::Syslog(_) | Kind::SplunkHec(_) | Kind::Elasticsearch(_) => {
                    true
                }
                #[cfg(feature = "kafka")]
                Kind::Kafka(_) => true,
                Kind::Webhook(w) => w.templated(),
                Kind::Stdout(_) | Kind::File(_) => false,
            }
    }

    /// Alerts per request: HEC and bulk batch, the others send one by one.
    pub fn batch(&self) -> usize {
        match &self.kind {
            Kind::SplunkHec(h) => h.batch_size(),
            Kind::Elasticsearch(e) => e.batch_size(),
            _ => 1,
        }
    }

    /// Delivers a group of alerts (at most [`batch`](Self::batch)) within
    /// the sink's timeout (for HEC with acknowledgement, plus its ack
    /// timeout): one result per item.
    pub async fn send(&mut self, items: &[Item<'_>]) -> Vec<Result<(), SendError>> {
        let timeout = match &self.kind {
            Kind::SplunkHec(h) => h.deadline(self.timeout),
            _ => self.timeout,
        };
        let n = items.len();
        let fut = async {
            match &mut self.kind {
                Kind::SplunkHec(_) | Kind::Elasticsearch(_) => {
                    let typed: Result<Vec<(&Alert, &[u8])>, SendError> = items
                        .iter()
                        .map(|i| {
                            i.alert.map(|a| (a, i.json)).ok_or_else(|| {
                                SendError::permanent("the alert was not handed over")
                            })
                        })
                        .collect();
                    match (typed, &self.kind) {
                        (Err(e), _) => vec![Err(e); n],
                        (Ok(t), Kind::SplunkHec(h)) => h.send(&self.format, &t).await,
                        (Ok(t), Kind::Elasticsearch(e)) => e.send(&self.format, &t).await,
                        (Ok(_), _) => vec![Err(SendError::permanent("not a batch sink")); n],
                    }
                }
                _ => {
                    let mut out = Vec::with_capacity(n);
                    for item in items {
                        out.push(self.send_one(item).await);
                    }
                    out
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => vec![Err(SendError::retry(format!("timed out after {timeout:?}"))); n],
        }
    }

    /// Delivers one alert through a sink that sends one at a time.
    async fn send_one(&mut self, item: &Item<'_>) -> Result<(), SendError> {
        let typed = || {
            item.alert
                .ok_or_else(|| SendError::permanent("the alert was not handed over"))
        };
        let rendered;
        let body: &[u8] = match self.format.needs_alert() {
            true => {
                rendered = self.format.render(typed()?, item.json);
                &rendered
            }
            false => item.json,
        };
        match &mut self.kind {
            Kind::Stdout(s) => s.send(body),
            Kind::File(f) => f.send(body),
            Kind::Webhook(w) => {
                w.send(item.id, body, self.format.is_json(), item.alert)
                    .await
            }
            Kind::Email(e) => e.send(typed()?).await,
            Kind::Syslog(s) => s.send(typed()?, body).await,
            #[cfg(feature = "kafka")]
            Kind::Kafka(k) => {
                let alert = typed()?;
                k.send(item.id, &alert.tenant, &alert.rule, body).await
            }
            Kind::SplunkHec(_) | Kind::Elasticsearch(_) => {
                Err(SendError::permanent("a batch sink sends in batches"))
            }
        }
    }
}

/// A sink's `url`: required, http:// or https://.
pub fn http_url(at: &str, kind: &str, url: Option<String>, errors: &mut Vec<String>) -> String {
    match url {
        Some(url) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                errors.push(format!("{at}: `url` must be http:// or https://"));
            }
            url
        }
        None => {
            errors.push(format!("{at}: `url` is required for type `{kind}`"));
            String::new()
        }
    }
}

/// A sink's `batch_size`: 1..=`max`, `default` when absent.
pub fn batch_size(
    at: &str,
    v: Option<usize>,
    default: usize,
    max: usize,
    errors: &mut Vec<String>,
) -> usize {
    match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(_) => {
            errors.push(format!("{at}: `batch_size` must be 1..={max}"));
            default
        }
    }
}

/// This machine's host name (`/etc/hostname`), or `-`.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".to_owned())
}

impl crate::outbox::dispatch::Deliver for Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn renders(&self) -> bool {
        Sink::renders(self)
    }

    fn batch(&self) -> usize {
        Sink::batch(self)
    }

    async fn send(&mut self, items: &[Item<'_>]) -> Vec<Result<(), SendError>> {
        Sink::send(self, items).await
    }
}
