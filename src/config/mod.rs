//! Daemon configuration: a TOML file (every key optional, unknown keys are
//! errors) → a validated [`Config`]. Pure apart from reading the file and
//! checking that referenced files exist; every problem is reported at once.
//! With no file, [`Config::builtin`] gives defaults that are useful at once:
//! syslog over UDP and TCP on 127.0.0.1:5514 and metrics on 127.0.0.1:9464.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

mod delivery;
mod formats;
mod rules;

pub use formats::load_formats;
pub use rules::{load_dir, load_rules};

pub use crate::kafka::{KafkaClient, KafkaSasl, KafkaTls};
use crate::options::{count, dur, ms_duration, switch};

pub use crate::kafka::StartFrom;
pub use crate::options::SecretRef;
pub use crate::outbox::OutboxSettings;
pub use crate::pipeline::EngineSettings;
pub use crate::pipeline::monitor::MonitorSettings;
pub use crate::sink::{SinkConfig, SinkKind, SmtpTls, SyslogMessage, SyslogProtocol};
pub use crate::source::{Listen, SourceKind};
use crate::source::{file, kafka, syslog_tcp, syslog_udp};

use crate::options::section::{self, fields_of};
pub use crate::source::file::ReadFrom;
pub use crate::source::syslog_tcp::TlsSettings;

use crate::decode::{Decoder, FormatSet, Framing, Selector};
use crate::router::Router;

pub use crate::source::DEFAULT_SYSLOG_ADDRESS;
pub use crate::source::syslog_udp::DEFAULT_RECEIVE_BUFFER_BYTES as DEFAULT_UDP_RECEIVE_BUFFER_BYTES;
/// Default metrics and health address.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9464";

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub errors: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid configuration {} ({n} error{})",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// One configured source: its name, how its records are decoded, and its
/// kind's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub decode: SourceDecode,
    pub kind: SourceKind,
    /// Its own `silent_after` (`Some(None)`: never `source_silent`);
    /// `None`: `[self_monitoring] source_silent`.
    pub silent_after: Option<Option<Duration>>,
}

/// How a source's records are decoded (DESIGN §2b): the framing, the
/// format by name (checked against the format set when it is loaded), the
/// tenant of events that carry none, and the idle time of derived sessions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceDecode {
    pub framing: Framing,
    pub format: String,
    pub tenant: Option<String>,
    pub derive_sessions_ms: Option<i64>,
}

impl SourceDecode {
    fn native() -> SourceDecode {
        SourceDecode {
            format: crate::decode::format::NATIVE.to_owned(),
            ..SourceDecode::default()
        }
    }

    /// The decoder of this source over `formats`.
    pub fn decoder(
        &self,
        formats: &Arc<FormatSet>,
        max_record_bytes: usize,
    ) -> Result<Decoder, String> {
        Ok(Decoder {
            framing: self.framing,
            max_record_bytes,
            format: Selector::named(&self.format, formats)?,
            tenant: self.tenant.as_deref().map(Arc::from),
            derive_sessions_ms: self.derive_sessions_ms,
        })
    }
}

impl SourceConfig {
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`None`: built-in defaults).
    pub path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub rules_dir: Option<PathBuf>,
    /// Format files that add to (or replace) the built-in formats.
    pub formats_dir: Option<PathBuf>,
    pub engine: EngineSettings,
    /// `None`: no metrics endpoint (and no console).
    pub metrics: Option<SocketAddr>,
    /// `[metrics.tls]`: the metrics address speaks HTTPS.
    pub metrics_tls: Option<crate::source::syslog_tcp::TlsSettings>,
    /// `[console]`: the web console on the metrics address.
    pub console: crate::console::ConsoleSettings,
    pub sources: Vec<SourceConfig>,
    pub outbox: OutboxSettings,
    pub sinks: Vec<SinkConfig>,
    pub router: Router,
    /// `[self_monitoring]`: the daemon's alerts about itself.
    pub monitor: MonitorSettings,
}

