//! `replay` of the example logs gives exactly the checked-in alerts (every
//! field but `detected_at`), and JSON or syslog framing of the same events
//! gives the same alerts and ids.

use std::sync::Arc;

use mcp_alertd::engine::RuleSet;
use mcp_alertd::replay::{Input, ReplayOptions, replay};
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn without_detected_at(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            assert!(v["detected_at"].is_string(), "replay stamps detected_at");
            v.as_object_mut().unwrap().remove("detected_at");
            v
        })
        .collect()
}

#[test]
fn replay_of_the_examples_gives_the_expected_alerts() {
    // Relative paths, as in the README (tests run in the package root), so
    // the positions match the checked-in alerts.
    let inputs = [
        Input::File("examples/audit.jsonl".into()),
        Input::File("examples/audit.syslog".into()),
    ];
    let mut out = Vec::new();
    let rules = Arc::new(RuleSet::embedded().unwrap());
    let summary = replay(&inputs, rules, &ReplayOptions::default(), &mut out).unwrap();
    let got = without_detected_at(&out);
    let want: Vec<Value> = std::fs::read_to_string(root().join("tests/data/examples.alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    // Every default rule fires at least once on the examples.
    for rule in RuleSet::embedded().unwrap().rules() {
        assert!(
            summary.alerts_by_rule.contains_key(&*rule.id),
            "{} never fired",
            rule.id
        );
    }
    assert_eq!(summary.rejected["not_json"].count, 1);
    assert_eq!(
        summary.rejected["missing_field"].first,
        vec!["examples/audit.jsonl:185".to_owned()]
    );
}

#[test]
fn syslog_framing_gives_the_same_alerts_and_ids_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let json = std::fs::read_to_string(root().join("examples/audit.jsonl")).unwrap();
    let framed: String = json
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i % 2 == 0 {
                format!("<110>1 2026-10-01T00:00:00Z relay mcp-audit - audit - @cee:{l}\n")
            } else {
                format!("<110>Oct  1 00:00:00 relay mcp-audit[7]: {l}\n")
            }
        })
        .collect();
    let path = dir.path().join("framed.log");
    std::fs::write(&path, framed).unwrap();
    let run = |input: Input| {
        let mut out = Vec::new();
        replay(
            &[input],
            Arc::new(RuleSet::embedded().unwrap()),
            &ReplayOptions::default(),
            &mut out,
        )
        .unwrap();
        without_detected_at(&out)
            .into_iter()
            .map(|mut v| {
                // Positions name different files; everything else must match.
                for e in v["events"].as_array_mut().unwrap() {
                    e.as_object_mut().unwrap().remove("position");
                }
                v
            })
            .collect::<Vec<_>>()
    };
    let a = run(Input::File(root().join("examples/audit.jsonl")));
    let b = run(Input::File(path));
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

/// A writer that takes `room` bytes and then fails, as stdout does when
/// the reader of a pipe has gone.
struct Closing {
    room: usize,
    took: Vec<u8>,
}

impl std::io::Write for Closing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.took.len() + buf.len() > self.room {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.took.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Alerts are written on a thread of their own: when writing them fails,
/// the replay ends with that error (it neither hangs nor goes on reading),
/// and the lines written before are those of a full run, in its order.
#[test]
fn a_failing_alert_writer_ends_the_replay_with_its_error() {
    let inputs = [Input::File(root().join("examples/audit.jsonl"))];
    let rules = Arc::new(RuleSet::embedded().unwrap());
    let mut all = Vec::new();
    replay(&inputs, rules.clone(), &ReplayOptions::default(), &mut all).unwrap();
    let mut out = Closing {
        room: all.len() / 2,
        took: Vec::new(),
    };
    let e = replay(&inputs, rules, &ReplayOptions::default(), &mut out).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    let whole = out.took.iter().rposition(|&b| b == b'\n').unwrap();
    let got = without_detected_at(&out.took[..=whole]);
    assert!(!got.is_empty());
    assert_eq!(got[..], without_detected_at(&all)[..got.len()]);
}
