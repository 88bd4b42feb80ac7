//! Daemon configuration: a TOML file (every key optional, unknown keys are
//! errors) → a validated [`Config`]. Pure apart from reading the file and
//! checking that referenced files exist; every problem is reported at once.
//! With no file, [`Config::builtin`] gives defaults that are useful at once:
//! syslog over UDP and TCP on 127.0.0.1:5514 and metrics on 127.0.0.1:9464.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod delivery;
mod rules;

pub use rules::{load_dir, load_rules};

use crate::kafka;
pub use crate::kafka::{KafkaClient, KafkaSasl, KafkaTls};
use crate::options::{count, dur, ms_duration};

pub use crate::kafka::StartFrom;
pub use crate::options::SecretRef;
pub use crate::outbox::OutboxSettings;
pub use crate::pipeline::EngineSettings;
pub use crate::sink::{SinkConfig, SinkKind, SmtpTls, SyslogMessage, SyslogProtocol};
pub use crate::source::Listen;
pub use crate::source::file::ReadFrom;
pub use crate::source::syslog_tcp::TlsSettings;

use crate::decode::Format;
use crate::router::Router;

/// Default syslog listen address (UDP and TCP): loopback, unprivileged.
pub const DEFAULT_SYSLOG_ADDRESS: &str = "127.0.0.1:5514";
/// Default UDP receive buffer requested (the kernel caps it at
/// `net.core.rmem_max`): bursts queue in the kernel instead of being lost.
pub const DEFAULT_UDP_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;
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

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    SyslogUdp {
        address: Listen,
        receive_buffer_bytes: Option<usize>,
    },
    SyslogTcp {
        address: Listen,
        max_connections: usize,
        idle_timeout: Duration,
        tls: Option<TlsSettings>,
    },
    File {
        path: PathBuf,
        read_from: ReadFrom,
        poll_interval: Duration,
    },
    Kafka {
        client: KafkaClient,
        topics: Vec<String>,
        group_id: String,
        /// Static group membership (`group.instance.id`).
        group_instance_id: Option<String>,
        start_from: StartFrom,
        /// Taking over a partition without saved state: replay records of
        /// this much time before the committed offset to rebuild windows
        /// and timers (0: start at the committed offset, state empty).
        rebuild_window: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub format: Format,
    pub kind: SourceKind,
}

