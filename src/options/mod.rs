//! Shared option validators (a vocabulary leaf): durations with a minimum,
//! counts in a range, and secrets read from a file or a systemd credential.
//! Each kind's config section uses these, so every option of every kind
//! reads and reports the same way; an error is pushed, never returned, so
//! a configuration reports all its problems at once.

pub mod section;

use std::path::PathBuf;
use std::time::Duration;

use crate::duration;

pub fn dur(
    errors: &mut Vec<String>,
    name: &str,
    value: Option<&str>,
    default_ms: i64,
    min_ms: i64,
) -> i64 {
    let Some(text) = value else { return default_ms };
    match duration::parse_ms(text) {
        Ok(ms) if ms >= min_ms => ms,
        Ok(_) => {
            errors.push(format!(
                "{name}: must be at least {}",
                duration::display_ms(min_ms)
            ));
            default_ms
        }
        Err(e) => {
            errors.push(format!("{name}: {e}"));
            default_ms
        }
    }
}

pub fn count(
    errors: &mut Vec<String>,
    name: &str,
    value: Option<u64>,
    default: usize,
    range: (u64, u64),
) -> usize {
    match value {
        None => default,
        Some(v) if v >= range.0 && v <= range.1 => usize::try_from(v).unwrap_or(default),
        Some(v) => {
            errors.push(format!("{name}: {v} is outside {}..={}", range.0, range.1));
            default
        }
    }
}

/// A feature that is on with a duration or off: `false` turns it off,
/// `true` gives `on`, a duration string (at least `min_ms`) gives itself,
/// and no value gives `default`.
pub fn switch(
    errors: &mut Vec<String>,
    name: &str,
    value: Option<&toml::Value>,
    (default, on): (Option<Duration>, Duration),
    min_ms: i64,
) -> Option<Duration> {
    match value {
        None => default,
        Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::Boolean(true)) => Some(on),
        Some(toml::Value::String(text)) => {
            let fallback = crate::duration::millis(on);
            Some(ms_duration(dur(errors, name, Some(text), fallback, min_ms)))
        }
        Some(other) => {
            errors.push(format!(
                "{name}: expected a duration such as \"15m\", or false to turn it off, found {}",
                other.type_str()
            ));
            default
        }
    }
}

pub fn ms_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/<name>` (systemd `LoadCredential=`).
    Credential(String),
}

impl SecretRef {
    pub fn from(
        file: Option<PathBuf>,
        credential: Option<String>,
        what: &str,
        errors: &mut Vec<String>,
    ) -> Option<SecretRef> {
        match (file, credential) {
            (Some(_), Some(_)) => {
                errors.push(format!("{what}: give `_file` or `_credential`, not both"));
                None
            }
            (Some(f), None) => Some(SecretRef::File(f)),
            (None, Some(c)) => Some(SecretRef::Credential(c)),
            (None, None) => None,
        }
    }

    /// Reads the secret (trailing newline trimmed), warning when the file
    /// is readable by group or others. The value is never logged.
    pub fn read(&self) -> Result<String, String> {
        let path = match self {
            SecretRef::File(p) => p.clone(),
            SecretRef::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| format!("credential `{name}`: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"))?;
                PathBuf::from(dir).join(name)
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("secret {}: {e}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), "secret file is readable by group or others; chmod 600 it");
            }
        }
        Ok(text.trim_end_matches(['\n', '\r']).to_owned())
    }
}
