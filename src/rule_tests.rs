//! `mcp-alertd rules test`: rule test cases, events in and expected alerts
//! out, run through a fresh engine with `replay`'s semantics (the clock is
//! the largest `ts` minus the default lateness; deadlines due at the end
//! fire). A test file:
//!
//! ```toml
//! [[case]]
//! name = "four failures within a minute fire once"
//! events = [
//!   '{"ts":"2026-10-01T00:00:00Z","event":"auth.failure","tenant":"acme","agent_id":"a"}',
//! ]
//! [[case.expect]]
//! rule = "auth_failure_burst"
//! key = { agent_id = "a" }      # optional: the alert's key fields
//! tenant = "acme"               # optional
//! count = 4                     # optional
//! ts = "2026-10-01T00:00:03Z"   # optional: the alert's event time
//! ```
//!
//! A case passes when the alerts raised are exactly the expected ones, in
//! order (a case without `expect` asserts that nothing fires).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::alert::Alert;
use crate::decode::Decoder;
use crate::engine::{Engine, EngineConfig, RuleSet};
use crate::event::Position;
use crate::pipeline::step::Record;
use crate::replay::Replayer;

/// `EX_CONFIG`: an invalid test file.
const EXIT_CONFIG: u8 = 78;
const DEFAULT_LATENESS_MS: i64 = 5_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    events: Vec<String>,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    rule: String,
    key: Option<BTreeMap<String, String>>,
    tenant: Option<String>,
    count: Option<u64>,
    ts: Option<String>,
}

impl Expect {
    /// Why `alert` does not match, if it does not.
    fn mismatch(&self, alert: &Alert) -> Option<String> {
        let mut why = Vec::new();
        if alert.rule != self.rule {
            why.push(format!("rule {} (expected {})", alert.rule, self.rule));
        }
        if let Some(k) = &self.key
            && *k != alert.key
        {
            why.push(format!("key {:?} (expected {k:?})", alert.key));
        }
        if let Some(t) = &self.tenant
            && *t != alert.tenant
        {
            why.push(format!("tenant {} (expected {t})", alert.tenant));
        }
        if let Some(c) = self.count
            && c != alert.count
        {
            why.push(format!("count {} (expected {c})", alert.count));
        }
        if let Some(ts) = &self.ts {
            let want = ts
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .ok();
            if want != Some(alert.ts) {
                why.push(format!(
                    "ts {} (expected {ts})",
                    crate::alert::format_ts(alert.ts)
                ));
            }
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// The test files named: files as given, directories' `*.toml` sorted.
fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn load(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
}

/// Runs one case; `Err` explains a failure.
fn run_case(
    rules: &Arc<RuleSet>,
    decoder: &Decoder,
    case: &Case,
) -> Result<Result<(), String>, String> {
    let mut replayer = Replayer::new(
        Engine::new(rules.clone(), EngineConfig::default()),
        DEFAULT_LATENESS_MS,
    );
    let mut alerts = Vec::new();
    for (i, line) in case.events.iter().enumerate() {
        let pos = Position::Stdin { line: i as u64 + 1 };
        let mut rejected = None;
        replayer
            .apply(
                Record::Bytes(line.as_bytes()),
                decoder,
                &pos,
                &mut alerts,
                &mut |outcome, at| {
                    if let Err(e) = outcome {
                        rejected.get_or_insert(format!("event {} ({at}): {e}", i + 1));
                    }
                },
            )
            .map_err(|e| format!("event {}: {e}", i + 1))?;
        if let Some(why) = rejected {
            return Err(why);
        }
    }
    replayer.finish(&mut alerts);
    let alerts: Vec<crate::alert::Alert> = alerts
        .into_iter()
        .map(|d| crate::alert::render(d, None))
        .collect();
    let mut problems = Vec::new();
    for (i, (want, got)) in case.expect.iter().zip(&alerts).enumerate() {
        if let Some(why) = want.mismatch(got) {
            problems.push(format!("alert {}: {why}", i + 1));
        }
    }
    if alerts.len() != case.expect.len() {
        let raised: Vec<String> = alerts
            .iter()
            .map(|a| {
                format!(
                    "{} {:?} at {}",
                    a.rule,
                    a.key,
                    crate::alert::format_ts(a.ts)
                )
            })
            .collect();
        problems.push(format!(
            "{} alerts raised, {} expected: [{}]",
            alerts.len(),
            case.expect.len(),
            raised.join("; ")
        ));
    }
    Ok(if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    })
}

/// Runs every case of the files; prints one line per case and a total.
pub fn run(
    rules: Arc<RuleSet>,
    decoder: &Decoder,
    paths: &[PathBuf],
    out: &mut dyn Write,
) -> Result<u8> {
    let mut invalid = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for path in files(paths)? {
        let file = match load(&path) {
            Ok(f) => f,
            Err(e) => {
                invalid.push(e);
                continue;
            }
        };
        if file.case.is_empty() {
            invalid.push(format!("{}: no [[case]]", path.display()));
        }
        for case in &file.case {
            match run_case(&rules, decoder, case) {
                Ok(Ok(())) => {
                    passed += 1;
                    writeln!(out, "ok      {}: {}", path.display(), case.name)?;
                }
                Ok(Err(why)) => {
                    failed += 1;
                    writeln!(
                        out,
                        "FAILED  {}: {}\n        {why}",
                        path.display(),
                        case.name
                    )?;
                }
                Err(e) => invalid.push(format!("{}: {}: {e}", path.display(), case.name)),
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    if !invalid.is_empty() {
        for e in &invalid {
            eprintln!("mcp-alertd: invalid test: {e}");
        }
        return Ok(EXIT_CONFIG);
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
