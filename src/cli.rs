//! The command line (clap derive) and the commands that are not the daemon:
//! `replay`, `check` and `generate`. Exit codes follow DESIGN §10.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::corpus::{Corpus, CorpusConfig};
use crate::decode::{DEFAULT_MAX_RECORD_BYTES, Decoder, Framing};
use crate::duration;
use crate::engine::EngineConfig;
use crate::replay::{self, Input, ReplayOptions};

/// Exit code for invalid configuration or rules (`EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// Streaming security alerts for MCP server audit logs.
///
/// mcp-alertd reads the audit events of MCP servers (authentication,
/// sessions, tool calls, credentials) from syslog, files or Kafka, applies
/// detection rules with sliding windows and deadlines (state saved across
/// restarts), and delivers alerts through a durable outbox to stdout,
/// files, webhooks, email, SIEMs and Kafka.
#[derive(Debug, Parser)]
#[command(name = "mcp-alertd", version, propagate_version = true)]
#[command(after_help = "Examples:\n  \
    mcp-alertd replay examples/audit.jsonl examples/audit.syslog\n  \
    mcp-alertd check --rules /etc/mcp-alertd/rules\n\n\
    Logs go to stderr; set MCP_ALERTD_LOG=debug for more. Design: see README.md.")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line (for journald / log shippers).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive audit events, raise alerts as they happen.
    ///
    /// Without --config it listens for syslog on 127.0.0.1:5514 (UDP and
    /// TCP), uses the built-in rules, writes alerts as JSON lines to stdout
    /// and serves /metrics, /healthz, /readyz and the web console (/: the
    /// injection meter, recent alerts, pipeline health; JSON under /api/)
    /// on 127.0.0.1:9464; off loopback the console needs a token and TLS
    /// (`[console]`, `[metrics.tls]`). Engine state is saved in the state directory every few seconds with
    /// the source positions it covers, and restored at start. Under systemd
    /// it sends READY, STATUS, WATCHDOG and STOPPING notifications and takes
    /// sockets passed by socket activation (address = "systemd:NAME").
    /// It also raises alerts about itself (tenant `_daemon`, routed like
    /// any alert): a source gone silent, dead letters, a store that refuses
    /// writes, an engine clock behind the wall clock, state at its cap; each
    /// can be turned off in `[self_monitoring]`. SIGHUP reloads the
    /// configuration's rules and engine settings (an invalid new set is
    /// refused and the running one stays); SIGTERM or SIGINT stops the
    /// sources, drains what was accepted, saves the state and exits.
    Run(RunArgs),
    /// Run audit logs through the rules once and print the alerts.
    ///
    /// Reads each FILE in order (`-` or nothing: standard input) as one
    /// stream, writes alerts as JSON lines to stdout and a summary (records,
    /// events by type, unmapped records, rejections with positions, alerts
    /// by rule, speed) to stderr. `--format` reads a product's records
    /// (ToolHive, agentgateway, OCSF, Kong, ...) through its format. Event time drives every window and deadline; deadlines that
    /// are due at the end of the input fire before it exits.
    Replay(ReplayArgs),
    /// Validate the configuration, the rules and the formats, and list them.
    ///
    /// Exits 0 when valid, 78 with every error (file, rule, message) when
    /// not; nothing of an invalid set is ever used. Each source is listed
    /// with its format, and each format with whether a source uses it.
    Check(CheckArgs),
    /// Write a synthetic, deterministic audit log (for benchmarks and demos).
    Generate(GenerateArgs),
    /// Show and manage the outbox: pending deliveries and dead letters.
    Outbox(OutboxArgs),
    /// Check or export the alert journal: every alert raised, in a hash
    /// chain (each entry holds the hash of the one before).
    ///
    /// `verify` exits 0 when the chain is whole, 1 at the first break
    /// (naming the entry). Both read beside a running daemon.
    Journal(JournalArgs),
    /// Summarize a running daemon from its /metrics.
    ///
    /// Sources and their rates, the engine, alerts by rule, the outbox and
    /// deliveries, Kafka lag. Exits 1 when the daemon is not ready or not
    /// reachable.
    Status(StatusArgs),
    /// Work with rules: run rule test cases.
    Rules(RulesCmdArgs),
    /// Show or drop the saved engine state (`list` beside a running daemon,
    /// `reset` with it stopped).
    ///
    /// Units: `main` (syslog and file sources, with file positions), one
    /// per Kafka partition (`kafka/<source>/<topic>/<partition>`, with the
    /// next offset) and `router` (repeat suppression).
    State(StateArgs),
    /// Write the manual pages (roff).
    ///
    /// To stdout (the main page), or every command's page into a directory.
    Man {
        /// Write mcp-alertd.1 and mcp-alertd-COMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Write shell completions to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Load-test a running daemon over TCP or UDP and report throughput,
    /// loss, alerts and latency (read from its /metrics).
    BenchLoad(crate::bench_load::BenchLoadArgs),
}

