//! `mcp-alertd bench-load`: a load generator for a running daemon. It sends
//! generated audit events (the seeded corpus) over TCP or UDP, as fast as
//! possible or at a fixed rate, then reads the daemon's `/metrics` to report
//! what arrived, the alerts raised, the loss and the ingest-to-alert
//! latency percentiles. Every loop is bounded by count and by time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::corpus::{Corpus, CorpusConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchLoadArgs {
    /// Send over TCP to this address (LF framing for JSON lines,
    /// octet counting for syslog).
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "udp",
        required_unless_present = "udp"
    )]
    pub tcp: Option<SocketAddr>,
    /// Send over UDP to this address (one event per datagram).
    #[arg(long, value_name = "ADDR")]
    pub udp: Option<SocketAddr>,
    /// Number of events to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Parallel TCP connections (or UDP sockets).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub connections: u64,
    /// Frame events as RFC 5424 syslog (`@cee:`) instead of bare JSON lines.
    #[arg(long)]
    pub syslog: bool,
    /// Distinct agents in the generated events.
    #[arg(long, default_value_t = 10_000)]
    pub agents: u32,
    /// Event-time spacing between generated events: with a larger spacing
    /// the events span more time, so keys expire during a long soak.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = crate::duration::parse_arg)]
    pub spacing: i64,
    /// The daemon's metrics address, read after sending.
    #[arg(long, value_name = "ADDR", default_value = crate::config::DEFAULT_METRICS_ADDRESS)]
    pub metrics: SocketAddr,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
}

pub fn run(args: BenchLoadArgs) -> Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(bench(args))
}

/// One sender's share of the events, pre-rendered (so the measurement is
/// of the daemon, not of the generator).
fn render(args: &BenchLoadArgs, share: u64, seed: u64, start_ms: i64) -> Vec<Vec<u8>> {
    let mut corpus = Corpus::new(CorpusConfig {
        seed,
        agents: args.agents,
        start_ms,
        spacing_ms: args.spacing,
        syslog: args.syslog,
        ..CorpusConfig::default()
    });
    let mut line = String::with_capacity(512);
    let mut chunks = Vec::new();
    let mut chunk = Vec::with_capacity(256 * 1024);
    for _ in 0..share {
        corpus.next_line(&mut line);
        if args.udp.is_some() {
            chunks.push(line.as_bytes().to_vec());
            continue;
        }
        if args.syslog {
            chunk.extend_from_slice(format!("{} ", line.len()).as_bytes());
            chunk.extend_from_slice(line.as_bytes());
        } else {
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
        }
        if chunk.len() >= 64 * 1024 {
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

async fn bench(args: BenchLoadArgs) -> Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let before = scrape(args.metrics)
        .await
        .context("cannot read the daemon's /metrics (is it running, and is --metrics right?)")?;
    let n = args.connections;
    // Event times end a minute in the past: on time, never in the future.
    let spacing = args.spacing;
    let start_ms = crate::clock::now_ms() - (args.events as i64 * spacing) / n as i64 - 60_000;
    eprintln!("bench-load: rendering {} events ...", args.events);
    let shares: Vec<Vec<Vec<u8>>> = (0..n)
        .map(|i| {
            render(
                &args,
                args.events / n + u64::from(i < args.events % n),
                1 + i,
                start_ms,
            )
        })
        .collect();
    let started = Instant::now();
    let per_sender_rate = if args.rate == 0 {
        0.0
    } else {
        args.rate as f64 / n as f64
    };
    let mut tasks = Vec::new();
    for chunks in shares {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            send(&args, chunks, per_sender_rate, deadline).await
        }));
    }
    let mut sent = 0u64;
    for t in tasks {
        sent += t.await.context("sender panicked")??;
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Wait until the daemon has processed what it received (bounded).
    let base = processed(&before);
    let mut after = scrape(args.metrics).await?;
    let mut total_secs = started.elapsed().as_secs_f64();
    let mut last = -1.0;
    let mut still = 0;
    while Instant::now() < deadline {
        let done = processed(&after) - base;
        if done >= sent as f64 {
            break;
        }
        // Stop once nothing moved for a second (what is left was lost).
        still = if done == last { still + 1 } else { 0 };
        if still >= 10 {
            break;
        }
        last = done;
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = scrape(args.metrics).await?;
        total_secs = started.elapsed().as_secs_f64();
    }
    let received = sum(&after, "mcp_alertd_records_received_total")
        - sum(&before, "mcp_alertd_records_received_total");
    let events = sum(&after, "mcp_alertd_events_total") - sum(&before, "mcp_alertd_events_total");
    let alerts = sum(&after, "mcp_alertd_alerts_total") - sum(&before, "mcp_alertd_alerts_total");
    let dropped = sum(&after, "mcp_alertd_udp_datagrams_dropped_total")
        - sum(&before, "mcp_alertd_udp_datagrams_dropped_total");
    let lost = sent as f64 - received;
    println!(
        "sent            {sent} events in {send_secs:.2}s ({:.0} events/s)",
        sent as f64 / send_secs.max(1e-9)
    );
    println!(
        "received        {received:.0} records ({:.0} records/s until processed)",
        received / total_secs.max(1e-9)
    );
    println!("processed       {events:.0} events");
    println!("alerts          {alerts:.0}");
    println!(
        "loss            {lost:.0} ({:.3}%), UDP drops counted by the daemon: {dropped:.0}",
        100.0 * lost / (sent.max(1) as f64)
    );
    print!("latency         ");
    for (q, name) in [
        ("0.5", "p50"),
        ("0.9", "p90"),
        ("0.99", "p99"),
        ("0.999", "p99.9"),
    ] {
        let v = value(
            &after,
            &format!("mcp_alertd_ingest_to_alert_latency_seconds{{quantile=\"{q}\"}}"),
        );
        print!("{name}={:.3}ms  ", v * 1000.0);
    }
    println!("(daemon's histogram, all samples since it started)");
    Ok(0)
}

