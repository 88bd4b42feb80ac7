//! Alert formats: how an alert is written into a body by the sinks that
//! write one (stdout, file, webhook, syslog MSG, Kafka, Splunk HEC,
//! Elasticsearch). `native` is the stored alert JSON unchanged; `ocsf` an
//! OCSF 1.8 Detection Finding; `ecs` an Elastic Common Schema 9.4 document;
//! `cef` ArcSight CEF:0; `leef` QRadar LEEF 2.0. Rendering is pure: the same
//! alert gives the same bytes (no clock, no I/O).

pub mod cef;
pub mod ecs;
pub mod leef;
pub mod ocsf;

use std::sync::Arc;

use super::{Alert, EventRef, Severity};

/// The product name and version written into every format's header.
pub const PRODUCT: &str = "mcp-alertd";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a sink writes an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertFormat {
    /// The alert JSON of DESIGN §5, as stored.
    Native,
    /// OCSF 1.8 Detection Finding (class 2004); alerts of the `incident`
    /// rules carry the `incident` profile.
    Ocsf { incident_rules: Arc<[String]> },
    /// An ECS 9.4 document (`event.kind: alert`).
    Ecs,
    /// ArcSight CEF:0.
    Cef,
    /// QRadar LEEF 2.0 with this attribute delimiter.
    Leef { delimiter: char },
}

/// The rules whose alerts are incidents by default (OCSF `incident` profile).
pub const DEFAULT_INCIDENT_RULES: &[&str] = &["session_injection_incident"];

impl AlertFormat {
    /// Every format name.
    pub const NAMES: &str = "native, ocsf, ecs, cef, leef";

    /// The format `name` with its options (`leef_delimiter`,
    /// `incident_rules`); errors say which option is wrong.
    pub fn parse(
        name: &str,
        leef_delimiter: Option<&str>,
        incident_rules: Option<Vec<String>>,
    ) -> Result<AlertFormat, String> {
        if leef_delimiter.is_some() && name != "leef" {
            return Err("`leef_delimiter` applies to format `leef` only".to_owned());
        }
        if incident_rules.is_some() && name != "ocsf" {
            return Err("`incident_rules` applies to format `ocsf` only".to_owned());
        }
        Ok(match name {
            "native" | "json" => AlertFormat::Native,
            "ocsf" => AlertFormat::Ocsf {
                incident_rules: incident_rules
                    .unwrap_or_else(|| {
                        DEFAULT_INCIDENT_RULES
                            .iter()
                            .map(|r| (*r).to_owned())
                            .collect()
                    })
                    .into(),
            },
            "ecs" => AlertFormat::Ecs,
            "cef" => AlertFormat::Cef,
            "leef" => AlertFormat::Leef {
                delimiter: leef::parse_delimiter(leef_delimiter.unwrap_or("^"))?,
            },
            other => {
                return Err(format!("unknown format `{other}` ({})", AlertFormat::NAMES));
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            AlertFormat::Native => "native",
            AlertFormat::Ocsf { .. } => "ocsf",
            AlertFormat::Ecs => "ecs",
            AlertFormat::Cef => "cef",
            AlertFormat::Leef { .. } => "leef",
        }
    }

    /// Whether the body is a JSON object (else one line of text).
    pub fn is_json(&self) -> bool {
        matches!(
            self,
            AlertFormat::Native | AlertFormat::Ocsf { .. } | AlertFormat::Ecs
        )
    }

    /// Whether rendering needs the typed alert (every format but `native`).
    pub fn needs_alert(&self) -> bool {
        *self != AlertFormat::Native
    }

    /// The body of `alert` (whose stored JSON is `json`).
    pub fn render(&self, alert: &Alert, json: &[u8]) -> Vec<u8> {
        match self {
            AlertFormat::Native => json.to_vec(),
            AlertFormat::Ocsf { .. } | AlertFormat::Ecs => to_json(&self.value(alert, json)),
            AlertFormat::Cef => cef::render(alert, VERSION).into_bytes(),
            AlertFormat::Leef { delimiter } => leef::render(alert, *delimiter).into_bytes(),
        }
    }

    /// The body as a JSON value: the object itself for JSON formats, a
    /// string for the text ones (a Splunk HEC `event`).
    pub fn value(&self, alert: &Alert, json: &[u8]) -> serde_json::Value {
        match self {
            AlertFormat::Native => serde_json::from_slice(json).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(json).into())
            }),
            AlertFormat::Ocsf { incident_rules } => {
                ocsf::finding(alert, incident_rules.contains(&alert.rule))
            }
            AlertFormat::Ecs => ecs::document(alert),
            AlertFormat::Cef | AlertFormat::Leef { .. } => {
                serde_json::Value::String(String::from_utf8_lossy(&self.render(alert, json)).into())
            }
        }
    }
}

fn to_json(v: &serde_json::Value) -> Vec<u8> {
    // A Value always serializes; an empty object stands in for the
    // impossible error.
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

/// The event that raised the alert (the last listed; a sequence lists its
/// first event before it).
pub fn trigger(alert: &Alert) -> Option<&EventRef> {
    alert.events.last()
}

/// The tool the alert is about: the first event naming one.
pub fn tool(alert: &Alert) -> Option<&str> {
    alert.events.iter().find_map(|e| e.tool.as_deref())
}

/// Every character a reader may take for a line break: CR, LF, VT, FF,
/// NEL and the Unicode line and paragraph separators.
pub const LINE_BREAKS: [char; 7] = [
    '\r', '\n', '\u{0b}', '\u{0c}', '\u{85}', '\u{2028}', '\u{2029}',
];

/// A value with its line breaks replaced by spaces (one line in any SIEM
/// field or mail body line), so no value can forge a line.
pub fn one_line(s: &str) -> String {
    s.replace(LINE_BREAKS, " ")
}

/// Severity on a 1-10 scale (CEF, LEEF `sev`).
pub fn severity_10(s: Severity) -> u8 {
    match s {
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}
