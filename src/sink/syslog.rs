//! Syslog sink to a SIEM: RFC 5424 over UDP, TCP (octet counting, RFC
//! 6587) or TLS (RFC 5425). MSG is the alert in the sink's format (CEF by
//! default; LEEF, OCSF, ECS or the native JSON); the
//! alert's main fields are also RFC 5424 structured data; severity maps to
//! the syslog severity. Stream connections are kept and re-made on error.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::SendError;
use crate::alert::Severity;
use crate::alert::{Alert, format_ts};
use std::path::PathBuf;

/// The transport to the SIEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    Udp,
    Tcp,
    Tls,
}

/// What MSG carries: the older `message` key, now an alias of the sink's
/// `format` (`json` is `native`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogMessage {
    Cef,
    Json,
}

/// `type = "syslog"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    address: Option<String>,
    protocol: Option<SyslogProtocol>,
    message: Option<SyslogMessage>,
    server_name: Option<String>,
    ca_file: Option<PathBuf>,
    facility: Option<u8>,
}

/// A syslog sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub address: SocketAddr,
    pub protocol: SyslogProtocol,
    /// For TLS: the server name to verify (default: the IP).
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub facility: u8,
}

impl Raw {
    /// The settings, and the format the older `message` key names.
    pub fn validate(
        self,
        at: &str,
        errors: &mut Vec<String>,
    ) -> (Settings, Option<super::AlertFormat>) {
        let legacy = self.message.map(|m| match m {
            SyslogMessage::Cef => super::AlertFormat::Cef,
            SyslogMessage::Json => super::AlertFormat::Native,
        });
        let fallback = SocketAddr::from(([127, 0, 0, 1], 514));
        let address = match self.address.as_deref().map(str::parse::<SocketAddr>) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                errors.push(format!("{at}: address: {e}"));
                fallback
            }
            None => {
                errors.push(format!("{at}: `address` is required for type `syslog`"));
                fallback
            }
        };
        if self.facility.is_some_and(|f| f > 23) {
            errors.push(format!("{at}: facility must be 0..=23"));
        }
        let settings = Settings {
            address,
            protocol: self.protocol.unwrap_or(SyslogProtocol::Tcp),
            server_name: self.server_name,
            ca_file: self.ca_file,
            facility: self.facility.unwrap_or(13),
        };
        (settings, legacy)
    }
}

/// Our private enterprise-number-style SD-ID.
const SD_ID: &str = "mcp-alertd@32473";

enum Conn {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

pub struct Syslog {
    address: SocketAddr,
    protocol: SyslogProtocol,
    facility: u8,
    hostname: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    conn: Option<Conn>,
    udp: Option<tokio::net::UdpSocket>,
}

/// Syslog severity (RFC 5424) of an alert severity.
pub fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    }
}

fn sd_escape(v: &str) -> String {
    crate::alert::format::one_line(v)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// One alert as an RFC 5424 message (no framing) whose MSG is `body` (the
/// alert in the sink's format).
pub fn render(alert: &Alert, body: &[u8], facility: u8, hostname: &str) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(alert.severity));
    let mut sd = format!(
        "[{SD_ID} id=\"{}\" rule=\"{}\" severity=\"{}\" tenant=\"{}\" count=\"{}\"",
        sd_escape(&alert.id),
        sd_escape(&alert.rule),
        alert.severity.name(),
        sd_escape(&alert.tenant),
        alert.count
    );
    for (k, v) in &alert.key {
        sd.push_str(&format!(
            " {}=\"{}\"",
            k.replace(['=', ' ', ']', '"'], "_"),
            sd_escape(v)
        ));
    }
    sd.push(']');
    let mut out = format!(
        "<{pri}>1 {} {hostname} mcp-alertd {} alert {sd} ",
        format_ts(crate::clock::now_ms()),
        std::process::id()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Syslog {
    pub fn build(settings: &Settings) -> Result<Syslog, String> {
        let Settings {
            address,
            protocol,
            server_name,
            ca_file,
            facility,
        } = settings;
        let tls = if *protocol == SyslogProtocol::Tls {
            let config = super::webhook::client_tls(ca_file.as_deref())?;
            let name = server_name
                .clone()
                .unwrap_or_else(|| address.ip().to_string());
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| format!("server_name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let hostname = super::hostname();
        Ok(Syslog {
            address: *address,
            protocol: *protocol,
            facility: *facility,
            hostname,
            tls,
            conn: None,
            udp: None,
        })
    }

    pub async fn send(&mut self, alert: &Alert, body: &[u8]) -> Result<(), SendError> {
        let msg = render(alert, body, self.facility, &self.hostname);
        if self.protocol == SyslogProtocol::Udp {
            if self.udp.is_none() {
                let bind: SocketAddr = if self.address.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                }
                .parse()
                .map_err(|_| SendError::permanent("bind address"))?;
                self.udp = Some(
                    tokio::net::UdpSocket::bind(bind)
                        .await
                        .map_err(|e| SendError::retry(e.to_string()))?,
                );
            }
            let sock = self
                .udp
                .as_ref()
                .ok_or_else(|| SendError::retry("no socket"))?;
            sock.send_to(&msg, self.address)
                .await
                .map_err(|e| SendError::retry(format!("udp {}: {e}", self.address)))?;
            return Ok(());
        }
        let mut framed = format!("{} ", msg.len()).into_bytes();
        framed.extend_from_slice(&msg);
        if self.conn.is_none() {
            let tcp = tokio::net::TcpStream::connect(self.address)
                .await
                .map_err(|e| SendError::retry(format!("connect {}: {e}", self.address)))?;
            self.conn = Some(match &self.tls {
                None => Conn::Tcp(tcp),
                Some((connector, name)) => Conn::Tls(Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| SendError::retry(format!("TLS to {}: {e}", self.address)))?,
                )),
            });
        }
        let result = match self.conn.as_mut() {
            Some(Conn::Tcp(s)) => s.write_all(&framed).await,
            Some(Conn::Tls(s)) => match s.write_all(&framed).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            None => return Err(SendError::retry("not connected")),
        };
        if let Err(e) = result {
            self.conn = None;
            return Err(SendError::retry(format!("write to {}: {e}", self.address)));
        }
        Ok(())
    }
}
