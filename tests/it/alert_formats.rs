//! Alert formats checked against their published definitions: every OCSF
//! finding and ECS document of the example alerts (all 15 default rules)
//! and of the sample alert is validated against the schema subsets
//! extracted from OCSF 1.8.0 and ECS 9.4.0 (`tests/data/schemas`, made by
//! `extract.py` from the schema repositories at those tags): attribute
//! names, requirements, types, enums and profiles for OCSF; field names,
//! types and allowed values for ECS. LEEF and CEF are checked against
//! their grammars; the documented examples must equal the renderers'.

use std::path::PathBuf;

use mcp_alertd::alert::Alert;
use mcp_alertd::alert::format::AlertFormat;
use serde_json::{Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("tests/data/schemas").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The example alerts (every default rule) and the sample alert.
pub fn alerts() -> Vec<Alert> {
    let text = std::fs::read_to_string(root().join("tests/data/examples.alerts.jsonl")).unwrap();
    let mut out: Vec<Alert> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    out.push(Alert::sample());
    out
}

fn render(format: &AlertFormat, alert: &Alert) -> Vec<u8> {
    let json = serde_json::to_vec(alert).unwrap();
    format.render(alert, &json)
}

fn ocsf() -> AlertFormat {
    AlertFormat::parse("ocsf", None, None).unwrap()
}

/// Checks `value` against an OCSF type; `objects` are the extracted object
/// definitions. Returns the problems, each with its path.
fn ocsf_type(
    ty: &str,
    value: &Value,
    objects: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let ok = match ty {
        "string_t" | "uuid_t" | "username_t" | "hostname_t" | "url_t" | "email_t"
        | "file_name_t" | "file_path_t" | "resource_uid_t" | "process_name_t" | "datetime_t" => {
            value.is_string()
        }
        "ip_t" => value
            .as_str()
            .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
        "integer_t" | "long_t" | "port_t" => value.is_i64() || value.is_u64(),
        "timestamp_t" => value.as_i64().is_some_and(|t| t > 1_000_000_000_000),
        "float_t" => value.is_number(),
        "boolean_t" => value.is_boolean(),
        "json_t" | "object" => true,
        object => match objects.get(object) {
            Some(def) => {
                ocsf_object(def.as_object().unwrap(), value, objects, &[], path, out);
                true
            }
            None => {
                out.push(format!("{path}: object type `{object}` is not in the extracted schema (add it to extract.py)"));
                true
            }
        },
    };
    if !ok {
        out.push(format!("{path}: {value} is not a {ty}"));
    }
}

fn ocsf_object(
    attrs: &Map<String, Value>,
    value: &Value,
    objects: &Map<String, Value>,
    profiles: &[String],
    path: &str,
    out: &mut Vec<String>,
) {
    let Some(obj) = value.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    let applied = |a: &Value| {
        a.get("profile")
            .and_then(Value::as_str)
            .is_none_or(|p| profiles.iter().any(|x| x == p))
    };
    for (name, def) in attrs {
        if def["requirement"] == "required" && applied(def) && !obj.contains_key(name) {
            out.push(format!("{path}.{name}: required, missing"));
        }
    }
    for (name, v) in obj {
        let at = format!("{path}.{name}");
        let Some(def) = attrs.get(name) else {
            out.push(format!("{at}: not an attribute here"));
            continue;
        };
        if !applied(def) {
            out.push(format!(
                "{at}: belongs to profile {} which is not applied",
                def["profile"]
            ));
        }
        let ty = def["type"].as_str().unwrap();
        let items: Vec<&Value> = match (def["array"].as_bool().unwrap(), v) {
            (true, Value::Array(a)) => a.iter().collect(),
            (true, _) => {
                out.push(format!("{at}: should be an array"));
                continue;
            }
            (false, v) => vec![v],
        };
        for item in items {
            ocsf_type(ty, item, objects, &at, out);
            if let (Some(e), Some(n)) = (def.get("enum"), item.as_i64())
                && !e.as_array().unwrap().iter().any(|x| x.as_i64() == Some(n))
            {
                out.push(format!("{at}: {n} is not one of {e}"));
            }
        }
    }
}

fn ocsf_problems(finding: &Value) -> Vec<String> {
    let s = schema("ocsf-1.8.0.json");
    let class = s["class"]["attributes"].as_object().unwrap();
    let objects = s["objects"].as_object().unwrap();
    let profiles: Vec<String> = finding["metadata"]["profiles"]
        .as_array()
        .map(|a| a.iter().map(|p| p.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    ocsf_object(class, finding, objects, &profiles, "", &mut out);
    // Class-level constants and the evidence constraint.
    if finding["class_uid"] != 2004 || finding["category_uid"] != 2 {
        out.push("not a Detection Finding".into());
    }
    let type_uid =
        finding["class_uid"].as_i64().unwrap() * 100 + finding["activity_id"].as_i64().unwrap();
    if finding["type_uid"] != type_uid {
        out.push(format!(
            "type_uid {} != class_uid * 100 + activity_id",
            finding["type_uid"]
        ));
    }
    if finding["metadata"]["version"] != s["version"] {
        out.push("metadata.version is not the schema's".into());
    }
    let at_least_one = ["actor", "api", "data", "src_endpoint", "resources", "user"];
    for (i, e) in finding["evidences"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !at_least_one.iter().any(|k| e.get(*k).is_some()) {
            out.push(format!(
                "evidences[{i}]: none of its at_least_one attributes"
            ));
        }
    }
    out
}

#[test]
fn every_alert_is_a_valid_ocsf_1_8_detection_finding() {
    let format = ocsf();
    let mut checked = 0;
    for alert in alerts() {
        let finding: Value = serde_json::from_slice(&render(&format, &alert)).unwrap();
        let problems = ocsf_problems(&finding);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}\n{finding:#}",
            alert.rule
        );
        assert_eq!(finding["finding_info"]["uid"], alert.id);
        assert_eq!(finding["finding_info"]["analytic"]["uid"], alert.rule);
        assert_eq!(finding["metadata"]["tenant_uid"], alert.tenant);
        assert_eq!(finding["count"], alert.count);
        assert_eq!(
            finding["finding_info"]["first_seen_time"],
            alert.window_start.unwrap_or(alert.ts)
        );
        assert_eq!(
            finding["unmapped"]["key"],
            serde_json::to_value(&alert.key).unwrap()
        );
        assert_eq!(
            finding["evidences"].as_array().unwrap().len(),
            alert.events.len()
        );
        if let Some(agent) = alert.key.get("agent_id") {
            assert_eq!(finding["evidences"][0]["actor"]["user"]["uid"], *agent);
        }
        checked += 1;
    }
    assert_eq!(checked, 37);
}

#[test]
fn the_session_incident_carries_the_incident_profile_and_others_do_not() {
    let format = ocsf();
    for alert in alerts() {
        let finding: Value = serde_json::from_slice(&render(&format, &alert)).unwrap();
        let incident = alert.rule == "session_injection_incident";
        assert_eq!(
            finding["metadata"]["profiles"] == serde_json::json!(["incident"]),
            incident
        );
        assert_eq!(
            finding.get("priority_id").is_some(),
            incident,
            "{}",
            alert.rule
        );
    }
    // The list is configurable; the validator catches a profile attribute
    // without its profile.
    let none = AlertFormat::parse("ocsf", None, Some(vec![])).unwrap();
    let finding: Value = serde_json::from_slice(&render(&none, &Alert::sample())).unwrap();
    assert!(finding.get("priority_id").is_none());
    let mut forged = finding.clone();
    forged["priority_id"] = 4.into();
    assert!(
        ocsf_problems(&forged).iter().any(|p| p.contains("profile")),
        "a profile attribute without its profile must fail the validator"
    );
    let mut broken = finding;
    broken["severity_id"] = 9.into();
    broken["finding_info"]
        .as_object_mut()
        .unwrap()
        .remove("uid");
    let problems = ocsf_problems(&broken);
    assert!(
        problems.iter().any(|p| p.contains("severity_id")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("finding_info.uid")),
        "{problems:?}"
    );
}

/// Flattens a document into (dotted name, leaf value) pairs; arrays of
/// scalars stay one field.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn ecs_problems(doc: &Value) -> Vec<String> {
    let s = schema("ecs-9.4.0.json");
    let fields = s["fields"].as_object().unwrap();
    let top: Vec<&str> = s["top_level"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut flat = Vec::new();
    flatten("", doc, &mut flat);
    let mut out = Vec::new();
    for (name, value) in flat {
        let head = name.split('.').next().unwrap();
        if head == "mcp" {
            continue; // our custom field set
        }
        if !top.contains(&head) {
            out.push(format!("{name}: a custom field outside `mcp.`"));
            continue;
        }
        // A field of an `object` or `flattened` field (labels.*) is free.
        let parent_free = fields.iter().any(|(f, d)| {
            name.starts_with(&format!("{f}."))
                && matches!(d["type"].as_str(), Some("object" | "flattened"))
        });
        let Some(def) = fields.get(&name) else {
            if !parent_free {
                out.push(format!("{name}: not an ECS field"));
            }
            continue;
        };
        let values: Vec<&Value> = match &value {
            Value::Array(a) => {
                if def.get("array").is_none() && a.len() > 1 {
                    out.push(format!("{name}: an array"));
                }
                a.iter().collect()
            }
            v => vec![v],
        };
        for v in values {
            let ok = match def["type"].as_str().unwrap() {
                "keyword" | "constant_keyword" | "wildcard" | "match_only_text" | "text" => {
                    v.is_string()
                }
                "long" | "integer" | "short" | "byte" => v.is_i64() || v.is_u64(),
                "float" | "scaled_float" | "double" => v.is_number(),
                "boolean" => v.is_boolean(),
                "date" => v
                    .as_str()
                    .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
                "ip" => v
                    .as_str()
                    .is_some_and(|t| t.parse::<std::net::IpAddr>().is_ok()),
                "object" | "flattened" | "nested" => true,
                other => {
                    out.push(format!("{name}: type {other} not handled by the test"));
                    true
                }
            };
            if !ok {
                out.push(format!("{name}: {v} is not a {}", def["type"]));
            }
            if let Some(allowed) = def.get("allowed")
                && !allowed.as_array().unwrap().contains(v)
            {
                out.push(format!("{name}: {v} is not an allowed value"));
            }
        }
    }
    out
}

#[test]
fn every_alert_is_a_valid_ecs_9_4_document() {
    let format = AlertFormat::Ecs;
    for alert in alerts() {
        let doc: Value = serde_json::from_slice(&render(&format, &alert)).unwrap();
        let problems = ecs_problems(&doc);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}\n{doc:#}",
            alert.rule
        );
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["rule"]["id"], alert.rule);
        assert_eq!(doc["organization"]["id"], alert.tenant);
        assert_eq!(doc["event"]["id"], alert.id);
        if let Some(agent) = alert.key.get("agent_id") {
            assert_eq!(doc["user"]["id"], *agent);
            assert_eq!(doc["gen_ai"]["agent"]["id"], *agent);
        }
        if let Some(s) = alert.key.get("session_id") {
            assert_eq!(doc["mcp"]["session"]["id"], *s);
        }
        if let Some(start) = alert.window_start {
            assert_eq!(doc["event"]["start"], mcp_alertd::alert::format_ts(start));
        }
    }
    // The validator is not a rubber stamp.
    let mut doc: Value = serde_json::from_slice(&render(&format, &Alert::sample())).unwrap();
    doc["event"]["kind"] = "incident".into();
    doc["event"]["severity"] = "high".into();
    doc["agent_id"] = "x".into();
    let problems = ecs_problems(&doc);
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn leef_follows_the_2_0_grammar_with_the_chosen_delimiter_and_no_injection() {
    for (text, want) in [("^", '^'), ("x09", '\t'), ("0x7C", '|'), ("|", '|')] {
        match AlertFormat::parse("leef", Some(text), None) {
            Ok(AlertFormat::Leef { delimiter }) => assert_eq!(delimiter, want),
            Ok(other) => panic!("{other:?}"),
            Err(e) => assert!(want == '|' && e.contains("leef_delimiter"), "{text}: {e}"),
        }
    }
    for bad in ["ab", "=", "a", "x0A", ""] {
        assert!(
            AlertFormat::parse("leef", Some(bad), None).is_err(),
            "{bad}"
        );
    }
    assert!(AlertFormat::parse("cef", Some("^"), None).is_err());
    let mut alert = Alert::sample();
    alert.summary = "two\r\nlines^and a caret\tand a tab".into();
    alert.rule = "a|b".into();
    for delimiter in ['^', '\t'] {
        let line = String::from_utf8(render(&AlertFormat::Leef { delimiter }, &alert)).unwrap();
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        let header: Vec<&str> = line.splitn(7, '|').collect();
        assert_eq!(header.len(), 7, "{line}");
        assert_eq!(&header[..3], ["LEEF:2.0", "mcp-alertd", "mcp-alertd"]);
        assert_eq!(header[4], "a b", "a pipe in a header field is removed");
        let expect = if delimiter == '\t' {
            "x09".to_owned()
        } else {
            delimiter.to_string()
        };
        assert_eq!(header[5], expect);
        let pairs: Vec<(&str, &str)> = header[6]
            .split(delimiter)
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("sev"), Some("10"));
        assert_eq!(get("usrName"), Some("agent-build-7"));
        assert_eq!(get("devTimeFormat"), Some("yyyy-MM-dd'T'HH:mm:ss.SSSZ"));
        assert_eq!(get("devTime"), Some("2026-11-28T09:40:16.339+0000"));
        assert_eq!(get("alertId"), Some(alert.id.as_str()));
        let msg = get("msg").unwrap();
        assert!(
            !msg.contains(delimiter) && msg.starts_with("two  lines"),
            "{msg}"
        );
    }
}

