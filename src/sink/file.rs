//! The file sink: each alert as one JSON line appended to a file. SIGHUP
//! makes it reopen the file (logrotate moved it).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SendError;

/// `type = "file"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    path: Option<PathBuf>,
}

/// A file sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub path: PathBuf,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        if self.path.is_none() {
            errors.push(format!("{at}: `path` is required for type `file`"));
        }
        Settings {
            path: self.path.unwrap_or_default(),
        }
    }
}

pub struct File {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// The reopen generation the open file belongs to.
    generation: u64,
    reopen: Arc<AtomicU64>,
}

impl File {
    /// `reopen` is raised on SIGHUP: the file is opened anew before the
    /// next write.
    pub fn build(settings: &Settings, reopen: &Arc<AtomicU64>) -> File {
        File {
            path: settings.path.clone(),
            file: None,
            generation: reopen.load(Ordering::Relaxed),
            reopen: reopen.clone(),
        }
    }

    pub fn send(&mut self, json: &[u8]) -> Result<(), SendError> {
        let now = self.reopen.load(Ordering::Relaxed);
        if now != self.generation {
            self.file = None;
            self.generation = now;
        }
        let path = &self.path;
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                std::os::unix::fs::OpenOptionsExt::mode(
                    std::fs::OpenOptions::new().create(true).append(true),
                    // Alerts name agents and tenants: never world-readable,
                    // whatever the umask (group: the log shipper).
                    0o640,
                )
                .open(path)
                .map_err(|e| SendError::retry(format!("{}: {e}", path.display())))?,
            ),
        };
        let mut line = json.to_vec();
        line.push(b'\n');
        file.write_all(&line)
            .map_err(|e| SendError::retry(format!("{}: {e}", path.display())))
    }
}