#[derive(Debug, Args)]
pub struct RulesArg {
    /// Directory of rule files (`*.toml`, with `tasks.toml`); replaces the
    /// built-in default rules.
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FormatsArg {
    /// Directory of format files (`*.toml`): added to the built-in
    /// formats, replacing a built-in of the same name.
    #[arg(long, value_name = "DIR")]
    pub formats: Option<PathBuf>,
}

/// How input records are decoded (DESIGN §2b), as a source's `framing`,
/// `format`, `tenant` and `derive_sessions` say.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// How records are framed: `auto` detects JSON or syslog per line.
    #[arg(long, value_enum, default_value_t = Framing::Auto)]
    pub framing: Framing,
    /// The records' schema: `native`, `auto` (per record: native, else the
    /// first format whose signature holds), or a format: toolhive,
    /// agentgateway, ocsf, kong, cloudflare, azure_apim, contextforge,
    /// couchbase, ecs, or one from --formats.
    #[arg(long, value_name = "NAME", default_value = "native")]
    pub format: String,
    /// The tenant of events whose records carry none (else `default`).
    #[arg(long, value_name = "T")]
    pub tenant: Option<String>,
    /// Give events without a session id their agent's derived session,
    /// which ends after this idle time (e.g. 30m).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_arg)]
    pub derive_sessions: Option<i64>,
    #[command(flatten)]
    pub formats: FormatsArg,
}

impl DecodeArgs {
    fn decoder(&self, max_record_bytes: usize) -> Result<Decoder> {
        let set = Arc::new(crate::config::load_formats(
            self.formats.formats.as_deref(),
        )?);
        // A bad value is a usage error (exit 2), as clap's own are.
        let usage = |msg: String| -> ! {
            use clap::CommandFactory;
            Cli::command()
                .error(clap::error::ErrorKind::InvalidValue, msg)
                .exit()
        };
        if self.tenant.as_deref().is_some_and(str::is_empty) {
            usage("--tenant must not be empty".to_owned());
        }
        let decode = crate::config::SourceDecode {
            framing: self.framing,
            format: self.format.clone(),
            tenant: self.tenant.clone(),
            derive_sessions_ms: self.derive_sessions,
        };
        Ok(decode
            .decoder(&set, max_record_bytes)
            .unwrap_or_else(|e| usage(format!("--format: {e}"))))
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// How far behind the newest event time an event may arrive and still
    /// be on time; the engine clock trails the newest `ts` by this much.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse_arg)]
    pub allowed_lateness: i64,
    /// Records longer than this are rejected (`too_large`) unread.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_RECORD_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_record_bytes: u64,
    /// Live keys per rule before the oldest are evicted (with a
    /// `state_pressure` alert).
    #[arg(long, value_name = "N", default_value_t = crate::engine::DEFAULT_MAX_KEYS_PER_RULE as u64,
          value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub max_keys_per_rule: u64,
    /// Engine threads, each holding a share of the keys: the same alerts,
    /// ids included, as one thread; the alerts of one record may come in
    /// another order.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Do not print the summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Audit log files; `-` (or none) reads standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file to validate (its `rules_dir` is checked too).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RulesArg,
    /// Format directory to validate (default: the configuration's
    /// `formats_dir`; the built-in formats are always checked).
    #[command(flatten)]
    pub formats: FormatsArg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML); without it, built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seed: the same seed gives the same log.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Distinct agents.
    #[arg(long, default_value_t = 10_000)]
    pub agents: u32,
    /// Distinct tenants.
    #[arg(long, default_value_t = 4)]
    pub tenants: u32,
    /// Mean event-time spacing between events.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = duration::parse_arg)]
    pub spacing: i64,
    /// Move each event's time back by up to this much.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration::parse_arg)]
    pub disorder: i64,
    /// Output framing.
    #[arg(long, value_enum, default_value_t = GenFormat::Jsonl)]
    pub framing: GenFormat,
    /// Write the events as records of this product's format (what the
    /// built-in format of that name reads): toolhive, agentgateway, ocsf,
    /// kong, cloudflare, azure_apim, contextforge, couchbase, ecs. Events
    /// the product writes no record for are left out.
    #[arg(long, value_name = "NAME", default_value = "native",
          value_parser = clap::builder::PossibleValuesParser::new(
              std::iter::once("native").chain(crate::corpus::render::FORMATS)))]
    pub format: String,
}

