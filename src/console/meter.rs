//! The injection meter: denied tool calls per agent and per session over
//! the last hour and day, in event time. Pure (no clock, no I/O): the
//! engine thread feeds it every `tool.denied` event, the console reads it.
//!
//! Bounded: each of the two tables (agents, sessions) is a capped map of
//! at most `max_*` entries. At the cap the sixteenth of the entries with the
//! fewest denials in the last day (the oldest first on ties) is evicted at
//! once, so the O(n) selection is amortized; an entry holds 24 hourly and
//! 12 five-minute buckets (288 bytes) plus its names, about 750 bytes
//! resident with the hash table's slack (`cargo bench --bench console`). The heavy hitters (the only entries the top 20 can show) are the
//! ones that stay; an agent evicted and seen again starts from zero, which
//! the response says (`evicted`).

use std::collections::HashMap;

use serde::Serialize;

pub const HOUR_MS: i64 = 3_600_000;
const FIVE_MIN_MS: i64 = 300_000;
/// Hourly buckets: a day.
const HOURS: usize = 24;
/// Five-minute buckets: an hour.
const FIVES: usize = 12;
/// An agent denied in at least this many consecutive hours (up to the
/// current one) is flagged `sustained`: "any sustained non-zero rate is an
/// active prompt injection".
pub const SUSTAINED_HOURS: u32 = 3;
/// The threshold of `session_injection_incident`: denials in one session.
pub const SESSION_THRESHOLD: u64 = 5;
/// Rows a top list returns at most.
pub const TOP: usize = 20;
/// At the cap, evict this fraction (1/N) of the entries at once.
const EVICT_FRACTION: usize = 16;

/// Default cap of each table.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// A ring of counts per time bucket, each slot tagged with its bucket's
/// index (epoch ms / width) so a stale slot reads as zero.
#[derive(Debug, Clone)]
struct Ring<const N: usize> {
    slots: [(i32, u32); N],
}

impl<const N: usize> Ring<N> {
    fn new() -> Self {
        Ring {
            slots: [(i32::MIN, 0); N],
        }
    }

    fn add(&mut self, bucket: i64) {
        let tag = bucket as i32;
        let slot = &mut self.slots[bucket.rem_euclid(N as i64) as usize];
        if slot.0 == tag {
            slot.1 = slot.1.saturating_add(1);
        } else if slot.0 < tag {
            *slot = (tag, 1);
        }
    }

    /// The count of `bucket` (zero when its slot holds another one).
    fn get(&self, bucket: i64) -> u32 {
        let slot = self.slots[bucket.rem_euclid(N as i64) as usize];
        if slot.0 == bucket as i32 { slot.1 } else { 0 }
    }

    /// The counts of the `N` buckets ending at `now`, oldest first.
    fn series(&self, now: i64) -> [u32; N] {
        std::array::from_fn(|i| self.get(now - (N - 1 - i) as i64))
    }

    fn sum(&self, now: i64) -> u64 {
        self.series(now).iter().map(|&c| u64::from(c)).sum()
    }
}

/// The denials of one agent or session.
#[derive(Debug, Clone)]
struct Counts {
    tenant: Box<str>,
    agent_id: Box<str>,
    session_id: Option<Box<str>>,
    hours: Ring<HOURS>,
    fives: Ring<FIVES>,
    total: u64,
    last_ms: i64,
}

impl Counts {
    fn day(&self, now_ms: i64) -> u64 {
        self.hours.sum(now_ms.div_euclid(HOUR_MS))
    }

    fn hour(&self, now_ms: i64) -> u64 {
        self.fives.sum(now_ms.div_euclid(FIVE_MIN_MS))
    }

    /// Consecutive hours with a denial, ending at the current hour or the
    /// one before it (an hour just begun has had little time).
    fn streak(&self, now_ms: i64) -> u32 {
        let series = self.hours.series(now_ms.div_euclid(HOUR_MS));
        let mut hours = series.iter().rev().peekable();
        if hours.peek() == Some(&&0) {
            hours.next();
        }
        hours.take_while(|&&c| c > 0).count() as u32
    }
}

