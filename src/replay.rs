//! `replay`: one pass over files or standard input through decode and the
//! engine, alerts as JSON lines to a writer. The input is one partition
//! (DESIGN §3): the clock is the largest `ts` so far minus the allowed
//! lateness, and the run ends by firing what is due at that final clock.
//! Memory is bounded by the engine's state, never by the input size.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use crate::alert::{self, Detection};
use crate::decode::{DecodeError, Decoder};
use crate::engine::{Engine, EngineConfig, RuleSet, Shard};
use crate::event::{Event, EventKind, Position};
use crate::pipeline::step::{self, Record};
use crate::source::lines::{Frame, LineReader};
use crate::telemetry::RejectLog;

/// Default allowed lateness (DESIGN §3).
pub const DEFAULT_ALLOWED_LATENESS_MS: i64 = 5_000;
/// How many positions of each rejection reason the summary keeps.
const KEEP_POSITIONS: usize = 5;

/// One input of a replay.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// `-` is standard input; anything else a file path.
    pub fn parse(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(arg.into())
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub decoder: Decoder,
    pub allowed_lateness_ms: i64,
    pub engine: EngineConfig,
    /// Engine threads, each holding a share of the keys (at least one).
    pub threads: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            decoder: Decoder::default(),
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
            engine: EngineConfig::default(),
            threads: 1,
        }
    }
}

/// Rejections of one reason.
#[derive(Debug, Clone, Default)]
pub struct Rejections {
    pub count: u64,
    /// The first few positions, as `file:line`.
    pub first: Vec<String>,
}

/// What a replay saw and did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub records: u64,
    pub events: u64,
    pub events_by_type: BTreeMap<String, u64>,
    pub rejected: BTreeMap<&'static str, Rejections>,
    /// Records no mapping of the format applied to (not errors).
    pub unmapped: u64,
    pub late: u64,
    pub evicted_keys: u64,
    pub alerts: u64,
    pub alerts_by_rule: BTreeMap<String, u64>,
    pub live_keys: Vec<(String, usize)>,
    pub elapsed: Duration,
}

impl Summary {
    fn reject(&mut self, err: &DecodeError, pos: &Position) {
        let r = self.rejected.entry(err.reason()).or_default();
        r.count += 1;
        if r.first.len() < KEEP_POSITIONS {
            r.first.push(pos.to_string());
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().map(|r| r.count).sum()
    }

    pub fn events_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replay: {} records, {} events, {} rejected, {} late, {} alerts in {:.3}s ({:.0} events/s)",
            self.records,
            self.events,
            self.rejected_total(),
            self.late,
            self.alerts,
            self.elapsed.as_secs_f64(),
            self.events_per_second()
        )?;
        if !self.events_by_type.is_empty() {
            writeln!(f, "events by type:")?;
            for (kind, n) in &self.events_by_type {
                writeln!(f, "  {kind:<22} {n}")?;
            }
        }
        if self.unmapped > 0 {
            writeln!(f, "unmapped {}", self.unmapped)?;
        }
        if !self.rejected.is_empty() {
            writeln!(f, "rejected by reason:")?;
            for (reason, r) in &self.rejected {
                let more = if r.count as usize > r.first.len() {
                    ", ..."
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  {reason:<22} {} (at {}{more})",
                    r.count,
                    r.first.join(", ")
                )?;
            }
        }
        writeln!(f, "alerts by rule:")?;
        if self.alerts_by_rule.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (rule, n) in &self.alerts_by_rule {
            writeln!(f, "  {rule:<28} {n}")?;
        }
        let live: Vec<String> = self
            .live_keys
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(rule, n)| format!("{rule}={n}"))
            .collect();
        if !live.is_empty() {
            writeln!(f, "live keys at end: {}", live.join(", "))?;
        }
        if self.evicted_keys > 0 {
            writeln!(f, "evicted keys (state cap reached): {}", self.evicted_keys)?;
        }
        Ok(())
    }
}

/// The clock of one input partition driving an engine (DESIGN §3): before
/// each event the clock moves to the largest `ts` so far minus the allowed
/// lateness, firing due timers before the event is applied.
#[derive(Debug)]
pub struct Replayer {
    engine: Engine,
    allowed_lateness_ms: i64,
    max_ts: Option<i64>,
}

