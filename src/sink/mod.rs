//! Sinks: one file per kind (stdout and file here), each building itself
//! from its settings (secrets, TLS roots) and sending one alert at a time.
//! A sink says whether a failure is worth retrying ([`SendError`]); what to
//! do about it (backoff, dead letters, rate limits) is the outbox
//! dispatcher's ([`crate::outbox::dispatch`]).

pub mod cef;
mod email;
#[cfg(feature = "kafka")]
mod kafka;
mod syslog;
mod webhook;

pub use email::{body as email_body, subject as email_subject};
pub use webhook::{decode_key as decode_webhook_key, sign as webhook_signature};

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alert::Alert;
use crate::options::SecretRef;
pub use crate::outbox::SendError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Implicit,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogMessage {
    Cef,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Stdout,
    File {
        path: PathBuf,
    },
    Webhook {
        url: String,
        headers: Vec<(String, String)>,
        signing_key: Option<SecretRef>,
        ca_file: Option<PathBuf>,
    },
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<SecretRef>,
        from: String,
        to: Vec<String>,
        ca_file: Option<PathBuf>,
    },
    Syslog {
        address: SocketAddr,
        protocol: SyslogProtocol,
        message: SyslogMessage,
        /// For TLS: the server name to verify (default: the IP).
        server_name: Option<String>,
        ca_file: Option<PathBuf>,
        facility: u8,
    },
    /// Alerts produced to a Kafka topic (key `tenant/rule`).
    Kafka {
        client: crate::kafka::KafkaClient,
        topic: String,
    },
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
        match self.kind {
            SinkKind::Stdout => "stdout",
            SinkKind::File { .. } => "file",
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Email { .. } => "email",
            SinkKind::Syslog { .. } => "syslog",
            SinkKind::Kafka { .. } => "kafka",
        }
    }
}

/// The shared writer of the stdout sink (a test may pass its own).
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

enum Kind {
    Stdout(SharedWriter),
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
        generation: u64,
        reopen: Arc<AtomicU64>,
    },
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
            SinkKind::Stdout => Kind::Stdout(stdout.clone()),
            SinkKind::File { path } => Kind::File {
                path: path.clone(),
                file: None,
                generation: reopen.load(Ordering::Relaxed),
                reopen: reopen.clone(),
            },
            SinkKind::Webhook { .. } => Kind::Webhook(webhook::Webhook::build(cfg).map_err(at)?),
            SinkKind::Email { .. } => Kind::Email(email::Email::build(cfg).map_err(at)?),
            SinkKind::Syslog { .. } => Kind::Syslog(syslog::Syslog::build(cfg).map_err(at)?),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka { .. } => Kind::Kafka(kafka::Kafka::build(cfg).map_err(at)?),
            #[cfg(not(feature = "kafka"))]
            SinkKind::Kafka { .. } => return Err(at("this build has no Kafka support".into())),
        };
        Ok(Sink {
            name: cfg.name.clone(),
            kind,
            timeout: cfg.timeout,
        })
    }

    /// Delivers one alert (its id and serialized form), within the sink's
    /// timeout. Only the sinks that render the alert parse it.
    pub async fn send(&mut self, id: &str, json: &[u8]) -> Result<(), SendError> {
        let parse = || {
            serde_json::from_slice::<Alert>(json)
                .map_err(|e| SendError::permanent(format!("unreadable alert in the outbox: {e}")))
        };
        let timeout = self.timeout;
        let fut = async {
            match &mut self.kind {
                Kind::Stdout(w) => {
                    let mut w = w
                        .lock()
                        .map_err(|_| SendError::permanent("stdout writer poisoned"))?;
                    w.write_all(json)
                        .and_then(|()| w.write_all(b"\n"))
                        .and_then(|()| w.flush())
                        .map_err(|e| SendError::retry(format!("stdout: {e}")))
                }
                Kind::File {
                    path,
                    file,
                    generation,
                    reopen,
                } => {
                    let now = reopen.load(Ordering::Relaxed);
                    if now != *generation {
                        // SIGHUP: logrotate moved the file; write to a new one.
                        *file = None;
                        *generation = now;
                    }
                    if file.is_none() {
                        *file = Some(
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&*path)
                                .map_err(|e| {
                                    SendError::retry(format!("{}: {e}", path.display()))
                                })?,
                        );
                    }
                    let f = file
                        .as_mut()
                        .ok_or_else(|| SendError::retry("file not open"))?;
                    let mut line = json.to_vec();
                    line.push(b'\n');
                    f.write_all(&line)
                        .map_err(|e| SendError::retry(format!("{}: {e}", path.display())))
                }
                Kind::Webhook(w) => w.send(id, json).await,
                Kind::Email(e) => e.send(&parse()?).await,
                Kind::Syslog(s) => s.send(&parse()?, json).await,
                #[cfg(feature = "kafka")]
                Kind::Kafka(k) => {
                    let alert = parse()?;
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

    async fn send(&mut self, id: &str, json: &[u8]) -> Result<(), SendError> {
        Sink::send(self, id, json).await
    }
}