/// Where the store is: `--state-dir`, else the configuration's.
#[derive(Debug, Args)]
pub struct StoreLocation {
    /// Configuration whose `state_dir` holds the store.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The state directory (overrides the configuration's).
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    pub store: StoreLocation,
    #[command(subcommand)]
    pub action: OutboxAction,
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List pending deliveries and dead letters: state, sink, alert id,
    /// rule, attempts, last error.
    List {
        /// One JSON object per line (with the alert) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to pending, due now.
    Retry {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Only these alert ids (default: all).
        ids: Vec<String>,
    },
    /// Delete dead letters (and with --pending, pending deliveries).
    Purge {
        #[arg(long)]
        sink: Option<String>,
        /// Also delete pending deliveries, not only dead letters.
        #[arg(long)]
        pending: bool,
        /// Only these alert ids (default: all).
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(flatten)]
    pub store: StoreLocation,
    #[command(subcommand)]
    pub action: JournalAction,
}

#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Check the chain: sequences without gaps, each entry's hash its
    /// content's, each link the hash of the entry before; print the range
    /// and the head hash (keep it elsewhere to detect a rewritten chain).
    Verify {
        /// A head hash printed earlier: the chain must still hold an entry
        /// with it (a rewritten chain, or one pruned past it, does not).
        #[arg(long, value_name = "HEX")]
        head: Option<String>,
    },
    /// Write every entry as a JSON line: seq, at, id, prev, hash, alert.
    Export,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's configuration (its metrics address is used).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The metrics address (overrides the configuration's; HTTPS when the
    /// configuration's `[metrics] tls` is set, its certificate pinned).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Time between the two scrapes that give the rates.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse_ms(s)
        .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64))
        .map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct RulesCmdArgs {
    #[command(subcommand)]
    pub action: RulesAction,
}