/// A table's key: the tenant and the agent or session id, joined by a
/// unit separator (so a lookup needs no allocation).
const SEP: char = '\u{1f}';

/// One capped table of counts.
#[derive(Debug)]
struct Table {
    max: usize,
    map: HashMap<Box<str>, Counts, foldhash::fast::RandomState>,
    evicted: u64,
    /// The key being looked up (reused).
    buf: String,
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            max: max.max(1),
            map: HashMap::default(),
            evicted: 0,
            buf: String::new(),
        }
    }

    /// The counts of (tenant, id), made (after making room) if new.
    fn entry(&mut self, tenant: &str, id: &str, now_ms: i64) -> Option<&mut Counts> {
        self.buf.clear();
        self.buf.push_str(tenant);
        self.buf.push(SEP);
        self.buf.push_str(id);
        if !self.map.contains_key(self.buf.as_str()) {
            if self.map.len() >= self.max {
                self.evict(now_ms);
            }
            let counts = Counts {
                tenant: "".into(),
                agent_id: "".into(),
                session_id: None,
                hours: Ring::new(),
                fives: Ring::new(),
                total: 0,
                last_ms: i64::MIN,
            };
            self.map.insert(self.buf.as_str().into(), counts);
        }
        self.map.get_mut(self.buf.as_str())
    }

    /// Evicts the sixteenth of the entries with the fewest denials in the
    /// day (oldest first on ties).
    fn evict(&mut self, now_ms: i64) {
        let n = (self.map.len() / EVICT_FRACTION).max(1);
        let mut ranked: Vec<(u64, i64, &str)> = self
            .map
            .iter()
            .map(|(k, c)| (c.day(now_ms), c.last_ms, &**k))
            .collect();
        if n < ranked.len() {
            ranked.select_nth_unstable(n);
        }
        let victims: Vec<Box<str>> = ranked.iter().take(n).map(|(_, _, k)| (*k).into()).collect();
        for k in victims {
            self.map.remove(&k);
            self.evicted += 1;
        }
    }

    /// The [`TOP`] entries with the most denials in `window` (then the most
    /// in all, then by name).
    fn top(&self, now_ms: i64, window: Window) -> Vec<Row> {
        let mut ranked: Vec<(u64, &Counts)> = self
            .map
            .values()
            .map(|c| {
                let count = match window {
                    Window::Hour => c.hour(now_ms),
                    Window::Day => c.day(now_ms),
                };
                (count, c)
            })
            .filter(|(count, _)| *count > 0)
            .collect();
        let order = |a: &(u64, &Counts), b: &(u64, &Counts)| {
            b.0.cmp(&a.0)
                .then(b.1.total.cmp(&a.1.total))
                .then_with(|| (&a.1.tenant, &a.1.agent_id).cmp(&(&b.1.tenant, &b.1.agent_id)))
                .then_with(|| a.1.session_id.cmp(&b.1.session_id))
        };
        if ranked.len() > TOP {
            ranked.select_nth_unstable_by(TOP, order);
            ranked.truncate(TOP);
        }
        ranked.sort_unstable_by(order);
        ranked
            .into_iter()
            .map(|(count, c)| {
                let streak = c.streak(now_ms);
                Row {
                    tenant: c.tenant.to_string(),
                    agent_id: c.agent_id.to_string(),
                    session_id: c.session_id.as_deref().map(str::to_owned),
                    count,
                    hour: c.hour(now_ms),
                    day: c.day(now_ms),
                    total: c.total,
                    sparkline: c.hours.series(now_ms.div_euclid(HOUR_MS)).to_vec(),
                    streak_hours: streak,
                    sustained: streak >= SUSTAINED_HOURS,
                    last_denied_ms: c.last_ms,
                }
            })
            .collect()
    }
}

/// Which window a top list ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
}