impl Replayer {
    pub fn new(engine: Engine, allowed_lateness_ms: i64) -> Replayer {
        Replayer {
            engine,
            allowed_lateness_ms,
            max_ts: None,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, to save its changes.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The clock after an event at `ts`: the largest `ts` so far minus the
    /// allowed lateness.
    fn target(max_ts: &mut Option<i64>, allowed_lateness_ms: i64, ts: i64) -> i64 {
        let max = max_ts.map_or(ts, |m| m.max(ts));
        *max_ts = Some(max);
        max.saturating_sub(allowed_lateness_ms)
    }

    /// Applies one event; alerts (timers first) are appended to `out`.
    pub fn on_event(&mut self, ev: &Event<'_>, pos: Option<&Position>, out: &mut Vec<Detection>) {
        let target = Replayer::target(&mut self.max_ts, self.allowed_lateness_ms, ev.ts);
        self.engine.advance_to(target, out);
        self.engine.on_event(ev, pos, out);
    }

    /// One framed record through the shared per-record step; `each` hears
    /// every event's outcome (see [`step::apply`]).
    pub fn apply<'r>(
        &mut self,
        record: Record<'r>,
        decoder: &Decoder,
        pos: &Position,
        out: &mut Vec<Detection>,
        each: &mut dyn FnMut(Result<step::Applied, DecodeError>, &Position),
    ) -> Result<(), DecodeError> {
        let Replayer {
            engine,
            allowed_lateness_ms,
            max_ts,
        } = self;
        let lateness = *allowed_lateness_ms;
        step::apply(
            record,
            decoder,
            None,
            |ts| Replayer::target(max_ts, lateness, ts),
            engine,
            pos,
            out,
            each,
        )
    }

    /// Fires what is due at the final clock; timers due later stay pending.
    pub fn finish(&mut self, out: &mut Vec<Detection>) {
        if let Some(clock) = self.engine.clock() {
            self.engine.advance_to(clock, out);
        }
    }
}

/// Records read before they are handed to the engine threads at once (or
/// this many bytes of them), and the chunks each thread may have queued:
/// reading runs beside the engines, in bounded memory.
const CHUNK_RECORDS: usize = 4096;
const CHUNK_BYTES: usize = 1 << 20;
const CHUNK_QUEUE: usize = 4;
/// Chunks of detections each engine thread may have queued for the writer.
const FOUND_QUEUE: usize = 8;

/// Runs a replay; alerts go to `out` as JSON lines. The input is read on
/// the calling thread and handed in chunks to `opts.threads` engine
/// threads, each holding its share of the keys (see [`Shard`]); their
/// detections are merged in input order and rendered and written on a
/// thread of their own. With one engine thread the alerts come in the
/// order the engine raised them; with more, the alerts of one record come
/// engine thread by engine thread (the same alerts, ids included). I/O
/// errors on inputs or on `out` end the replay with an error; bad records
/// never do.
pub fn replay(
    inputs: &[Input],
    rules: Arc<RuleSet>,
    opts: &ReplayOptions,
    out: &mut (dyn Write + Send),
) -> io::Result<Summary> {
    let started = Instant::now();
    let threads = u32::try_from(opts.threads.max(1))
        .map_err(|_| io::Error::other("too many engine threads"))?;
    let (read, tallies, written) = std::thread::scope(|scope| {
        let mut chunks = Vec::new();
        let mut found = Vec::new();
        let mut engines = Vec::new();
        for shard in Shard::all(threads) {
            let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Arc<Chunk>>(CHUNK_QUEUE);
            let (found_tx, found_rx) = std::sync::mpsc::sync_channel::<Found>(FOUND_QUEUE);
            // A copy per thread: the engine takes a reference to its rules
            // per event, which threads would contend on if they shared one.
            let rules = Arc::new(RuleSet::clone(&rules));
            let engine = std::thread::Builder::new()
                .name(format!("replay-engine-{}", shard.index))
                .spawn_scoped(scope, move || {
                    run_shard(shard, rules, opts, &chunk_rx, &found_tx)
                })?;
            chunks.push(chunk_tx);
            found.push(found_rx);
            engines.push(engine);
        }
        let writer = std::thread::Builder::new()
            .name("replay-alerts".into())
            .spawn_scoped(scope, move || write_alerts(&found, out))?;
        let read = read_all(inputs, opts, &chunks);
        // The engines end once they have applied everything handed on, the
        // writer once it has written what they found.
        drop(chunks);
        let tallies: Vec<io::Result<Summary>> = engines
            .into_iter()
            .map(|e| {
                e.join()
                    .unwrap_or_else(|_| Err(io::Error::other("an engine thread failed")))
            })
            .collect();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the alert writer failed")));
        io::Result::Ok((read, tallies, written))
    })?;
    // The writer's error first: the engines stop when it does, and reading
    // when they do.
    let (alerts, alerts_by_rule) = written?;
    read?;
    let mut summary = Summary::default();
    for (i, tally) in tallies.into_iter().enumerate() {
        let tally = tally?;
        if i == 0 {
            summary = tally;
            continue;
        }
        // The first engine counted what every engine sees alike (records,
        // events, rejections, late events); the others add their keys.
        summary.evicted_keys += tally.evicted_keys;
        for ((_, n), (_, more)) in summary.live_keys.iter_mut().zip(tally.live_keys) {
            *n += more;
        }
    }
    summary.alerts = alerts;
    summary.alerts_by_rule = alerts_by_rule;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// How the positions of an input's records are named.
#[derive(Debug, Clone)]
enum Origin {
    Stdin,
    File(Arc<str>),
}

impl Origin {
    /// A copy of its own for one engine thread: positions are made per
    /// record, and a path shared between threads would have them contend
    /// on one reference count.
    fn local(&self) -> Origin {
        match self {
            Origin::Stdin => Origin::Stdin,
            Origin::File(path) => Origin::File(Arc::from(&**path)),
        }
    }

    fn at(&self, line: u64) -> Position {
        match self {
            Origin::Stdin => Position::Stdin { line },
            Origin::File(path) => Position::File {
                path: path.clone(),
                line,
            },
        }
    }
}

/// One framed record of a chunk.
#[derive(Debug, Clone, Copy)]
enum Span {
    Bytes { line: u64, start: usize, end: usize },
    TooLarge { line: u64, len: usize },
}

/// Records of one input, read and framed once, handed to every engine
/// thread.
#[derive(Debug)]
struct Chunk {
    origin: Origin,
    bytes: Vec<u8>,
    records: Vec<Span>,
}

impl Chunk {
    fn new(origin: Origin) -> Chunk {
        Chunk {
            origin,
            bytes: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
            records: Vec::with_capacity(CHUNK_RECORDS),
        }
    }

    fn full(&self) -> bool {
        self.records.len() >= CHUNK_RECORDS || self.bytes.len() >= CHUNK_BYTES
    }
}

/// An engine thread's detections of one chunk, each with the index of the
/// record that raised it (`u32::MAX`: due at the end of the input).
#[derive(Debug, Default)]
struct Found {
    alerts: Vec<Detection>,
    at: Vec<u32>,
}

/// Reads and frames every input, handing each chunk to every engine
/// thread.
fn read_all(
    inputs: &[Input],
    opts: &ReplayOptions,
    engines: &[SyncSender<Arc<Chunk>>],
) -> io::Result<()> {
    for input in inputs {
        match input {
            Input::Stdin => read_input(io::stdin().lock(), Origin::Stdin, opts, engines)?,
            Input::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                let origin = Origin::File(path.display().to_string().into());
                read_input(
                    BufReader::with_capacity(256 * 1024, file),
                    origin,
                    opts,
                    engines,
                )?;
            }
        }
    }
    Ok(())
}

fn read_input<R: BufRead>(
    reader: R,
    origin: Origin,
    opts: &ReplayOptions,
    engines: &[SyncSender<Arc<Chunk>>],
) -> io::Result<()> {
    let hand_on = |chunk: Chunk| -> io::Result<()> {
        let chunk = Arc::new(chunk);
        for engine in engines {
            engine
                .send(Arc::clone(&chunk))
                .map_err(|_| io::Error::other("an engine thread stopped"))?;
        }
        Ok(())
    };
    let mut lines = LineReader::new(reader, opts.decoder.max_record_bytes);
    let mut chunk = Chunk::new(origin.clone());
    while let Some((line, frame)) = lines.next_frame()? {
        let span = match frame {
            Frame::Record(bytes) => {
                let start = chunk.bytes.len();
                chunk.bytes.extend_from_slice(bytes);
                Span::Bytes {
                    line,
                    start,
                    end: chunk.bytes.len(),
                }
            }
            Frame::TooLarge { len } => Span::TooLarge { line, len },
        };
        chunk.records.push(span);
        if chunk.full() {
            hand_on(std::mem::replace(&mut chunk, Chunk::new(origin.clone())))?;
        }
    }
    if !chunk.records.is_empty() {
        hand_on(chunk)?;
    }
    Ok(())
}

/// One engine thread: applies every chunk to its share of the keys and
/// hands what it found to the writer, then fires what is due at the final
/// clock. Its summary counts records, events and rejections on the first
/// engine only (every engine sees them all), and its own keys.
fn run_shard(
    shard: Shard,
    rules: Arc<RuleSet>,
    opts: &ReplayOptions,
    chunks: &Receiver<Arc<Chunk>>,
    found: &SyncSender<Found>,
) -> io::Result<Summary> {
    let config = EngineConfig {
        lateness_ms: opts.allowed_lateness_ms,
        ..opts.engine
    };
    let mut run = Run {
        replayer: Replayer::new(
            Engine::new(rules, config).with_shard(shard),
            opts.allowed_lateness_ms,
        ),
        opts,
        counts: (shard.index == 0).then(Counts::default),
        found: Found::default(),
    };
    let hand_on = |run: &mut Run| {
        found
            .send(std::mem::take(&mut run.found))
            .map_err(|_| io::Error::other("the alert writer stopped"))
    };
    for chunk in chunks {
        run.chunk(&chunk);
        hand_on(&mut run)?;
    }
    // Fire what is due at the final clock (DESIGN §3); later timers stay.
    run.replayer.finish(&mut run.found.alerts);
    run.found.at.resize(run.found.alerts.len(), u32::MAX);
    hand_on(&mut run)?;
    let engine = run.replayer.engine();
    let mut summary = run.counts.map(Counts::into_summary).unwrap_or_default();
    summary.late = engine.late_events();
    summary.evicted_keys = engine.evicted_keys();
    summary.live_keys = engine
        .live_keys()
        .into_iter()
        .map(|(id, n)| (id.to_string(), n))
        .collect();
    Ok(summary)
}

/// Renders the detections the engine threads found, chunk by chunk in
/// input order, and writes them to `out` as JSON lines; returns the alerts
/// written, in all and per rule.
fn write_alerts(
    engines: &[Receiver<Found>],
    out: &mut (dyn Write + Send),
) -> io::Result<(u64, BTreeMap<String, u64>)> {
    let (mut n, mut by_rule) = (0, BTreeMap::new());
    let mut merged: Vec<(u32, Detection)> = Vec::new();
    loop {
        // Every engine hands on one `Found` per chunk, and one at the end.
        let mut open = false;
        for engine in engines {
            if let Ok(found) = engine.recv() {
                open = true;
                merged.extend(found.at.into_iter().zip(found.alerts));
            }
        }
        if !open {
            break;
        }
        // Stable: the alerts of one record stay in engine order.
        if engines.len() > 1 {
            merged.sort_by_key(|(at, _)| *at);
        }
        let now = crate::clock::now_ms();
        for (_, detection) in merged.drain(..) {
            let alert = alert::render(detection, Some(now));
            serde_json::to_writer(&mut *out, &alert)?;
            out.write_all(b"\n")?;
            n += 1;
            *by_rule.entry(alert.rule).or_insert(0) += 1;
        }
    }
    out.flush()?;
    Ok((n, by_rule))
}

/// What the first engine thread counts for the summary.
#[derive(Debug)]
struct Counts {
    summary: Summary,
    log: RejectLog,
    /// Events per known kind (index in `EventKind::KNOWN`), without map lookups.
    kinds: [u64; EventKind::KNOWN.len() + 1],
    other: BTreeMap<String, u64>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            summary: Summary::default(),
            log: RejectLog::new(5),
            kinds: [0; EventKind::KNOWN.len() + 1],
            other: BTreeMap::new(),
        }
    }
}

