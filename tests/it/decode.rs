//! Every accepted record shape and every rejection reason of the decoder.

use mcp_alertd::decode::{DecodeError, Decoder, Framing};
use mcp_alertd::event::{EventKind, FieldId};
use mcp_alertd::source::lines::{Frame, LineReader};

const BODY: &str = r#"{"ts":"2026-11-27T15:04:32.123Z","event":"tool.denied","tenant":"acme","agent_id":"a1","session_id":"s1","tool":"shell_exec","reason":"not_in_allowlist","server":"mcp-1","source_ip":"10.0.0.1","trace_id":"t1","note":"kept","depth":{"level":2}}"#;
const TS: i64 = 1_795_791_872_123;

fn ok(decoder: &Decoder, text: &str) -> (i64, String, String) {
    let ev = decoder
        .decode(text.as_bytes())
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    (ev.ts, ev.event.to_string(), ev.tenant.to_string())
}

#[test]
fn json_line_with_every_field() {
    let ev = Decoder::default().decode(BODY.as_bytes()).unwrap();
    assert_eq!(ev.ts, TS);
    assert_eq!(ev.kind, EventKind::ToolDenied);
    assert_eq!(ev.get(FieldId::Tenant), Some("acme"));
    assert_eq!(ev.get(FieldId::AgentId), Some("a1"));
    assert_eq!(ev.get(FieldId::SessionId), Some("s1"));
    assert_eq!(ev.get(FieldId::Tool), Some("shell_exec"));
    assert_eq!(ev.get(FieldId::Reason), Some("not_in_allowlist"));
    assert_eq!(ev.get(FieldId::Server), Some("mcp-1"));
    assert_eq!(ev.get(FieldId::SourceIp), Some("10.0.0.1"));
    assert_eq!(ev.get(FieldId::TraceId), Some("t1"));
    assert_eq!(ev.extra("note"), Some(&serde_json::json!("kept")));
    assert_eq!(ev.extra("depth"), Some(&serde_json::json!({"level": 2})));
    assert_eq!(ev.payload, BODY);
}

#[test]
fn session_start_fields_are_typed() {
    let text = r#"{"ts":1000,"event":"session.start","agent_id":"a","session_id":"s","role":"r","declared_task":"code_review","allowed_tools":["x","y\"z"],"expected_runtime_s":90.5}"#;
    let ev = Decoder::default().decode(text.as_bytes()).unwrap();
    assert_eq!(ev.ts, 1000);
    assert_eq!(ev.get(FieldId::Role), Some("r"));
    assert_eq!(ev.get(FieldId::DeclaredTask), Some("code_review"));
    let tools: Vec<&str> = ev
        .allowed_tools
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| t.as_ref())
        .collect();
    assert_eq!(tools, ["x", "y\"z"]);
    assert_eq!(ev.expected_runtime_s, Some(90.5));
}

