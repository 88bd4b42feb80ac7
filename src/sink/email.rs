//! Email sink (lettre over tokio and rustls): SMTP with STARTTLS, implicit
//! TLS, or plain on loopback only; optional authentication; one message per
//! alert with the subject `[SEVERITY] rule key (tenant)` and a plain-text
//! body a person can act on.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::SendError;
use std::path::PathBuf;

use crate::alert::format::one_line;
use crate::alert::{Alert, format_ts};
use crate::options::SecretRef;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Implicit,
    None,
}

/// `type = "email"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
    from: Option<String>,
    to: Option<Vec<String>>,
    ca_file: Option<PathBuf>,
}

/// An email sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    pub from: String,
    pub to: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let need = |field: &str, present: bool, errors: &mut Vec<String>| {
            if !present {
                errors.push(format!("{at}: `{field}` is required for type `email`"));
            }
        };
        need("host", self.host.is_some(), errors);
        need("from", self.from.is_some(), errors);
        need(
            "to",
            self.to.as_ref().is_some_and(|t| !t.is_empty()),
            errors,
        );
        let tls = self.tls.unwrap_or(SmtpTls::Starttls);
        let host = self.host.unwrap_or_default();
        if tls == SmtpTls::None && !is_loopback_host(&host) {
            errors.push(format!(
                "{at}: `tls = \"none\"` is allowed only for a loopback SMTP host"
            ));
        }
        let password = SecretRef::from(self.password_file, self.password_credential, at, errors);
        if password.is_some() != self.username.is_some() {
            errors.push(format!("{at}: `username` and a password (`password_file` or `password_credential`) go together"));
        }
        Settings {
            port: self.port.unwrap_or(match tls {
                SmtpTls::Implicit => 465,
                SmtpTls::Starttls => 587,
                SmtpTls::None => 25,
            }),
            host,
            tls,
            username: self.username,
            password,
            from: self.from.unwrap_or_default(),
            to: self.to.unwrap_or_default(),
            ca_file: self.ca_file,
        }
    }
}

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

/// `[HIGH] auth_failure_burst agent_id=bob (acme)`
pub fn subject(alert: &Alert) -> String {
    let key: Vec<String> = alert.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let subject = format!(
        "[{}] {} {} ({})",
        alert.severity.name().to_uppercase(),
        alert.rule,
        key.join(" "),
        alert.tenant
    );
    one_line(&subject)
}

/// What to check next, per rule family.
fn next_steps(rule: &str) -> &'static str {
    match rule {
        "auth_failure_burst" => {
            "Check the source IPs and failure reasons of this agent's recent authentications; if the credential may be stolen or brute-forced, revoke it and block the sources."
        }
        "unauthorized_tool_attempt" | "session_injection_incident" => {
            "Review the session's inputs (prompts, documents, tool outputs) for injected instructions; end the session and check what the agent did with the tools it did have."
        }
        "credential_unused" | "credential_unused_revoke" => {
            "Find the credential's owner; if it is not needed, revoke it."
        }
        "session_overrun" => {
            "Check whether the agent is stuck in a loop or abandoned; end the session if it is not doing its declared task."
        }
        "state_pressure" => "Raise max_keys_per_rule or narrow the rule: state was lost.",
        "source_silent" => {
            "Check that the MCP servers of this source run and still log, and the path from them (forwarder, network, file rotation): while it is silent nothing of theirs is detected."
        }
        "delivery_dead_letter" => {
            "Fix the sink (address, credentials, the receiver's logs), then `mcp-alertd outbox retry --sink <name>` delivers the dead letters."
        }
        "store_unavailable" => {
            "Free space on the state directory's file system or fix its device; the daemon recovers by itself once it can write."
        }
        "clock_stalled" => {
            "Find the source whose timestamps lag (a server clock behind, a backlog being caught up); deadlines fire that much later until it catches up."
        }
        _ => "Review the triggering event and the agent's recent activity.",
    }
}

/// The plain-text body: one line per item, every value from the input
/// on its own line (a value with a line break cannot forge a line).
pub fn body(alert: &Alert) -> String {
    let mut b = format!(
        "{}\n\n{}\n\n",
        one_line(&alert.title),
        one_line(&alert.summary)
    );
    b.push_str(&format!(
        "Rule:      {} (severity {})\n",
        alert.rule,
        alert.severity.name()
    ));
    b.push_str(&format!("Tenant:    {}\n", one_line(&alert.tenant)));
    for (k, v) in &alert.key {
        b.push_str(&format!(
            "{:<10} {}\n",
            format!("{}:", one_line(k)),
            one_line(v)
        ));
    }
    b.push_str(&format!(
        "When:      {} (event time)\n",
        format_ts(alert.ts)
    ));
    if let (Some(s), Some(e)) = (alert.window_start, alert.window_end) {
        b.push_str(&format!(
            "Window:    {} .. {}\n",
            format_ts(s),
            format_ts(e)
        ));
    }
    b.push_str(&format!("Count:     {}\n", alert.count));
    for ev in &alert.events {
        b.push_str(&format!(
            "Event:     {} {}",
            format_ts(ev.ts),
            one_line(&ev.event)
        ));
        if let Some(t) = &ev.tool {
            b.push_str(&format!(" tool={}", one_line(t)));
        }
        if let Some(r) = &ev.reason {
            b.push_str(&format!(" reason={}", one_line(r)));
        }
        if let Some(s) = &ev.server {
            b.push_str(&format!(" server={}", one_line(s)));
        }
        if let Some(p) = &ev.position {
            b.push_str(&format!(" at {}", one_line(p)));
        }
        b.push('\n');
    }
    b.push_str(&format!(
        "\nWhat to check next: {}\n\nAlert id: {}\n",
        next_steps(&alert.rule),
        alert.id
    ));
    b
}

impl Email {
    pub fn build(settings: &Settings, timeout: std::time::Duration) -> Result<Email, String> {
        let Settings {
            host,
            port,
            tls,
            username,
            password,
            from,
            to,
            ca_file,
        } = settings;
        let params = || -> Result<TlsParameters, String> {
            let mut b = TlsParameters::builder(host.clone());
            if let Some(ca) = ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                b = b.add_root_certificate(
                    Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?,
                );
            }
            b.build_rustls().map_err(|e| format!("TLS: {e}"))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(*port)
            .timeout(Some(timeout));
        builder = match tls {
            SmtpTls::Starttls => builder.tls(Tls::Required(params()?)),
            SmtpTls::Implicit => builder.tls(Tls::Wrapper(params()?)),
            SmtpTls::None => builder.tls(Tls::None),
        };
        if let (Some(user), Some(pw)) = (username, password) {
            builder = builder.credentials(Credentials::new(user.clone(), pw.read()?));
        }
        let from: Mailbox = from.parse().map_err(|e| format!("from `{from}`: {e}"))?;
        let to = to
            .iter()
            .map(|t| t.parse::<Mailbox>().map_err(|e| format!("to `{t}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Email {
            transport: builder.build(),
            from,
            to,
        })
    }

    pub async fn send(&self, alert: &Alert) -> Result<(), SendError> {
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(subject(alert));
        for t in &self.to {
            m = m.to(t.clone());
        }
        let message = m
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body(alert))
            .map_err(|e| SendError::permanent(format!("building the message: {e}")))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| {
            if e.is_permanent() {
                SendError::permanent(format!("SMTP: {e}"))
            } else {
                SendError::retry(format!("SMTP: {e}"))
            }
        })
    }
}
