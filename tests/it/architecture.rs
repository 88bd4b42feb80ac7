//! The import rule of `src/lib.rs`, checked on the source text: stages
//! import only to their left (`source → decode → engine → router → store →
//! outbox → sink → pipeline`) and the vocabulary leaves; stages never
//! import `config`; nothing imports `app` or `cli`; no cycle between
//! top-level modules. A new top-level module fails the test until it is
//! given its place here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where a top-level module stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Vocabulary shared by everything: imports only other leaves.
    Leaf,
    /// A pipeline stage, by its place in the flow (lower is to the left).
    Stage(u8),
    /// Assembles the kinds' settings: leaves and stages.
    Config,
    /// One-shot commands and tools: anything but `app` and `cli`.
    Tool,
    /// The composition root and the command line: imported by nothing.
    Root,
}

fn tier(module: &str) -> Option<Tier> {
    Some(match module {
        "alert" | "clock" | "condition" | "duration" | "event" | "kafka" | "options"
        | "telemetry" => Tier::Leaf,
        "source" => Tier::Stage(0),
        "decode" => Tier::Stage(1),
        "engine" => Tier::Stage(2),
        "router" => Tier::Stage(3),
        "store" => Tier::Stage(4),
        "outbox" => Tier::Stage(5),
        "sink" => Tier::Stage(6),
        // Fed by the engine thread beside the outbox; read over HTTP.
        "console" => Tier::Stage(6),
        "pipeline" => Tier::Stage(7),
        "config" => Tier::Config,
        "replay" | "rule_tests" | "bench_load" | "corpus" | "status" => Tier::Tool,
        "app" | "cli" => Tier::Root,
        _ => return None,
    })
}

/// Why `from` may not import `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<String> {
    let (Some(f), Some(t)) = (tier(from), tier(to)) else {
        return Some(format!(
            "`{from}` or `{to}` has no place in the import rule"
        ));
    };
    match (f, t) {
        (_, Tier::Root) => Some("nothing imports `app` or `cli`".into()),
        (Tier::Leaf, Tier::Leaf) => None,
        (Tier::Leaf, _) => Some("a vocabulary leaf imports only other leaves".into()),
        (Tier::Stage(_), Tier::Config) => Some("stages never import `config`".into()),
        (Tier::Stage(a), Tier::Stage(b)) if b >= a => {
            Some("a stage imports only stages to its left".into())
        }
        (Tier::Stage(_), Tier::Tool) => Some("stages never import the tools".into()),
        (Tier::Config, Tier::Tool) => Some("`config` never imports the tools".into()),
        _ => None,
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "main" && name != "lib").then_some(name)
}

/// The top-level modules a file's code names as `crate::X` (comments are
/// skipped; `crate::{a, b::c}` counts `a` and `b`).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `mcp_alertd_crate::`
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// module → (imported module → the files that import it).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let Some(from) = module_of(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.strip_prefix(src).unwrap().display().to_string();
        let entry = graph.entry(from.clone()).or_default();
        for to in imports(&text) {
            if to != from {
                entry.entry(to).or_default().insert(shown.clone());
            }
        }
    }
    graph
}

/// Every import against the rule, and every cycle, as messages.
fn violations(graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, tos) in graph {
        if tier(from).is_none() {
            out.push(format!(
                "module `{from}` has no place in the import rule (tests/it/architecture.rs)"
            ));
        }
        for (to, files) in tos {
            if let Some(why) = forbidden(from, to) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                out.push(format!("{from} → {to} ({}): {why}", files.join(", ")));
            }
        }
    }
    out.extend(cycles(graph));
    out
}

/// Cycles between top-level modules (each reported once, from its
/// smallest module).
fn cycles(graph: &Graph) -> Vec<String> {
    fn walk(
        graph: &Graph,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        for next in graph.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                found.insert(cycle);
            } else if next.as_str() > start && !path.contains(next) && path.len() < 32 {
                path.push(next.clone());
                walk(graph, start, next, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        walk(graph, start, start, &mut vec![start.clone()], &mut found);
    }
    found
        .into_iter()
        .map(|c| format!("import cycle: {}", c.join(" → ")))
        .collect()
}

#[test]
fn imports_follow_the_data_flow_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.contains_key("pipeline") && graph.contains_key("engine"));
    let found = violations(&graph);
    assert!(
        found.is_empty(),
        "import rule broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_a_backward_import_a_config_import_and_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = graph(&src);
    // A source reaching into the engine, a sink reading `config`, and the
    // engine importing the pipeline (which imports the engine).
    let plant = |g: &mut Graph, from: &str, to: &str| {
        g.entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert("planted.rs".into());
    };
    plant(&mut graph, "source", "engine");
    plant(&mut graph, "sink", "config");
    plant(&mut graph, "engine", "pipeline");
    plant(&mut graph, "telemetry", "app");
    let found = violations(&graph);
    let has = |needle: &str| found.iter().any(|v| v.contains(needle));
    assert!(has(
        "source → engine (planted.rs): a stage imports only stages to its left"
    ));
    assert!(has(
        "sink → config (planted.rs): stages never import `config`"
    ));
    assert!(has(
        "telemetry → app (planted.rs): nothing imports `app` or `cli`"
    ));
    assert!(has("import cycle: engine → pipeline → engine"), "{found:?}");
}

#[test]
fn imports_are_read_from_code_not_comments() {
    let text = "use crate::engine::Engine;\n// crate::app is named here only\nuse crate::{alert::Alert, event};\nlet x = mcp_alertd_crate::y;";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["alert", "engine", "event"]);
}
