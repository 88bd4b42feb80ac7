//! One record through the pipeline: frame → decode (one record may yield
//! several events) → future-timestamp bound → clock → session derivation
//! → engine. The daemon's engine thread and `replay` both
//! call [`apply`], so `run` over a file and `replay` of the same file treat
//! every record alike (DESIGN §3: "`run` on a file gives the same alerts as
//! `replay`"). Counting and logging rejections stay with the caller, which
//! knows where the record came from.

use std::borrow::Cow;

use crate::alert::Detection;
use crate::decode::{DecodeError, Decoded, Decoder};
use crate::engine::Engine;
use crate::event::{Event, EventKind, Position};
use crate::source::framing::FrameRef;

/// A framed record: its bytes, or what framing made of bytes it could not
/// hand on (each a rejection).
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    Bytes(&'a [u8]),
    /// Only the length of a record over the limit.
    TooLarge(usize),
    /// The bytes of an octet-counted frame the stream ended inside of.
    Truncated(usize),
    /// Where the stream stopped being framable.
    BadFraming,
}

impl<'a> Record<'a> {
    /// A frame of a source's batch as a record.
    pub fn of(frames: &'a crate::source::framing::Frames, frame: &FrameRef) -> Record<'a> {
        match frame {
            FrameRef::Record(_) => Record::Bytes(frames.get(frame).unwrap_or_default()),
            FrameRef::TooLarge(len) => Record::TooLarge(*len),
            FrameRef::Truncated(len) => Record::Truncated(*len),
            FrameRef::BadFraming => Record::BadFraming,
        }
    }
}

/// Events dated after `max_ts` are rejected (`max_skew_ms` past the wall
/// clock); `replay` has no such bound.
#[derive(Debug, Clone, Copy)]
pub struct FutureBound {
    pub max_ts: i64,
    pub max_skew_ms: i64,
}

/// A record that became an event and went through the engine.
pub struct Applied {
    pub kind: EventKind,
    /// The event type's name when it is none of the known kinds (custom
    /// rules' events), for per-type counts.
    pub other: Option<String>,
    /// Alerts the event itself raised (after those of the timers it fired).
    pub raised: usize,
    /// A `tool.denied` event's identity, for the console's meter.
    pub denied: Option<Denied>,
}

/// Who a denied tool call was of, and when.
pub struct Denied {
    pub ts: i64,
    pub tenant: String,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
}

/// Decodes one record and applies each event it yields: `clock` maps an
/// event's `ts` to the engine clock it moves to first (firing the timers it
/// passes), then the event goes to every rule. Alerts are appended to
/// `alerts`; `each` hears every event's outcome with its position (the
/// record's, or `<record>#n` for the n-th event of a fanned-out record).
/// `Err` is a record that yields no event: rejected, or `Unmapped`.
#[allow(clippy::too_many_arguments)]
pub fn apply<'r>(
    record: Record<'r>,
    decoder: &Decoder,
    future: Option<FutureBound>,
    mut clock: impl FnMut(i64) -> i64,
    engine: &mut Engine,
    pos: &Position,
    alerts: &mut Vec<Detection>,
    each: &mut dyn FnMut(Result<Applied, DecodeError>, &Position),
) -> Result<(), DecodeError> {
    match decode(record, decoder)? {
        Decoded::One(ev) => {
            let outcome = in_bound(&ev, future)
                .map(|()| one(Cow::Owned(ev), decoder, &mut clock, engine, pos, alerts));
            each(outcome, pos);
        }
        Decoded::Many(events) => {
            for ev in events {
                let at = pos.part(ev.as_ref().map_or(0, |e| e.part));
                let outcome = ev.and_then(|ev| {
                    in_bound(&ev, future)
                        .map(|()| one(Cow::Owned(ev), decoder, &mut clock, engine, &at, alerts))
                });
                each(outcome, &at);
            }
        }
    }
    Ok(())
}

/// A framed record's events (the first step of [`apply`]); `Err` is a
/// record that yields none: rejected, or `Unmapped`.
pub fn decode<'r>(record: Record<'r>, decoder: &Decoder) -> Result<Decoded<'r>, DecodeError> {
    match record {
        Record::Bytes(bytes) => decoder.decode_record(bytes),
        Record::TooLarge(len) => Err(DecodeError::TooLarge {
            len,
            max: decoder.max_record_bytes,
        }),
        Record::Truncated(len) => Err(DecodeError::Truncated { len }),
        Record::BadFraming => Err(DecodeError::BadFraming),
    }
}

/// An event dated after the future bound is rejected.
fn in_bound(ev: &Event<'_>, future: Option<FutureBound>) -> Result<(), DecodeError> {
    match future {
        Some(f) if ev.ts > f.max_ts => Err(DecodeError::FutureTimestamp {
            max_skew_ms: f.max_skew_ms,
        }),
        _ => Ok(()),
    }
}

/// One decoded event through the clock, session derivation and the
/// engine (the last step of [`apply`], after the future bound). A borrowed
/// event is copied only when it is given a derived session.
pub fn one(
    ev: Cow<'_, Event<'_>>,
    decoder: &Decoder,
    clock: &mut impl FnMut(i64) -> i64,
    engine: &mut Engine,
    pos: &Position,
    alerts: &mut Vec<Detection>,
) -> Applied {
    let target = clock(ev.ts);
    engine.advance_to(target, alerts);
    let before = alerts.len();
    let mut ev = ev;
    let derived = match decoder
        .derive_sessions_ms
        .and_then(|idle_ms| engine.derive_session(&ev, idle_ms))
    {
        Some(id) => {
            ev.to_mut().session_id = Some(Cow::Owned(id));
            true
        }
        None => false,
    };
    // A derived session's boundaries shape the derivation only: rules see
    // no session.start/end of a session nobody opened (DESIGN §2b).
    let boundary = matches!(ev.kind, EventKind::SessionStart | EventKind::SessionEnd);
    if !(derived && boundary) {
        engine.on_event(&ev, Some(pos), alerts);
    }
    Applied {
        kind: ev.kind,
        other: (ev.kind == EventKind::Other).then(|| ev.event.to_string()),
        raised: alerts.len() - before,
        denied: (ev.kind == EventKind::ToolDenied).then(|| Denied {
            ts: ev.ts,
            tenant: ev.tenant.to_string(),
            // An unclaimed identity is nobody's.
            agent_id: ev
                .agent_id
                .as_deref()
                .filter(|_| !ev.unclaimed)
                .map(str::to_owned),
            session_id: ev.session_id.as_deref().map(str::to_owned),
        }),
    }
}

/// The index of an event kind in [`EventKind::KNOWN`] (`KNOWN.len()` for
/// any other), for per-kind counters kept in arrays.
pub fn kind_index(kind: EventKind) -> usize {
    EventKind::KNOWN
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(EventKind::KNOWN.len())
}
