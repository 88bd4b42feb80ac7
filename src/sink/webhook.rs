//! HTTP webhook sink (reqwest over rustls): the alert JSON as the body,
//! configured headers, and Standard Webhooks signature headers (DESIGN §8):
//! `webhook-id` (the alert id), `webhook-timestamp` (unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`
//! with the key given as `whsec_<base64>`. 2xx is success; 408, 429 and 5xx
//! are retried (honouring `Retry-After`); other statuses are permanent.
//! The body is the alert in the sink's format, or a template's rendering
//! of it ([`super::template`]: Slack, Teams, PagerDuty presets or a file).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use super::SendError;
use std::path::PathBuf;

use super::template::{PRESETS, Source, Template};
use crate::options::SecretRef;

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
    key: Option<Vec<u8>>,
    template: Option<Template>,
}

/// Decodes a `whsec_<base64>` signing key (the prefix is optional).
pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| {
            // Never the offending character: that is a piece of the key.
            use base64::DecodeError as E;
            let why = match e {
                E::InvalidByte(at, _) => format!("a character that is not base64 at offset {at}"),
                E::InvalidLastSymbol { offset, .. } => {
                    format!("a bad last character at offset {offset}")
                }
                E::InvalidLength(n) => format!("a length of {n}, which base64 cannot have"),
                E::InvalidPadding => "bad padding".to_owned(),
            };
            format!("signing key is not whsec_<base64>: {why}")
        })
}

/// The `webhook-signature` value for a delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this branch cannot run.
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[0])
            .unwrap_or_else(|_| unreachable_mac())
    });
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

#[allow(clippy::panic)]
fn unreachable_mac() -> hmac::Hmac<sha2::Sha256> {
    panic!("HMAC accepts any key length")
}

/// A rustls client configuration with the system roots and an optional
/// extra CA file (ring provider, shared by our TLS clients).
pub fn client_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca_file {
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for c in certs {
            roots
                .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The HTTP client of our HTTP sinks: rustls with the system roots and an
/// optional extra CA, a request timeout, our user agent.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_tls(ca_file)?)
        .timeout(timeout)
        .user_agent(concat!("mcp-alertd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Whether an HTTP status is worth retrying: 408, 429 and 5xx.
pub fn retryable_status(status: reqwest::StatusCode) -> bool {
    status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error()
}

/// A `Retry-After` in seconds (at most an hour).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// `type = "webhook"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    url: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    signing_key_file: Option<PathBuf>,
    signing_key_credential: Option<String>,
    ca_file: Option<PathBuf>,
    /// A body template preset (`slack`, `teams`, `pagerduty`).
    template: Option<String>,
    /// A body template file (minijinja).
    template_file: Option<PathBuf>,
    #[serde(default)]
    template_vars: std::collections::BTreeMap<String, String>,
    template_secret_file: Option<PathBuf>,
    template_secret_credential: Option<String>,
}

/// A webhook's body template: where it comes from, its variables and its
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSettings {
    pub source: Source,
    pub vars: std::collections::BTreeMap<String, String>,
    pub secret: Option<SecretRef>,
}

impl TemplateSettings {
    /// Compiles the template with its secret (read now, never logged).
    pub fn compile(&self) -> Result<Template, String> {
        let secret = match &self.secret {
            Some(r) => Some(r.read()?),
            None => None,
        };
        Template::compile(&self.source, self.vars.clone(), secret)
    }
}

/// A webhook sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Standard Webhooks signing key (`whsec_...`).
    pub signing_key: Option<SecretRef>,
    pub ca_file: Option<PathBuf>,
    /// The body template, if the body is not the alert in the sink's format.
    pub template: Option<TemplateSettings>,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let url = super::http_url(at, "webhook", self.url, errors);
        let secret = SecretRef::from(
            self.template_secret_file,
            self.template_secret_credential,
            &format!("{at}: template_secret"),
            errors,
        );
        let source = match (self.template, self.template_file) {
            (Some(_), Some(_)) => {
                errors.push(format!(
                    "{at}: give `template` or `template_file`, not both"
                ));
                None
            }
            (Some(p), None) => match PRESETS.iter().find(|(n, _)| *n == p) {
                Some((name, _)) => Some(Source::Preset(name)),
                None => {
                    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                    errors.push(format!(
                        "{at}: unknown template `{p}` ({})",
                        names.join(", ")
                    ));
                    None
                }
            },
            (None, Some(f)) => Some(Source::File(f)),
            (None, None) => None,
        };
        if source.is_none() && (secret.is_some() || !self.template_vars.is_empty()) {
            errors.push(format!(
                "{at}: `template_vars` and `template_secret_*` need `template` or `template_file`"
            ));
        }
        let template = source.map(|source| TemplateSettings {
            source,
            vars: self.template_vars,
            secret,
        });
        if let Some(t) = &template {
            // The template must render the sample alert (a stand-in for
            // the secret, which is read only when the sink is built).
            let stand_in = t.secret.as_ref().map(|_| "<template secret>".to_owned());
            match Template::compile(&t.source, t.vars.clone(), stand_in) {
                Ok(tmpl) => {
                    if let Err(e) = tmpl.render(&crate::alert::Alert::sample()) {
                        errors.push(format!("{at}: {e} (rendering the sample alert)"));
                    }
                }
                Err(e) => errors.push(format!("{at}: {e}")),
            }
        }
        Settings {
            template,
            url,
            headers: self.headers.into_iter().collect(),
            signing_key: SecretRef::from(
                self.signing_key_file,
                self.signing_key_credential,
                at,
                errors,
            ),
            ca_file: self.ca_file,
        }
    }
}

impl Webhook {
    pub fn build(settings: &Settings, timeout: Duration) -> Result<Webhook, String> {
        let Settings {
            url,
            headers,
            signing_key,
            ca_file,
            template,
        } = settings;
        let key = match signing_key {
            Some(r) => Some(decode_key(&r.read()?)?),
            None => None,
        };
        let client = http_client(ca_file.as_deref(), timeout)?;
        Ok(Webhook {
            client,
            url: url.clone(),
            headers: headers.clone(),
            key,
            template: template
                .as_ref()
                .map(TemplateSettings::compile)
                .transpose()?,
        })
    }

    /// Whether a body template renders the alert (so it is needed typed).
    pub fn templated(&self) -> bool {
        self.template.is_some()
    }

    /// Sends `body` (the alert in the sink's format; `json` says whether it
    /// is JSON), or the template's rendering of `alert` when the sink has a
    /// template.
    pub async fn send(
        &self,
        id: &str,
        body: &[u8],
        json: bool,
        alert: Option<&crate::alert::Alert>,
    ) -> Result<(), SendError> {
        let rendered;
        let (body, json) = match (&self.template, alert) {
            (Some(t), Some(alert)) => {
                rendered = t.render(alert).map_err(SendError::permanent)?;
                (rendered.as_slice(), t.is_json())
            }
            (Some(_), None) => return Err(SendError::permanent("the alert was not handed over")),
            (None, _) => (body, json),
        };
        let content_type = match json {
            true => "application/json",
            false => "text/plain; charset=utf-8",
        };
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header("webhook-id", id);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(key) = &self.key {
            let ts = crate::clock::now_secs();
            req = req
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sign(key, id, ts, body));
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| SendError::retry(format!("POST {}: {e}", self.url)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(resp.headers());
        let message = format!("POST {}: HTTP {status}", self.url);
        if retryable_status(status) {
            Err(SendError {
                retryable: true,
                retry_after,
                message,
            })
        } else {
            Err(SendError::permanent(message))
        }
    }
}
