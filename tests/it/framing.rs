//! RFC 6587 framing: both framings, oversize frames, arbitrary read splits.

use mcp_alertd::source::framing::{FrameRef, Framer, Frames, FramingError, Mode};
use proptest::prelude::*;

fn frame_all(chunks: &[&[u8]], max: usize) -> (Vec<String>, Mode) {
    frame_stream(chunks, max, false)
}

/// Frames a stream; with `end`, as one that closed after its last chunk.
fn frame_stream(chunks: &[&[u8]], max: usize, end: bool) -> (Vec<String>, Mode) {
    let mut framer = Framer::new(max);
    let mut out = Frames::default();
    for c in chunks {
        framer.push(c, &mut out).unwrap();
    }
    if end {
        framer.finish(&mut out);
    }
    let got = out
        .frames
        .iter()
        .map(|f| match f {
            FrameRef::Record(_) => String::from_utf8(out.get(f).unwrap().to_vec()).unwrap(),
            FrameRef::TooLarge(n) => format!("<too large {n}>"),
            FrameRef::Truncated(n) => format!("<truncated {n}>"),
            FrameRef::BadFraming => "<bad framing>".to_owned(),
        })
        .collect();
    (got, framer.mode())
}

#[test]
fn octet_counting_and_newline_framing_are_detected() {
    let (got, mode) = frame_all(&[b"5 hello3 abc\n4 x yz"], 100);
    assert_eq!(mode, Mode::OctetCounting);
    assert_eq!(got, vec!["hello", "abc", "x yz"]);
    let (got, mode) = frame_all(&[b"<13>one\r\n\n<13>two\nthree"], 100);
    assert_eq!(mode, Mode::NewLine);
    assert_eq!(got, vec!["<13>one", "<13>two"]);
}

#[test]
fn oversize_frames_are_skipped_and_framing_resumes() {
    let big = "y".repeat(50);
    let octets = format!("3 abc50 {big}2 ok");
    let (got, _) = frame_all(&[octets.as_bytes()], 10);
    assert_eq!(got, vec!["abc", "<too large 50>", "ok"]);
    // Split inside the oversize frame: skipped across reads.
    let (got, _) = frame_all(
        &[
            &octets.as_bytes()[..12],
            &octets.as_bytes()[12..40],
            &octets.as_bytes()[40..],
        ],
        10,
    );
    assert_eq!(got, vec!["abc", "<too large 50>", "ok"]);
    let lines = format!("abc\n{big}\nok\n");
    let (got, _) = frame_all(&[&lines.as_bytes()[..20], &lines.as_bytes()[20..]], 10);
    assert_eq!(got, vec!["abc", "<too large 50>", "ok"]);
}

#[test]
fn a_bad_octet_header_is_an_error() {
    let mut framer = Framer::new(100);
    let mut out = Frames::default();
    assert_eq!(
        framer.push(b"12x hello", &mut out),
        Err(FramingError::BadOctetHeader)
    );
    let mut framer = Framer::new(100);
    assert_eq!(
        framer.push(b"123456789012345 a", &mut out),
        Err(FramingError::BadOctetHeader)
    );
}

