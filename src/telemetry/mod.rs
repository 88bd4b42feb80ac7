//! Logging setup, rate-limited logging of per-record problems, and the
//! metrics registry with its HTTP endpoint ([`metrics`]). Logs go to
//! standard error; standard output is reserved for alerts.

pub mod metrics;

use std::collections::HashMap;

use tracing_subscriber::EnvFilter;

/// The environment variable holding a log filter (`info`, `mcp_alertd=debug`).
pub const LOG_ENV: &str = "MCP_ALERTD_LOG";

/// Installs the global subscriber on stderr: human-readable lines or JSON
/// objects, level from `MCP_ALERTD_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Rate-limits logs of rejected records: at most `burst` lines per reason
/// per minute, then one line saying how many more were only counted. The
/// record's content is never logged, only its position and the reason.
#[derive(Debug)]
pub struct RejectLog {
    burst: u64,
    seen: HashMap<&'static str, (std::time::Instant, u64, u64)>,
}

const REJECT_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

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
        let now = std::time::Instant::now();
        let (start, logged, suppressed) = self.seen.entry(reason).or_insert((now, 0, 0));
        if now.duration_since(*start) >= REJECT_LOG_WINDOW {
            if *suppressed > 0 {
                tracing::warn!(
                    reason,
                    suppressed = *suppressed,
                    "rejected records counted but not logged in the last minute"
                );
            }
            *start = now;
            *logged = 0;
            *suppressed = 0;
        }
        if *logged < self.burst {
            *logged += 1;
            tracing::warn!(%position, reason, "rejected record: {error}");
        } else {
            *suppressed += 1;
        }
    }
}
