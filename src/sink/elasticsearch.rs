//! Elasticsearch / OpenSearch bulk sink: batches POSTed to `<url>/_bulk`
//! as NDJSON `create` actions with the alert id as `_id`, so a batch sent
//! again never makes a second document (the copy answers 409, which counts
//! as delivered). Each item is judged alone: 2xx and 409 are delivered,
//! 429 and 5xx are retried, any other status (a mapping conflict, a bad
//! index name) makes that alert a dead letter with the item's error type
//! and reason. A request that fails as a whole (connection, HTTP 408, 429
//! or 5xx) retries every item; 401, 403 and other statuses are permanent.
//! The index name is a strftime template over the alert's time in UTC
//! (`mcp-alertd-alerts-%Y.%m.%d`). Authentication is an API key (the
//! encoded form Elasticsearch returns, sent as `ApiKey <key>`) or a user
//! name and a password, each from a file or a systemd credential.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::SendError;
use super::webhook::{http_client, retry_after, retryable_status};
use crate::alert::Alert;
use crate::alert::format::AlertFormat;
use crate::options::SecretRef;

/// `type = "elasticsearch"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    url: Option<String>,
    index: Option<String>,
    api_key_file: Option<PathBuf>,
    api_key_credential: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
    pipeline: Option<String>,
    batch_size: Option<usize>,
    ca_file: Option<PathBuf>,
}

/// How the sink authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    ApiKey(SecretRef),
    Basic {
        username: String,
        password: SecretRef,
    },
}

/// An Elasticsearch sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    /// The index name template (strftime over the alert's time, UTC).
    pub index: String,
    pub auth: Auth,
    /// An ingest pipeline for every document.
    pub pipeline: Option<String>,
    pub batch_size: usize,
    pub ca_file: Option<PathBuf>,
}

/// The default index template.
pub const DEFAULT_INDEX: &str = "mcp-alertd-alerts-%Y.%m.%d";

/// The index of an alert at `ts` (epoch ms): the template formatted in UTC.
pub fn index_name(template: &str, ts: i64) -> Result<String, String> {
    let t = jiff::Timestamp::from_millisecond(ts).map_err(|e| e.to_string())?;
    let civil = jiff::tz::Offset::UTC.to_datetime(t);
    jiff::fmt::strtime::format(template, civil).map_err(|e| format!("index `{template}`: {e}"))
}

/// Elasticsearch's rules for an index name (lowercase, none of
/// `\ / * ? " < > | , # :` or space, not `.`/`..`, not starting with `-`,
/// `_` or `+`, at most 255 bytes).
fn check_index(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("index name `{name}` {why}"));
    if name.is_empty() || name == "." || name == ".." {
        return bad("is empty or a dot");
    }
    if name.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    if name.starts_with(['-', '_', '+']) {
        return bad("starts with -, _ or +");
    }
    if name.chars().any(|c| c.is_uppercase()) {
        return bad("has upper-case letters");
    }
    if let Some(c) = name.chars().find(|c| "\\/*?\"<>|,#: ".contains(*c)) {
        return bad(&format!("holds `{c}`"));
    }
    Ok(())
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let url = super::http_url(at, "elasticsearch", self.url, errors);
        let index = self.index.unwrap_or_else(|| DEFAULT_INDEX.to_owned());
        if let Err(e) =
            index_name(&index, crate::alert::Alert::sample().ts).and_then(|name| check_index(&name))
        {
            errors.push(format!("{at}: {e}"));
        }
        let key = SecretRef::from(
            self.api_key_file,
            self.api_key_credential,
            &format!("{at}: api_key"),
            errors,
        );
        let password = SecretRef::from(
            self.password_file,
            self.password_credential,
            &format!("{at}: password"),
            errors,
        );
        let auth = match (key, self.username, password) {
            (Some(k), None, None) => Auth::ApiKey(k),
            (None, Some(username), Some(password)) => Auth::Basic { username, password },
            (None, None, None) => Auth::None,
            (Some(_), _, _) => {
                errors.push(format!(
                    "{at}: give an API key or a username and password, not both"
                ));
                Auth::None
            }
            (None, Some(_), None) => {
                errors.push(format!(
                    "{at}: `username` needs `password_file` or `password_credential`"
                ));
                Auth::None
            }
            (None, None, Some(_)) => {
                errors.push(format!("{at}: a password needs `username`"));
                Auth::None
            }
        };
        Settings {
            url,
            index,
            auth,
            pipeline: self.pipeline,
            batch_size: super::batch_size(at, self.batch_size, 500, 10_000, errors),
            ca_file: self.ca_file,
        }
    }
}

pub struct Elasticsearch {
    client: reqwest::Client,
    bulk_url: String,
    auth: Option<String>,
    basic: Option<(String, String)>,
    settings: Settings,
}

#[derive(Deserialize)]
struct BulkReply {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, ItemReply>>,
}

#[derive(Deserialize)]
struct ItemReply {
    status: u16,
    error: Option<serde_json::Value>,
}

