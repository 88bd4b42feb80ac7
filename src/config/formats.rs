//! Which formats the daemon knows: the built-ins, plus the `*.toml` files of
//! `formats_dir` (read here; `decode` compiles texts and does no I/O). A
//! file named like a built-in replaces it.

use std::path::Path;

use crate::decode::{FormatError, FormatSet, FormatSetError};

/// The built-in formats and those of `dir`.
pub fn load_formats(dir: Option<&Path>) -> Result<FormatSet, FormatSetError> {
    let Some(dir) = dir else {
        return FormatSet::built_in();
    };
    let fail = |file: &Path, message: String| FormatSetError {
        errors: vec![FormatError {
            file: file.display().to_string(),
            message,
        }],
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| fail(dir, format!("cannot read formats directory: {e}")))?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => return Err(fail(dir, format!("cannot list formats directory: {e}"))),
        };
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        // A `*.toml` entry that is not a readable file (a dangling link, a
        // directory) is an error, not silently skipped.
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((stem, path.display().to_string(), text)),
            Err(e) => errors.push(FormatError {
                file: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(FormatSetError { errors });
    }
    FormatSet::from_files(files)
}
