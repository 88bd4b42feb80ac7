//! Rule files (DESIGN §4): TOML → validated, compiled [`RuleSet`].
//!
//! Loading is all or nothing: every problem in every file is collected into
//! one [`RuleSetError`] (file, rule id, message) and no rule of a set that
//! has any problem is used. The default rules and task table ship in
//! `rules/` and are embedded in the binary.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use super::condition::{Cond, FieldRef};
use super::kinds::{absence, cardinality, matching, membership, sequence, threshold};
use crate::alert::{RuleInfo, Severity};
use crate::duration::{self, display_ms};
use crate::event::EventKind;
use crate::options::section::{self, fields_of};

/// Default life of a lifetime-threshold key after its last event.
pub const DEFAULT_KEY_TTL_MS: i64 = 24 * 3_600_000;
/// The task table file read from the rules directory.
pub const TASKS_FILE: &str = "tasks.toml";

/// The embedded default rule set: (file name, text).
pub const EMBEDDED: [(&str, &str); 5] = [
    ("auth.toml", include_str!("../../rules/auth.toml")),
    ("tools.toml", include_str!("../../rules/tools.toml")),
    (
        "credentials.toml",
        include_str!("../../rules/credentials.toml"),
    ),
    ("sessions.toml", include_str!("../../rules/sessions.toml")),
    (TASKS_FILE, include_str!("../../rules/tasks.toml")),
];

/// `gt` or `gte` against a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOp {
    Gt,
    Gte,
}

/// A threshold condition such as `{ gt = 3 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountCondition {
    pub op: CountOp,
    pub value: u64,
}

impl CountCondition {
    pub fn holds(self, count: u64) -> bool {
        match self.op {
            CountOp::Gt => count > self.value,
            CountOp::Gte => count >= self.value,
        }
    }
}

impl fmt::Display for CountCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            CountOp::Gt => ">",
            CountOp::Gte => ">=",
        };
        write!(f, "{op} {}", self.value)
    }
}

/// How a task's deadline is found for an absence rule.
#[derive(Debug, Clone)]
pub struct DeadlineSpec {
    /// A numeric field of the start event, in seconds.
    pub field: Option<FieldRef>,
    /// `declared_task` → milliseconds.
    pub tasks: Option<Arc<HashMap<String, i64>>>,
    /// The rule's fallback, milliseconds.
    pub default_ms: i64,
}

/// The detection semantics of one rule.
#[derive(Debug, Clone)]
pub enum RuleKind {
    Match {
        when: Cond,
        group_by: Vec<FieldRef>,
    },
    Threshold {
        when: Cond,
        group_by: Vec<FieldRef>,
        condition: CountCondition,
        /// `condition` as alerts show it (`gt 3`).
        condition_text: Arc<str>,
        /// `Some((window, suppress))` for a sliding window, milliseconds.
        window: Option<(i64, i64)>,
        key_ttl_ms: i64,
    },
    Absence {
        start: Cond,
        stop: Cond,
        key: Vec<FieldRef>,
        deadline: DeadlineSpec,
    },
    Sequence {
        first: Cond,
        then: Cond,
        /// Key fields of the `first` side and, in the same order, of the
        /// `then` side (the alert's key names the latter).
        first_key: Vec<FieldRef>,
        then_key: Vec<FieldRef>,
        within_ms: i64,
        after_ms: i64,
    },
    Cardinality {
        when: Cond,
        group_by: Vec<FieldRef>,
        distinct: FieldRef,
        condition: CountCondition,
        condition_text: Arc<str>,
        /// (window, suppress), milliseconds.
        window: (i64, i64),
    },
    Membership {
        define: Cond,
        check: Cond,
        until: Option<Cond>,
        key: Vec<FieldRef>,
        set: FieldRef,
        field: FieldRef,
        key_ttl_ms: i64,
    },
}

impl RuleKind {
    /// Every `kind` a rule may have.
    pub const KINDS: &str = "match, threshold, absence, sequence, cardinality or membership";

