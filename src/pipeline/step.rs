//! One record through the pipeline: frame → decode → future-timestamp
//! bound → clock → engine. The daemon's engine thread and `replay` both
//! call [`apply`], so `run` over a file and `replay` of the same file treat
//! every record alike (DESIGN §3: "`run` on a file gives the same alerts as
//! `replay`"). Counting and logging rejections stay with the caller, which
//! knows where the record came from.

use crate::alert::Detection;
use crate::decode::{DecodeError, Decoder};
use crate::engine::Engine;
use crate::event::{EventKind, Position};

/// A framed record: its bytes, or only the length of one over the limit.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    Bytes(&'a [u8]),
    TooLarge(usize),
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
}

/// Decodes one record and applies it: `clock` maps the event's `ts` to the
/// engine clock it moves to first (firing the timers it passes), then the
/// event goes to every rule. Alerts are appended to `alerts`.
pub fn apply<'r>(
    record: Record<'r>,
    decoder: &Decoder,
    future: Option<FutureBound>,
    clock: impl FnOnce(i64) -> i64,
    engine: &mut Engine,
    pos: &Position,
    alerts: &mut Vec<Detection>,
) -> Result<Applied, DecodeError> {
    let bytes = match record {
        Record::Bytes(bytes) => bytes,
        Record::TooLarge(len) => {
            return Err(DecodeError::TooLarge {
                len,
                max: decoder.max_record_bytes,
            });
        }
    };
    let ev = decoder.decode(bytes)?;
    if let Some(f) = future
        && ev.ts > f.max_ts
    {
        return Err(DecodeError::FutureTimestamp {
            max_skew_ms: f.max_skew_ms,
        });
    }
    let target = clock(ev.ts);
    engine.advance_to(target, alerts);
    let before = alerts.len();
    engine.on_event(&ev, Some(pos), alerts);
    Ok(Applied {
        kind: ev.kind,
        other: (ev.kind == EventKind::Other).then(|| ev.event.to_string()),
        raised: alerts.len() - before,
    })
}

/// The index of an event kind in [`EventKind::KNOWN`] (`KNOWN.len()` for
/// any other), for per-kind counters kept in arrays.
pub fn kind_index(kind: EventKind) -> usize {
    EventKind::KNOWN
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(EventKind::KNOWN.len())
}
