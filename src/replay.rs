//! `replay`: one pass over files or standard input through decode and the
//! engine, alerts as JSON lines to a writer. The input is one partition
//! (DESIGN §3): the clock is the largest `ts` so far minus the allowed
//! lateness, and the run ends by firing what is due at that final clock.
//! Memory is bounded by the engine's state, never by the input size.

use std::borrow::Cow;
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

    /// The engine and the clock that drives it.
    fn engine_and_clock(&mut self) -> (&mut Engine, impl FnMut(i64) -> i64 + '_) {
        let Replayer {
            engine,
            allowed_lateness_ms,
            max_ts,
        } = self;
        let lateness = *allowed_lateness_ms;
        (engine, move |ts| Replayer::target(max_ts, lateness, ts))
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
        let (engine, clock) = self.engine_and_clock();
        step::apply(record, decoder, None, clock, engine, pos, out, each)
    }

    /// Fires what is due at the final clock; timers due later stay pending.
    pub fn finish(&mut self, out: &mut Vec<Detection>) {
        if let Some(clock) = self.engine.clock() {
            self.engine.advance_to(clock, out);
        }
    }
}

/// Records read and decoded before they are handed to the engine threads
/// at once (or this many bytes of them), and the chunks each thread may
/// have queued: reading and decoding run beside the engines, in bounded
/// memory.
const CHUNK_RECORDS: usize = 4096;
const CHUNK_BYTES: usize = 1 << 20;
const CHUNK_QUEUE: usize = 4;
/// Chunks of detections each engine thread may have queued for the writer.
const FOUND_QUEUE: usize = 8;