#[test]
fn the_framer_holds_at_most_one_record_bound() {
    let mut framer = Framer::new(64);
    let mut out = Frames::default();
    for _ in 0..1000 {
        framer.push(&[b'z'; 1000], &mut out).unwrap();
        assert!(framer.buffered() <= 64 + 11);
    }
    framer.push(b"\nfine\n", &mut out).unwrap();
    assert_eq!(out.frames.len(), 2);
    assert_eq!(out.frames[0], FrameRef::TooLarge(1_000_000));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_the_stream_gives_the_same_frames(
        msgs in prop::collection::vec("[a-z0-9 ]{0,40}", 1..20),
        cuts in prop::collection::vec(0usize..2000, 0..10),
        octet in any::<bool>(),
    ) {
        let max = 30;
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for m in &msgs {
            if octet {
                stream.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
                // Blank records are no records.
                if m.len() > max {
                    want.push(format!("<too large {}>", m.len()));
                } else if !m.trim().is_empty() {
                    want.push(m.clone());
                }
            } else {
                // Lines must not be blank and must not start with a digit or
                // whitespace to be detected as LF framing.
                let line = format!("x{m}");
                stream.extend_from_slice(line.as_bytes());
                stream.push(b'\n');
                want.push(if line.len() > max { format!("<too large {}>", line.len()) } else { line });
            }
        }
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        let (got, _) = frame_all(&chunks, max);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn a_frame_whose_body_starts_with_spaces_after_a_split_header_is_kept() {
    // Found by the property test: a read ends right after a length prefix
    // and the next frame's body starts with spaces.
    let msgs = [
        "00a0a0",
        "aaa0   aa0a 0  a00a0 00aa0a aa",
        "0 0 00 0 0a0aaaaa00 aaa",
        "a 0aaaa aaa    a0a",
        "a",
        "  a0",
    ];
    let stream: String = msgs.iter().map(|m| format!("{} {m}", m.len())).collect();
    for cut in 0..=stream.len() {
        let (a, b) = stream.as_bytes().split_at(cut);
        let (got, _) = frame_all(&[a, b], 100);
        assert_eq!(got, msgs, "cut at {cut}");
    }
}

#[test]
fn whitespace_before_the_first_frame_is_dropped_however_it_is_split() {
    // Found by the `framing` fuzz target: leading whitespace was kept when
    // it arrived with the first record and dropped when it arrived alone.
    for stream in [&b"\x0c x{\"a\":1}\nyz\n"[..], &b"\n\t5 hello3 abc"[..]] {
        let whole = frame_all(&[stream], 100);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame_all(&bytes, 100), whole);
        assert!(
            !whole.0[0].starts_with(|c: char| c.is_whitespace()),
            "{whole:?}"
        );
    }
    assert_eq!(
        frame_all(&[b"\n\t5 hello3 abc"], 100),
        (
            vec!["hello".to_owned(), "abc".to_owned()],
            Mode::OctetCounting
        )
    );
}

#[test]
fn nul_delimits_records_and_blank_records_are_none() {
    let (got, mode) = frame_all(&[b"<13>one\0<13>two\0\0  \n\t\r\n<13>three\n"], 100);
    assert_eq!(mode, Mode::NewLine);
    assert_eq!(got, vec!["<13>one", "<13>two", "<13>three"]);
    let (got, mode) = frame_all(&[b"\0\x005 hello\x003    1 x"], 100);
    assert_eq!(mode, Mode::OctetCounting);
    assert_eq!(got, vec!["hello", "x"]);
}

#[test]
fn what_a_closed_stream_still_holds_is_a_record_or_a_counted_rejection() {
    // An unterminated last line is a record; a blank one is none.
    let (got, _) = frame_stream(&[b"<13>one\n<13>tw", b"o"], 100, true);
    assert_eq!(got, vec!["<13>one", "<13>two"]);
    let (got, _) = frame_stream(&[b"<13>one\n  \r"], 100, true);
    assert_eq!(got, vec!["<13>one"]);
    // A partial octet-counted frame, or a partial header, is truncated.
    let (got, _) = frame_stream(&[b"3 abc10 hello"], 100, true);
    assert_eq!(got, vec!["abc", "<truncated 8>"]);
    let (got, _) = frame_stream(&[b"3 abc1"], 100, true);
    assert_eq!(got, vec!["abc", "<truncated 1>"]);
    // An oversize line cut off by the close is too large.
    let (got, _) = frame_stream(&[b"ok\n", &[b'z'; 50]], 10, true);
    assert_eq!(got, vec!["ok", "<too large 50>"]);
    // Separators at the end are nothing.
    let (got, _) = frame_stream(&[b"3 abc \n\0"], 100, true);
    assert_eq!(got, vec!["abc"]);
}

#[test]
fn a_bad_header_ends_the_frames_with_bad_framing() {
    let mut framer = Framer::new(100);
    let mut out = Frames::default();
    assert!(framer.push(b"3 abc12x hello", &mut out).is_err());
    assert_eq!(out.frames.len(), 2);
    assert_eq!(out.frames[1], FrameRef::BadFraming);
}

#[test]
fn a_stream_the_daemon_stops_reading_leaves_its_partial_record_truncated() {
    let mut framer = Framer::new(100);
    let mut out = Frames::default();
    framer.push(b"<13>one\n<13>tw", &mut out).unwrap();
    framer.abandon(&mut out);
    assert_eq!(out.frames[1], FrameRef::Truncated(6));
}