impl SourceConfig {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            SourceKind::SyslogUdp { .. } => "syslog_udp",
            SourceKind::SyslogTcp { tls: None, .. } => "syslog_tcp",
            SourceKind::SyslogTcp { tls: Some(_), .. } => "syslog_tls",
            SourceKind::File { .. } => "file",
            SourceKind::Kafka { .. } => "kafka",
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`None`: built-in defaults).
    pub path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub rules_dir: Option<PathBuf>,
    pub engine: EngineSettings,
    /// `None`: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    pub sources: Vec<SourceConfig>,
    pub outbox: OutboxSettings,
    pub sinks: Vec<SinkConfig>,
    pub router: Router,
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
            engine: EngineSettings::default(),
            metrics: Some(loopback(DEFAULT_METRICS_ADDRESS)),
            sources: vec![
                SourceConfig {
                    name: "syslog_udp".to_owned(),
                    format: Format::Auto,
                    kind: SourceKind::SyslogUdp {
                        address: Listen::Addr(syslog),
                        receive_buffer_bytes: Some(DEFAULT_UDP_RECEIVE_BUFFER_BYTES),
                    },
                },
                SourceConfig {
                    name: "syslog_tcp".to_owned(),
                    format: Format::Auto,
                    kind: SourceKind::SyslogTcp {
                        address: Listen::Addr(syslog),
                        max_connections: 256,
                        idle_timeout: Duration::from_secs(300),
                        tls: None,
                    },
                },
            ],
            outbox: OutboxSettings::default(),
            sinks: vec![SinkConfig::stdout()],
            router: Router {
                routes: Vec::new(),
                default_sinks: vec!["stdout".to_owned()],
            },
        }
    }

    /// The engine thread's settings.
    pub fn pipeline(&self) -> crate::pipeline::PipelineConfig {
        crate::pipeline::PipelineConfig {
            engine: self.engine.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| crate::pipeline::SourceInfo {
                    name: s.name.clone(),
                    format: s.format,
                    follows_file: matches!(s.kind, SourceKind::File { .. }),
                })
                .collect(),
            router: self.router.clone(),
        }
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
        let metrics = match raw.metrics {
            None => builtin.metrics,
            Some(m) if !m.enabled.unwrap_or(true) => None,
            Some(m) => match m
                .address
                .as_deref()
                .unwrap_or(DEFAULT_METRICS_ADDRESS)
                .parse::<SocketAddr>()
            {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(format!(
                        "metrics.address: {e} (write e.g. \"127.0.0.1:9464\")"
                    ));
                    None
                }
            },
        };
        let sources = match raw.sources {
            None => builtin.sources,
            Some(list) => {
                let mut out = Vec::new();
                for (i, s) in list.into_iter().enumerate() {
                    if let Some(s) = s.validate(i, &mut errors) {
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
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            path: None,
            state_dir: raw.state_dir.unwrap_or(builtin.state_dir),
            rules_dir: raw.rules_dir,
            engine,
            metrics,
            sources,
            outbox,
            sinks,
            router,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    rules_dir: Option<PathBuf>,
    engine: Option<RawEngine>,
    metrics: Option<RawMetrics>,
    sources: Option<Vec<RawSource>>,
    outbox: Option<delivery::RawOutbox>,
    sinks: Option<Vec<delivery::RawSink>>,
    routes: Option<Vec<delivery::RawRoute>>,
    routing: Option<delivery::RawRouting>,
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
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<bool>,
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    format: Option<String>,
    address: Option<String>,
    receive_buffer_bytes: Option<u64>,
    max_connections: Option<u64>,
    idle_timeout: Option<String>,
    tls: Option<RawTls>,
    path: Option<PathBuf>,
    read_from: Option<ReadFrom>,
    poll_interval: Option<String>,
    kafka: Option<kafka::RawKafka>,
    topics: Option<Vec<String>>,
    group_id: Option<String>,
    group_instance_id: Option<String>,
    start_from: Option<StartFrom>,
    rebuild_window: Option<String>,
}

impl RawSource {
    fn validate(self, index: usize, errors: &mut Vec<String>) -> Option<SourceConfig> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{}", self.kind, index + 1));
        let at = format!("sources[{}] ({name})", index + 1);
        let before = errors.len();
        let format = match self.format.as_deref().map(str::parse::<Format>) {
            None => Format::Auto,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                errors.push(format!("{at}: format: {e}"));
                Format::Auto
            }
        };
        let address = |errors: &mut Vec<String>| -> Listen {
            let text = self.address.as_deref().unwrap_or(DEFAULT_SYSLOG_ADDRESS);
            if let Some(name) = text.strip_prefix("systemd:") {
                if name.is_empty() || name.contains(':') {
                    errors.push(format!(
                        "{at}: address: `systemd:` needs the socket's FileDescriptorName (e.g. \"systemd:syslog-udp\")"
                    ));
                }
                return Listen::Systemd(name.to_owned());
            }
            match text.parse::<SocketAddr>() {
                Ok(a) => Listen::Addr(a),
                Err(e) => {
                    errors.push(format!(
                        "{at}: address: {e} (write e.g. \"127.0.0.1:5514\", \"[::1]:5514\" or \"systemd:NAME\")"
                    ));
                    Listen::Addr(loopback(DEFAULT_SYSLOG_ADDRESS))
                }
            }
        };
        // Which keys each type takes (bits: udp, tcp, file, kafka).
        const U: u8 = 1;
        const T: u8 = 2;
        const F: u8 = 4;
        const K: u8 = 8;
        let applies = [
            ("address", self.address.is_some(), U | T),
            (
                "receive_buffer_bytes",
                self.receive_buffer_bytes.is_some(),
                U,
            ),
            ("max_connections", self.max_connections.is_some(), T),
            ("idle_timeout", self.idle_timeout.is_some(), T),
            ("tls", self.tls.is_some(), T),
            ("path", self.path.is_some(), F),
            ("read_from", self.read_from.is_some(), F),
            ("poll_interval", self.poll_interval.is_some(), F),
            ("kafka", self.kafka.is_some(), K),
            ("topics", self.topics.is_some(), K),
            ("group_id", self.group_id.is_some(), K),
            ("group_instance_id", self.group_instance_id.is_some(), K),
            ("start_from", self.start_from.is_some(), K),
            ("rebuild_window", self.rebuild_window.is_some(), K),
        ];
        let type_bit = match self.kind.as_str() {
            "syslog_udp" => U,
            "syslog_tcp" => T,
            "file" => F,
            "kafka" => K,
            _ => U | T | F | K, // reported below as an unknown type
        };
        for (field, present, types) in applies {
            if present && types & type_bit == 0 {
                errors.push(format!(
                    "{at}: `{field}` does not apply to type `{}`",
                    self.kind
                ));
            }
        }
        let kind = match self.kind.as_str() {
            "syslog_udp" => SourceKind::SyslogUdp {
                address: address(errors),
                receive_buffer_bytes: self.receive_buffer_bytes.map(|b| {
                    count(
                        errors,
                        &format!("{at}: receive_buffer_bytes"),
                        Some(b),
                        0,
                        (4096, 1 << 30),
                    )
                }),
            },
            "syslog_tcp" => {
                let tls = self.tls.map(|t| {
                    for (what, file) in [
                        ("cert_file", Some(&t.cert_file)),
                        ("key_file", Some(&t.key_file)),
                        ("client_ca_file", t.client_ca_file.as_ref()),
                    ] {
                        if let Some(file) = file
                            && let Err(e) = std::fs::metadata(file)
                        {
                            errors.push(format!("{at}: tls.{what} {}: {e}", file.display()));
                        }
                    }
                    TlsSettings {
                        cert_file: t.cert_file,
                        key_file: t.key_file,
                        client_ca_file: t.client_ca_file,
                    }
                });
                SourceKind::SyslogTcp {
                    address: address(errors),
                    max_connections: count(
                        errors,
                        &format!("{at}: max_connections"),
                        self.max_connections,
                        256,
                        (1, 65_536),
                    ),
                    idle_timeout: ms_duration(dur(
                        errors,
                        &format!("{at}: idle_timeout"),
                        self.idle_timeout.as_deref(),
                        300_000,
                        1_000,
                    )),
                    tls,
                }
            }
            "file" => {
                let path = match self.path {
                    Some(p) => p,
                    None => {
                        errors.push(format!("{at}: `path` is required for type `file`"));
                        PathBuf::new()
                    }
                };
                SourceKind::File {
                    path,
                    read_from: self.read_from.unwrap_or(ReadFrom::Beginning),
                    poll_interval: ms_duration(dur(
                        errors,
                        &format!("{at}: poll_interval"),
                        self.poll_interval.as_deref(),
                        250,
                        10,
                    )),
                }
            }
            "kafka" => {
                if !cfg!(feature = "kafka") {
                    errors.push(format!(
                        "{at}: this build has no Kafka support (built without the `kafka` feature)"
                    ));
                }
                let client = match self.kafka {
                    Some(k) => k.validate(&at, errors),
                    None => {
                        errors.push(format!(
                            "{at}: `kafka` (at least kafka.brokers) is required for type `kafka`"
                        ));
                        return None;
                    }
                };
                let topics = self.topics.unwrap_or_default();
                if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
                    errors.push(format!("{at}: `topics` must name at least one topic"));
                }
                let group_id = self.group_id.unwrap_or_else(|| "mcp-alertd".to_owned());
                if group_id.trim().is_empty() {
                    errors.push(format!("{at}: `group_id` is empty"));
                }
                SourceKind::Kafka {
                    client,
                    topics,
                    group_id,
                    group_instance_id: self.group_instance_id,
                    start_from: self.start_from.unwrap_or(StartFrom::Earliest),
                    rebuild_window: ms_duration(dur(
                        errors,
                        &format!("{at}: rebuild_window"),
                        self.rebuild_window.as_deref(),
                        0,
                        0,
                    )),
                }
            }
            other => {
                errors.push(format!(
                    "{at}: unknown type `{other}` (syslog_udp, syslog_tcp, file, kafka)"
                ));
                return None;
            }
        };
        (errors.len() == before).then_some(SourceConfig { name, format, kind })
    }
}
