//! Dotted paths into JSON input: `a.b.c`, array indexes (`chain.0.sub`),
//! implicit mapping over arrays (`audit.action` reaches the `action` of
//! every element), and element filters (`resources[type=tool].name`).
//!
//! Flat keys with dots in their names (`"mcp.method.name"`, as agentgateway
//! and Envoy write them) are tried first, longest first: at each object the
//! path looks up the longest run of its remaining segments as one literal
//! key, then shorter runs, down to one segment. So `mcp.session.id` finds
//! `{"mcp.session.id": ..}` and `{"mcp": {"session": {"id": ..}}}` alike.
//!
//! Lookups never allocate: candidate keys are slices of the path text.

use std::fmt;

use serde_json::Value;

use super::Val;

/// A JSON tree a path can walk: `serde_json::Value`, or the borrowed tree
/// formats parse records into.
pub trait Node: Sized {
    /// The member `key` of an object (the last one when repeated).
    fn get(&self, key: &str) -> Option<&Self>;
    /// The elements of an array.
    fn items(&self) -> Option<&[Self]>;
    fn is_null(&self) -> bool;
    /// A scalar as a condition value; `None` for null. Arrays are walked
    /// by the caller; an object reads as [`Val::Object`].
    fn val(&self) -> Option<Val<'_>>;
    /// Whether a scalar reads `want` (strings as they are, numbers and
    /// booleans as JSON writes them): element filters `[key=value]`.
    fn reads(&self, want: &str) -> bool;
    /// Whether an object may have member names with dots (when it cannot,
    /// a path tries only its next segment as the key).
    fn dotted_keys(&self) -> bool {
        true
    }
}

impl Node for Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(m) => m.get(key),
            _ => None,
        }
    }
    fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
    fn val(&self) -> Option<Val<'_>> {
        Val::from_json(self)
    }
    fn reads(&self, want: &str) -> bool {
        match self {
            Value::String(s) => s == want,
            Value::Number(n) => n.to_string() == want,
            Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
            _ => false,
        }
    }
}

/// A compiled path.
#[derive(Clone, PartialEq, Eq)]
pub struct Path {
    text: Box<str>,
    segs: Vec<Seg>,
}

