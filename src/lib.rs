//! `mcp-alertd`: streaming security analytics and alerting for MCP servers.
//!
//! # Data flow
//!
//! ```text
//! source → decode → engine → router → outbox (store) → sink
//!            └──── pipeline: the per-record step and the engine thread ────┘
//! ```
//!
//! Records flow left to right; only acknowledgements (Kafka offsets made
//! durable), backpressure (bounded channels, a full outbox) and shutdown
//! flow back.
//!
//! # The import rule
//!
//! Checked by `tests/it/architecture.rs` on every test run:
//! - a stage imports only stages to its left, in this order: `source`,
//!   `decode`, `engine`, `router`, `store`, `outbox`, `sink`, `pipeline`
//!   (the engine thread, which drives the stages to its left), plus the
//!   vocabulary leaves;
//! - the leaves (`event`, `alert`, `condition`, `duration`, `options`,
//!   `clock`, `kafka`, `telemetry`) import only other leaves;
//! - stages never import `config`: each kind owns its settings type, and
//!   `config` assembles them (it may import stages);
//! - nothing imports `app` or `cli`; the tools (`replay`, `rule_tests`,
//!   `bench_load`, `corpus`, `status`) may import anything else;
//! - no cycle between top-level modules.
//!
//! # Modules
//!
//! Vocabulary leaves:
//! - [`event`]: the normalized audit [`event::Event`], positions, partition ids.
//! - [`alert`]: the alert, its severity, deterministic ids and JSON form.
//! - [`condition`]: the condition language of rules and formats, and JSON paths.
//! - [`duration`]: the `"60s"` / `"15d"` strings of rules and options.
//! - [`options`]: shared option validators and secrets from files or credentials.
//! - [`clock`]: the one place the wall clock is read.
//! - [`kafka`]: Kafka client settings shared by the Kafka source and sink.
//! - [`telemetry`]: logging, metrics, `/metrics` `/healthz` `/readyz`.
//!
//! Stages, in flow order:
//! - [`source`]: syslog UDP/TCP/TLS, followed files, Kafka: framed records in batches.
//! - [`decode`]: pure record → event decoding (JSON lines, RFC 5424/3164 syslog, CEE).
//! - [`engine`]: rules (compile, validate) and the pure, deterministic detector.
//! - [`router`]: routes, repeat suppression and grouping; pure decisions.
//! - [`store`]: the one redb file: outbox rows, dead letters, saved state.
//! - [`outbox`]: the writer (group commit, backpressure) and per-sink dispatch.
//! - [`sink`]: stdout, file, webhook, email, SIEM syslog, Kafka.
//! - [`pipeline`]: the per-record step shared by `run` and `replay`; the engine thread.
//!
//! Composition and edges:
//! - [`config`]: the TOML configuration, validated before anything binds.
//! - [`app`]: the daemon (`run`): composition root, lifecycle, signals.
//! - [`cli`]: the command line and the one-shot commands.
//! - tools: [`replay`], [`rule_tests`] (`rules test`), [`bench_load`],
//!   [`corpus`] (seeded synthetic audit logs), [`status`].
#![forbid(unsafe_code)]

// Leaves.
pub mod alert;
pub mod condition;
pub mod clock;
pub mod duration;
pub mod event;
pub mod kafka;
pub mod options;
pub mod telemetry;

// Stages, in flow order.
pub mod source;
pub mod decode;
pub mod engine;
pub mod router;
pub mod store;
pub mod outbox;
pub mod sink;
pub mod pipeline;

// Composition, edges and tools.
pub mod config;
pub mod app;
pub mod cli;
pub mod replay;
pub mod rule_tests;
pub mod bench_load;
pub mod corpus;
pub mod status;
pub mod console;
