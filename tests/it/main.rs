//! The one integration-test binary: modules per area, shared helpers here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Tests drive real daemons and processes on wall time: they date events
// from the wall clock and poll with short sleeps (the lint guards `src/`).
#![allow(clippy::disallowed_methods)]

mod alert_formats;
mod architecture;
mod support;
mod cli;
mod clock;
mod console;
mod correlation;
mod daemon;
mod decode;
mod delivery;
mod detectors;
mod faults;
mod formats;
mod framing;
mod golden;
mod kafka;
mod mcp_sdk;
mod model;
mod monitor;
mod operator;
mod packaging;
mod process;
mod routing;
mod rules;
mod secrets;
mod siem;
mod state;
mod store;
mod systemd;
mod threads;

use std::sync::Arc;

use mcp_alertd::alert::Alert;
use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::{Engine, EngineConfig, RuleSet};
use mcp_alertd::replay::Replayer;

/// A rule set from one TOML text (plus an optional task table).
pub fn rules(toml: &str) -> Arc<RuleSet> {
    rules_with_tasks(toml, None)
}

pub fn rules_with_tasks(toml: &str, tasks: Option<&str>) -> Arc<RuleSet> {
    let mut files = vec![("test.toml".to_owned(), toml.to_owned())];
    if let Some(t) = tasks {
        files.push(("tasks.toml".to_owned(), t.to_owned()));
    }
    Arc::new(RuleSet::from_files(files, "test").expect("valid rules"))
}

/// Runs JSON event lines through a single-partition replay (lateness `late_ms`).
pub fn run_lines(rules: &Arc<RuleSet>, late_ms: i64, lines: &[String]) -> Vec<Alert> {
    run_lines_cfg(rules, late_ms, EngineConfig::default(), lines)
}

pub fn run_lines_cfg(
    rules: &Arc<RuleSet>,
    late_ms: i64,
    cfg: EngineConfig,
    lines: &[String],
) -> Vec<Alert> {
    let cfg = EngineConfig {
        lateness_ms: late_ms,
        ..cfg
    };
    let mut replayer = Replayer::new(Engine::new(rules.clone(), cfg), late_ms);
    let decoder = Decoder::default();
    let mut out = Vec::new();
    for line in lines {
        let ev = decoder.decode(line.as_bytes()).expect("valid event");
        replayer.on_event(&ev, None, &mut out);
    }
    replayer.finish(&mut out);
    out.into_iter()
        .map(|d| mcp_alertd::alert::render(d, None))
        .collect()
}

/// One JSON event line at `ms` with extra JSON fields (`"k":"v",...`).
pub fn line(ms: i64, event: &str, fields: &str) -> String {
    if fields.is_empty() {
        format!(r#"{{"ts":{ms},"event":"{event}"}}"#)
    } else {
        format!(r#"{{"ts":{ms},"event":"{event}",{fields}}}"#)
    }
}

/// Seconds to milliseconds, from an arbitrary base.
pub fn s(sec: i64) -> i64 {
    1_790_000_000_000 + sec * 1000
}

/// A throwaway certificate authority for TLS tests.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `name` signed by this CA: (certificate PEM, key PEM).
    pub fn issue(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
