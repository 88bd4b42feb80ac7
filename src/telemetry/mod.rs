//! Logging setup, rate-limited logging of per-record problems, and the
//! metrics registry with its HTTP endpoint ([`metrics`]). Logs go to
//! standard error; standard output is reserved for alerts.

pub mod metrics;
pub mod scrape;

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

/// Rate-limits a kind of log line: at most `burst` lines per key per
/// window; the first line of a new window is told how many lines of the
/// last one were held back, so a storm of one failure logs a few lines
/// with counts instead of one line per failure.
#[derive(Debug)]
pub struct LogLimit {
    burst: u64,
    window: std::time::Duration,
    seen: HashMap<&'static str, (std::time::Instant, u64, u64)>,
}

/// What [`LogLimit::admit`] decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Whether to log this line.
    pub log: bool,
    /// Lines of this key held back in the window that just ended (say so
    /// now, even when this line is not logged).
    pub held: u64,
}

impl LogLimit {
    pub fn new(burst: u64, window: std::time::Duration) -> LogLimit {
        LogLimit {
            burst: burst.max(1),
            window,
            seen: HashMap::new(),
        }
    }

    /// Counts one line of `key` and says whether to log it.
    pub fn admit(&mut self, key: &'static str) -> Admit {
        let now = std::time::Instant::now();
        let (start, logged, held) = self.seen.entry(key).or_insert((now, 0, 0));
        let mut ended = 0;
        if now.duration_since(*start) >= self.window {
            ended = *held;
            *start = now;
            *logged = 0;
            *held = 0;
        }
        let log = *logged < self.burst;
        if log {
            *logged += 1;
        } else {
            *held += 1;
        }
        Admit { log, held: ended }
    }
}

/// Rate-limits logs of rejected records: at most `burst` lines per reason
/// per minute, then one line saying how many more were only counted. The
/// record's content is never logged, only its position and the reason.
#[derive(Debug)]
pub struct RejectLog(LogLimit);

const REJECT_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl RejectLog {
    pub fn new(burst: u64) -> RejectLog {
        RejectLog(LogLimit::new(burst, REJECT_LOG_WINDOW))
    }

    pub fn reject(
        &mut self,
        reason: &'static str,
        position: &dyn std::fmt::Display,
        error: &dyn std::fmt::Display,
    ) {
        let admit = self.0.admit(reason);
        if admit.held > 0 {
            tracing::warn!(
                reason,
                suppressed = admit.held,
                "rejected records counted but not logged in the last minute"
            );
        }
        if admit.log {
            tracing::warn!(%position, reason, "rejected record: {error}");
        }
    }
}
