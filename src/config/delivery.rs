//! Delivery configuration: `[outbox]`, `[[sinks]]`, `[[routes]]` and
//! `[routing]`. Secrets (SMTP password, webhook signing key) come from
//! files or systemd credentials, never from the configuration itself.

use std::time::Duration;

use serde::Deserialize;

use super::{OutboxSettings, SinkConfig, SinkKind};
use crate::alert::format::AlertFormat;
use crate::options::section::{self, Empty, fields_of};
use crate::router::{Route, Router};
use crate::sink::{elasticsearch, email, file, kafka, splunk_hec, syslog, webhook};

/// The most journal entries `outbox.journal_entries` accepts.
const MAX_JOURNAL_ENTRIES: u64 = 100_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    max_age: Option<String>,
    max_pending: Option<u64>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    delivered_retention: Option<String>,
    ack_window: Option<usize>,
    journal_entries: Option<u64>,
}

impl RawOutbox {
    pub(super) fn validate(self, errors: &mut Vec<String>) -> OutboxSettings {
        let d = OutboxSettings::default();
        let dur = |errors: &mut Vec<String>, name: &str, v: Option<String>, default| {
            crate::duration::setting("outbox", name, v.as_deref(), default, errors)
        };
        let max_pending = match self.max_pending {
            Some(0) => {
                errors.push("outbox: `max_pending` must be at least 1".to_owned());
                d.max_pending
            }
            Some(n) => n,
            None => d.max_pending,
        };
        let ack_window = match self.ack_window {
            Some(n) if n == 0 || n > crate::outbox::MAX_ACK_WINDOW => {
                errors.push(format!(
                    "outbox: `ack_window` must be between 1 and {}",
                    crate::outbox::MAX_ACK_WINDOW
                ));
                d.ack_window
            }
            Some(n) => n,
            None => d.ack_window,
        };
        let journal_entries = match self.journal_entries {
            Some(n) if n == 0 || n > MAX_JOURNAL_ENTRIES => {
                errors.push(format!(
                    "outbox: `journal_entries` must be between 1 and {MAX_JOURNAL_ENTRIES}"
                ));
                d.journal_entries
            }
            Some(n) => n,
            None => d.journal_entries,
        };
        OutboxSettings {
            ack_window,
            journal_entries,
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

/// The keys every `[[sinks]]` entry has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinkCommon {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    rate_limit: Option<u32>,
    burst: Option<u32>,
    timeout: Option<String>,
    format: Option<String>,
    leef_delimiter: Option<String>,
    incident_rules: Option<Vec<String>>,
}

/// The keys of every sink kind (for "does not apply to type").
fn sink_fields() -> [&'static [&'static str]; 8] {
    [
        fields_of::<Empty>(),
        fields_of::<file::Raw>(),
        fields_of::<webhook::Raw>(),
        fields_of::<email::Raw>(),
        fields_of::<syslog::Raw>(),
        fields_of::<kafka::Raw>(),
        fields_of::<splunk_hec::Raw>(),
        fields_of::<elasticsearch::Raw>(),
    ]
}

/// One `[[sinks]]` entry: its common keys here, the rest to its kind.
fn validate_sink(
    index: usize,
    mut table: toml::Table,
    errors: &mut Vec<String>,
) -> Option<SinkConfig> {
    let before = errors.len();
    let common: RawSinkCommon =
        section::common(&mut table, &format!("sinks[{}]: ", index + 1), errors)?;
    let at = format!("sinks ({})", common.name);
    if common.name.is_empty() {
        errors.push("sinks: `name` must not be empty".to_owned());
    }
    let t = common.kind.as_str();
    let kinds = sink_fields();
    let pre = format!("{at}: ");
    let mut legacy_format = None;
    let kind = match t {
        "stdout" => section::kind::<Empty>(table, &pre, ("type", t), &kinds, errors)
            .map(|_| SinkKind::Stdout),
        "file" => section::kind::<file::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SinkKind::File(r.validate(&at, errors))),
        "webhook" => section::kind::<webhook::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SinkKind::Webhook(r.validate(&at, errors))),
        "email" => section::kind::<email::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SinkKind::Email(r.validate(&at, errors))),
        "syslog" => {
            section::kind::<syslog::Raw>(table, &pre, ("type", t), &kinds, errors).map(|r| {
                let (settings, legacy) = r.validate(&at, errors);
                legacy_format = legacy;
                SinkKind::Syslog(settings)
            })
        }
        "kafka" => section::kind::<kafka::Raw>(table, &pre, ("type", t), &kinds, errors)
            .and_then(|r| r.validate(&at, errors))
            .map(SinkKind::Kafka),
        "splunk_hec" => section::kind::<splunk_hec::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SinkKind::SplunkHec(r.validate(&at, errors))),
        "elasticsearch" => {
            section::kind::<elasticsearch::Raw>(table, &pre, ("type", t), &kinds, errors)
                .map(|r| SinkKind::Elasticsearch(r.validate(&at, errors)))
        }
        other => {
            errors.push(format!(
                "{at}: unknown type `{other}` ({})",
                SinkKind::TYPES
            ));
            None
        }
    };
    let timeout = crate::duration::setting(
        &at,
        "timeout",
        common.timeout.as_deref(),
        Duration::from_secs(10),
        errors,
    );
    let rate_limit = match (common.rate_limit, common.burst) {
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
    let kind = kind?;
    let format = sink_format(&at, &kind, &common, legacy_format, errors);
    (errors.len() == before).then_some(SinkConfig {
        name: common.name,
        kind,
        rate_limit,
        timeout,
        format,
    })
}