fn default_state_dir() -> PathBuf {
    // systemd's StateDirectory= sets this; otherwise the working directory.
    std::env::var_os("STATE_DIRECTORY")
        .map(|v| {
            // It may list several directories separated by ':'.
            let s = v.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("./mcp-alertd-state"))
}

fn loopback(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Config {
    /// The built-in defaults used when no configuration file is given.
    pub fn builtin() -> Config {
        let syslog = loopback(DEFAULT_SYSLOG_ADDRESS);
        Config {
            path: None,
            state_dir: default_state_dir(),
            rules_dir: None,
            formats_dir: None,
            engine: EngineSettings::default(),
            metrics: Some(loopback(DEFAULT_METRICS_ADDRESS)),
            metrics_tls: None,
            console: crate::console::ConsoleSettings::default(),
            sources: vec![
                SourceConfig {
                    name: "syslog_udp".to_owned(),
                    decode: SourceDecode::native(),
                    kind: SourceKind::SyslogUdp(syslog_udp::Settings {
                        address: Listen::Addr(syslog),
                        receive_buffer_bytes: Some(DEFAULT_UDP_RECEIVE_BUFFER_BYTES),
                        queue_bytes: syslog_udp::DEFAULT_QUEUE_BYTES,
                    }),
                    silent_after: None,
                },
                SourceConfig {
                    name: "syslog_tcp".to_owned(),
                    decode: SourceDecode::native(),
                    kind: SourceKind::SyslogTcp(syslog_tcp::Settings::at(Listen::Addr(syslog))),
                    silent_after: None,
                },
            ],
            outbox: OutboxSettings::default(),
            sinks: vec![SinkConfig::stdout()],
            router: Router {
                routes: Vec::new(),
                default_sinks: vec!["stdout".to_owned()],
            },
            monitor: MonitorSettings::default(),
        }
    }

    /// The engine thread's settings, with each source's decoder over
    /// `formats`.
    pub fn pipeline(
        &self,
        formats: &Arc<FormatSet>,
    ) -> Result<crate::pipeline::PipelineConfig, ConfigError> {
        Ok(crate::pipeline::PipelineConfig {
            engine: self.engine.clone(),
            sources: self
                .sources
                .iter()
                .zip(self.decoders(formats)?)
                .map(|(s, decoder)| crate::pipeline::SourceInfo {
                    name: s.name.clone(),
                    decoder,
                    follows_file: matches!(s.kind, SourceKind::File(_)),
                    silent_after: s.silent_after.unwrap_or(self.monitor.source_silent),
                })
                .collect(),
            router: self.router.clone(),
            monitor: self.monitor.clone(),
        })
    }

    /// Each source's decoder over `formats`; an unknown format name is a
    /// configuration error.
    pub fn decoders(&self, formats: &Arc<FormatSet>) -> Result<Vec<Decoder>, ConfigError> {
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            match s.decode.decoder(formats, self.engine.max_record_bytes) {
                Ok(d) => out.push(d),
                Err(e) => errors.push(format!("sources[{}] ({}): format: {e}", i + 1, s.name)),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(self.error(errors))
        }
    }

    /// Problems found in this configuration after it was read (formats it
    /// names, secrets and CA files its sinks read): exit 78 like a parse
    /// error.
    pub fn error(&self, errors: Vec<String>) -> ConfigError {
        ConfigError {
            file: self.path.as_ref().map_or_else(
                || "(built-in defaults)".to_owned(),
                |p| p.display().to_string(),
            ),
            errors,
        }
    }

    /// The formats this configuration names: the built-ins and its
    /// `formats_dir`.
    pub fn load_formats(&self) -> Result<Arc<FormatSet>, crate::decode::FormatSetError> {
        load_formats(self.formats_dir.as_deref()).map(Arc::new)
    }

    /// The rules this configuration names (its `rules_dir`, else embedded).
    pub fn load_rules(&self) -> Result<crate::engine::RuleSet, crate::engine::RuleSetError> {
        load_rules(self.rules_dir.as_deref())
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            errors: vec![format!("cannot read: {e}")],
        })?;
        let mut config = Config::parse(&text).map_err(|errors| ConfigError { file, errors })?;
        config.path = Some(path.to_owned());
        {
            // Whoever can write the configuration decides where alerts go
            // and which secret files are read.
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o022 != 0
            {
                tracing::warn!(path = %path.display(), "configuration file is writable by group or others; chmod 640 it");
            }
        }
        Ok(config)
    }

    /// Validates configuration text; relative paths are kept as written.
    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut errors = Vec::new();
        let builtin = Config::builtin();
        let engine = raw
            .engine
            .map_or_else(EngineSettings::default, |e| e.validate(&mut errors));
        let (metrics, metrics_tls) = match raw.metrics {
            None => (builtin.metrics, None),
            Some(m) if !m.enabled.unwrap_or(true) => (None, None),
            Some(m) => {
                let tls = m.tls.map(|t| t.validate("metrics", &mut errors));
                let address = m
                    .address
                    .as_deref()
                    .unwrap_or(DEFAULT_METRICS_ADDRESS)
                    .parse::<SocketAddr>();
                match address {
                    Ok(a) => (Some(a), tls),
                    Err(e) => {
                        errors.push(format!(
                            "metrics.address: {e} (write e.g. \"127.0.0.1:9464\")"
                        ));
                        (None, tls)
                    }
                }
            }
        };
        let console = raw
            .console
            .map_or_else(crate::console::ConsoleSettings::default, |c| {
                c.validate(&mut errors)
            });
        if let Some(addr) = metrics
            && console.enabled
            && !addr.ip().is_loopback()
            && (console.token.is_none() || metrics_tls.is_none())
        {
            errors.push(format!(
                "console: metrics.address {addr} is not loopback: the console there needs a token (console.token_file or console.token_credential) and TLS ([metrics.tls]), or set console.enabled = false"
            ));
        }
        let sources = match raw.sources {
            None => builtin.sources,
            Some(list) => {
                let mut out = Vec::new();
                for (i, s) in list.into_iter().enumerate() {
                    if let Some(s) = validate_source(i, s, &mut errors) {
                        out.push(s);
                    }
                }
                out
            }
        };
        for (i, s) in sources.iter().enumerate() {
            if sources[..i].iter().any(|o| o.name == s.name) {
                errors.push(format!("sources: the name `{}` is used twice", s.name));
            }
        }
        let outbox = raw
            .outbox
            .map_or_else(OutboxSettings::default, |o| o.validate(&mut errors));
        let (sinks, router) =
            delivery::validate_delivery(raw.sinks, raw.routes, raw.routing, &mut errors);
        let monitor = raw
            .self_monitoring
            .map_or_else(MonitorSettings::default, |m| m.validate(&mut errors));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            path: None,
            state_dir: raw.state_dir.unwrap_or(builtin.state_dir),
            rules_dir: raw.rules_dir,
            formats_dir: raw.formats_dir,
            engine,
            metrics,
            metrics_tls,
            console,
            sources,
            outbox,
            sinks,
            router,
            monitor,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    rules_dir: Option<PathBuf>,
    formats_dir: Option<PathBuf>,
    engine: Option<RawEngine>,
    metrics: Option<RawMetrics>,
    sources: Option<Vec<toml::Table>>,
    outbox: Option<delivery::RawOutbox>,
    sinks: Option<Vec<toml::Table>>,
    routes: Option<Vec<delivery::RawRoute>>,
    routing: Option<delivery::RawRouting>,
    self_monitoring: Option<RawMonitor>,
    console: Option<crate::console::RawConsole>,
}