#[derive(Debug, Subcommand)]
pub enum RulesAction {
    /// Run rule test cases: events in, expected alerts out.
    ///
    /// Each FILE (or every *.toml in a directory) holds `[[case]]` tables
    /// with `events` (JSON lines) and `[[case.expect]]` alerts (rule, and
    /// optionally key, tenant, count, ts). The events go through a fresh
    /// engine as `replay` would; the alerts must be exactly the expected
    /// ones, in order. Exits 0 when every case passes, 1 when one fails,
    /// 78 when the rules or a test file are invalid.
    Test {
        #[command(flatten)]
        rules: RulesArg,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Test files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub store: StoreLocation,
    #[command(subcommand)]
    pub action: StateAction,
}

#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// List saved units: name, size, engine clock, position, format.
    List,
    /// Drop saved units (all, or the named ones): their windows and pending
    /// deadlines are lost, and their sources restart from their committed
    /// or configured positions.
    Reset {
        /// Units to drop (default: all).
        units: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenFormat {
    Jsonl,
    Syslog,
}

/// Runs a command; the returned code is the process exit code. `daemon`
/// runs `mcp-alertd run` (the binary passes `app::run`: the command line
/// does not depend on the composition root).
pub fn run(cli: Cli, daemon: impl FnOnce(Option<PathBuf>) -> Result<u8>) -> Result<u8> {
    match cli.command {
        Command::Run(args) => daemon(args.config),
        Command::Replay(args) => replay_cmd(args),
        Command::Check(args) => check_cmd(args),
        Command::Generate(args) => generate_cmd(args),
        Command::BenchLoad(args) => crate::bench_load::run(args),
        Command::Outbox(args) => outbox_cmd(args),
        Command::Journal(args) => journal_cmd(args),
        Command::State(args) => state_cmd(args),
        Command::Man { dir } => man_cmd(dir.as_deref()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "mcp-alertd", &mut io::stdout().lock());
            Ok(0)
        }
        Command::Status(args) => {
            let config = match &args.config {
                Some(c) => Config::load(c)?,
                None => Config::builtin(),
            };
            let addr = args.metrics.or(config.metrics).ok_or_else(|| {
                anyhow::anyhow!("the configuration disables metrics (give --metrics ADDR)")
            })?;
            // The configuration's certificate, when its address speaks TLS.
            let at = match &config.metrics_tls {
                Some(tls) => crate::status::Endpoint::tls(addr, &tls.cert_file)?,
                None => crate::status::Endpoint::plain(addr),
            };
            crate::status::run(&at, args.interval, &mut io::stdout().lock())
        }
        Command::Rules(args) => match args.action {
            RulesAction::Test {
                rules,
                decode,
                files,
            } => {
                let set = crate::config::load_rules(rules.rules.as_deref())?;
                let decoder = decode.decoder(DEFAULT_MAX_RECORD_BYTES)?;
                crate::rule_tests::run(
                    std::sync::Arc::new(set),
                    &decoder,
                    &files,
                    &mut io::stdout().lock(),
                )
            }
        },
    }
}

fn replay_cmd(args: ReplayArgs) -> Result<u8> {
    let rules = crate::config::load_rules(args.rules.rules.as_deref())?;
    let inputs: Vec<Input> = if args.files.is_empty() {
        vec![Input::Stdin]
    } else {
        args.files.iter().map(|f| Input::parse(f)).collect()
    };
    let opts = ReplayOptions {
        decoder: args
            .decode
            .decoder(usize::try_from(args.max_record_bytes)?)?,
        allowed_lateness_ms: args.allowed_lateness,
        engine: EngineConfig {
            max_keys_per_rule: usize::try_from(args.max_keys_per_rule)?,
            lateness_ms: args.allowed_lateness,
            ..EngineConfig::default()
        },
        threads: args.threads as usize,
    };
    // Not locked: the alerts are written on a thread of their own.
    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout());
    let summary =
        replay::replay(&inputs, Arc::new(rules), &opts, &mut out).context("replay failed")?;
    out.flush().context("cannot write alerts to stdout")?;
    if !args.quiet {
        eprint!("{summary}");
    }
    Ok(0)
}

fn check_cmd(args: CheckArgs) -> Result<u8> {
    // Report configuration and rule problems together.
    let mut problems = Vec::new();
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
        None => None,
    };
    if let Some(c) = &config {
        problems.extend(build_check(c)?);
    }
    let rules_dir = args
        .rules
        .rules
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.rules_dir.clone()));
    let rules = match crate::config::load_rules(rules_dir.as_deref()) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let formats_dir = args
        .formats
        .formats
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.formats_dir.clone()));
    let formats = match crate::config::load_formats(formats_dir.as_deref()) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            problems.push(format!("invalid formats:\n{e}"));
            None
        }
    };
    if let (Some(c), Some(f)) = (&config, &formats)
        && let Err(e) = c.decoders(f)
    {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("mcp-alertd: {p}");
        }
        return Ok(EXIT_CONFIG);
    }
    print_check(
        &mut io::stdout().lock(),
        args.config.as_deref(),
        config.as_ref(),
        rules.as_ref(),
        formats.as_deref(),
    )?;
    Ok(0)
}