#[test]
fn unknown_formats_and_misplaced_options_are_errors() {
    assert!(
        AlertFormat::parse("splunk", None, None)
            .unwrap_err()
            .contains("native, ocsf, ecs, cef, leef")
    );
    assert!(AlertFormat::parse("ecs", None, Some(vec!["x".into()])).is_err());
    assert_eq!(
        AlertFormat::parse("json", None, None).unwrap(),
        AlertFormat::Native
    );
}

/// The examples in docs/alert-formats.md are what the renderers write for
/// the sample alert.
#[test]
fn the_documented_examples_are_the_renderers_output() {
    let sample = Alert::sample();
    let json = |f: &AlertFormat| {
        let v: Value = serde_json::from_slice(&render(f, &sample)).unwrap();
        serde_json::to_string_pretty(&v).unwrap()
    };
    let text = |f: &AlertFormat| String::from_utf8(render(f, &sample)).unwrap();
    let template = |preset: &'static str, secret: Option<&str>| {
        let vars = std::collections::BTreeMap::from([("source".to_owned(), "mcp-gw-1".to_owned())]);
        let t = mcp_alertd::sink::template::Template::compile(
            &mcp_alertd::sink::template::Source::Preset(preset),
            vars,
            secret.map(str::to_owned),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&t.render(&sample).unwrap()).unwrap();
        serde_json::to_string_pretty(&v).unwrap()
    };
    crate::support::doc_examples(
        &root().join("docs/alert-formats.md"),
        &[
            ("native", serde_json::to_string_pretty(&sample).unwrap()),
            ("ocsf", json(&ocsf())),
            ("ecs", json(&AlertFormat::Ecs)),
            ("cef", text(&AlertFormat::Cef)),
            ("leef", text(&AlertFormat::Leef { delimiter: '^' })),
            ("slack", template("slack", None)),
            ("teams", template("teams", None)),
            (
                "pagerduty",
                template("pagerduty", Some("R0UT1NGKEY0000000000000000000000")),
            ),
        ],
    );
}