impl Window {
    pub fn parse(text: &str) -> Option<Window> {
        match text {
            "hour" | "1h" => Some(Window::Hour),
            "day" | "24h" | "1d" => Some(Window::Day),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

/// One agent or session of a top list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub tenant: String,
    pub agent_id: String,
    /// Sessions only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Denials in the window ranked by.
    pub count: u64,
    /// Denials in the last hour (twelve five-minute buckets).
    pub hour: u64,
    /// Denials in the last day (24 hourly buckets).
    pub day: u64,
    /// Denials since the meter first saw it.
    pub total: u64,
    /// Denials per hour over the last day, oldest first.
    pub sparkline: Vec<u32>,
    /// Consecutive hours with a denial, up to now.
    pub streak_hours: u32,
    /// Denied in at least [`SUSTAINED_HOURS`] consecutive hours.
    pub sustained: bool,
    #[serde(skip)]
    pub last_denied_ms: i64,
}

/// A denied tool call, as the meter counts it.
#[derive(Debug, Clone, Copy)]
pub struct Denial<'a> {
    pub ts: i64,
    pub tenant: &'a str,
    pub agent_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

/// The meter (see the module docs).
#[derive(Debug)]
pub struct Meter {
    agents: Table,
    sessions: Table,
    /// The latest event time seen: "now" for the windows.
    now_ms: Option<i64>,
    denials: u64,
}

impl Meter {
    pub fn new(max_agents: usize, max_sessions: usize) -> Meter {
        Meter {
            agents: Table::new(max_agents),
            sessions: Table::new(max_sessions),
            now_ms: None,
            denials: 0,
        }
    }

    /// Counts one denial.
    pub fn deny(&mut self, d: Denial<'_>) {
        let now = self.now_ms.map_or(d.ts, |n| n.max(d.ts));
        self.now_ms = Some(now);
        self.denials += 1;
        let agent = d.agent_id.filter(|a| !a.is_empty()).unwrap_or("unknown");
        let count = |c: &mut Counts, session: Option<&str>| {
            if c.total == 0 {
                c.tenant = d.tenant.into();
                c.agent_id = agent.into();
                c.session_id = session.map(Into::into);
            }
            c.hours.add(d.ts.div_euclid(HOUR_MS));
            c.fives.add(d.ts.div_euclid(FIVE_MIN_MS));
            c.total += 1;
            c.last_ms = c.last_ms.max(d.ts);
        };
        if let Some(c) = self.agents.entry(d.tenant, agent, now) {
            count(c, None);
        }
        if let Some(s) = d.session_id.filter(|s| !s.is_empty())
            && let Some(c) = self.sessions.entry(d.tenant, s, now)
        {
            count(c, Some(s));
        }
    }

    /// Moves "now" to the engine clock (never back): windows empty as
    /// event time passes without denials.
    pub fn advance(&mut self, clock_ms: i64) {
        self.now_ms = Some(self.now_ms.map_or(clock_ms, |n| n.max(clock_ms)));
    }

    /// The meter's "now": the engine clock or the latest denial's time,
    /// whichever is later.
    pub fn now_ms(&self) -> Option<i64> {
        self.now_ms
    }

    /// The top agents in `window`, most denials first.
    pub fn top_agents(&self, window: Window) -> Vec<Row> {
        self.now_ms
            .map_or_else(Vec::new, |now| self.agents.top(now, window))
    }

    /// The top sessions in `window`, most denials first.
    pub fn top_sessions(&self, window: Window) -> Vec<Row> {
        self.now_ms
            .map_or_else(Vec::new, |now| self.sessions.top(now, window))
    }

    /// (agents, sessions) tracked, (agents, sessions) evicted, denials
    /// counted.
    pub fn sizes(&self) -> ((usize, usize), (u64, u64), u64) {
        (
            (self.agents.map.len(), self.sessions.map.len()),
            (self.agents.evicted, self.sessions.evicted),
            self.denials,
        )
    }
}
