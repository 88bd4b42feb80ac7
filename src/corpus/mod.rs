//! A deterministic synthetic audit-log generator (seeded), shared by the
//! benchmarks, the end-to-end `replay` measurements and load tests. Same
//! configuration and seed → byte-identical output.
//!
//! The mix covers every event type, several tenants, bursts of
//! authentication failures, sessions with denied tools, credentials that are
//! used or forgotten, and bounded disorder of timestamps. It behaves like a
//! deployment whose enforcement works: invoked tools are in the session's
//! allowlist (one call in a thousand is not: a planted bypass), denied ones
//! are not, and a revoked credential is replaced, never used again.

pub mod render;

use std::fmt::Write as _;

use crate::alert::format_ts;

/// What to generate.
#[derive(Debug, Clone)]
pub struct CorpusConfig {
    pub seed: u64,
    pub tenants: u32,
    pub agents: u32,
    /// Event time of the first event, epoch milliseconds.
    pub start_ms: i64,
    /// Mean event-time spacing between consecutive events, milliseconds.
    pub spacing_ms: i64,
    /// Each event's `ts` is moved back by up to this much (disorder).
    pub disorder_ms: i64,
    /// Frame each event as an RFC 5424 syslog line (with `@cee:`).
    pub syslog: bool,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig {
            seed: 1,
            tenants: 4,
            agents: 10_000,
            start_ms: 1_795_000_000_000,
            spacing_ms: 1,
            disorder_ms: 0,
            syslog: false,
        }
    }
}

/// splitmix64: tiny, fast, and stable across versions (unlike a crate's
/// default RNG, whose stream may change).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// The allowlist every session is opened with.
const ALLOWED: [&str; 2] = ["search_docs", "read_file"];
/// Tools outside it (denied, or a planted bypass).
const OTHER_TOOLS: [&str; 4] = ["send_email", "shell_exec", "create_ticket", "db_query"];
const REASONS: [&str; 3] = ["invalid_token", "expired_token", "insufficient_scope"];
const TASKS: [&str; 4] = [
    "summarize_inbox",
    "triage_tickets",
    "code_review",
    "nightly_report",
];

/// The generator: call [`Corpus::next_line`] for each line.
#[derive(Debug, Clone)]
pub struct Corpus {
    cfg: CorpusConfig,
    rng: Rng,
    n: u64,
    /// Remaining failures of a running burst, and its agent.
    burst: Option<(u32, u32)>,
    /// Per agent, the generation of its credential (a revocation moves it
    /// to the next; the new one `replaces` the old).
    generation: Vec<u32>,
}

impl Corpus {
    pub fn new(cfg: CorpusConfig) -> Corpus {
        let rng = Rng(cfg.seed);
        let agents = cfg.agents.max(1) as usize;
        Corpus {
            cfg,
            rng,
            n: 0,
            burst: None,
            generation: vec![0; agents],
        }
    }

    /// Writes the next line (without `\n`) into `buf`, replacing its content.
    pub fn next_line(&mut self, buf: &mut String) {
        buf.clear();
        let base = self.cfg.start_ms + self.n as i64 * self.cfg.spacing_ms;
        let jitter = self.rng.below(self.cfg.disorder_ms.max(0) as u64 + 1) as i64;
        let ts = base - jitter;
        self.n += 1;
        let (agent, kind) = match self.burst {
            Some((agent, left)) => {
                self.burst = (left > 1).then_some((agent, left - 1));
                (agent, 1)
            }
            None => {
                let agent = self.rng.below(u64::from(self.cfg.agents.max(1))) as u32;
                let roll = self.rng.below(1000);
                if roll < 3 {
                    self.burst = Some((agent, 5));
                }
                (agent, roll)
            }
        };
        let tenant = agent % self.cfg.tenants.max(1);
        let session = agent.wrapping_mul(31).wrapping_add((self.n / 5000) as u32);
        if self.cfg.syslog {
            let _ = write!(
                buf,
                "<110>1 {} mcp-{} mcp-server - audit - @cee:",
                format_ts(ts),
                tenant
            );
        }
        let _ = write!(buf, r#"{{"ts":"{}","#, format_ts(ts));
        let event = match kind {
            0..=150 => "auth.failure",
            151..=400 => "auth.success",
            401..=460 => "session.start",
            461..=520 => "session.end",
            521..=820 => "tool.invoke",
            821..=860 => "tool.denied",
            861..=900 => "credential.issued",
            901..=960 => "credential.used",
            _ => "credential.revoked",
        };
        let slot = agent as usize % self.generation.len();
        let _ = write!(
            buf,
            r#""event":"{event}","tenant":"tenant-{tenant}","agent_id":"agent-{agent}","server":"mcp-{}""#,
            tenant
        );
        match event {
            "auth.failure" => {
                let reason = REASONS[self.rng.below(3) as usize];
                let _ = write!(
                    buf,
                    r#","reason":"{reason}","source_ip":"10.{}.{}.{}""#,
                    tenant,
                    agent % 256,
                    agent / 256 % 256
                );
            }
            "session.start" => {
                let task = TASKS[self.rng.below(4) as usize];
                let _ = write!(
                    buf,
                    r#","session_id":"sess-{session}","role":"assistant","declared_task":"{task}","allowed_tools":["search_docs","read_file"]"#
                );
                if self.rng.below(2) == 0 {
                    let _ = write!(
                        buf,
                        r#","expected_runtime_s":{}"#,
                        60 + self.rng.below(1800)
                    );
                }
            }
            "session.end" => {
                let _ = write!(buf, r#","session_id":"sess-{session}""#);
            }
            "tool.invoke" | "tool.denied" => {
                let planted = event == "tool.invoke" && self.rng.below(1000) == 0;
                let tool = if event == "tool.invoke" && !planted {
                    ALLOWED[self.rng.below(ALLOWED.len() as u64) as usize]
                } else {
                    OTHER_TOOLS[self.rng.below(OTHER_TOOLS.len() as u64) as usize]
                };
                let _ = write!(
                    buf,
                    r#","session_id":"sess-{session}","tool":"{tool}","trace_id":"{:016x}""#,
                    self.rng.next()
                );
                if event == "tool.denied" {
                    buf.push_str(r#","reason":"not_in_allowlist""#);
                }
            }
            _ if event.starts_with("credential.") || event == "auth.success" => {
                let generation = self.generation[slot];
                let _ = write!(buf, r#","credential_id":"cred-{agent}-g{generation}""#);
                if event == "credential.issued" && generation > 0 {
                    let _ = write!(buf, r#","replaces":"cred-{agent}-g{}""#, generation - 1);
                }
                if event == "credential.revoked" {
                    self.generation[slot] = generation + 1;
                }
            }
            _ => {}
        }
        buf.push('}');
    }
}
