//! Logging setup and rate-limited logging of per-record problems. Logs go to
//! standard error; standard output is reserved for alerts.

use std::collections::HashMap;

use tracing_subscriber::EnvFilter;

/// The environment variable holding a log filter (`info`, `mcp_alertd=debug`).
pub const LOG_ENV: &str = "MCP_ALERTD_LOG";

/// Installs the global subscriber: human-readable lines on stderr, level
/// from `MCP_ALERTD_LOG` (default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Logs the first `burst` occurrences of each reason, then says once that
/// the rest are only counted. The record's content is never logged.
#[derive(Debug)]
pub struct RejectLog {
    burst: u64,
    seen: HashMap<&'static str, u64>,
}

impl RejectLog {
    pub fn new(burst: u64) -> RejectLog {
        RejectLog {
            burst,
            seen: HashMap::new(),
        }
    }

    pub fn reject(
        &mut self,
        reason: &'static str,
        position: &dyn std::fmt::Display,
        error: &dyn std::fmt::Display,
    ) {
        let n = self.seen.entry(reason).or_insert(0);
        *n += 1;
        if *n <= self.burst {
            tracing::warn!(%position, reason, "rejected record: {error}");
        }
        if *n == self.burst + 1 {
            tracing::warn!(
                reason,
                "more `{reason}` rejections: counted, no longer logged"
            );
        }
    }
}
