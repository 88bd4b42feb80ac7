//! The JSON-lines decoder on arbitrary bytes: an event or a typed
//! rejection, never a panic; a decoded event has its required fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_alertd::decode::{Decoder, Framing};

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(Framing::Jsonl, 65_536);
    if let Ok(ev) = decoder.decode(data) {
        for field in ev.kind.required() {
            assert!(ev.get(*field).is_some_and(|v| !v.is_empty()));
        }
    }
});