#[test]
fn timestamps_normalize_to_utc_milliseconds() {
    let d = Decoder::default();
    for ts in [
        r#""2026-11-27T15:04:32.123Z""#,
        r#""2026-11-27T16:04:32.123+01:00""#,
        r#""2026-11-27T10:04:32.123-05:00""#,
        "1795791872123",
        "1.795791872123e12",
    ] {
        let text = format!(r#"{{"ts":{ts},"event":"auth.failure"}}"#);
        assert_eq!(ok(&d, &text).0, TS, "{ts}");
    }
}

#[test]
fn tenant_absent_null_or_empty_is_default_and_failures_without_identity_are_unknown() {
    let d = Decoder::default();
    for tenant in ["", r#","tenant":null"#, r#","tenant":"""#] {
        let text = format!(r#"{{"ts":1,"event":"auth.failure"{tenant}}}"#);
        let ev = d.decode(text.as_bytes()).unwrap();
        assert_eq!(ev.tenant, "default");
        assert_eq!(ev.get(FieldId::AgentId), Some("unknown"));
    }
}

#[test]
fn escaped_strings_are_decoded() {
    let text = r#"{"ts":1,"event":"auth.failure","agent_id":"a\u00e9\n\"b"}"#;
    let ev = Decoder::default().decode(text.as_bytes()).unwrap();
    assert_eq!(ev.get(FieldId::AgentId), Some("a\u{e9}\n\"b"));
}

#[test]
fn syslog_shapes_carry_the_json_message() {
    let d = Decoder::default();
    let shapes = [
        format!("<110>1 2026-11-27T15:04:32.500Z host mcp-audit 812 audit - @cee:{BODY}"),
        format!("<110>1 2026-11-27T15:04:32.500Z host mcp-audit 812 audit - {BODY}"),
        format!(
            "<110>1 2026-11-27T15:04:32.500Z host mcp-audit 812 audit [origin ip=\"10.0.0.1\"] \u{feff}{BODY}"
        ),
        format!("<110>Nov 27 15:04:32 host mcp-audit[812]: {BODY}"),
        format!("<110>Nov 27 15:04:32 host mcp-audit[812]: @cee: {BODY}"),
        format!("Nov 27 15:04:32 host mcp-audit: {BODY}"),
    ];
    for shape in &shapes {
        for format in [Framing::Auto, Framing::Syslog] {
            let (ts, event, tenant) = ok(&Decoder::new(format, 65536), shape);
            assert_eq!(
                (ts, event.as_str(), tenant.as_str()),
                (TS, "tool.denied", "acme"),
                "{shape}"
            );
        }
        // The event time is the JSON `ts`, never the syslog header's.
        assert_eq!(d.decode(shape.as_bytes()).unwrap().payload, BODY);
    }
}

#[test]
fn format_jsonl_refuses_syslog_and_format_syslog_refuses_bare_text() {
    let line = format!("<110>1 2026-11-27T15:04:32.500Z host app - - - {BODY}");
    let err = Decoder::new(Framing::Jsonl, 65536)
        .decode(line.as_bytes())
        .unwrap_err();
    assert_eq!(err.reason(), "not_json");
    let err = Decoder::new(Framing::Syslog, 65536)
        .decode(b"just some words")
        .unwrap_err();
    assert_eq!(err.reason(), "not_syslog");
}

fn reason(text: &[u8]) -> &'static str {
    Decoder::new(Framing::Auto, 256)
        .decode(text)
        .unwrap_err()
        .reason()
}

#[test]
fn every_rejection_reason() {
    assert_eq!(reason(br#"{"ts":1,"event":"auth.failure""#), "not_json");
    assert_eq!(
        reason(br#"{"ts":1,"event":"auth.failure"} trailing"#),
        "not_json"
    );
    assert_eq!(reason(b"[1,2,3]"), "not_syslog");
    assert_eq!(reason(b"hello world"), "not_syslog");
    assert_eq!(
        reason(b"<110>1 2026-11-27T15:04:32Z host app - - - plain text"),
        "not_json"
    );
    assert_eq!(reason(b"{\"ts\":1,\"event\":\"a\xff\"}"), "not_utf8");
    assert_eq!(reason(br#"{"event":"auth.failure"}"#), "missing_field");
    assert_eq!(reason(br#"{"ts":1}"#), "missing_field");
    assert_eq!(reason(br#"{"ts":1,"event":""}"#), "missing_field");
    assert_eq!(
        reason(br#"{"ts":1,"event":"tool.invoke","agent_id":"a","session_id":"s"}"#),
        "missing_field"
    );
    assert_eq!(
        reason(br#"{"ts":1,"event":"auth.success"}"#),
        "missing_field"
    );
    assert_eq!(
        reason(br#"{"ts":1,"event":"credential.issued","agent_id":"a"}"#),
        "missing_field"
    );
    assert_eq!(
        reason(br#"{"ts":1,"event":"auth.failure","agent_id":5}"#),
        "bad_field"
    );
    assert_eq!(reason(br#"{"ts":1,"event":"session.start","agent_id":"a","session_id":"s","allowed_tools":"x"}"#), "bad_field");
    assert_eq!(
        reason(br#"{"ts":"yesterday","event":"auth.failure"}"#),
        "bad_timestamp"
    );
    assert_eq!(
        reason(br#"{"ts":true,"event":"auth.failure"}"#),
        "bad_timestamp"
    );
    assert_eq!(
        reason(br#"{"ts":1.5,"event":"auth.failure"}"#),
        "bad_timestamp"
    );
    assert_eq!(
        reason(br#"{"ts":99999999999999999,"event":"auth.failure"}"#),
        "bad_timestamp"
    );
    assert_eq!(reason(&[b' '; 300]), "too_large");
}

#[test]
fn missing_field_names_the_field() {
    let err = Decoder::default()
        .decode(br#"{"ts":1,"event":"tool.invoke","agent_id":"a","session_id":"s"}"#)
        .unwrap_err();
    assert_eq!(err, DecodeError::MissingField("tool"));
    assert!(err.to_string().contains("`tool`"));
}

#[test]
fn other_event_types_are_accepted() {
    let ev = Decoder::default()
        .decode(br#"{"ts":1,"event":"prompt.flagged","x":1}"#)
        .unwrap();
    assert_eq!(ev.kind, EventKind::Other);
    assert_eq!(ev.event, "prompt.flagged");
}

#[test]
fn line_reader_skips_oversize_lines_without_losing_the_next() {
    let big = "x".repeat(10_000);
    let input = format!("{{\"a\":1}}\r\n\n{big}\n{{\"b\":2}}\nlast-without-newline");
    // A tiny buffer forces the oversize line across many reads.
    let reader = std::io::BufReader::with_capacity(16, input.as_bytes());
    let mut lines = LineReader::new(reader, 100);
    let mut got = Vec::new();
    while let Some((n, frame)) = lines.next_frame().unwrap() {
        got.push(match frame {
            Frame::Record(b) => (n, String::from_utf8(b.to_vec()).unwrap()),
            Frame::TooLarge { len } => (n, format!("too large {len}")),
        });
    }
    assert_eq!(
        got,
        vec![
            (1, r#"{"a":1}"#.to_owned()),
            (3, "too large 10000".to_owned()),
            (4, r#"{"b":2}"#.to_owned()),
            (5, "last-without-newline".to_owned()),
        ]
    );
}

#[test]
fn a_key_given_twice_is_a_bad_field() {
    // A second `tenant` must not move an event to another tenant.
    for text in [
        r#"{"ts":1,"event":"auth.failure","agent_id":"a","tenant":"acme","tenant":"other"}"#,
        r#"{"ts":1,"event":"auth.failure","agent_id":"a","ts":2}"#,
        r#"{"ts":1,"event":"auth.failure","agent_id":"a","agent_id":"b"}"#,
        r#"{"ts":1,"event":"auth.failure","agent_id":"a","event":"auth.success"}"#,
        r#"{"ts":1,"event":"auth.failure","agent_id":"a","client":"x","client":"y"}"#,
    ] {
        let err = Decoder::new(Framing::Auto, 256)
            .decode(text.as_bytes())
            .unwrap_err();
        assert_eq!(err.reason(), "bad_field", "{text}");
        assert!(err.to_string().contains("duplicate key"), "{text}: {err}");
    }
    // The same name at different depths is no duplicate.
    let ok =
        r#"{"ts":1,"event":"auth.failure","agent_id":"a","client":{"agent_id":"b","tenant":"t"}}"#;
    assert!(
        Decoder::new(Framing::Auto, 256)
            .decode(ok.as_bytes())
            .is_ok()
    );
}

/// Any JSON value whose floats print and read back exactly.
fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (any::<i32>(), 0u32..8).prop_map(|(m, e)| Value::from(f64::from(m) / f64::from(1 << e))),
        "(\\PC|[\"\\\\\\u{0}-\\u{1f}]){0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    "[a-z._]{1,6}",
                    Just("token".to_owned()),
                    Just("x_api_key".to_owned())
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What a record reads as once secret-looking members are dropped (and
/// integers beyond i64 are floats).
fn without_secrets(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !mcp_alertd::decode::is_secret_field(k))
                .map(|(k, v)| (k.clone(), without_secrets(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_secrets).collect()),
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Value::from(n.as_f64().unwrap()),
        other => other.clone(),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

    /// The reader formats map from reads every record as serde_json does,
    /// secrets dropped.
    #[test]
    fn mapped_records_read_as_serde_json_reads_them(v in json_value(), pretty: bool) {
        use mcp_alertd::decode::format::tree::{Need, parse};
        let record = serde_json::json!({ "v": v, "n": 1 });
        let text = if pretty {
            serde_json::to_string_pretty(&record).unwrap()
        } else {
            serde_json::to_string(&record).unwrap()
        };
        let read = parse(&text, &Need::all()).unwrap();
        proptest::prop_assert_eq!(read.to_value(), without_secrets(&record));
        // Nothing read: the record is still checked whole.
        proptest::prop_assert!(parse(&text, &Need::default()).is_ok());
    }

    /// A record one edit away from valid JSON is refused exactly when
    /// serde_json refuses it.
    #[test]
    fn broken_records_are_refused_as_serde_json_refuses_them(
        v in json_value(),
        at in 0usize..1000,
        edit in 0u8..3,
        byte in proptest::sample::select(b"{}[]\",:\\ 0-1.trufalsn\x01".to_vec()),
    ) {
        use mcp_alertd::decode::format::tree::{Need, parse};
        // (No exponent is written or inserted: members skipped unread are
        // checked for syntax, not for a number's range.)
        let mut text = serde_json::to_string(&serde_json::json!({ "v": v })).unwrap().into_bytes();
        let at = at % text.len();
        match edit {
            0 => { text.remove(at); }
            1 => text.insert(at, byte),
            _ => text[at] = byte,
        }
        let Ok(text) = String::from_utf8(text) else { return Ok(()) };
        if !text.starts_with('{') {
            return Ok(());
        }
        let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object());
        match parse(&text, &Need::all()) {
            Ok(_) => proptest::prop_assert!(serde, "accepted: {text}"),
            // An edit can make two keys one (serde_json keeps the last).
            Err(DecodeError::BadField(e)) => proptest::prop_assert!(e.contains("duplicate"), "{e}"),
            Err(e) => proptest::prop_assert!(!serde, "refused: {text}: {e}"),
        }
        // Nothing read: what serde_json reads is not refused (members
        // skipped unread are checked for syntax, not number range).
        if serde {
            proptest::prop_assert!(parse(&text, &Need::default()).is_ok(), "refused: {text}");
        }
    }
}
