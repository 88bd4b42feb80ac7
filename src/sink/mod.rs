//! Sinks: one file per kind, each owning its settings section (`Raw`,
//! validated into `Settings`), its build (secrets, TLS roots, clients) and
//! its send. This module holds the one list of kinds and delegates to
//! them. A sink says whether a failure is worth retrying ([`SendError`]);
//! what to do about it (backoff, dead letters, rate limits) is the outbox
//! dispatcher's ([`crate::outbox::dispatch`]).

pub mod cef;
pub mod email;
pub mod file;
pub mod kafka;
pub mod stdout;
pub mod syslog;
pub mod webhook;

pub use email::{SmtpTls, body as email_body, subject as email_subject};
pub use stdout::SharedWriter;
pub use syslog::{SyslogMessage, SyslogProtocol};
pub use webhook::{decode_key as decode_webhook_key, sign as webhook_signature};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::alert::Alert;
pub use crate::outbox::SendError;

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
}

impl SinkKind {
    /// Every `type` a sink may have.
    pub const TYPES: &str = "stdout, file, webhook, email, syslog, kafka";

    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout => "stdout",
            SinkKind::File(_) => "file",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Email(_) => "email",
            SinkKind::Syslog(_) => "syslog",
            SinkKind::Kafka(_) => "kafka",
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
}

impl SinkConfig {
    pub fn stdout() -> SinkConfig {
        SinkConfig {
            name: "stdout".to_owned(),
            kind: SinkKind::Stdout,
            rate_limit: None,
            timeout: Duration::from_secs(10),
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
}

/// One configured sink, ready to send.
pub struct Sink {
    pub name: String,
    kind: Kind,
    timeout: Duration,
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
        };
        Ok(Sink {
            name: cfg.name.clone(),
            kind,
            timeout: cfg.timeout,
        })
    }

    /// Whether this sink renders the alert itself (and so needs it typed).
    pub fn renders(&self) -> bool {
        match &self.kind {
            Kind::Email(_) | Kind::Syslog(_) => true,
            #[cfg(feature = "kafka")]
            Kind::Kafka(_) => true,
            Kind::Stdout(_) | Kind::File(_) | Kind::Webhook(_) => false,
        }
    }

    /// Delivers one alert (its id, its stored JSON and, for a sink that
    /// [`renders`](Self::renders), the typed alert), within the sink's
    /// timeout.
    pub async fn send(
        &mut self,
        id: &str,
        json: &[u8],
        alert: Option<&Alert>,
    ) -> Result<(), SendError> {
        let typed = || alert.ok_or_else(|| SendError::permanent("the alert was not handed over"));
        let timeout = self.timeout;
        let fut = async {
            match &mut self.kind {
                Kind::Stdout(s) => s.send(json),
                Kind::File(f) => f.send(json),
                Kind::Webhook(w) => w.send(id, json).await,
                Kind::Email(e) => e.send(typed()?).await,
                Kind::Syslog(s) => s.send(typed()?, json).await,
                #[cfg(feature = "kafka")]
                Kind::Kafka(k) => {
                    let alert = typed()?;
                    k.send(id, &alert.tenant, &alert.rule, json).await
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SendError::retry(format!("timed out after {timeout:?}"))),
        }
    }
}

impl crate::outbox::dispatch::Deliver for Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn renders(&self) -> bool {
        Sink::renders(self)
    }

    async fn send(
        &mut self,
        id: &str,
        json: &[u8],
        alert: Option<&Alert>,
    ) -> Result<(), SendError> {
        Sink::send(self, id, json, alert).await
    }
}
