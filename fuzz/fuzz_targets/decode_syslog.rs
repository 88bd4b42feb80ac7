//! The syslog decoder (RFC 5424, RFC 3164, `@cee:`) and the per-record
//! auto-detection on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_alertd::decode::{Decoder, Format};

fuzz_target!(|data: &[u8]| {
    let _ = Decoder::new(Format::Syslog, 65_536).decode(data);
    let _ = Decoder::new(Format::Auto, 65_536).decode(data);
});