async fn send(
    args: &BenchLoadArgs,
    chunks: Vec<Vec<u8>>,
    rate: f64,
    deadline: Instant,
) -> Result<u64> {
    let started = Instant::now();
    let mut sent = 0u64;
    if let Some(addr) = args.udp {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        }
        .parse()?;
        let sock = tokio::net::UdpSocket::bind(bind).await?;
        for d in &chunks {
            if Instant::now() > deadline {
                bail!("--max-seconds reached after {sent} events");
            }
            sock.send_to(d, addr).await?;
            sent += 1;
            pace(rate, sent, started).await;
        }
        return Ok(sent);
    }
    let Some(addr) = args.tcp else {
        bail!("--tcp or --udp is required")
    };
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true)?;
    for chunk in &chunks {
        if Instant::now() > deadline {
            bail!("--max-seconds reached after {sent} events");
        }
        s.write_all(chunk).await?;
        // Count the records in the chunk: one per newline or frame.
        sent += if args.syslog {
            count_frames(chunk)
        } else {
            memchr::memchr_iter(b'\n', chunk).count() as u64
        };
        pace(rate, sent, started).await;
    }
    s.shutdown().await?;
    Ok(sent)
}

fn count_frames(chunk: &[u8]) -> u64 {
    let mut n = 0;
    let mut at = 0;
    while at < chunk.len() {
        let digits = chunk[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let len: usize = std::str::from_utf8(&chunk[at..at + digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(chunk.len());
        at += digits + 1 + len;
        n += 1;
    }
    n
}

async fn pace(rate: f64, sent: u64, started: Instant) {
    if rate <= 0.0 {
        return;
    }
    let due = Duration::from_secs_f64(sent as f64 / rate);
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: mcp-alertd\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    Ok(body)
}

fn processed(text: &str) -> f64 {
    sum(text, "mcp_alertd_events_total") + sum(text, "mcp_alertd_records_rejected_total")
}

/// Sum of every sample of a metric (all label sets).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}
