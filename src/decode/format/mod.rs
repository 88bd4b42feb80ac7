//! Declarative input formats (DESIGN §2b, FORMATS.md): a TOML mapping file
//! says which input records are the format's (`signature`), which
//! condition over input paths yields which native event (`[[map]]`), and
//! how each native field is filled (paths with fallbacks, constants, value
//! maps, regex captures, timestamp parsing). The built-in formats are such
//! files, embedded from `formats/`; users add theirs from a directory.
//!
//! A format is compiled once ([`Format::compile`], every problem reported
//! at once) and applied per record by `map` without I/O or state.
//!
//! Mapping semantics, per record:
//! - a record whose `signature` does not hold is not the format's
//!   (`unmapped`);
//! - entries are grouped by their `each` path (no `each`: the record
//!   itself), in file order; for each item of a group (the record, or each
//!   element of the `each` array) the first entry whose `when` holds yields
//!   one event. Paths starting with `@` read the element (`@.tool_name`);
//! - a record that yields no event is `unmapped`; one that yields several,
//!   or any through `each`, numbers them: position `<record>#n`, and each
//!   has its own id fingerprint;
//! - every top-level input field is kept on each event (after secrets are
//!   dropped), so rule conditions can test product fields by their input
//!   paths (`outcome`, `target.type`).

mod map;
pub mod time;
pub mod tree;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use regex::Regex;

use crate::condition::{Path, Test, compile_test};
use crate::event::{EventKind, FieldId};
use time::TimeFormat;

/// The built-in formats, embedded from `formats/` (name, file text).
pub const BUILT_IN: [(&str, &str); 9] = [
    ("toolhive", include_str!("../../../formats/toolhive.toml")),
    (
        "agentgateway",
        include_str!("../../../formats/agentgateway.toml"),
    ),
    ("ocsf", include_str!("../../../formats/ocsf.toml")),
    ("kong", include_str!("../../../formats/kong.toml")),
    (
        "cloudflare",
        include_str!("../../../formats/cloudflare.toml"),
    ),
    (
        "azure_apim",
        include_str!("../../../formats/azure_apim.toml"),
    ),
    (
        "contextforge",
        include_str!("../../../formats/contextforge.toml"),
    ),
    ("couchbase", include_str!("../../../formats/couchbase.toml")),
    ("ecs", include_str!("../../../formats/ecs.toml")),
];

/// The names a source may give besides a format's: the native schema, and
/// per-record detection.
pub const NATIVE: &str = "native";
pub const AUTO: &str = "auto";

/// One problem of one format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub file: String,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// Every problem of a set of format files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FormatSetError {
    pub errors: Vec<FormatError>,
}

impl fmt::Display for FormatSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A compiled format.
#[derive(Debug)]
pub struct Format {
    pub name: Arc<str>,
    pub title: String,
    /// `built-in` or the file it was read from.
    pub origin: String,
    /// Any of these condition tables makes a record the format's.
    signature: Option<Vec<Conds>>,
    /// An envelope array (`records`): its elements are mapped as records.
    unwrap: Option<Path>,
    groups: Vec<Group>,
    /// What parsing keeps of a record: the paths the format reads.
    need: tree::Need,
}

#[derive(Debug)]
struct Group {
    each: Option<Path>,
    name: Option<String>,
    entries: Vec<Entry>,
}

/// The event an entry yields: a fixed name, or one read from the input.
#[derive(Debug)]
enum EventName {
    Fixed(Arc<str>, EventKind),
    From(FieldSpec),
}

#[derive(Debug)]
struct Entry {
    event: EventName,
    when: Conds,
    /// The format's `[fields]` merged with the entry's own.
    fields: Vec<(Target, FieldSpec)>,
}

/// Where a value is read: the record, or the current `each` element.
#[derive(Debug, Clone)]
enum Src {
    Record(Path),
    /// `@` (the element) or `@.path` (below it).
    Item(Option<Path>),
}

/// A condition table over input paths.
#[derive(Debug, Default)]
struct Conds {
    tests: Vec<(Src, Test)>,
}

/// A native field a mapping fills.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Ts,
    Tenant,
    Str(FieldId),
    AllowedTools,
    ExpectedRuntime,
    /// A custom field, kept for rule conditions.
    Extra(Box<str>),
}

