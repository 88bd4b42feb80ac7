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
use crate::engine::{Engine, EngineConfig, RuleSet};
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
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            decoder: Decoder::default(),
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
            engine: EngineConfig::default(),
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

/// Detections handed to the alert writer at once (and the chunks it may
/// have queued): rendering (ids, timestamps, JSON) runs beside the engine,
/// in bounded memory.
const RENDER_CHUNK: usize = 128;
const RENDER_QUEUE: usize = 64;

/// Runs a replay; alerts go to `out` as JSON lines, rendered and written
/// on a thread of their own in the order the engine raised them. I/O
/// errors on inputs or on `out` end the replay with an error; bad records
/// never do.
pub fn replay(
    inputs: &[Input],
    rules: Arc<RuleSet>,
    opts: &ReplayOptions,
    out: &mut (dyn Write + Send),
) -> io::Result<Summary> {
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Detection>>(RENDER_QUEUE);
    let (fed, written) = std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("replay-alerts".into())
            .spawn_scoped(scope, move || write_alerts(&rx, out))?;
        let fed = feed_all(inputs, rules, opts, &tx);
        // The writer ends once it has written everything handed on.
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the alert writer failed")));
        io::Result::Ok((fed, written))
    })?;
    // The writer's error first: feeding stops when it does.
    let (alerts, alerts_by_rule) = written?;
    let mut summary = fed?;
    summary.alerts = alerts;
    summary.alerts_by_rule = alerts_by_rule;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Feeds every input through the engine; detections go to `tx` in chunks.
/// The summary is whole but for the alerts and the time.
fn feed_all(
    inputs: &[Input],
    rules: Arc<RuleSet>,
    opts: &ReplayOptions,
    tx: &SyncSender<Vec<Detection>>,
) -> io::Result<Summary> {
    let mut run = Run {
        replayer: Replayer::new(
            Engine::new(
                rules,
                EngineConfig {
                    lateness_ms: opts.allowed_lateness_ms,
                    ..opts.engine
                },
            ),
            opts.allowed_lateness_ms,
        ),
        opts,
        summary: Summary::default(),
        alerts: Vec::with_capacity(RENDER_CHUNK),
        tx,
        log: RejectLog::new(5),
        kinds: [0; EventKind::KNOWN.len() + 1],
        other: BTreeMap::new(),
    };
    for input in inputs {
        match input {
            Input::Stdin => {
                let stdin = io::stdin().lock();
                run.feed(stdin, |line| Position::Stdin { line })?;
            }
            Input::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                let name: Arc<str> = path.display().to_string().into();
                run.feed(BufReader::with_capacity(256 * 1024, file), |line| {
                    Position::File {
                        path: name.clone(),
                        line,
                    }
                })?;
            }
        }
    }
    // Fire what is due at the final clock (DESIGN §3); later timers stay.
    run.replayer.finish(&mut run.alerts);
    run.hand_on()?;
    let mut summary = run.summary;
    for (kind, n) in EventKind::KNOWN.iter().zip(run.kinds) {
        if n > 0 {
            summary.events_by_type.insert(kind.name().to_owned(), n);
        }
    }
    summary.events_by_type.extend(run.other);
    let engine = run.replayer.engine();
    summary.late = engine.late_events();
    summary.evicted_keys = engine.evicted_keys();
    summary.live_keys = engine
        .live_keys()
        .into_iter()
        .map(|(id, n)| (id.to_string(), n))
        .collect();
    Ok(summary)
}

/// Renders the detections it is given and writes them to `out` as JSON
/// lines; returns the alerts written, in all and per rule.
fn write_alerts(
    rx: &Receiver<Vec<Detection>>,
    out: &mut (dyn Write + Send),
) -> io::Result<(u64, BTreeMap<String, u64>)> {
    let (mut n, mut by_rule) = (0, BTreeMap::new());
    for chunk in rx {
        let now = crate::clock::now_ms();
        for detection in chunk {
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

struct Run<'o> {
    replayer: Replayer,
    opts: &'o ReplayOptions,
    summary: Summary,
    alerts: Vec<Detection>,
    /// To the alert writer.
    tx: &'o SyncSender<Vec<Detection>>,
    log: RejectLog,
    /// Events per known kind (index in `EventKind::KNOWN`), without map lookups.
    kinds: [u64; EventKind::KNOWN.len() + 1],
    other: BTreeMap<String, u64>,
}

impl Run<'_> {
    fn feed<R: BufRead>(
        &mut self,
        reader: R,
        position: impl Fn(u64) -> Position,
    ) -> io::Result<()> {
        let mut lines = LineReader::new(reader, self.opts.decoder.max_record_bytes);
        while let Some((line, frame)) = lines.next_frame()? {
            self.summary.records += 1;
            let record = match frame {
                Frame::Record(bytes) => Record::Bytes(bytes),
                Frame::TooLarge { len } => Record::TooLarge(len),
            };
            let pos = position(line);
            let Run {
                replayer,
                opts,
                summary,
                alerts,
                log,
                kinds,
                other,
                ..
            } = self;
            let applied = replayer.apply(
                record,
                &opts.decoder,
                &pos,
                alerts,
                &mut |outcome, at| match outcome {
                    Ok(applied) => {
                        summary.events += 1;
                        match applied.other {
                            None => kinds[step::kind_index(applied.kind)] += 1,
                            Some(name) => *other.entry(name).or_insert(0) += 1,
                        }
                    }
                    Err(err) => {
                        log.reject(err.reason(), at, &err);
                        summary.reject(&err, at);
                    }
                },
            );
            match applied {
                Ok(()) => {}
                Err(DecodeError::Unmapped(_)) => summary.unmapped += 1,
                Err(err) => {
                    log.reject(err.reason(), &pos, &err);
                    summary.reject(&err, &pos);
                }
            }
            if self.alerts.len() >= RENDER_CHUNK {
                self.hand_on()?;
            }
        }
        Ok(())
    }

    /// Hands the detections so far to the alert writer.
    fn hand_on(&mut self) -> io::Result<()> {
        if self.alerts.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.alerts, Vec::with_capacity(RENDER_CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::other("the alert writer stopped"))
    }
}
