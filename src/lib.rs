//! `mcp-alertd`: streaming security analytics and alerting for MCP servers.
//!
//! Data flows one way: source → decode → engine → (router → outbox → sinks).
//! Each module may use the modules to its left and the vocabulary modules
//! (`event`, `alert`, `duration`, `telemetry`).
//!
//! - [`duration`]: the `"60s"` / `"15d"` duration strings used by rules and options.
//! - [`event`]: the normalized audit [`event::Event`] and record positions.
//! - [`source`]: framing of raw input into bounded records (lines of a file or stdin).
//! - [`decode`]: pure record → event decoding (JSON lines, RFC 5424/3164 syslog, CEE).
//! - [`engine`]: rules (load, compile, validate) and the pure, deterministic detector.
//! - [`alert`]: the alert type, deterministic ids and rendering.
//! - [`app`]: the daemon (`run`): composition root, lifecycle, signals.
//! - [`config`]: the daemon's TOML configuration, validated up front.
//! - [`router`]: which sinks get an alert (routes, default route); pure.
//! - [`sink`]: alert delivery: stdout, file, webhook, email, SIEM syslog; the outbox dispatcher.
//! - [`replay`]: the one-shot `replay` pipeline over files or stdin.
//! - [`cli`]: the command line and the non-daemon commands (`replay`, `check`, `generate`).
//! - [`bench_load`]: the load generator for a running daemon (`bench-load`).
//! - [`corpus`]: a seeded synthetic audit-log generator for benchmarks and load tests.
//! - [`store`]: the one redb file: the durable outbox, dead letters and saved engine state.
//! - [`checkpoint`]: the versioned format of saved engine state (units) and durable Kafka offsets.
//! - [`status`]: `mcp-alertd status`, a summary of a running daemon from its /metrics.
//! - [`rule_tests`]: `mcp-alertd rules test`, rule test cases (events in, alerts out).
//! - [`telemetry`]: logging setup and rate-limited per-record logging.
#![forbid(unsafe_code)]

pub mod alert;
pub mod app;
pub mod bench_load;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod decode;
pub mod duration;
pub mod engine;
pub mod event;
pub mod replay;
pub mod router;
pub mod rule_tests;
pub mod sink;
pub mod source;
pub mod status;
pub mod store;
pub mod telemetry;