impl Target {
    fn parse(name: &str) -> Result<Target, String> {
        Ok(match name {
            "ts" => Target::Ts,
            "tenant" => Target::Tenant,
            "allowed_tools" => Target::AllowedTools,
            "expected_runtime_s" => Target::ExpectedRuntime,
            "event" => {
                return Err("`event` is set by each `[[map]]` entry, not mapped".to_owned());
            }
            _ if super::is_secret_field(name) => {
                return Err(format!(
                    "`{name}` looks like a credential field; such fields are never kept"
                ));
            }
            _ => FieldId::from_name(name).map_or_else(|| Target::Extra(name.into()), Target::Str),
        })
    }
}

/// A constant value of a field spec.
#[derive(Debug, Clone)]
enum Const {
    Str(String),
    Num(f64),
    Bool(bool),
    List(Vec<String>),
}

/// How one native field is filled.
#[derive(Debug, Clone)]
struct FieldSpec {
    /// Tried in order; the first that yields a non-empty value wins.
    sources: Vec<Src>,
    /// Used when no source yields a value (alone: a constant).
    value: Option<Const>,
    /// A capture: the group named `v`, else group 1, else the whole match.
    /// A source whose text does not match yields nothing.
    re: Option<Regex>,
    /// Replaces a value found in the map; others stay as they are.
    map: Option<HashMap<String, String>>,
    time: TimeFormat,
    /// `host:port` and `[v6]:port` become the address.
    strip_port: bool,
    /// For `allowed_tools` from a string: the separator.
    split: Option<String>,
    /// Prepended to a value read from the input (not to `value`).
    prefix: Option<String>,
}

const SPEC_KEYS: &str = "path, value, re, map, prefix, time, strip_port, split";

