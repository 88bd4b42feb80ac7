//! HTTP webhook sink (reqwest over rustls): the alert JSON as the body,
//! configured headers, and Standard Webhooks signature headers (DESIGN §8):
//! `webhook-id` (the alert id), `webhook-timestamp` (unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`
//! with the key given as `whsec_<base64>`. 2xx is success; 408, 429 and 5xx
//! are retried (honouring `Retry-After`); other statuses are permanent.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use super::SendError;
use std::path::PathBuf;

use crate::options::SecretRef;

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
    key: Option<Vec<u8>>,
}

/// Decodes a `whsec_<base64>` signing key (the prefix is optional).
pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("signing key is not whsec_<base64>: {e}"))
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
}

/// A webhook sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Standard Webhooks signing key (`whsec_...`).
    pub signing_key: Option<SecretRef>,
    pub ca_file: Option<PathBuf>,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let url = match self.url {
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    errors.push(format!("{at}: `url` must be http:// or https://"));
                }
                url
            }
            None => {
                errors.push(format!("{at}: `url` is required for type `webhook`"));
                String::new()
            }
        };
        Settings {
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
        } = settings;
        let key = match signing_key {
            Some(r) => Some(decode_key(&r.read()?)?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(client_tls(ca_file.as_deref())?)
            .timeout(timeout)
            .user_agent(concat!("mcp-alertd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Webhook {
            client,
            url: url.clone(),
            headers: headers.clone(),
            key,
        })
    }

    pub async fn send(&self, id: &str, body: &[u8]) -> Result<(), SendError> {
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
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
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let message = format!("POST {}: HTTP {status}", self.url);
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
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
