//! Splunk HTTP Event Collector: batches of alerts POSTed to
//! `<url>/services/collector/event` as concatenated HEC event objects
//! (`time` in epoch seconds, `host`, `source`, `sourcetype`, `index`,
//! `event` = the alert in the sink's format, `fields` = rule, severity and
//! tenant as indexed fields), `Authorization: Splunk <token>`, optionally
//! gzip. With `ack = true` every request names a channel
//! (`X-Splunk-Request-Channel`) and a batch counts as delivered only when
//! `/services/collector/ack` reports its `ackId` indexed; a batch whose ack
//! does not come within `ack_timeout` is sent again (the alert id is in
//! every event, so searches can drop the copies).
//!
//! Responses follow the HEC status codes: 0 is success; 8 (internal
//! error), 9 (server busy), 18, 19 and 20 (unhealthy), and HTTP 408, 429
//! and 5xx are retried (honouring `Retry-After`); an error naming an
//! `invalid-event-number` n delivered the events before n, makes event n a
//! dead letter and retries the rest; every other code (token disabled,
//! required or invalid, no data, bad format, wrong index, channel missing
//! or invalid, ...) is permanent.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::SendError;
use super::webhook::{http_client, retry_after, retryable_status};
use crate::alert::Alert;
use crate::alert::format::AlertFormat;
use crate::options::SecretRef;

/// `type = "splunk_hec"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    url: Option<String>,
    token_file: Option<PathBuf>,
    token_credential: Option<String>,
    index: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    host: Option<String>,
    #[serde(default)]
    gzip: bool,
    batch_size: Option<usize>,
    #[serde(default)]
    ack: bool,
    channel: Option<String>,
    ack_timeout: Option<String>,
    ack_interval: Option<String>,
    ca_file: Option<PathBuf>,
}

/// A Splunk HEC sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The HEC base URL (`https://splunk.example:8088`).
    pub url: String,
    pub token: Option<SecretRef>,
    pub index: Option<String>,
    pub source: String,
    pub sourcetype: String,
    /// Default: this machine's host name.
    pub host: Option<String>,
    pub gzip: bool,
    pub batch_size: usize,
    /// Indexer acknowledgement on this channel (a GUID; default: a new one
    /// per start).
    pub ack: Option<String>,
    pub ack_timeout: Duration,
    pub ack_interval: Duration,
    pub ca_file: Option<PathBuf>,
}

/// Batch size bounds: HEC takes up to its `max_content_length` (800 MB by
/// default), far beyond what one request should hold.
pub const MAX_BATCH: usize = 10_000;

/// Whether `s` is a GUID (8-4-4-4-12 hex digits), as HEC channels are.
fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A random GUID (version 4).
fn new_guid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let url = super::http_url(at, "splunk_hec", self.url, errors);
        let token = SecretRef::from(
            self.token_file,
            self.token_credential,
            &format!("{at}: token"),
            errors,
        );
        if token.is_none() {
            errors.push(format!(
                "{at}: `token_file` or `token_credential` is required for type `splunk_hec`"
            ));
        }
        let batch_size = super::batch_size(at, self.batch_size, 100, MAX_BATCH, errors);
        let ack = match (self.ack, self.channel) {
            (true, Some(c)) if is_guid(&c) => Some(c),
            (true, Some(c)) => {
                errors.push(format!(
                    "{at}: `channel` `{c}` is not a GUID (8-4-4-4-12 hex digits)"
                ));
                None
            }
            (true, None) => Some(new_guid()),
            (false, Some(_)) => {
                errors.push(format!("{at}: `channel` needs `ack = true`"));
                None
            }
            (false, None) => None,
        };
        Settings {
            url,
            token,
            index: self.index,
            source: self.source.unwrap_or_else(|| "mcp-alertd".to_owned()),
            sourcetype: self
                .sourcetype
                .unwrap_or_else(|| "mcp_alertd:alert".to_owned()),
            host: self.host,
            gzip: self.gzip,
            batch_size,
            ack,
            ack_timeout: crate::duration::setting(
                at,
                "ack_timeout",
                self.ack_timeout.as_deref(),
                Duration::from_secs(60),
                errors,
            ),
            ack_interval: crate::duration::setting(
                at,
                "ack_interval",
                self.ack_interval.as_deref(),
                Duration::from_millis(500),
                errors,
            ),
            ca_file: self.ca_file,
        }
    }
}

pub struct SplunkHec {
    client: reqwest::Client,
    event_url: String,
    ack_url: String,
    auth: String,
    settings: Settings,
    host: String,
}

/// A HEC response body.
#[derive(Deserialize, Default)]
struct Reply {
    #[serde(default)]
    text: String,
    code: Option<i64>,
    #[serde(rename = "ackId")]
    ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number")]
    invalid_event: Option<usize>,
}