    /// Compiles the kind's own keys of a `[[rule]]` (the common ones taken
    /// out); keys of another kind are reported as not applying.
    fn compile(
        kind: &str,
        table: toml::Table,
        tables: &TaskTables,
        errors: &mut Vec<String>,
    ) -> Option<RuleKind> {
        let kinds = [
            fields_of::<matching::Raw>(),
            fields_of::<threshold::Raw>(),
            fields_of::<absence::Raw>(),
            fields_of::<sequence::Raw>(),
            fields_of::<cardinality::Raw>(),
            fields_of::<membership::Raw>(),
        ];
        let at = ("kind", kind);
        match kind {
            "match" => section::kind::<matching::Raw>(table, "", at, &kinds, errors)
                .and_then(|r| r.compile(errors)),
            "threshold" => section::kind::<threshold::Raw>(table, "", at, &kinds, errors)
                .and_then(|r| r.compile(errors)),
            "absence" => section::kind::<absence::Raw>(table, "", at, &kinds, errors)
                .and_then(|r| r.compile(tables, errors)),
            "sequence" => section::kind::<sequence::Raw>(table, "", at, &kinds, errors)
                .and_then(|r| r.compile(errors)),
            "cardinality" => section::kind::<cardinality::Raw>(table, "", at, &kinds, errors)
                .and_then(|r| r.compile(errors)),
            "membership" => section::kind::<membership::Raw>(table, "", at, &kinds, errors)
                .and_then(|r| r.compile(errors)),
            other => {
                errors.push(format!("unknown kind `{other}` (expected {})", Self::KINDS));
                None
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Match { .. } => "match",
            RuleKind::Threshold { .. } => "threshold",
            RuleKind::Absence { .. } => "absence",
            RuleKind::Sequence { .. } => "sequence",
            RuleKind::Cardinality { .. } => "cardinality",
            RuleKind::Membership { .. } => "membership",
        }
    }

    /// Every condition of the rule.
    pub fn conds(&self) -> Vec<&Cond> {
        match self {
            RuleKind::Match { when, .. }
            | RuleKind::Threshold { when, .. }
            | RuleKind::Cardinality { when, .. } => vec![when],
            RuleKind::Absence { start, stop, .. } => vec![start, stop],
            RuleKind::Sequence { first, then, .. } => vec![first, then],
            RuleKind::Membership {
                define,
                check,
                until,
                ..
            } => {
                let mut all = vec![define, check];
                all.extend(until);
                all
            }
        }
    }

    /// The fields forming the alert key (tenant excluded).
    pub fn key_fields(&self) -> &[FieldRef] {
        match self {
            RuleKind::Match { group_by, .. }
            | RuleKind::Threshold { group_by, .. }
            | RuleKind::Cardinality { group_by, .. } => group_by,
            RuleKind::Absence { key, .. } | RuleKind::Membership { key, .. } => key,
            RuleKind::Sequence { then_key, .. } => then_key,
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Arc<str>,
    pub title: Arc<str>,
    pub severity: Severity,
    pub description: Option<String>,
    /// The file it was loaded from.
    pub file: String,
    pub kind: RuleKind,
    /// `false`: the tenant is not part of the rule's keys (cross-tenant
    /// rules); the alert's tenant is its trigger's.
    pub tenant_scoped: bool,
    /// What its alerts say about it.
    pub info: Arc<RuleInfo>,
    /// The rule's definition in canonical form (and its task table, if it
    /// uses one): two rules with equal definitions detect identically, so a
    /// reload keeps their state.
    pub definition: String,
}

impl Rule {
    /// One line describing what the rule does (for `check`).
    pub fn describe(&self) -> String {
        let scoped = self.tenant_scoped;
        let fields = |f: &[FieldRef]| {
            let mut names = if scoped { vec!["tenant"] } else { Vec::new() };
            names.extend(f.iter().map(FieldRef::name));
            let mut text = names.join(", ");
            if !scoped {
                text.push_str("; across tenants");
            }
            text
        };
        match &self.kind {
            RuleKind::Match { group_by, .. } => {
                format!("every matching event, key ({})", fields(group_by))
            }
            RuleKind::Threshold {
                group_by,
                condition,
                window,
                key_ttl_ms,
                ..
            } => match window {
                Some((w, s)) => format!(
                    "count {condition} within {} by ({}), suppress {}",
                    display_ms(*w),
                    fields(group_by),
                    display_ms(*s)
                ),
                None => format!(
                    "lifetime count {condition} by ({}), once per key, key ttl {}",
                    fields(group_by),
                    display_ms(*key_ttl_ms)
                ),
            },
            RuleKind::Absence { key, deadline, .. } => {
                let mut by = Vec::new();
                if let Some(f) = &deadline.field {
                    by.push(format!("field {}", f.name()));
                }
                if let Some(t) = &deadline.tasks {
                    by.push(format!("task table ({} tasks)", t.len()));
                }
                by.push(format!("default {}", display_ms(deadline.default_ms)));
                format!(
                    "stop within deadline by ({}); deadline: {}",
                    fields(key),
                    by.join(" > ")
                )
            }
            RuleKind::Sequence {
                first,
                first_key,
                then_key,
                within_ms,
                after_ms,
                ..
            } => {
                let key = if first_key == then_key {
                    fields(then_key)
                } else {
                    let names = |f: &[FieldRef]| {
                        f.iter().map(FieldRef::name).collect::<Vec<_>>().join(", ")
                    };
                    format!("{} = first's {}", fields(then_key), names(first_key))
                };
                let first = match first.alert() {
                    Some(rule) => format!("an alert of {rule}"),
                    None => "first".to_owned(),
                };
                let after = if *after_ms > 0 {
                    format!("after {} and ", display_ms(*after_ms))
                } else {
                    String::new()
                };
                format!(
                    "{first}, then a match {after}within {} by ({key}); once per first",
                    display_ms(*within_ms)
                )
            }
            RuleKind::Cardinality {
                group_by,
                distinct,
                condition,
                window: (w, s),
                ..
            } => format!(
                "distinct {} {condition} within {} by ({}), suppress {}",
                distinct.name(),
                display_ms(*w),
                fields(group_by),
                display_ms(*s)
            ),
            RuleKind::Membership {
                key,
                set,
                field,
                until,
                key_ttl_ms,
                ..
            } => format!(
                "check's {} not in define's {} by ({}); set ends at {}key ttl {}",
                field.name(),
                set.name(),
                fields(key),
                if until.is_some() { "until or " } else { "" },
                display_ms(*key_ttl_ms)
            ),
        }
    }
}

/// One problem found while loading rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{}: rule `{rule}`: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem of a refused rule set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleSetError {
    pub errors: Vec<RuleError>,
}

impl fmt::Display for RuleSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid rule set ({} error", self.errors.len())?;
        if self.errors.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// A validated set of rules, ordered by id (the tie-break order of timers).
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Per event kind, the rules (indexes, ascending) with a condition an
    /// input event of that kind can match: the prefilter.
    by_kind: Vec<Vec<usize>>,
    /// Per rule, the rules that name its alerts (ascending).
    consumers: Vec<Vec<usize>>,
    /// Per rule in an alert chain, the lowest index of the rules its
    /// chains connect it with (their group); `None` outside any chain.
    chain_groups: Vec<Option<usize>>,
    /// Where the set came from (`embedded` or a directory), for messages.
    pub origin: String,
}

impl RuleSet {
    /// The embedded default rules.
    pub fn embedded() -> Result<RuleSet, RuleSetError> {
        let files = EMBEDDED
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        RuleSet::from_files(files, "embedded")
    }

    /// Compiles named file texts; `tasks.toml` (if present) is the task table.
    pub fn from_files(files: Vec<(String, String)>, origin: &str) -> Result<RuleSet, RuleSetError> {
        let mut errors = Vec::new();
        let mut tables: BTreeMap<String, Arc<HashMap<String, i64>>> = BTreeMap::new();
        for (name, text) in &files {
            if name == TASKS_FILE {
                match parse_tasks(text) {
                    Ok(t) => {
                        tables.insert(name.clone(), Arc::new(t));
                    }
                    Err(msgs) => errors.extend(msgs.into_iter().map(|message| RuleError {
                        file: name.clone(),
                        rule: None,
                        message,
                    })),
                }
            }
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (name, text) in &files {
            if name != TASKS_FILE {
                parse_rule_file(name, text, &tables, &mut rules, &mut errors);
            }
        }
        let mut seen: HashMap<Arc<str>, String> = HashMap::new();
        for rule in &rules {
            if let Some(first) = seen.insert(rule.id.clone(), rule.file.clone()) {
                errors.push(RuleError {
                    file: rule.file.clone(),
                    rule: Some(rule.id.to_string()),
                    message: format!("duplicate rule id (also defined in {first})"),
                });
            }
        }
        if rules.is_empty() && errors.is_empty() {
            errors.push(RuleError {
                file: origin.to_owned(),
                rule: None,
                message: "no rules found (expected *.toml files with [[rule]] tables)".to_owned(),
            });
        }
        if !errors.is_empty() {
            return Err(RuleSetError { errors });
        }
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        let consumers = alert_chains(&rules).map_err(|errors| RuleSetError { errors })?;
        Ok(RuleSet {
            by_kind: prefilter(&rules),
            chain_groups: chain_groups(&consumers),
            consumers,
            rules,
            origin: origin.to_owned(),
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules an input event of `kind` can match, ascending.
    pub fn for_kind(&self, kind: EventKind) -> &[usize] {
        self.by_kind.get(kind.index()).map_or(&[], Vec::as_slice)
    }

    /// The rules that name the alerts of rule `i`, ascending.
    pub fn consumers(&self, i: usize) -> &[usize] {
        self.consumers.get(i).map_or(&[], Vec::as_slice)
    }

    /// Whether any rule names another's alerts.
    pub fn has_chains(&self) -> bool {
        self.consumers.iter().any(|c| !c.is_empty())
    }

    /// The group of rule `i` when alert chains connect it with others:
    /// the lowest index in the group, the same for all its rules. An engine
    /// thread holds a group whole (its alerts feed its own rules).
    pub fn chain_group(&self, i: usize) -> Option<usize> {
        self.chain_groups.get(i).copied().flatten()
    }

    /// The index of the rule with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.rules.binary_search_by(|r| (*r.id).cmp(id)).ok()
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.id == id)
    }
}

/// Per event kind, the rules whose conditions an input event of that kind
/// can match (a condition without an `event` test matches every kind).
fn prefilter(rules: &[Rule]) -> Vec<Vec<usize>> {
    let mut by_kind = vec![Vec::new(); EventKind::COUNT];
    for (i, rule) in rules.iter().enumerate() {
        let mut kinds = [false; EventKind::COUNT];
        for cond in rule.kind.conds() {
            if cond.alert().is_some() {
                continue;
            }
            match cond.kinds() {
                Some(ks) => ks.iter().for_each(|k| kinds[k.index()] = true),
                None => kinds = [true; EventKind::COUNT],
            }
        }
        for (k, on) in kinds.iter().enumerate() {
            if *on {
                by_kind[k].push(i);
            }
        }
    }
    by_kind
}

/// The groups of rules that alert chains connect (producers with their
/// consumers, transitively), each named by its lowest index.
fn chain_groups(consumers: &[Vec<usize>]) -> Vec<Option<usize>> {
    let mut group: Vec<Option<usize>> = vec![None; consumers.len()];
    // Merging whole groups at each edge: chains are few and short.
    for (i, cs) in consumers.iter().enumerate() {
        for &c in cs {
            let (a, b) = (group[i].unwrap_or(i), group[c].unwrap_or(c));
            let low = a.min(b);
            for g in group.iter_mut() {
                if matches!(*g, Some(x) if x == a || x == b) {
                    *g = Some(low);
                }
            }
            group[i] = Some(low);
            group[c] = Some(low);
        }
    }
    group
}

/// Checks every `alert = "<rule id>"` names a rule of the set and that no
/// chain of them comes back to where it began; returns, per rule, the
/// rules that consume its alerts.
fn alert_chains(rules: &[Rule]) -> Result<Vec<Vec<usize>>, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut consumers = vec![Vec::new(); rules.len()];
    let mut names: Vec<Vec<usize>> = vec![Vec::new(); rules.len()];
    for (i, rule) in rules.iter().enumerate() {
        for cond in rule.kind.conds() {
            let Some(id) = cond.alert() else { continue };
            match rules.binary_search_by(|r| (*r.id).cmp(id)) {
                Ok(j) if j == i => errors.push(RuleError {
                    file: rule.file.clone(),
                    rule: Some(rule.id.to_string()),
                    message: "`alert` names the rule itself: its alerts would feed it for ever"
                        .to_owned(),
                }),
                Ok(j) => {
                    if !consumers[j].contains(&i) {
                        consumers[j].push(i);
                        names[i].push(j);
                    }
                }
                Err(_) => errors.push(RuleError {
                    file: rule.file.clone(),
                    rule: Some(rule.id.to_string()),
                    message: format!("`alert` names `{id}`, which is no enabled rule of this set"),
                }),
            }
        }
    }
    // A cycle: depth-first over "names", colouring rules in progress.
    let mut state = vec![0u8; rules.len()]; // 0 new, 1 on the path, 2 done
    fn visit(
        i: usize,
        names: &[Vec<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for &j in &names[i] {
            if state[j] == 1 {
                let from = path.iter().position(|&p| p == j).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if state[j] == 0
                && let Some(c) = visit(j, names, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    for i in 0..rules.len() {
        if state[i] == 0
            && let Some(cycle) = visit(i, &names, &mut state, &mut Vec::new())
        {
            let chain: Vec<&str> = cycle.iter().map(|&k| &*rules[k].id).collect();
            errors.push(RuleError {
                file: rules[i].file.clone(),
                rule: Some(rules[cycle[0]].id.to_string()),
                message: format!(
                    "alert chains must be acyclic: {} names the alerts of the next, back to the first",
                    chain.join(" -> ")
                ),
            });
            break;
        }
    }
    for c in &mut consumers {
        c.sort_unstable();
    }
    if errors.is_empty() {
        Ok(consumers)
    } else {
        Err(errors)
    }
}

fn parse_tasks(text: &str) -> Result<HashMap<String, i64>, Vec<String>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(default)]
        tasks: BTreeMap<String, String>,
    }
    let raw: Raw = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut errors = Vec::new();
    let mut out = HashMap::with_capacity(raw.tasks.len());
    for (task, text) in raw.tasks {
        match duration::parse_ms(&text) {
            Ok(ms) if ms > 0 => {
                out.insert(task, ms);
            }
            Ok(_) => errors.push(format!("task `{task}`: duration must be positive")),
            Err(e) => errors.push(format!("task `{task}`: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The keys every `[[rule]]` has; the rest belong to its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    id: String,
    title: String,
    severity: Severity,
    kind: String,
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    tenant_scoped: bool,
}

fn yes() -> bool {
    true
}

fn parse_rule_file(
    file: &str,
    text: &str,
    tables: &BTreeMap<String, Arc<HashMap<String, i64>>>,
    rules: &mut Vec<Rule>,
    errors: &mut Vec<RuleError>,
) {
    let err = |rule: Option<&str>, message: String| RuleError {
        file: file.to_owned(),
        rule: rule.map(str::to_owned),
        message,
    };
    let mut doc: toml::Table = match toml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(err(None, e.to_string().trim_end().to_owned()));
            return;
        }
    };
    let entries = match doc.remove("rule") {
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => {
            errors.push(err(
                None,
                "`rule` must be an array of tables ([[rule]])".to_owned(),
            ));
            return;
        }
        None => Vec::new(),
    };
    for key in doc.keys() {
        errors.push(err(
            None,
            format!("unknown top-level key `{key}` (expected [[rule]] tables)"),
        ));
    }
    for (index, entry) in entries.into_iter().enumerate() {
        let label = entry
            .get("id")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", index + 1), str::to_owned);
        let mut definition = toml::to_string(&entry).unwrap_or_default();
        let toml::Value::Table(table) = entry else {
            errors.push(err(Some(&label), "a [[rule]] must be a table".to_owned()));
            continue;
        };
        if let Some(table) = table
            .get("deadline_by_task")
            .and_then(toml::Value::as_str)
            .and_then(|t| tables.get(t))
        {
            let mut tasks: Vec<_> = table.iter().collect();
            tasks.sort();
            definition.push_str(&format!("\n# tasks: {tasks:?}"));
        }
        let mut msgs = Vec::new();
        let rule = compile_rule(file, table, definition, tables, &mut msgs);
        errors.extend(msgs.into_iter().map(|m| err(Some(&label), m)));
        if let Some(rule) = rule {
            rules.push(rule);
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
}

/// The task tables of a rule set, by file name.
pub(super) type TaskTables = BTreeMap<String, Arc<HashMap<String, i64>>>;

fn compile_rule(
    file: &str,
    mut table: toml::Table,
    definition: String,
    tables: &TaskTables,
    errors: &mut Vec<String>,
) -> Option<Rule> {
    let raw: RawCommon = section::common(&mut table, "", errors)?;
    if !valid_id(&raw.id) {
        errors.push("`id` must be 1-128 characters of a-z, 0-9, `_`, `-`, `.`".to_owned());
    }
    if crate::alert::daemon::RULES.contains(&raw.id.as_str()) {
        errors.push(format!(
            "`{}` is reserved for the daemon's own alerts",
            raw.id
        ));
    }
    if raw.title.trim().is_empty() {
        errors.push("`title` must not be empty".to_owned());
    }
    let kind = RuleKind::compile(&raw.kind, table, tables, errors);
    if !errors.is_empty() || !raw.enabled {
        return None;
    }
    let kind = kind?;
    let id: Arc<str> = raw.id.into();
    let title: Arc<str> = raw.title.into();
    let info = Arc::new(RuleInfo {
        id: id.clone(),
        title: title.clone(),
        severity: raw.severity,
        key_fields: kind
            .key_fields()
            .iter()
            .map(|f| f.name().to_owned())
            .collect(),
    });
    Some(Rule {
        id,
        title,
        severity: raw.severity,
        description: raw.description,
        file: file.to_owned(),
        kind,
        tenant_scoped: raw.tenant_scoped,
        info,
        definition,
    })
}

/// A positive duration option (`"60s"`), if given.
pub(super) fn positive_duration(
    name: &str,
    value: Option<&str>,
    errors: &mut Vec<String>,
) -> Option<i64> {
    match duration::parse_ms(value?) {
        Ok(ms) if ms > 0 => Some(ms),
        Ok(_) => {
            errors.push(format!("`{name}` must be positive"));
            None
        }
        Err(e) => {
            errors.push(format!("`{name}`: {e}"));
            None
        }
    }
}

/// Key fields (`group_by`, `key`): never `tenant` (always part of the key),
/// never empty or twice.
pub(super) fn key_fields(
    names: Option<&[String]>,
    what: &str,
    errors: &mut Vec<String>,
) -> Vec<FieldRef> {
    let mut out: Vec<FieldRef> = Vec::new();
    for name in names.into_iter().flatten() {
        if name == "tenant" {
            errors.push(format!(
                "`{what}`: `tenant` is always part of the key; remove it"
            ));
        } else if name.is_empty() {
            errors.push(format!("`{what}`: empty field name"));
        } else if out.iter().any(|f| f.name() == name) {
            errors.push(format!("`{what}`: field `{name}` listed twice"));
        } else {
            out.push(FieldRef::parse(name));
        }
    }
    out
}

/// A required condition over event fields (`match`, `start`, `stop`).
pub(super) fn condition(
    name: &str,
    table: Option<&toml::Table>,
    errors: &mut Vec<String>,
) -> Option<Cond> {
    match table {
        None => {
            errors.push(format!("`{name}` is required"));
            None
        }
        Some(t) if t.is_empty() => {
            errors.push(format!(
                "`{name}` must test at least one field (e.g. {{ event = \"auth.failure\" }})"
            ));
            None
        }
        Some(t) => {
            let before = errors.len();
            let c = Cond::compile(t, errors);
            for e in &mut errors[before..] {
                *e = format!("`{name}`: {e}");
            }
            (errors.len() == before).then_some(c)
        }
    }
}

pub(super) fn count_condition(
    table: Option<&toml::Table>,
    errors: &mut Vec<String>,
) -> Option<CountCondition> {
    let Some(table) = table else {
        errors.push("`condition` is required, e.g. { gt = 3 }".to_owned());
        return None;
    };
    if table.len() != 1 {
        errors.push("`condition` takes exactly one of `gt`, `gte`, e.g. { gt = 3 }".to_owned());
        return None;
    }
    let (op, value) = table.iter().next()?;
    let op = match op.as_str() {
        "gt" => CountOp::Gt,
        "gte" => CountOp::Gte,
        other => {
            errors.push(format!(
                "`condition`: unknown operator `{other}` (gt or gte: conditions must grow with the count)"
            ));
            return None;
        }
    };
    match value.as_integer().and_then(|v| u64::try_from(v).ok()) {
        Some(value) if !(op == CountOp::Gte && value == 0) => Some(CountCondition { op, value }),
        Some(_) => {
            errors.push("`condition`: `gte = 0` always holds; use a kind `match` rule".to_owned());
            None
        }
        None => {
            errors.push("`condition`: the count must be a non-negative integer".to_owned());
            None
        }
    }
}