impl Format {
    /// Compiles one format file. `name` is the file's stem; a `format` key
    /// in the file must agree with it.
    pub fn compile(name: &str, origin: &str, text: &str) -> Result<Format, Vec<String>> {
        let mut errors = Vec::new();
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => return Err(vec![format!("not valid TOML: {}", e.message())]),
        };
        let mut title = String::new();
        let mut signature = None;
        let mut unwrap = None;
        let mut defaults: Vec<(Target, FieldSpec)> = Vec::new();
        let mut raw_maps: Vec<toml::Table> = Vec::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("format", toml::Value::String(n)) => {
                    if n != name {
                        errors.push(format!(
                            "`format = \"{n}\"` does not match the file name `{name}.toml`"
                        ));
                    }
                }
                ("title", toml::Value::String(t)) => title = t.clone(),
                ("description", toml::Value::String(_)) => {}
                ("signature", toml::Value::Table(t)) => {
                    signature = Some(vec![compile_conds("signature", t, false, &mut errors)]);
                }
                ("signature", toml::Value::Array(list)) if !list.is_empty() => {
                    let mut any = Vec::new();
                    for (i, item) in list.iter().enumerate() {
                        match item {
                            toml::Value::Table(t) => any.push(compile_conds(
                                &format!("signature[{}]", i + 1),
                                t,
                                false,
                                &mut errors,
                            )),
                            other => errors.push(format!(
                                "signature[{}]: expected a condition table, found {}",
                                i + 1,
                                other.type_str()
                            )),
                        }
                    }
                    signature = Some(any);
                }
                ("unwrap", toml::Value::String(p)) => match Path::parse(p) {
                    Ok(p) => unwrap = Some(p),
                    Err(e) => errors.push(format!("unwrap: {e}")),
                },
                ("fields", toml::Value::Table(t)) => {
                    defaults = compile_fields("fields", t, false, &mut errors);
                }
                ("map", toml::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            toml::Value::Table(t) => raw_maps.push(t.clone()),
                            other => errors.push(format!(
                                "map[{}]: expected a table, found {}",
                                i + 1,
                                other.type_str()
                            )),
                        }
                    }
                }
                ("format" | "title" | "description", other) => {
                    errors.push(format!("`{key}` takes a string, found {}", other.type_str()));
                }
                ("signature", other) => errors.push(format!(
                    "`signature` takes a condition table or a non-empty list of them, found {}",
                    other.type_str()
                )),
                ("fields", other) => {
                    errors.push(format!("`{key}` takes a table, found {}", other.type_str()));
                }
                ("unwrap", other) => errors.push(format!(
                    "`unwrap` takes a path string, found {}",
                    other.type_str()
                )),
                ("map", other) => errors.push(format!(
                    "`map` takes an array of tables ([[map]]), found {}",
                    other.type_str()
                )),
                (other, _) => errors.push(format!(
                    "unknown key `{other}` (keys: format, title, description, signature, unwrap, fields, map)"
                )),
            }
        }
        if raw_maps.is_empty() {
            errors.push("no [[map]] entries: a format must map at least one event".to_owned());
        }
        let mut groups: Vec<Group> = Vec::new();
        for (i, raw) in raw_maps.iter().enumerate() {
            let at = format!("map[{}]", i + 1);
            let Some((each, name, entry)) = compile_entry(&at, raw, &defaults, &mut errors) else {
                continue;
            };
            match groups.iter_mut().find(|g| g.each == each && g.name == name) {
                Some(g) => g.entries.push(entry),
                None => groups.push(Group {
                    each,
                    name,
                    entries: vec![entry],
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let need = need_of(signature.as_deref(), unwrap.as_ref(), &groups);
        Ok(Format {
            name: name.into(),
            title,
            origin: origin.to_owned(),
            signature,
            unwrap,
            groups,
            need,
        })
    }

    /// What parsing keeps of a record for this format.
    pub(crate) fn need(&self) -> &tree::Need {
        &self.need
    }

    /// Whether the format has a signature `auto` can detect it by.
    pub fn detectable(&self) -> bool {
        self.signature.is_some()
    }

    /// The native events the format can yield, in file order.
    pub fn events(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in self.groups.iter().flat_map(|g| &g.entries) {
            let name = match &e.event {
                EventName::Fixed(name, _) => name,
                EventName::From(_) => "(read from the input)",
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

/// Every path a format reads, as the tree of members parsing keeps.
fn need_of(signature: Option<&[Conds]>, unwrap: Option<&Path>, groups: &[Group]) -> tree::Need {
    use tree::Need;
    fn add(n: &mut Need, src: &Src, each: Option<&Path>) {
        match (src, each) {
            (Src::Record(p), _) => n.add(p, &|e| e.everything()),
            (Src::Item(None), Some(each)) => n.add(each, &|e| e.everything()),
            (Src::Item(Some(p)), Some(each)) => n.add(each, &|e| e.add(p, &|x| x.everything())),
            (Src::Item(_), None) => {}
        }
    }
    let mut root = Need::default();
    for conds in signature.unwrap_or_default() {
        for (src, _) in &conds.tests {
            add(&mut root, src, None);
        }
    }
    for group in groups {
        let each = group.each.as_ref();
        if let Some(each) = each {
            // The elements are counted even when nothing of them is read.
            root.add(each, &|_| {});
        }
        for entry in &group.entries {
            for (src, _) in &entry.when.tests {
                add(&mut root, src, each);
            }
            let specs = entry.fields.iter().map(|(_, s)| s);
            let named = match &entry.event {
                EventName::From(spec) => Some(spec),
                EventName::Fixed(..) => None,
            };
            for spec in specs.chain(named) {
                for src in &spec.sources {
                    add(&mut root, src, each);
                }
            }
        }
    }
    if let Some(path) = unwrap {
        let record = root.clone();
        root.add(path, &|n| n.merge(&record));
    }
    root
}

fn compile_entry(
    at: &str,
    raw: &toml::Table,
    defaults: &[(Target, FieldSpec)],
    errors: &mut Vec<String>,
) -> Option<(Option<Path>, Option<String>, Entry)> {
    let before = errors.len();
    let mut each = None;
    let mut group = None;
    let mut when = Conds::default();
    let mut own = Vec::new();
    for (key, value) in raw {
        match (key.as_str(), value) {
            ("event", toml::Value::String(_) | toml::Value::Table(_)) => {}
            ("each", toml::Value::String(p)) => match Path::parse(p) {
                Ok(p) => each = Some(p),
                Err(e) => errors.push(format!("{at}: each: {e}")),
            },
            ("group", toml::Value::String(g)) => group = Some(g.clone()),
            ("when", toml::Value::Table(_)) | ("fields", toml::Value::Table(_)) => {}
            ("event", _) => errors.push(format!(
                "{at}: `event` takes a name, or a field table to read it from the input"
            )),
            ("each" | "group", other) => errors.push(format!(
                "{at}: `{key}` takes a string, found {}",
                other.type_str()
            )),
            ("when" | "fields", other) => errors.push(format!(
                "{at}: `{key}` takes a table, found {}",
                other.type_str()
            )),
            (other, _) => errors.push(format!(
                "{at}: unknown key `{other}` (keys: event, each, group, when, fields)"
            )),
        }
    }
    let items = each.is_some();
    if let Some(toml::Value::Table(t)) = raw.get("when") {
        when = compile_conds(&format!("{at}.when"), t, items, errors);
    }
    if let Some(toml::Value::Table(t)) = raw.get("fields") {
        own = compile_fields(&format!("{at}.fields"), t, items, errors);
    }
    let event = match raw.get("event") {
        Some(toml::Value::String(e)) if !e.is_empty() => {
            EventName::Fixed(e.as_str().into(), EventKind::from_name(e))
        }
        Some(toml::Value::String(_)) => {
            errors.push(format!("{at}: `event` must not be empty"));
            return None;
        }
        Some(v @ toml::Value::Table(_)) => {
            let spec = compile_spec(
                &format!("{at}.event"),
                &Target::Extra("event".into()),
                v,
                items,
                errors,
            )?;
            EventName::From(spec)
        }
        _ => {
            errors.push(format!(
                "{at}: `event` is required (the native event it yields)"
            ));
            return None;
        }
    };
    if !items && defaults.iter().any(|(_, s)| s.reads_item()) {
        errors.push(format!(
            "{at}: [fields] read `@` paths, which only entries with `each` have"
        ));
    }
    let mut fields: Vec<(Target, FieldSpec)> = defaults
        .iter()
        .filter(|(t, _)| !own.iter().any(|(o, _)| o == t))
        .cloned()
        .collect();
    fields.extend(own);
    let has = |t: &Target| fields.iter().any(|(f, _)| f == t);
    let label = match &event {
        EventName::Fixed(name, _) => name.to_string(),
        EventName::From(_) => "event read from the input".to_owned(),
    };
    if !has(&Target::Ts) {
        errors.push(format!(
            "{at} ({label}): no `ts` mapping, in [fields] or the entry"
        ));
    }
    if let EventName::Fixed(_, kind) = &event {
        for &req in kind.required() {
            // Sessions may be derived by the source (`derive_sessions`).
            if req != FieldId::SessionId && !has(&Target::Str(req)) {
                errors.push(format!(
                    "{at} ({label}): `{}` is required for {label} and not mapped",
                    req.name()
                ));
            }
        }
    }
    (errors.len() == before).then(|| {
        (
            each,
            group,
            Entry {
                event,
                when,
                fields,
            },
        )
    })
}

fn compile_src(at: &str, text: &str, items: bool, errors: &mut Vec<String>) -> Option<Src> {
    let src = if text == "@" {
        Src::Item(None)
    } else if let Some(rest) = text.strip_prefix("@.") {
        match Path::parse(rest) {
            Ok(p) => Src::Item(Some(p)),
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                return None;
            }
        }
    } else {
        match Path::parse(text) {
            Ok(p) => Src::Record(p),
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                return None;
            }
        }
    };
    if matches!(src, Src::Item(_)) && !items {
        errors.push(format!(
            "{at}: `{text}` reads the `each` element, but this entry has no `each`"
        ));
        return None;
    }
    Some(src)
}

fn compile_conds(at: &str, table: &toml::Table, items: bool, errors: &mut Vec<String>) -> Conds {
    let mut tests = Vec::with_capacity(table.len());
    for (name, value) in table {
        let src = compile_src(&format!("{at}: `{name}`"), name, items, errors);
        let before = errors.len();
        let test = compile_test(name, value, errors);
        for e in &mut errors[before..] {
            *e = format!("{at}: {e}");
        }
        if let (Some(src), Some(test)) = (src, test) {
            tests.push((src, test));
        }
    }
    Conds { tests }
}

fn compile_fields(
    at: &str,
    table: &toml::Table,
    items: bool,
    errors: &mut Vec<String>,
) -> Vec<(Target, FieldSpec)> {
    let mut out = Vec::with_capacity(table.len());
    for (name, value) in table {
        let at = format!("{at}.{name}");
        let target = match Target::parse(name) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        if let Some(spec) = compile_spec(&at, &target, value, items, errors) {
            out.push((target, spec));
        }
    }
    out
}

fn paths(at: &str, value: &toml::Value, items: bool, errors: &mut Vec<String>) -> Vec<Src> {
    match value {
        toml::Value::String(p) => compile_src(at, p, items, errors).into_iter().collect(),
        toml::Value::Array(list) => list
            .iter()
            .filter_map(|p| match p {
                toml::Value::String(p) => compile_src(at, p, items, errors),
                other => {
                    errors.push(format!(
                        "{at}: a path list holds strings, found {}",
                        other.type_str()
                    ));
                    None
                }
            })
            .collect(),
        other => {
            errors.push(format!(
                "{at}: expected a path or a list of paths, found {}",
                other.type_str()
            ));
            Vec::new()
        }
    }
}

fn constant(at: &str, value: &toml::Value, errors: &mut Vec<String>) -> Option<Const> {
    Some(match value {
        toml::Value::String(s) => Const::Str(s.clone()),
        toml::Value::Integer(i) => Const::Num(*i as f64),
        toml::Value::Float(f) => Const::Num(*f),
        toml::Value::Boolean(b) => Const::Bool(*b),
        toml::Value::Array(items) => {
            let list: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect();
            match list {
                Some(list) => Const::List(list),
                None => {
                    errors.push(format!("{at}: a list value holds strings only"));
                    return None;
                }
            }
        }
        other => {
            errors.push(format!(
                "{at}: `value` takes a string, number, boolean or list of strings, found {}",
                other.type_str()
            ));
            return None;
        }
    })
}

fn compile_spec(
    at: &str,
    target: &Target,
    value: &toml::Value,
    items: bool,
    errors: &mut Vec<String>,
) -> Option<FieldSpec> {
    let before = errors.len();
    let mut spec = FieldSpec {
        sources: Vec::new(),
        value: None,
        re: None,
        map: None,
        time: TimeFormat::Auto,
        strip_port: false,
        split: None,
        prefix: None,
    };
    match value {
        toml::Value::String(_) | toml::Value::Array(_) => {
            spec.sources = paths(at, value, items, errors);
        }
        toml::Value::Table(t) => {
            for (key, v) in t {
                match key.as_str() {
                    "path" => spec.sources = paths(at, v, items, errors),
                    "value" => spec.value = constant(at, v, errors),
                    "re" => match v.as_str().map(Regex::new) {
                        Some(Ok(re)) => spec.re = Some(re),
                        Some(Err(e)) => errors.push(format!("{at}: invalid regex: {e}")),
                        None => errors.push(format!("{at}: `re` takes a string")),
                    },
                    "map" => match v {
                        toml::Value::Table(m) => {
                            let mut map = HashMap::with_capacity(m.len());
                            for (from, to) in m {
                                match to.as_str() {
                                    Some(to) => {
                                        map.insert(from.clone(), to.to_owned());
                                    }
                                    None => errors.push(format!(
                                        "{at}: map value of `{from}` must be a string"
                                    )),
                                }
                            }
                            spec.map = Some(map);
                        }
                        _ => errors.push(format!("{at}: `map` takes a table of strings")),
                    },
                    "time" => match v.as_str().and_then(TimeFormat::from_name) {
                        Some(t) => spec.time = t,
                        None => {
                            errors.push(format!("{at}: `time` is one of {}", TimeFormat::NAMES))
                        }
                    },
                    "strip_port" => match v.as_bool() {
                        Some(b) => spec.strip_port = b,
                        None => errors.push(format!("{at}: `strip_port` takes true or false")),
                    },
                    "prefix" => match v.as_str() {
                        Some(p) => spec.prefix = Some(p.to_owned()),
                        None => errors.push(format!("{at}: `prefix` takes a string")),
                    },
                    "split" => match v.as_str() {
                        Some(s) if !s.is_empty() => spec.split = Some(s.to_owned()),
                        _ => errors.push(format!("{at}: `split` takes a non-empty string")),
                    },
                    other => {
                        errors.push(format!("{at}: unknown key `{other}` (keys: {SPEC_KEYS})"))
                    }
                }
            }
        }
        other => {
            errors.push(format!(
                "{at}: expected a path, a list of paths or a table ({SPEC_KEYS}), found {}",
                other.type_str()
            ));
            return None;
        }
    }
    if spec.sources.is_empty() && spec.value.is_none() && errors.len() == before {
        errors.push(format!("{at}: needs a `path` or a `value`"));
    }
    if spec.time != TimeFormat::Auto && *target != Target::Ts {
        errors.push(format!("{at}: `time` applies only to `ts`"));
    }
    if spec.split.is_some() && *target != Target::AllowedTools {
        errors.push(format!("{at}: `split` applies only to `allowed_tools`"));
    }
    if *target == Target::ExpectedRuntime
        && matches!(spec.value, Some(Const::Str(_) | Const::List(_)))
    {
        errors.push(format!(
            "{at}: `value` of expected_runtime_s must be a number"
        ));
    }
    (errors.len() == before).then_some(spec)
}

impl FieldSpec {
    fn reads_item(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Src::Item(_)))
    }
}

/// Formats by name: the built-ins and a user directory's, which may add
/// formats or replace a built-in of the same name.
#[derive(Debug, Clone)]
pub struct FormatSet {
    formats: BTreeMap<Arc<str>, Arc<Format>>,
    /// The detection order of `auto`: built-ins in their listed order, then
    /// user formats by name.
    order: Vec<Arc<Format>>,
    /// What `auto` keeps of a record: every format's paths and `event`.
    auto_need: tree::Need,
}

impl FormatSet {
    /// The built-in formats.
    pub fn built_in() -> Result<FormatSet, FormatSetError> {
        FormatSet::from_files(Vec::new())
    }

    /// The built-ins plus `files` (stem, origin, text), which take
    /// precedence over a built-in of the same name.
    pub fn from_files(files: Vec<(String, String, String)>) -> Result<FormatSet, FormatSetError> {
        let mut errors = Vec::new();
        let mut formats: BTreeMap<Arc<str>, Arc<Format>> = BTreeMap::new();
        let mut order: Vec<Arc<str>> = Vec::new();
        let user: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
        for (name, text) in BUILT_IN {
            if user.contains(&name) {
                order.push(name.into());
                continue;
            }
            match Format::compile(name, "built-in", text) {
                Ok(f) => {
                    order.push(f.name.clone());
                    formats.insert(f.name.clone(), Arc::new(f));
                }
                Err(msgs) => errors.extend(msgs.into_iter().map(|message| FormatError {
                    file: format!("built-in {name}.toml"),
                    message,
                })),
            }
        }
        let mut files = files;
        files.sort();
        for (name, origin, text) in &files {
            if name == NATIVE || name == AUTO {
                errors.push(FormatError {
                    file: origin.clone(),
                    message: format!("`{name}` is a reserved format name"),
                });
                continue;
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                errors.push(FormatError {
                    file: origin.clone(),
                    message: format!(
                        "format name `{name}` (the file name) may hold letters, digits, `_` and `-` only"
                    ),
                });
                continue;
            }
            match Format::compile(name, origin, text) {
                Ok(f) => {
                    if !order.iter().any(|n| **n == **name) {
                        order.push(f.name.clone());
                    }
                    formats.insert(f.name.clone(), Arc::new(f));
                }
                Err(msgs) => errors.extend(msgs.into_iter().map(|message| FormatError {
                    file: origin.clone(),
                    message,
                })),
            }
        }
        if !errors.is_empty() {
            return Err(FormatSetError { errors });
        }
        let order: Vec<Arc<Format>> = order
            .iter()
            .filter_map(|n| formats.get(n).cloned())
            .collect();
        let mut auto_need = tree::Need::default();
        if let Ok(event) = Path::parse("event") {
            auto_need.add(&event, &|n| n.everything());
        }
        for f in &order {
            auto_need.merge(&f.need);
        }
        Ok(FormatSet {
            formats,
            order,
            auto_need,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Format>> {
        self.formats.get(name)
    }

    /// Every format, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Format>> {
        self.formats.values()
    }

    /// The names a source may use: `native`, `auto` and every format.
    pub fn names(&self) -> Vec<&str> {
        let mut out = vec![NATIVE, AUTO];
        out.extend(self.formats.keys().map(|k| &**k));
        out
    }

    /// Formats in `auto`'s detection order.
    pub(crate) fn detection_order(&self) -> &[Arc<Format>] {
        &self.order
    }

    /// What `auto` keeps of a record.
    pub(crate) fn auto_need(&self) -> &tree::Need {
        &self.auto_need
    }
}