/// Builds the sinks as the daemon would (secrets and CA files are read,
/// never printed; nothing is contacted) and checks the Kafka clients'
/// settings: the problems found.
fn build_check(c: &Config) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let writer: crate::sink::SharedWriter =
        std::sync::Arc::new(std::sync::Mutex::new(Box::new(io::sink())));
    let reopen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    for s in &c.sinks {
        let built = match &s.kind {
            // A producer would start connecting: check its settings only.
            #[cfg(feature = "kafka")]
            crate::config::SinkKind::Kafka(k) => {
                crate::kafka::check_client(&k.client).map_err(|e| format!("sink `{}`: {e}", s.name))
            }
            _ => crate::sink::Sink::build(s, &writer, &reopen).map(drop),
        };
        if let Err(e) = built {
            problems.push(e);
        }
    }
    if c.metrics.is_some() {
        if let Some(tls) = &c.metrics_tls
            && let Err(e) = crate::source::syslog_tcp::tls_acceptor(tls)
        {
            problems.push(format!("metrics.tls: {e}"));
        }
        if let Err(e) = c.console.read_token() {
            problems.push(e);
        }
    }
    #[cfg(feature = "kafka")]
    for s in &c.sources {
        if let crate::config::SourceKind::Kafka(k) = &s.kind
            && let Err(e) = crate::kafka::check_client(&k.client)
        {
            problems.push(format!("source `{}`: {e}", s.name));
        }
    }
    Ok(problems)
}

/// What `check` prints for a valid configuration and rule set.
fn print_check(
    out: &mut dyn Write,
    path: Option<&Path>,
    config: Option<&Config>,
    rules: Option<&crate::engine::RuleSet>,
    formats: Option<&crate::decode::FormatSet>,
) -> io::Result<()> {
    if let Some(c) = config {
        writeln!(
            out,
            "config OK: {}",
            path.map(|p| p.display().to_string()).unwrap_or_default()
        )?;
        for s in &c.sources {
            let mut how = format!("format {}", s.decode.format);
            if let Some(t) = &s.decode.tenant {
                how.push_str(&format!(", tenant {t}"));
            }
            if let Some(ms) = s.decode.derive_sessions_ms {
                how.push_str(&format!(
                    ", sessions derived after {}",
                    duration::display_ms(ms)
                ));
            }
            match s.silent_after {
                Some(Some(d)) => how.push_str(&format!(
                    ", silent after {}",
                    duration::display_ms(duration::millis(d))
                )),
                Some(None) => how.push_str(", never source_silent"),
                None => {}
            }
            writeln!(out, "  source {:<20} {:<10} {how}", s.name, s.type_name())?;
        }
        for s in &c.sinks {
            let body = match &s.kind {
                crate::config::SinkKind::Email(_) => "email text".to_owned(),
                crate::config::SinkKind::Webhook(crate::sink::webhook::Settings {
                    template: Some(t),
                    ..
                }) => match &t.source {
                    crate::sink::template::Source::Preset(p) => format!("template {p}"),
                    crate::sink::template::Source::File(f) => {
                        format!("template {}", f.display())
                    }
                },
                _ => format!("format {}", s.format.name()),
            };
            writeln!(out, "  sink   {:<20} {:<13} {body}", s.name, s.type_name())?;
        }
        for (rule, when) in c.monitor.describe() {
            writeln!(out, "  self   {rule:<20} {when}")?;
        }
        if let Some(addr) = c.metrics {
            let scheme = if c.metrics_tls.is_some() {
                "https"
            } else {
                "http"
            };
            let console = match (&c.console.enabled, &c.console.token) {
                (false, _) => "metrics only, console off".to_owned(),
                (true, None) => "metrics and console, no token".to_owned(),
                (true, Some(_)) => "metrics and console, token required".to_owned(),
            };
            writeln!(
                out,
                "  http   {:<20} {console}",
                format!("{scheme}://{addr}/")
            )?;
        }
    }
    if let Some(formats) = formats {
        let in_use: Vec<&str> = config
            .map(|c| c.sources.iter().map(|s| s.decode.format.as_str()).collect())
            .unwrap_or_default();
        let uses_auto = in_use.contains(&crate::decode::format::AUTO);
        let n = formats.iter().count();
        writeln!(out, "formats OK: {n} formats")?;
        for f in formats.iter() {
            let used = if in_use.contains(&&*f.name) {
                "in use"
            } else if uses_auto && f.detectable() {
                "in use (auto)"
            } else {
                ""
            };
            writeln!(
                out,
                "  {:<14} {:<14} {:<24} {}",
                f.name, used, f.origin, f.title
            )?;
        }
    }
    if let Some(rules) = rules {
        writeln!(
            out,
            "rules OK: {} rules from {}",
            rules.rules().len(),
            rules.origin
        )?;
        for rule in rules.rules() {
            writeln!(
                out,
                "  {:<28} {:<11} {:<8} {}",
                rule.id,
                rule.kind.name(),
                rule.severity.name(),
                rule.title
            )?;
            writeln!(out, "  {:<28} {}", "", rule.describe())?;
            if let Some(d) = &rule.description {
                for line in d.lines().filter(|l| !l.trim().is_empty()) {
                    writeln!(out, "  {:<28} {}", "", line.trim())?;
                }
            }
        }
    }
    Ok(())
}

