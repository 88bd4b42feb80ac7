//! TCP framing (octet counting or LF, detected per connection) on
//! arbitrary bytes fed in arbitrary chunks: never a panic, no record
//! longer than the limit, and the same records whatever the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_alertd::source::framing::{FrameRef, Framer, Frames};

const MAX: usize = 256;

fn frame(data: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut framer = Framer::new(MAX);
    let mut frames = Frames::default();
    let mut failed = false;
    for part in data.chunks(chunk.max(1)) {
        if framer.push(part, &mut frames).is_err() {
            failed = true;
            break;
        }
    }
    let records = frames
        .frames
        .iter()
        .map(|f| match f {
            FrameRef::TooLarge(n) => {
                assert!(*n > MAX);
                b"<too large>".to_vec()
            }
            other => {
                let r = frames.get(other).unwrap_or_default().to_vec();
                assert!(r.len() <= MAX);
                r
            }
        })
        .collect();
    (records, failed)
}

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let whole = frame(data, data.len());
    let chunked = frame(data, chunk as usize);
    if !whole.1 && !chunked.1 {
        assert_eq!(whole.0, chunked.0);
    }
});
