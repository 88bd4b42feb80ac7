//! The console's costs: a denial counted by the meter (the engine thread
//! pays it per `tool.denied` event), at and below the cap; a top-20 query
//! over full tables; the health answer built from the metrics; an alert
//! listed. Then the meter's resident memory at its default caps.
//! `cargo bench --bench console`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/rss.rs"]
mod rss;

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mcp_alertd::alert::{Alert, Severity};
use mcp_alertd::console::health::{Rates, health};
use mcp_alertd::console::meter::{DEFAULT_MAX_ENTRIES, Denial, Meter, Window};
use mcp_alertd::console::{AlertFilter, Console, ConsoleSettings};
use mcp_alertd::engine::RuleSet;
use mcp_alertd::telemetry::metrics::{Metrics, RejectLabels};

const T0: i64 = 1_790_000_000_000;

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A meter with `n` agents and `n` sessions, one denial each a second apart.
fn full(n: usize) -> Meter {
    let mut m = Meter::new(n, n);
    let (agents, sessions) = (names(n, "agent"), names(n, "sess"));
    for i in 0..n {
        m.deny(Denial {
            ts: T0 + i as i64 * 1000,
            tenant: "tenant-1",
            agent_id: Some(&agents[i]),
            session_id: Some(&sessions[i]),
        });
    }
    m
}

fn meter(c: &mut Criterion) {
    let n = DEFAULT_MAX_ENTRIES;
    let (agents, sessions) = (names(n, "agent"), names(n, "sess"));
    let mut g = c.benchmark_group("console");
    g.throughput(Throughput::Elements(1));
    // Known agents and sessions (the common case).
    let mut m = full(n);
    let mut i = 0usize;
    g.bench_function("deny_known", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            m.deny(Denial {
                ts: T0 + (n + i) as i64 * 1000,
                tenant: "tenant-1",
                agent_id: Some(&agents[i]),
                session_id: Some(&sessions[i]),
            });
        })
    });
    // A new agent and session at the cap each time: eviction amortized.
    let fresh: Vec<String> = names(1 << 20, "new");
    let mut m = full(n);
    let mut j = 0usize;
    g.bench_function("deny_new_at_cap", |b| {
        b.iter(|| {
            j = (j + 1) % fresh.len();
            m.deny(Denial {
                ts: T0 + (n + j) as i64 * 1000,
                tenant: "tenant-1",
                agent_id: Some(&fresh[j]),
                session_id: Some(&fresh[j]),
            });
        })
    });
    let m = full(n);
    g.bench_function("top_agents_day_10k", |b| {
        b.iter(|| black_box(m.top_agents(Window::Day)))
    });
    g.bench_function("top_sessions_hour_10k", |b| {
        b.iter(|| black_box(m.top_sessions(Window::Hour)))
    });

    // The health answer from a registry with a few sources and rules.
    let metrics = Metrics::new();
    for s in ["syslog_udp", "syslog_tcp", "kafka"] {
        metrics
            .records_received
            .get_or_create(&Metrics::source(s))
            .inc_by(1_000_000);
        for reason in ["not_json", "missing_field", "too_large"] {
            metrics
                .records_rejected
                .get_or_create(&RejectLabels {
                    source: s.to_owned(),
                    reason: reason.to_owned(),
                })
                .inc_by(10);
        }
    }
    let rates = Rates::default();
    g.bench_function("health", |b| {
        b.iter(|| black_box(health(&metrics, &rates, Instant::now())))
    });

    // An alert listed (the engine thread's cost per alert raised).
    let rules = RuleSet::embedded().unwrap();
    let console = Console::new(&ConsoleSettings::default(), &rules);
    let alert = Alert {
        id: "a".into(),
        rule: "unauthorized_tool_attempt".into(),
        title: "Tool invoked outside the session allowlist".into(),
        severity: Severity::High,
        tenant: "tenant-1".into(),
        key: [("agent_id".to_owned(), "agent-1".to_owned())].into(),
        ts: T0,
        detected_at: Some(T0),
        count: 1,
        window_start: None,
        window_end: None,
        summary: "One denied call".into(),
        events: Vec::new(),
    };
    g.bench_function("alert_listed", |b| {
        b.iter_batched(
            || vec![alert.clone()],
            |a| console.raised(&a),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("list_500_filtered", |b| {
        let f = AlertFilter {
            rule: Some("unauthorized_tool_attempt".into()),
            ..AlertFilter::default()
        };
        b.iter(|| black_box(console.alerts(&f)))
    });
    g.finish();

    // The meter's memory at its default caps (resident growth).
    let before = rss::rss();
    let m = full(n);
    let after = rss::rss();
    println!(
        "console/meter_memory: {n} agents + {n} sessions: {:.1} MB resident, {} bytes per entry",
        (after - before) as f64 / 1e6,
        (after - before) / (2 * n)
    );
    black_box(m);
}

criterion_group!(benches, meter);
criterion_main!(benches);