/// A JSON reply body, or `T`'s default when it is missing or unreadable
/// (the status then decides alone).
async fn reply<T: serde::de::DeserializeOwned + Default>(resp: reqwest::Response) -> T {
    resp.bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// HEC codes worth retrying: internal error, server busy, unhealthy.
fn retryable_code(code: i64) -> bool {
    matches!(code, 8 | 9 | 18 | 19 | 20)
}

impl SplunkHec {
    pub fn build(settings: &Settings, timeout: Duration) -> Result<SplunkHec, String> {
        let token = match &settings.token {
            Some(t) => t.read()?,
            None => return Err("no token".to_owned()),
        };
        let base = settings.url.trim_end_matches('/');
        let host = settings.host.clone().unwrap_or_else(super::hostname);
        Ok(SplunkHec {
            client: http_client(settings.ca_file.as_deref(), timeout)?,
            event_url: format!("{base}/services/collector/event"),
            ack_url: format!("{base}/services/collector/ack"),
            auth: format!("Splunk {token}"),
            settings: settings.clone(),
            host,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.settings.batch_size
    }

    /// How long a batch may take: its request, plus the wait for its ack.
    pub fn deadline(&self, timeout: Duration) -> Duration {
        match self.settings.ack {
            Some(_) => timeout + self.settings.ack_timeout,
            None => timeout,
        }
    }

    /// One HEC event object for an alert.
    fn event(&self, format: &AlertFormat, alert: &Alert, json: &[u8]) -> serde_json::Value {
        let mut e = serde_json::json!({
            "time": alert.ts as f64 / 1000.0,
            "host": self.host,
            "source": self.settings.source,
            "sourcetype": self.settings.sourcetype,
            "event": format.value(alert, json),
            "fields": {
                "alert_id": alert.id,
                "rule": alert.rule,
                "severity": alert.severity.name(),
                "tenant": alert.tenant,
            },
        });
        if let Some(index) = &self.settings.index {
            e["index"] = index.clone().into();
        }
        e
    }

    /// The request body of a batch.
    pub fn body(&self, format: &AlertFormat, items: &[(&Alert, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (alert, json) in items {
            // A Value always serializes.
            let _ = serde_json::to_writer(&mut out, &self.event(format, alert, json));
            out.push(b'\n');
        }
        out
    }

    fn request(&self, url: &str, body: Vec<u8>) -> Result<reqwest::RequestBuilder, SendError> {
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(channel) = &self.settings.ack {
            req = req.header("X-Splunk-Request-Channel", channel);
        }
        if self.settings.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&body)
                .map_err(|e| SendError::permanent(format!("gzip: {e}")))?;
            let body = gz
                .finish()
                .map_err(|e| SendError::permanent(format!("gzip: {e}")))?;
            req = req
                .header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(body);
        } else {
            req = req.body(body);
        }
        Ok(req)
    }

    /// Sends a batch: one result per item.
    pub async fn send(
        &self,
        format: &AlertFormat,
        items: &[(&Alert, &[u8])],
    ) -> Vec<Result<(), SendError>> {
        let n = items.len();
        let all = |r: Result<(), SendError>| vec![r; n];
        let req = match self.request(&self.event_url, self.body(format, items)) {
            Ok(r) => r,
            Err(e) => return all(Err(e)),
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return all(Err(SendError::retry(format!(
                    "POST {}: {e}",
                    self.event_url
                ))));
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let reply: Reply = reply(resp).await;
        let message = format!(
            "POST {}: HTTP {status}, HEC code {}: {}",
            self.event_url,
            reply.code.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            reply.text
        );
        if status.is_success() && reply.code.unwrap_or(0) == 0 {
            return match (&self.settings.ack, reply.ack_id) {
                (Some(_), Some(id)) => all(self.await_ack(id).await),
                _ => all(Ok(())),
            };
        }
        if let Some(bad) = reply.invalid_event.filter(|b| *b < n) {
            return (0..n)
                .map(|i| match i.cmp(&bad) {
                    std::cmp::Ordering::Less => Ok(()),
                    std::cmp::Ordering::Equal => {
                        Err(SendError::permanent(format!("{message} (this event)")))
                    }
                    std::cmp::Ordering::Greater => Err(SendError::retry(format!(
                        "{message} (an earlier event of the batch)"
                    ))),
                })
                .collect();
        }
        if retryable_status(status) || reply.code.is_some_and(retryable_code) {
            return all(Err(SendError {
                retryable: true,
                retry_after: after,
                message,
            }));
        }
        all(Err(SendError::permanent(message)))
    }

    /// Polls the ack endpoint until `id` is indexed or `ack_timeout`.
    async fn await_ack(&self, id: u64) -> Result<(), SendError> {
        let start = Instant::now();
        let mut last;
        loop {
            tokio::time::sleep(self.settings.ack_interval).await;
            let body = serde_json::to_vec(&serde_json::json!({ "acks": [id] })).unwrap_or_default();
            let url = match &self.settings.ack {
                Some(channel) => format!("{}?channel={channel}", self.ack_url),
                None => self.ack_url.clone(),
            };
            match self.request(&url, body)?.send().await {
                Ok(resp) if resp.status().is_success() => {
                    #[derive(Deserialize)]
                    struct Acks {
                        acks: std::collections::HashMap<String, bool>,
                    }
                    let acks: Option<Acks> = reply(resp).await;
                    match acks.and_then(|a| a.acks.get(&id.to_string()).copied()) {
                        Some(true) => return Ok(()),
                        Some(false) => last = "not yet acknowledged".to_owned(),
                        None => last = "the ack reply does not name the ackId".to_owned(),
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    let reply: Reply = reply(resp).await;
                    if !retryable_status(status) && !reply.code.is_some_and(retryable_code) {
                        return Err(SendError::permanent(format!(
                            "POST {}: HTTP {status}: {}",
                            self.ack_url, reply.text
                        )));
                    }
                    last = format!("HTTP {status}: {}", reply.text);
                }
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() >= self.settings.ack_timeout {
                return Err(SendError::retry(format!(
                    "indexer acknowledgement {id} not received within {:?} ({last}); the batch is sent again",
                    self.settings.ack_timeout
                )));
            }
        }
    }
}