fn generate_cmd(args: GenerateArgs) -> Result<u8> {
    let mut corpus = Corpus::new(CorpusConfig {
        seed: args.seed,
        tenants: args.tenants,
        agents: args.agents,
        spacing_ms: args.spacing,
        disorder_ms: args.disorder,
        syslog: args.framing == GenFormat::Syslog && args.format == "native",
        ..CorpusConfig::default()
    });
    let mut out = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
    let mut line = String::with_capacity(512);
    let native = Decoder::default();
    for n in 0..args.events {
        corpus.next_line(&mut line);
        if args.format != "native" {
            let ev = native
                .decode(line.as_bytes())
                .context("the generator wrote an invalid event")?;
            let Some(record) = crate::corpus::render::render(&args.format, &ev, n) else {
                continue;
            };
            let header = (args.framing == GenFormat::Syslog).then(|| {
                format!(
                    "<110>1 {} mcp-gw {} - audit - ",
                    crate::alert::format_ts(ev.ts),
                    args.format
                )
            });
            drop(ev);
            line.clear();
            line.push_str(header.as_deref().unwrap_or_default());
            line.push_str(&record.to_string());
        }
        line.push('\n');
        match out.write_all(line.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e).context("cannot write to stdout"),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(0),
    }
}

fn man_cmd(dir: Option<&Path>) -> Result<u8> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages to {}", dir.display()))?;
        }
        None => clap_mangen::Man::new(cmd)
            .render(&mut io::stdout().lock())
            .context("cannot write the manual page")?,
    }
    Ok(0)
}

/// Opens the store of `--state-dir`, else of the configuration: to read
/// only (beside a running daemon) or to change it (the daemon stopped).
fn open_store(at: &StoreLocation, write: bool) -> Result<crate::store::Store> {
    use crate::store::{FILE_NAME, Store};
    let state_dir = match (at.state_dir.as_deref(), at.config.as_deref()) {
        (Some(d), _) => d.to_owned(),
        (None, Some(c)) => Config::load(c)?.state_dir,
        (None, None) => Config::builtin().state_dir,
    };
    let opened = if write || !state_dir.join(FILE_NAME).exists() {
        Store::open(&state_dir)
    } else {
        Store::open_read_only(&state_dir)
    };
    opened.with_context(|| format!("cannot open the store in {}", state_dir.display()))
}

