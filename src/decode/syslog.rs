//! Syslog framing around the event JSON: RFC 5424 and RFC 3164 headers
//! (parsed by `syslog_loose`), then an optional CEE cookie. Only the MSG
//! matters to us; header fields (host, app) are not part of the event.

use syslog_loose::Variant;

use super::DecodeError;

/// The CEE cookie that may precede the JSON in MSG.
const CEE_COOKIE: &str = "@cee:";

/// Returns the JSON object text carried in a syslog line's MSG.
pub(super) fn payload(line: &str) -> Result<&str, DecodeError> {
    // The year only completes RFC 3164 header dates, which we never use: a
    // constant keeps decoding free of the wall clock.
    let message = syslog_loose::parse_message_with_year_exact(line, |_| 1970, Variant::Either)
        .map_err(|_| DecodeError::NotSyslog)?;
    if message.timestamp.is_none() && message.facility.is_none() && message.hostname.is_none() {
        return Err(DecodeError::NotSyslog);
    }
    let msg = message.msg.trim_start_matches('\u{feff}').trim();
    let msg = msg.strip_prefix(CEE_COOKIE).map_or(msg, str::trim_start);
    if msg.starts_with('{') {
        Ok(msg)
    } else {
        Err(DecodeError::NotJson(
            "syslog MSG does not hold a JSON object".to_owned(),
        ))
    }
}