/// The daemon writes each format through a sink: a file of OCSF findings
/// and one of ECS documents, every line valid, one per alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sinks_write_valid_ocsf_and_ecs_lines() {
    use crate::support::{replay_ids, scenario, send_tcp, start, wait_for};
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("ocsf.jsonl"), dir.path().join("ecs.jsonl"));
    let cfg = format!(
        r#"[engine]
idle_after = "1h"
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
[[sinks]]
name = "ocsf"
type = "file"
path = "{}"
format = "ocsf"
[[sinks]]
name = "ecs"
type = "file"
path = "{}"
format = "ecs"
"#,
        o.display(),
        e.display()
    );
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("formats");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let read = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let want = replay_ids(&lines);
    wait_for("both files", || {
        read(&o).len() == want.len() && read(&e).len() == want.len()
    })
    .await;
    daemon.shutdown().await.unwrap();
    let mut ids = Vec::new();
    for f in read(&o) {
        assert!(ocsf_problems(&f).is_empty(), "{:?}", ocsf_problems(&f));
        ids.push(f["finding_info"]["uid"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, want);
    for d in read(&e) {
        assert!(ecs_problems(&d).is_empty(), "{:?}", ecs_problems(&d));
        assert_eq!(d["organization"]["id"], "formats");
    }
}

proptest::proptest! {
    /// Alert timestamps read as jiff writes RFC 3339 with milliseconds, for
    /// every instant jiff can hold (years 0000-9999 digit by digit, years
    /// before 0000 by the fallback).
    #[test]
    fn alert_timestamps_are_rfc3339_with_milliseconds(
        // The milliseconds jiff takes (years -9999 to 9999).
        ms in -377_705_023_201_000_i64..=253_402_207_200_000,
    ) {
        let ts = jiff::Timestamp::from_millisecond(ms).unwrap();
        let want = ts.strftime("%Y-%m-%dT%H:%M:%S.%3fZ").to_string();
        proptest::prop_assert_eq!(mcp_alertd::alert::format_ts(ms), want);
    }
}

#[test]
fn alert_timestamps_at_the_edges() {
    use mcp_alertd::alert::format_ts;
    assert_eq!(format_ts(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_ts(-1), "1969-12-31T23:59:59.999Z");
    assert_eq!(format_ts(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(format_ts(253_402_207_200_000), "9999-12-30T22:00:00.000Z");
    assert_eq!(format_ts(-62_167_219_200_000), "0000-01-01T00:00:00.000Z");
    // Beyond what a timestamp can hold: the number as it is.
    assert_eq!(format_ts(i64::MAX), i64::MAX.to_string());
}