fn state_cmd(args: StateArgs) -> Result<u8> {
    use crate::store::state::{self as checkpoint, Saved};
    let write = !matches!(args.action, StateAction::List);
    let store = open_store(&args.store, write)?;
    let mut out = io::stdout().lock();
    match args.action {
        StateAction::List => {
            for (unit, bytes) in store.states()? {
                let what = match checkpoint::decode(&unit, &bytes) {
                    Ok(Saved::Engine(e)) => {
                        let clock = crate::engine::Engine::snapshot_clock(&e.engine)
                            .map_or_else(|| "-".to_owned(), crate::alert::format_ts);
                        let mut pos: Vec<String> = e
                            .files
                            .iter()
                            .map(|(name, p)| format!("{name}@{}", p.offset))
                            .collect();
                        if let Some(next) = e.next_offset {
                            pos.push(format!("next_offset={next}"));
                        }
                        let rows: u64 = store.state_tables(&unit)?.iter().map(|(_, n)| n).sum();
                        format!("clock={clock} rows={rows} {}", pos.join(" "))
                    }
                    Ok(Saved::Router(rows)) => format!("repeat_keys={}", rows.len()),
                    Ok(Saved::Sources(names)) => format!("delivering={}", names.join(",")),
                    Err(e) => format!("unreadable: {e}"),
                };
                writeln!(out, "{unit:<40} {:>10} bytes  {what}", bytes.len())?;
            }
        }
        StateAction::Reset { units } => {
            let n = store.remove_states((!units.is_empty()).then_some(&units[..]))?;
            writeln!(out, "{n} saved units dropped")?;
        }
    }
    Ok(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a SHA-256 written as 64 hex digits, if `text` is one.
fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (b, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *b = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn journal_cmd(args: JournalArgs) -> Result<u8> {
    let store = open_store(&args.store, false)?;
    let mut out = io::stdout().lock();
    match args.action {
        JournalAction::Export => {
            store.journal_each(|entry| {
                let entry = entry.map_err(io::Error::other)?;
                let alert: serde_json::Value =
                    serde_json::from_slice(&entry.alert).unwrap_or(serde_json::Value::Null);
                let row = serde_json::json!({
                    "seq": entry.seq,
                    "at": crate::alert::format_ts(entry.at_ms),
                    "id": entry.id,
                    "prev": hex(&entry.prev),
                    "hash": hex(&entry.hash),
                    "alert": alert,
                });
                writeln!(out, "{row}")
            })?;
            Ok(0)
        }
        JournalAction::Verify { head } => {
            let want = head.as_deref().map(|h| h.trim().to_ascii_lowercase());
            // A head that is not 64 hex digits matches no entry.
            let hash = want.as_deref().and_then(unhex);
            let report = store.verify_journal(hash.as_ref())?;
            if let Some((seq, why)) = &report.broken {
                writeln!(out, "journal BROKEN at entry {seq}: {why}")?;
                return Ok(1);
            }
            let Some(((first, last), hash)) = report.range.zip(report.head) else {
                writeln!(out, "journal empty")?;
                return Ok(if head.is_some() { 1 } else { 0 });
            };
            if let Some(want) = want
                && !report.has_head
            {
                writeln!(
                    out,
                    "journal BROKEN: no entry has the head {want} (the chain was rewritten, or pruned past it)"
                )?;
                return Ok(1);
            }
            writeln!(
                out,
                "journal OK: {} entries ({first}..={last}), head {}",
                last - first + 1,
                hex(&hash)
            )?;
            Ok(0)
        }
    }
}

fn outbox_cmd(args: OutboxArgs) -> Result<u8> {
    use crate::store::ListedState;
    let write = !matches!(args.action, OutboxAction::List { .. });
    let store = open_store(&args.store, write)?;
    let now = crate::clock::now_ms();
    let mut out = io::stdout().lock();
    match args.action {
        OutboxAction::List { json } => {
            let rows = store.list()?;
            for r in &rows {
                let alert: serde_json::Value =
                    serde_json::from_slice(&r.alert).unwrap_or(serde_json::Value::Null);
                let rule = alert["rule"].as_str().unwrap_or("?");
                let (state, attempts, when, error) = match &r.state {
                    ListedState::Pending(d) => {
                        ("pending", d.attempts, d.next_ms, d.last_error.clone())
                    }
                    ListedState::Dead(d) => ("dead", d.attempts, d.died_ms, d.error.clone()),
                };
                if json {
                    let row = serde_json::json!({
                        "state": state, "sink": r.sink, "id": r.id, "attempts": attempts,
                        "at": crate::alert::format_ts(when), "error": error, "alert": alert,
                    });
                    writeln!(out, "{row}")?;
                } else {
                    writeln!(
                        out,
                        "{state:<8} {:<16} {} {rule:<28} attempts={attempts} {} {error}",
                        r.sink,
                        r.id,
                        crate::alert::format_ts(when)
                    )?;
                }
            }
            let (alerts, pending, dead) = store.counts()?;
            eprintln!("{pending} pending deliveries, {dead} dead letters, {alerts} alerts held");
        }
        OutboxAction::Retry { sink, ids } => {
            let n = store.retry_dead(sink.as_deref(), &ids, now)?;
            writeln!(out, "{n} dead letters moved back to pending")?;
        }
        OutboxAction::Purge { sink, pending, ids } => {
            let n = store.purge(sink.as_deref(), &ids, true, pending)?;
            writeln!(out, "{n} entries deleted")?;
        }
    }
    Ok(0)
}
