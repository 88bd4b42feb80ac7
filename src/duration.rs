//! Duration strings with a unit (`"500ms"`, `"60s"`, `"15m"`, `"1h30m"`,
//! `"15d"`, `"2w"`), as used by rule files and command-line options.
//! Internally every duration is a count of milliseconds (`i64`), the unit of
//! event time. This module owns parsing and printing only.

use std::fmt;

/// Milliseconds per unit, longest suffix first so `ms` wins over `m`.
const UNITS: [(&str, i64); 6] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (write e.g. \"60s\", \"15m\", \"1h\", \"15d\")")]
    Empty,
    #[error("`{0}` has no unit: write e.g. \"{0}s\" (units: ms, s, m, h, d, w)")]
    MissingUnit(String),
    #[error("`{0}`: unknown unit (units: ms, s, m, h, d, w)")]
    BadUnit(String),
    #[error("`{0}`: expected digits followed by a unit, e.g. \"60s\" or \"1h30m\"")]
    Malformed(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Parses a duration string into milliseconds. Several parts add up
/// (`"1h30m"`); white space is not allowed inside.
pub fn parse_ms(text: &str) -> Result<i64, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = s;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Malformed(s.to_owned()));
        }
        let value: i64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow(s.to_owned()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(if rest.is_empty() {
                DurationError::MissingUnit(s.to_owned())
            } else {
                DurationError::Malformed(s.to_owned())
            });
        }
        let unit = &rest[..unit_len];
        let per = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(|| DurationError::BadUnit(s.to_owned()))?;
        total = value
            .checked_mul(per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Prints milliseconds in the largest unit that divides them exactly
/// (`86400000` → `1d`), so messages echo what users write.
pub fn display_ms(ms: i64) -> impl fmt::Display {
    struct D(i64);
    impl fmt::Display for D {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.0 == 0 {
                return f.write_str("0s");
            }
            for (name, per) in UNITS.iter().rev() {
                if self.0 % per == 0 {
                    return write!(f, "{}{}", self.0 / per, name);
                }
            }
            write!(f, "{}ms", self.0)
        }
    }
    D(ms)
}

/// A duration in whole milliseconds (saturating).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A span a person reads, rounded down to its two largest units: `2d 5h`,
/// `1h 5m`, `5m 1s`, `42s`.
pub fn display_span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let (big, small) = match (d, h, m) {
        (0, 0, 0) => return format!("{s}s"),
        (0, 0, _) => ((m, "m"), (s, "s")),
        (0, _, _) => ((h, "h"), (m, "m")),
        _ => ((d, "d"), (h, "h")),
    };
    match small {
        (0, _) => format!("{}{}", big.0, big.1),
        _ => format!("{}{} {}{}", big.0, big.1, small.0, small.1),
    }
}

/// A clap value parser for duration options.
pub fn parse_arg(text: &str) -> Result<i64, String> {
    parse_ms(text).map_err(|e| e.to_string())
}

/// A positive duration setting `name` of `at` (`"60s"`), `default` when
/// absent; a bad or non-positive value is reported into `errors`.
pub fn setting(
    at: &str,
    name: &str,
    value: Option<&str>,
    default: std::time::Duration,
    errors: &mut Vec<String>,
) -> std::time::Duration {
    match value.map(parse_ms) {
        None => default,
        Some(Ok(ms)) if ms > 0 => std::time::Duration::from_millis(ms as u64),
        Some(Ok(_)) => {
            errors.push(format!("{at}: `{name}` must be positive"));
            default
        }
        Some(Err(e)) => {
            errors.push(format!("{at}: `{name}`: {e}"));
            default
        }
    }
}