/// `[self_monitoring]`: each alert `false` (off), `true` (on with its
/// default) or its bound as a duration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    source_silent: Option<toml::Value>,
    delivery_dead_letter: Option<toml::Value>,
    store_unavailable: Option<toml::Value>,
    clock_stalled: Option<toml::Value>,
    state_pressure: Option<bool>,
}

impl RawMonitor {
    fn validate(self, errors: &mut Vec<String>) -> MonitorSettings {
        use crate::pipeline::monitor::{
            CLOCK_STALLED_LAG, DEAD_LETTER_INTERVAL, SOURCE_SILENT_AFTER, STORE_UNAVAILABLE_AFTER,
        };
        let mut on = |name: &str, value: Option<toml::Value>, default: Duration| {
            let name = format!("self_monitoring.{name}");
            switch(
                errors,
                &name,
                value.as_ref(),
                (Some(default), default),
                1_000,
            )
        };
        MonitorSettings {
            source_silent: on("source_silent", self.source_silent, SOURCE_SILENT_AFTER),
            delivery_dead_letter: on(
                "delivery_dead_letter",
                self.delivery_dead_letter,
                DEAD_LETTER_INTERVAL,
            ),
            store_unavailable: on(
                "store_unavailable",
                self.store_unavailable,
                STORE_UNAVAILABLE_AFTER,
            ),
            clock_stalled: on("clock_stalled", self.clock_stalled, CLOCK_STALLED_LAG),
            state_pressure: self.state_pressure.unwrap_or(true),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    allowed_lateness: Option<String>,
    idle_after: Option<String>,
    max_future_skew: Option<String>,
    max_keys_per_rule: Option<u64>,
    max_record_bytes: Option<u64>,
    queue_capacity: Option<u64>,
    shutdown_grace: Option<String>,
    snapshot_interval: Option<String>,
    removed_rule_grace: Option<String>,
    max_past_skew: Option<String>,
}

impl RawEngine {
    fn validate(self, errors: &mut Vec<String>) -> EngineSettings {
        let d = EngineSettings::default();
        EngineSettings {
            allowed_lateness_ms: dur(
                errors,
                "engine.allowed_lateness",
                self.allowed_lateness.as_deref(),
                d.allowed_lateness_ms,
                0,
            ),
            idle_after: ms_duration(dur(
                errors,
                "engine.idle_after",
                self.idle_after.as_deref(),
                10_000,
                100,
            )),
            max_future_skew_ms: dur(
                errors,
                "engine.max_future_skew",
                self.max_future_skew.as_deref(),
                d.max_future_skew_ms,
                0,
            ),
            max_keys_per_rule: count(
                errors,
                "engine.max_keys_per_rule",
                self.max_keys_per_rule,
                d.max_keys_per_rule,
                (1, 1 << 32),
            ),
            max_record_bytes: count(
                errors,
                "engine.max_record_bytes",
                self.max_record_bytes,
                d.max_record_bytes,
                (64, 1 << 24),
            ),
            queue_capacity: count(
                errors,
                "engine.queue_capacity",
                self.queue_capacity,
                d.queue_capacity,
                (1, 1 << 20),
            ),
            shutdown_grace: ms_duration(dur(
                errors,
                "engine.shutdown_grace",
                self.shutdown_grace.as_deref(),
                10_000,
                0,
            )),
            snapshot_interval: ms_duration(dur(
                errors,
                "engine.snapshot_interval",
                self.snapshot_interval.as_deref(),
                5_000,
                100,
            )),
            max_past_skew_ms: dur(
                errors,
                "engine.max_past_skew",
                self.max_past_skew.as_deref(),
                d.max_past_skew_ms,
                1_000,
            ),
            removed_rule_grace_ms: dur(
                errors,
                "engine.removed_rule_grace",
                self.removed_rule_grace.as_deref(),
                d.removed_rule_grace_ms,
                0,
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<bool>,
    address: Option<String>,
    tls: Option<crate::source::syslog_tcp::RawTls>,
}

/// The keys every `[[sources]]` entry has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceCommon {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    framing: Option<String>,
    format: Option<String>,
    tenant: Option<String>,
    derive_sessions: Option<String>,
    silent_after: Option<toml::Value>,
}

/// The keys of every source kind (for "does not apply to type").
fn source_fields() -> [&'static [&'static str]; 4] {
    [
        fields_of::<syslog_udp::Raw>(),
        fields_of::<syslog_tcp::Raw>(),
        fields_of::<file::Raw>(),
        fields_of::<kafka::Raw>(),
    ]
}

/// One `[[sources]]` entry: its common keys here, the rest to its kind.
fn validate_source(
    index: usize,
    mut table: toml::Table,
    errors: &mut Vec<String>,
) -> Option<SourceConfig> {
    let common: RawSourceCommon =
        section::common(&mut table, &format!("sources[{}]: ", index + 1), errors)?;
    let name = common
        .name
        .unwrap_or_else(|| format!("{}_{}", common.kind, index + 1));
    let at = format!("sources[{}] ({name})", index + 1);
    let before = errors.len();
    let framing = match common.framing.as_deref().map(str::parse::<Framing>) {
        None => Framing::Auto,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            errors.push(format!("{at}: framing: {e}"));
            Framing::Auto
        }
    };
    let format = common
        .format
        .unwrap_or_else(|| crate::decode::format::NATIVE.to_owned());
    if matches!(format.as_str(), "jsonl" | "json" | "syslog") {
        errors.push(format!(
            "{at}: format: `{format}` is a framing, not a format: write `framing = \"{format}\"` (format names the schema: native, auto, toolhive, ...)"
        ));
    }
    if common.tenant.as_deref().is_some_and(str::is_empty) {
        errors.push(format!(
            "{at}: tenant: must not be empty (leave it out for `default`)"
        ));
    }
    let derive_sessions_ms = common
        .derive_sessions
        .as_deref()
        .map(|d| dur(errors, &format!("{at}: derive_sessions"), Some(d), 0, 1_000));
    let decode = SourceDecode {
        framing,
        format,
        tenant: common.tenant,
        derive_sessions_ms,
    };
    let silent_after = common.silent_after.as_ref().map(|v| {
        let name = format!("{at}: silent_after");
        switch(
            errors,
            &name,
            Some(v),
            (None, crate::pipeline::monitor::SOURCE_SILENT_AFTER),
            1_000,
        )
    });
    let t = common.kind.as_str();
    let kinds = source_fields();
    let pre = format!("{at}: ");
    let kind = match t {
        "syslog_udp" => section::kind::<syslog_udp::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SourceKind::SyslogUdp(r.validate(&at, errors))),
        "syslog_tcp" => section::kind::<syslog_tcp::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SourceKind::SyslogTcp(r.validate(&at, errors))),
        "file" => section::kind::<file::Raw>(table, &pre, ("type", t), &kinds, errors)
            .map(|r| SourceKind::File(r.validate(&at, errors))),
        "kafka" => section::kind::<kafka::Raw>(table, &pre, ("type", t), &kinds, errors)
            .and_then(|r| r.validate(&at, errors))
            .map(SourceKind::Kafka),
        other => {
            errors.push(format!(
                "{at}: unknown type `{other}` ({})",
                SourceKind::TYPES
            ));
            None
        }
    }?;
    (errors.len() == before).then_some(SourceConfig {
        name,
        decode,
        kind,
        silent_after,
    })
}