/// A sink's alert format: `format` (with its options), the older syslog
/// `message`, or the kind's default. Email writes its own body; a template
/// renders the alert itself; Elasticsearch documents are JSON.
fn sink_format(
    at: &str,
    kind: &SinkKind,
    common: &RawSinkCommon,
    legacy: Option<AlertFormat>,
    errors: &mut Vec<String>,
) -> AlertFormat {
    let given = common.format.is_some()
        || common.leef_delimiter.is_some()
        || common.incident_rules.is_some();
    let format = match common.format.as_deref() {
        Some(name) => match AlertFormat::parse(
            name,
            common.leef_delimiter.as_deref(),
            common.incident_rules.clone(),
        ) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                kind.default_format()
            }
        },
        None if given => {
            errors.push(format!(
                "{at}: `leef_delimiter` and `incident_rules` need `format`"
            ));
            kind.default_format()
        }
        None => legacy.clone().unwrap_or_else(|| kind.default_format()),
    };
    if common.format.is_some() && legacy.is_some() {
        errors.push(format!(
            "{at}: `message` is the older name of `format`; give `format` only"
        ));
    }
    match kind {
        SinkKind::Email(_) if given => {
            errors.push(format!(
                "{at}: email writes its own body; `format` does not apply"
            ));
        }
        SinkKind::Webhook(w) if given && w.template.is_some() => {
            errors.push(format!(
                "{at}: a template renders the alert itself; give `format` or a template, not both"
            ));
        }
        SinkKind::Elasticsearch(_) if !format.is_json() => {
            errors.push(format!(
                "{at}: Elasticsearch documents are JSON: format `native`, `ocsf` or `ecs`"
            ));
        }
        _ => {}
    }
    format
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
    sinks: Option<Vec<toml::Table>>,
    routes: Option<Vec<RawRoute>>,
    routing: Option<RawRouting>,
    errors: &mut Vec<String>,
) -> (Vec<SinkConfig>, Router) {
    let sinks: Vec<SinkConfig> = match sinks {
        None => vec![SinkConfig::stdout()],
        Some(list) => list
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| validate_sink(i, s, errors))
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