#[derive(Clone, PartialEq, Eq)]
struct Seg {
    /// The key's byte range in `text` (without a filter).
    start: usize,
    end: usize,
    /// The key alone: the run of this one segment, the one looked up most.
    key: Box<str>,
    /// The segment read as an array index, when it is all digits.
    index: Option<usize>,
    /// `[key=value]`: keep only the array elements whose `key` is `value`.
    filter: Option<(Box<str>, Box<str>)>,
}

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path `{path}`: {message}")]
pub struct PathError {
    pub path: String,
    pub message: String,
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({})", self.text)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let fail = |message: &str| PathError {
            path: text.to_owned(),
            message: message.to_owned(),
        };
        if text.is_empty() {
            return Err(fail("is empty"));
        }
        let mut segs = Vec::new();
        let mut start = 0;
        let bytes = text.as_bytes();
        while start <= text.len() {
            // A segment ends at the next `.` outside brackets.
            let mut end = start;
            let mut depth = 0;
            while end < text.len() {
                match bytes[end] {
                    b'[' => depth += 1,
                    b']' => depth -= 1,
                    b'.' if depth == 0 => break,
                    _ => {}
                }
                end += 1;
            }
            let seg = &text[start..end];
            if seg.is_empty() {
                return Err(fail("has an empty segment (two dots, or a dot at an end)"));
            }
            let (key_end, filter) = match seg.find('[') {
                None => (end, None),
                Some(open) => {
                    let inner = seg[open + 1..]
                        .strip_suffix(']')
                        .ok_or_else(|| fail("a `[` filter must end the segment with `]`"))?;
                    let (k, v) = inner
                        .split_once('=')
                        .ok_or_else(|| fail("a filter reads `[key=value]`"))?;
                    if k.is_empty() {
                        return Err(fail("a filter needs a key: `[key=value]`"));
                    }
                    (start + open, Some((k.into(), v.into())))
                }
            };
            if key_end == start {
                return Err(fail("a filter must follow a key: `name[key=value]`"));
            }
            let key = &text[start..key_end];
            segs.push(Seg {
                start,
                end: key_end,
                key: key.into(),
                index: key
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| key.parse().ok())
                    .flatten(),
                filter,
            });
            start = end + 1;
        }
        Ok(Path {
            text: text.into(),
            segs,
        })
    }

    /// A path of one key, taken literally (for a field name that does not
    /// parse as a path, such as one with an empty segment).
    pub fn literal(text: &str) -> Path {
        Path {
            text: text.into(),
            segs: vec![Seg {
                start: 0,
                end: text.len(),
                key: text.into(),
                index: None,
                filter: None,
            }],
        }
    }

    /// A field name as a path: dotted when it parses, else literal.
    pub fn field(text: &str) -> Path {
        Path::parse(text).unwrap_or_else(|_| Path::literal(text))
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the path is one plain key (no dots, filters or indexes).
    pub fn is_plain(&self) -> bool {
        self.segs.len() == 1 && self.segs[0].filter.is_none()
    }

    /// The first non-null value the path reaches in `root`.
    pub fn first<'v, N: Node>(&self, root: &'v N) -> Option<&'v N> {
        self.first_from(root, 0)
    }

    /// Whether `pred` holds for any value the path reaches in `root`.
    pub fn any<N: Node>(&self, root: &N, pred: &mut dyn FnMut(&N) -> bool) -> bool {
        self.walk(root, 0, pred)
    }

    /// [`Path::any`] where the top level is not a JSON object but looked
    /// up by `get` (an event's kept fields).
    pub fn any_in<'v, N: Node + 'v>(
        &self,
        get: &dyn Fn(&str) -> Option<&'v N>,
        pred: &mut dyn FnMut(&N) -> bool,
    ) -> bool {
        self.walk_keys(get, 0, pred)
    }

    /// [`Path::first`] over a top level looked up by `get`.
    pub fn first_in<'v, N: Node>(&self, get: &dyn Fn(&str) -> Option<&'v N>) -> Option<&'v N> {
        for j in self.literal_runs(0) {
            let key = self.key_run(0, j);
            if let Some(child) = get(key) {
                return self.first_after(child, j);
            }
        }
        None
    }

    /// The first non-null value reached below `child`, the value of
    /// segment `j` (its filter not yet applied).
    fn first_after<'v, N: Node>(&self, child: &'v N, j: usize) -> Option<&'v N> {
        match &self.segs[j].filter {
            None => self.first_from(child, j + 1),
            Some((k, want)) => match child.items() {
                Some(items) => items
                    .iter()
                    .filter(|it| filter_holds(*it, k, want))
                    .find_map(|it| self.first_from(it, j + 1)),
                None if filter_holds(child, k, want) => self.first_from(child, j + 1),
                None => None,
            },
        }
    }

    fn first_from<'v, N: Node>(&self, v: &'v N, i: usize) -> Option<&'v N> {
        if i == self.segs.len() {
            return (!v.is_null()).then_some(v);
        }
        if let Some(items) = v.items() {
            return match self.segs[i].index {
                Some(n) if self.segs[i].filter.is_none() => {
                    items.get(n).and_then(|it| self.first_from(it, i + 1))
                }
                _ => items.iter().find_map(|it| self.first_from(it, i)),
            };
        }
        if !v.dotted_keys() {
            return v
                .get(self.key_run(i, i))
                .and_then(|c| self.first_after(c, i));
        }
        for j in self.literal_runs(i) {
            let key = self.key_run(i, j);
            if let Some(child) = v.get(key) {
                return self.first_after(child, j);
            }
        }
        None
    }

    /// The number of segments.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// Never true: a path has at least one segment.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Whether segment `i` reads as an array index.
    pub fn is_index(&self, i: usize) -> bool {
        self.segs[i].index.is_some() && self.segs[i].filter.is_none()
    }

    /// The literal key of segments `i..=j` joined by dots.
    pub fn key_run(&self, i: usize, j: usize) -> &str {
        if i == j {
            return &self.segs[i].key;
        }
        &self.text[self.segs[i].start..self.segs[j].end]
    }

    /// The key a filter on segment `j` tests, if it has one.
    pub fn filter_key(&self, j: usize) -> Option<&str> {
        self.segs[j].filter.as_ref().map(|(k, _)| &**k)
    }

    /// The last segment index `j` of each literal-key candidate starting at
    /// segment `i`, longest first (see the module docs).
    pub fn runs(&self, i: usize) -> impl Iterator<Item = usize> + use<> {
        self.literal_runs(i)
    }

    /// The last segment index `j` of each literal-key candidate starting at
    /// segment `i`, longest first. A run never crosses a filter (a filter
    /// may end the run).
    fn literal_runs(&self, i: usize) -> impl Iterator<Item = usize> + use<> {
        let mut last = i;
        while last + 1 < self.segs.len() && self.segs[last].filter.is_none() {
            last += 1;
        }
        (i..=last).rev()
    }

    fn walk<N: Node>(&self, v: &N, i: usize, f: &mut dyn FnMut(&N) -> bool) -> bool {
        if i == self.segs.len() {
            return f(v);
        }
        if let Some(items) = v.items() {
            return match self.segs[i].index {
                Some(n) if self.segs[i].filter.is_none() => {
                    items.get(n).is_some_and(|it| self.walk(it, i + 1, f))
                }
                _ => items.iter().any(|it| self.walk(it, i, f)),
            };
        }
        if !v.dotted_keys() {
            return v
                .get(self.key_run(i, i))
                .is_some_and(|c| self.after(c, i, f));
        }
        for j in self.literal_runs(i) {
            let key = self.key_run(i, j);
            if let Some(child) = v.get(key) {
                return self.after(child, j, f);
            }
        }
        false
    }

    fn walk_keys<'v, N: Node + 'v>(
        &self,
        get: &dyn Fn(&str) -> Option<&'v N>,
        i: usize,
        f: &mut dyn FnMut(&N) -> bool,
    ) -> bool {
        for j in self.literal_runs(i) {
            let key = self.key_run(i, j);
            if let Some(child) = get(key) {
                return self.after(child, j, f);
            }
        }
        false
    }

    /// Continues below `child`, the value of segment `j`.
    fn after<N: Node>(&self, child: &N, j: usize, f: &mut dyn FnMut(&N) -> bool) -> bool {
        match &self.segs[j].filter {
            None => self.walk(child, j + 1, f),
            Some((k, want)) => match child.items() {
                Some(items) => items
                    .iter()
                    .filter(|it| filter_holds(*it, k, want))
                    .any(|it| self.walk(it, j + 1, f)),
                None => filter_holds(child, k, want) && self.walk(child, j + 1, f),
            },
        }
    }
}

/// `[key=value]` on one element: its `key` reads `value`.
fn filter_holds<N: Node>(item: &N, key: &str, want: &str) -> bool {
    item.get(key).is_some_and(|v| v.reads(want))
}
