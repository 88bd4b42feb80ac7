//! The syslog decoder (RFC 5424, RFC 3164, `@cee:`) and the per-record
//! auto-detection on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_alertd::decode::{Decoder, Framing};

fuzz_target!(|data: &[u8]| {
    let _ = Decoder::new(Framing::Syslog, 65_536).decode(data);
    let _ = Decoder::new(Framing::Auto, 65_536).decode(data);
});
