//! Which rule set the daemon runs: the `*.toml` files of `rules_dir`, read
//! here (the engine compiles texts and does no I/O), or the embedded
//! defaults.

use std::path::Path;

use crate::engine::{RuleError, RuleSet, RuleSetError};

/// The rules a configuration names: its `rules_dir`, else the embedded set.
pub fn load_rules(dir: Option<&Path>) -> Result<RuleSet, RuleSetError> {
    match dir {
        Some(dir) => load_dir(dir),
        None => RuleSet::embedded(),
    }
}

/// Every `*.toml` rule file of `dir`, with `tasks.toml` as task table.
pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleSetError> {
    let origin = dir.display().to_string();
    let fail = |message: String| RuleSetError {
        errors: vec![RuleError {
            file: origin.clone(),
            rule: None,
            message,
        }],
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read rules directory: {e}")))?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => return Err(fail(format!("cannot list rules directory: {e}"))),
        };
        // A `*.toml` entry that is not a readable file (a dangling link, a
        // directory, no permission) is an error, never skipped: a rule file
        // that is not really there must not load as a smaller rule set.
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((name, text)),
            Err(e) => errors.push(RuleError {
                file: path.display().to_string(),
                rule: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(RuleSetError { errors });
    }
    files.sort();
    RuleSet::from_files(files, &origin)
}