impl Elasticsearch {
    pub fn build(settings: &Settings, timeout: Duration) -> Result<Elasticsearch, String> {
        let (auth, basic) = match &settings.auth {
            Auth::None => (None, None),
            Auth::ApiKey(k) => (Some(format!("ApiKey {}", k.read()?)), None),
            Auth::Basic { username, password } => {
                (None, Some((username.clone(), password.read()?)))
            }
        };
        let base = settings.url.trim_end_matches('/');
        let mut bulk_url = format!("{base}/_bulk");
        if let Some(p) = &settings.pipeline {
            bulk_url.push_str(&format!("?pipeline={p}"));
        }
        Ok(Elasticsearch {
            client: http_client(settings.ca_file.as_deref(), timeout)?,
            bulk_url,
            auth,
            basic,
            settings: settings.clone(),
        })
    }

    pub fn batch_size(&self) -> usize {
        self.settings.batch_size
    }

    /// The NDJSON body of a batch; an item whose index cannot be named is
    /// left out and returned as a permanent failure.
    pub fn body(
        &self,
        format: &AlertFormat,
        items: &[(&Alert, &[u8])],
    ) -> (Vec<u8>, Vec<Option<SendError>>) {
        let mut out = Vec::new();
        let mut skipped = Vec::with_capacity(items.len());
        for (alert, json) in items {
            let index = match index_name(&self.settings.index, alert.ts) {
                Ok(i) => i,
                Err(e) => {
                    skipped.push(Some(SendError::permanent(e)));
                    continue;
                }
            };
            let action = serde_json::json!({"create": {"_index": index, "_id": alert.id}});
            let _ = serde_json::to_writer(&mut out, &action);
            out.push(b'\n');
            out.extend_from_slice(&format.render(alert, json));
            out.push(b'\n');
            skipped.push(None);
        }
        (out, skipped)
    }

    /// Sends a batch: one result per item.
    pub async fn send(
        &self,
        format: &AlertFormat,
        items: &[(&Alert, &[u8])],
    ) -> Vec<Result<(), SendError>> {
        let (body, skipped) = self.body(format, items);
        let sent = skipped.iter().filter(|s| s.is_none()).count();
        let mut whole: Option<SendError> = None;
        let mut replies: Vec<Result<(), SendError>> = Vec::new();
        if sent > 0 {
            let mut req = self
                .client
                .post(&self.bulk_url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body);
            if let Some(a) = &self.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            if let Some((u, p)) = &self.basic {
                req = req.basic_auth(u, Some(p));
            }
            match req.send().await {
                Err(e) => whole = Some(SendError::retry(format!("POST {}: {e}", self.bulk_url))),
                Ok(resp) => {
                    let status = resp.status();
                    let after = retry_after(resp.headers());
                    let bytes = resp.bytes().await.unwrap_or_default();
                    if !status.is_success() {
                        let message = format!(
                            "POST {}: HTTP {status}: {}",
                            self.bulk_url,
                            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                        );
                        whole = Some(match retryable_status(status) {
                            true => SendError {
                                retryable: true,
                                retry_after: after,
                                message,
                            },
                            false => SendError::permanent(message),
                        });
                    } else {
                        match serde_json::from_slice::<BulkReply>(&bytes) {
                            Ok(r) if r.items.len() == sent => {
                                replies = r.items.into_iter().map(|i| judge(i, after)).collect();
                            }
                            Ok(r) => {
                                whole = Some(SendError::retry(format!(
                                    "POST {}: {} items in the reply for {sent} sent",
                                    self.bulk_url,
                                    r.items.len()
                                )))
                            }
                            Err(e) => {
                                whole = Some(SendError::retry(format!(
                                    "POST {}: unreadable reply: {e}",
                                    self.bulk_url
                                )))
                            }
                        }
                    }
                }
            }
        }
        let mut replies = replies.into_iter();
        skipped
            .into_iter()
            .map(|s| match (s, &whole) {
                (Some(e), _) => Err(e),
                (None, Some(w)) => Err(w.clone()),
                (None, None) => replies
                    .next()
                    .unwrap_or_else(|| Err(SendError::retry("no reply for this item"))),
            })
            .collect()
    }
}

/// One bulk item's result.
fn judge(
    item: std::collections::HashMap<String, ItemReply>,
    after: Option<Duration>,
) -> Result<(), SendError> {
    let Some((_, r)) = item.into_iter().next() else {
        return Err(SendError::retry("an empty item in the bulk reply"));
    };
    if (200..300).contains(&r.status) || r.status == 409 {
        return Ok(());
    }
    let why = r
        .error
        .map(|e| match (&e["type"], &e["reason"]) {
            (serde_json::Value::String(t), serde_json::Value::String(r)) => format!("{t}: {r}"),
            _ => e.to_string(),
        })
        .unwrap_or_default();
    let message = format!("bulk item status {}: {why}", r.status);
    if r.status == 429 || r.status >= 500 {
        Err(SendError {
            retryable: true,
            retry_after: after,
            message,
        })
    } else {
        Err(SendError::permanent(message))
    }
}
