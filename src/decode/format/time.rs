//! Timestamps as products write them (FORMATS.md §7.7): RFC 3339 with any
//! number of fraction digits (Azure writes 7, ToolHive 9), a space for the
//! `T`, lower-case letters, a missing offset read as UTC; epoch seconds,
//! milliseconds, microseconds or nanoseconds, chosen by the format or by
//! magnitude; and agentgateway's unpadded microseconds.

use crate::condition::Val;

/// How a format reads `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// A string is RFC 3339 (lenient), a number epoch by magnitude.
    Auto,
    Rfc3339,
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
    /// Epoch in the unit its magnitude says (s, ms, µs or ns).
    Epoch,
    /// RFC 3339 whose fraction digits are an integer count of
    /// microseconds written without zero padding (agentgateway:
    /// `.5123Z` is 5.123 ms).
    UnpaddedMicros,
}

impl TimeFormat {
    pub const NAMES: &'static str =
        "auto, rfc3339, epoch_s, epoch_ms, epoch_us, epoch_ns, epoch, unpadded_micros";

    pub fn from_name(name: &str) -> Option<TimeFormat> {
        Some(match name {
            "auto" => TimeFormat::Auto,
            "rfc3339" => TimeFormat::Rfc3339,
            "epoch_s" => TimeFormat::EpochS,
            "epoch_ms" => TimeFormat::EpochMs,
            "epoch_us" => TimeFormat::EpochUs,
            "epoch_ns" => TimeFormat::EpochNs,
            "epoch" => TimeFormat::Epoch,
            "unpadded_micros" => TimeFormat::UnpaddedMicros,
            _ => return None,
        })
    }

    /// Epoch milliseconds of a value, or why not.
    pub fn parse(self, value: Val<'_>) -> Result<i64, String> {
        match value {
            Val::Str(s) => match self {
                TimeFormat::Auto | TimeFormat::Rfc3339 => rfc3339(s),
                TimeFormat::UnpaddedMicros => unpadded_micros(s),
                _ => {
                    let n: f64 = s
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{s}` is not an epoch number"))?;
                    self.epoch(n)
                }
            },
            Val::Num(n) => match self {
                TimeFormat::Rfc3339 | TimeFormat::UnpaddedMicros => {
                    Err("a number where an RFC 3339 string was expected".to_owned())
                }
                _ => self.epoch(n),
            },
            Val::Bool(_) => Err("a boolean is no timestamp".to_owned()),
            _ => Err("a list or an object is no timestamp".to_owned()),
        }
    }

    fn epoch(self, n: f64) -> Result<i64, String> {
        let ms = match self {
            TimeFormat::EpochS => n * 1e3,
            TimeFormat::EpochMs => n,
            TimeFormat::EpochUs => n / 1e3,
            TimeFormat::EpochNs => n / 1e6,
            _ => {
                // Magnitudes of the present era: seconds ~1.8e9, ms ~1.8e12,
                // µs ~1.8e15, ns ~1.8e18.
                let a = n.abs();
                if a < 1e11 {
                    n * 1e3
                } else if a < 1e14 {
                    n
                } else if a < 1e17 {
                    n / 1e3
                } else {
                    n / 1e6
                }
            }
        };
        let ms = ms.floor();
        if !ms.is_finite() || jiff::Timestamp::from_millisecond(ms as i64).is_err() {
            return Err(format!("{n} is out of range"));
        }
        Ok(ms as i64)
    }
}

/// Lenient RFC 3339: exact first, then normalised (upper case, `T`, a
/// fraction cut to nanoseconds, `Z` when no offset is written).
pub fn rfc3339(text: &str) -> Result<i64, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let normal = normalise(text).ok_or_else(|| format!("`{text}` is not an RFC 3339 time"))?;
    normal
        .parse::<jiff::Timestamp>()
        .map(jiff::Timestamp::as_millisecond)
        .map_err(|e| format!("`{text}`: {e}"))
}

fn normalise(text: &str) -> Option<String> {
    let text = text.trim();
    // date: YYYY-MM-DD, then T or space, then the time.
    if text.len() < 19 || !text.is_char_boundary(10) {
        return None;
    }
    let (date, rest) = text.split_at(10);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let mut out = String::with_capacity(text.len() + 1);
    out.push_str(date);
    out.push('T');
    // hh:mm:ss
    let hms = rest.get(..8)?;
    out.push_str(hms);
    let mut tail = &rest[8..];
    if let Some(frac) = tail.strip_prefix(['.', ',']) {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        out.push('.');
        out.push_str(&frac[..digits.min(9)]);
        tail = &frac[digits..];
    }
    match tail {
        "" => out.push('Z'),
        "z" | "Z" => out.push('Z'),
        offset => out.push_str(offset),
    }
    Some(out)
}

/// agentgateway's `time`: the digits after the dot are whole microseconds.
fn unpadded_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not `YYYY-MM-DDTHH:MM:SS.<micros>Z`");
    let (head, frac) = match text.split_once('.') {
        Some(parts) => parts,
        None => return rfc3339(text),
    };
    let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 6 {
        return Err(bad());
    }
    let micros: i64 = frac[..digits].parse().map_err(|_| bad())?;
    let whole = rfc3339(&format!("{head}{}", &frac[digits..]))?;
    Ok(whole + micros / 1000)
}