/// Runs a replay; alerts go to `out` as JSON lines. The input is read and
/// decoded on the calling thread and handed in chunks to `opts.threads`
/// engine threads, each holding its share of the keys (see [`Shard`]);
/// their detections are merged in input order and rendered and written on
/// a thread of their own. With one engine thread the alerts come in the
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
    let (read, held, written) = std::thread::scope(|scope| {
        let mut chunks = Vec::new();
        let mut found = Vec::new();
        let mut engines = Vec::new();
        for shard in Shard::all(threads) {
            let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Arc<Decoded>>(CHUNK_QUEUE);
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
        let held: Vec<io::Result<Held>> = engines
            .into_iter()
            .map(|e| {
                e.join()
                    .unwrap_or_else(|_| Err(io::Error::other("an engine thread failed")))
            })
            .collect();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the alert writer failed")));
        io::Result::Ok((read, held, written))
    })?;
    // The writer's error first: the engines stop when it does, and reading
    // when they do.
    let (alerts, alerts_by_rule) = written?;
    let mut summary = read?;
    for (i, held) in held.into_iter().enumerate() {
        let held = held?;
        summary.late += held.late;
        summary.evicted_keys += held.evicted_keys;
        if i == 0 {
            summary.live_keys = held.live_keys;
        } else {
            for ((_, n), (_, more)) in summary.live_keys.iter_mut().zip(held.live_keys) {
                *n += more;
            }
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
    /// event, and a path shared between threads would have them contend
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

/// Records of one input, read and framed once.
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

/// An event of a chunk, as every engine thread applies it.
#[derive(Debug)]
struct Item<'a> {
    /// The index of its record in the chunk (orders the alerts).
    record: u32,
    line: u64,
    /// 0, or n for the n-th event of a fanned-out record.
    part: u32,
    event: Event<'a>,
}

type Items<'a> = Vec<Item<'a>>;

self_cell::self_cell!(
    /// A chunk and the events decoded from it, which borrow its bytes:
    /// decoded once, on the reading thread, and shared by every engine
    /// thread.
    struct Decoded {
        owner: Chunk,
        #[covariant]
        dependent: Items,
    }
    impl {Debug}
);

/// An engine thread's detections of one chunk, each with the index of the
/// record that raised it (`u32::MAX`: due at the end of the input).
#[derive(Debug, Default)]
struct Found {
    alerts: Vec<Detection>,
    at: Vec<u32>,
}

/// What an engine thread holds at the end.
#[derive(Debug)]
struct Held {
    late: u64,
    evicted_keys: u64,
    live_keys: Vec<(String, usize)>,
}

/// Reads, frames and decodes every input, handing each chunk to every
/// engine thread; the summary counts records, events and rejections.
fn read_all(
    inputs: &[Input],
    opts: &ReplayOptions,
    engines: &[SyncSender<Arc<Decoded>>],
) -> io::Result<Summary> {
    let mut counts = Counts::default();
    for input in inputs {
        match input {
            Input::Stdin => read_input(
                io::stdin().lock(),
                Origin::Stdin,
                opts,
                &mut counts,
                engines,
            )?,
            Input::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                let origin = Origin::File(path.display().to_string().into());
                read_input(
                    BufReader::with_capacity(256 * 1024, file),
                    origin,
                    opts,
                    &mut counts,
                    engines,
                )?;
            }
        }
    }
    Ok(counts.into_summary())
}

fn read_input<R: BufRead>(
    reader: R,
    origin: Origin,
    opts: &ReplayOptions,
    counts: &mut Counts,
    engines: &[SyncSender<Arc<Decoded>>],
) -> io::Result<()> {
    let mut hand_on = |chunk: Chunk| -> io::Result<()> {
        let decoded = Arc::new(Decoded::new(chunk, |chunk| {
            counts.decode(chunk, &opts.decoder)
        }));
        for engine in engines {
            engine
                .send(Arc::clone(&decoded))
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

/// One engine thread: applies every chunk's events to its share of the
/// keys and hands what it found to the writer, then fires what is due at
/// the final clock.
fn run_shard(
    shard: Shard,
    rules: Arc<RuleSet>,
    opts: &ReplayOptions,
    chunks: &Receiver<Arc<Decoded>>,
    found: &SyncSender<Found>,
) -> io::Result<Held> {
    let config = EngineConfig {
        lateness_ms: opts.allowed_lateness_ms,
        ..opts.engine
    };
    let mut replayer = Replayer::new(
        Engine::new(rules, config).with_shard(shard),
        opts.allowed_lateness_ms,
    );
    let hand_on = |f: Found| {
        found
            .send(f)
            .map_err(|_| io::Error::other("the alert writer stopped"))
    };
    for chunk in chunks {
        hand_on(replayer.chunk(&chunk, &opts.decoder))?;
    }
    // Fire what is due at the final clock (DESIGN §3); later timers stay.
    let mut last = Found::default();
    replayer.finish(&mut last.alerts);
    last.at.resize(last.alerts.len(), u32::MAX);
    hand_on(last)?;
    let engine = replayer.engine();
    Ok(Held {
        late: engine.late_events(),
        evicted_keys: engine.evicted_keys(),
        live_keys: engine
            .live_keys()
            .into_iter()
            .map(|(id, n)| (id.to_string(), n))
            .collect(),
    })
}

impl Replayer {
    /// Applies a chunk's events; returns the alerts they raised.
    fn chunk(&mut self, chunk: &Decoded, decoder: &Decoder) -> Found {
        let origin = chunk.borrow_owner().origin.local();
        let mut found = Found::default();
        let (engine, mut clock) = self.engine_and_clock();
        for item in chunk.borrow_dependent() {
            let at = origin.at(item.line);
            let pos = match item.part {
                0 => at,
                n => at.part(n),
            };
            step::one(
                Cow::Borrowed(&item.event),
                decoder,
                &mut clock,
                engine,
                &pos,
                &mut found.alerts,
            );
            found.at.resize(found.alerts.len(), item.record);
        }
        found
    }
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

/// What the reading thread counts for the summary.
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

    fn event(&mut self, ev: &Event<'_>) {
        self.summary.events += 1;
        match ev.kind {
            EventKind::Other => *self.other.entry(ev.event.to_string()).or_insert(0) += 1,
            kind => self.kinds[step::kind_index(kind)] += 1,
        }
    }

    /// Decodes a chunk's records (the first step of [`step::apply`]),
    /// counting them, their events and their rejections.
    fn decode<'c>(&mut self, chunk: &'c Chunk, decoder: &Decoder) -> Items<'c> {
        let mut items = Vec::with_capacity(chunk.records.len());
        for (i, span) in chunk.records.iter().enumerate() {
            let (line, record) = match *span {
                Span::Bytes { line, start, end } => (
                    line,
                    Record::Bytes(chunk.bytes.get(start..end).unwrap_or_default()),
                ),
                Span::TooLarge { line, len } => (line, Record::TooLarge(len)),
            };
            self.summary.records += 1;
            let mut push = |counts: &mut Counts, part: u32, event: Event<'c>| {
                counts.event(&event);
                items.push(Item {
                    record: i as u32,
                    line,
                    part,
                    event,
                });
            };
            match step::decode(record, decoder) {
                Ok(crate::decode::Decoded::One(event)) => push(self, 0, event),
                Ok(crate::decode::Decoded::Many(events)) => {
                    for ev in events {
                        match ev {
                            Ok(event) => push(self, event.part, event),
                            // A fanned-out record's bad event, at the record.
                            Err(err) => self.reject(&err, &chunk.origin.at(line)),
                        }
                    }
                }
                Err(DecodeError::Unmapped(_)) => self.summary.unmapped += 1,
                Err(err) => self.reject(&err, &chunk.origin.at(line)),
            }
        }
        items
    }
}
