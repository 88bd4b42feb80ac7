//! Rule loading: every condition operator, and all-or-nothing validation
//! that reports every error with file, rule id and message.

use mcp_alertd::decode::Decoder;
use mcp_alertd::engine::RuleSet;

use crate::{line, rules, run_lines};

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    let files = files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    RuleSet::from_files(files, "test")
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn match_rule(id: &str, cond: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\ntitle = \"t\"\nseverity = \"low\"\nkind = \"match\"\nmatch = {cond}\n"
    )
}

#[test]
fn every_condition_operator() {
    let r = rules(
        &[
            match_rule("eq", r#"{ event = "tool.denied", tool = "shell" }"#),
            match_rule(
                "any_of",
                r#"{ event = ["tool.denied", "tool.invoke"], tool = ["a", "b"] }"#,
            ),
            match_rule(
                "not",
                r#"{ event = "tool.denied", reason = { not = "not_in_allowlist" } }"#,
            ),
            match_rule(
                "exists",
                r#"{ event = "tool.denied", trace_id = { exists = true } }"#,
            ),
            match_rule(
                "missing",
                r#"{ event = "tool.denied", trace_id = { exists = false } }"#,
            ),
            match_rule("prefix", r#"{ tool = { prefix = "db_" } }"#),
            match_rule("suffix", r#"{ tool = { suffix = "_exec" } }"#),
            match_rule("contains", r#"{ tool = { contains = "ecre" } }"#),
            match_rule("re", r#"{ tool = { re = "^(rm|dd)$" } }"#),
            match_rule("cidr", r#"{ source_ip = { cidr = "203.0.113.0/24" } }"#),
            match_rule("cidr6", r#"{ source_ip = { cidr = "2001:db8::/32" } }"#),
            match_rule("extra_num", r#"{ risk_score = 9 }"#),
            match_rule("extra_bool", r#"{ elevated = true }"#),
            match_rule("list", r#"{ allowed_tools = "shell" }"#),
            match_rule(
                "combined",
                r#"{ tool = { prefix = "s", suffix = "l", not = "shellx" } }"#,
            ),
        ]
        .concat(),
    );
    let base = r#""agent_id":"a","session_id":"s""#;
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            r#""tool":"shell","reason":"not_in_allowlist""#,
            vec!["combined", "eq", "missing"],
        ),
        (
            r#""tool":"a","reason":"x","trace_id":"t""#,
            vec!["any_of", "exists", "not"],
        ),
        (r#""tool":"db_query""#, vec!["missing", "not", "prefix"]),
        (r#""tool":"shell_exec""#, vec!["missing", "not", "suffix"]),
        (
            r#""tool":"read_secrets""#,
            vec!["contains", "missing", "not"],
        ),
        (
            r#""tool":"rm","source_ip":"203.0.113.9""#,
            vec!["cidr", "missing", "not", "re"],
        ),
        (
            r#""tool":"rmx","source_ip":"2001:db8::1""#,
            vec!["cidr6", "missing", "not"],
        ),
        (
            r#""tool":"q","risk_score":9,"elevated":true"#,
            vec!["extra_bool", "extra_num", "missing", "not"],
        ),
        (
            r#""tool":"q","allowed_tools":["read","shell"]"#,
            vec!["list", "missing", "not"],
        ),
    ];
    for (fields, want) in cases {
        let l = line(1000, "tool.denied", &format!("{base},{fields}"));
        let mut got: Vec<String> = run_lines(&r, 0, &[l]).into_iter().map(|a| a.rule).collect();
        got.sort();
        assert_eq!(got, want, "{fields}");
    }
    // Sanity: the decoder kept the unknown fields used above.
    let ev = Decoder::default()
        .decode(br#"{"ts":1,"event":"x","risk_score":9}"#)
        .unwrap();
    assert!(ev.extra("risk_score").is_some());
}

#[test]
fn all_errors_are_reported_at_once_and_nothing_loads() {
    let bad = r#"
[[rule]]
id = "no_unit"
title = "t"
severity = "high"
kind = "threshold"
match = { event = "auth.failure" }
window = "60"
condition = { lt = 3 }

[[rule]]
id = "bad_regex"
title = "t"
severity = "low"
kind = "match"
match = { tool = { re = "(" }, source_ip = { cidr = "10.0.0.0/99" }, x = { between = 1 } }

[[rule]]
id = "absence_without_key"
title = "t"
severity = "low"
kind = "absence"
start = { event = "session.start" }
stop = { event = "session.end" }
deadline_by_task = "missing.toml"
window = "1m"

[[rule]]
id = "unknown_field"
title = "t"
severity = "low"
kind = "match"
match = { event = "x" }
colour = "red"

[[rule]]
id = "dup"
title = "t"
severity = "low"
kind = "match"
match = { event = "x" }
"#;
    let other = r#"
[[rule]]
id = "dup"
title = "t"
severity = "low"
kind = "nonsense"
"#;
    let errs = errors(&[
        ("a.toml", bad),
        ("b.toml", other),
        ("tasks.toml", "[tasks]\nx = \"soon\"\n"),
    ]);
    let joined = errs.join("\n");
    for want in [
        "a.toml: rule `no_unit`: `window`: `60` has no unit",
        "a.toml: rule `no_unit`: `condition`: unknown operator `lt`",
        "a.toml: rule `bad_regex`: `match`: field `tool`: invalid regex",
        "a.toml: rule `bad_regex`: `match`: field `source_ip`: invalid CIDR `10.0.0.0/99`",
        "a.toml: rule `bad_regex`: `match`: field `x`: unknown operator `between`",
        "a.toml: rule `absence_without_key`: `window` does not apply to kind `absence`",
        "a.toml: rule `absence_without_key`: `key` is required",
        "a.toml: rule `absence_without_key`: `deadline` is required",
        "a.toml: rule `absence_without_key`: `deadline_by_task`: no task table `missing.toml`",
        "a.toml: rule `unknown_field`: unknown field `colour`",
        "b.toml: rule `dup`: unknown kind `nonsense`",
        "tasks.toml: task `x`:",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
}

#[test]
fn duplicate_ids_and_reserved_ids_are_refused() {
    let a = match_rule("same", r#"{ event = "x" }"#);
    let errs = errors(&[("a.toml", &a), ("b.toml", &a)]);
    assert!(
        errs.iter()
            .any(|e| e.contains("duplicate rule id (also defined in a.toml)")),
        "{errs:?}"
    );
    let errs = errors(&[(
        "a.toml",
        &match_rule("state_pressure", r#"{ event = "x" }"#),
    )]);
    assert!(errs.iter().any(|e| e.contains("reserved")), "{errs:?}");
}

#[test]
fn syntax_errors_name_the_file() {
    let errs = errors(&[("broken.toml", "[[rule]\nid = ")]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("broken.toml: "), "{errs:?}");
}

#[test]
fn an_empty_set_is_refused() {
    let errs = errors(&[("tasks.toml", "[tasks]\n")]);
    assert!(errs[0].contains("no rules found"), "{errs:?}");
}

#[test]
fn a_rules_directory_replaces_the_embedded_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("only.toml"),
        match_rule("only_rule", r#"{ event = "x" }"#),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a rule file").unwrap();
    let set = mcp_alertd::config::load_dir(dir.path()).unwrap();
    let ids: Vec<&str> = set.rules().iter().map(|r| &*r.id).collect();
    assert_eq!(ids, vec!["only_rule"]);
    let err = mcp_alertd::config::load_dir(&dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("cannot read rules directory"));
}

#[test]
fn a_disabled_rule_is_validated_but_not_run() {
    let r = rules(&format!(
        "{}enabled = false\n{}",
        match_rule("off", r#"{ event = "x" }"#),
        match_rule("on", r#"{ event = "x" }"#)
    ));
    let ids: Vec<&str> = r.rules().iter().map(|r| &*r.id).collect();
    assert_eq!(ids, vec!["on"]);
    let errs = errors(&[(
        "a.toml",
        &format!(
            "{}enabled = false\nwindow = \"1m\"\n",
            match_rule("off", r#"{ event = "x" }"#)
        ),
    )]);
    assert!(
        errs[0].contains("`window` does not apply to kind `match`"),
        "{errs:?}"
    );
}

#[test]
fn the_shipped_rules_directory_equals_the_embedded_set() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let from_dir = mcp_alertd::config::load_dir(&dir).unwrap();
    let embedded = RuleSet::embedded().unwrap();
    let describe = |s: &RuleSet| {
        s.rules()
            .iter()
            .map(|r| format!("{} {}", r.id, r.describe()))
            .collect::<Vec<_>>()
    };
    assert_eq!(describe(&from_dir), describe(&embedded));
}