impl Counts {
    fn into_summary(self) -> Summary {
        let mut summary = self.summary;
        for (kind, n) in EventKind::KNOWN.iter().zip(self.kinds) {
            if n > 0 {
                summary.events_by_type.insert(kind.name().to_owned(), n);
            }
        }
        summary.events_by_type.extend(self.other);
        summary
    }

    fn reject(&mut self, err: &DecodeError, at: &Position) {
        self.log.reject(err.reason(), at, err);
        self.summary.reject(err, at);
    }
}

struct Run<'o> {
    replayer: Replayer,
    opts: &'o ReplayOptions,
    /// On the first engine thread only.
    counts: Option<Counts>,
    found: Found,
}

impl Run<'_> {
    fn chunk(&mut self, chunk: &Chunk) {
        let origin = chunk.origin.local();
        for (i, span) in chunk.records.iter().enumerate() {
            let (line, record) = match *span {
                Span::Bytes { line, start, end } => (
                    line,
                    Record::Bytes(chunk.bytes.get(start..end).unwrap_or_default()),
                ),
                Span::TooLarge { line, len } => (line, Record::TooLarge(len)),
            };
            let pos = origin.at(line);
            let Run {
                replayer,
                opts,
                counts,
                found,
            } = self;
            if let Some(c) = counts.as_mut() {
                c.summary.records += 1;
            }
            let applied = replayer.apply(
                record,
                &opts.decoder,
                &pos,
                &mut found.alerts,
                &mut |outcome, at| {
                    let Some(c) = counts.as_mut() else { return };
                    match outcome {
                        Ok(applied) => {
                            c.summary.events += 1;
                            match applied.other {
                                None => c.kinds[step::kind_index(applied.kind)] += 1,
                                Some(name) => *c.other.entry(name).or_insert(0) += 1,
                            }
                        }
                        Err(err) => c.reject(&err, at),
                    }
                },
            );
            found.at.resize(found.alerts.len(), i as u32);
            let Some(c) = counts.as_mut() else { continue };
            match applied {
                Ok(()) => {}
                Err(DecodeError::Unmapped(_)) => c.summary.unmapped += 1,
                Err(err) => c.reject(&err, &pos),
            }
        }
    }
}
