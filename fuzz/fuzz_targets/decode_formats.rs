//! Every built-in format (through `auto`) on arbitrary bytes, and format
//! files compiled from arbitrary text: events or typed rejections (or
//! errors listed), never a panic; a mapped event has its required fields.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mcp_alertd::decode::{Decoded, Decoder, Format, FormatSet, Framing, Selector};
use mcp_alertd::event::FieldId;

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| {
        let set = Arc::new(FormatSet::built_in().expect("built-in formats compile"));
        let mut d = Decoder::new(Framing::Auto, 65_536);
        d.format = Selector::named("auto", &set).expect("auto");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let events = match decoder().decode_record(data) {
        Ok(Decoded::One(ev)) => vec![Ok(ev)],
        Ok(Decoded::Many(evs)) => evs,
        Err(_) => Vec::new(),
    };
    for ev in events.into_iter().flatten() {
        for field in ev.kind.required() {
            if *field != FieldId::SessionId {
                assert!(ev.get(*field).is_some_and(|v| !v.is_empty()));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Format::compile("fuzz", "fuzz", text);
    }
});
