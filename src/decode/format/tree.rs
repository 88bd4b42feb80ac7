//! The borrowed JSON tree a format maps from: strings borrow from the
//! record wherever they have no escapes, objects are small vectors (no
//! hashing, no key copies), and secret-looking members are skipped while
//! parsing, at any depth, so no mapping can ever read them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::condition::{Node, Path, Val};
use crate::decode::json::CowStr;
use crate::decode::{DecodeError, is_secret_field};

/// One JSON value of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum J<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    /// Members, and whether any member's name has a dot (only then can a
    /// path's literal dotted key match here).
    Obj(Vec<(Cow<'a, str>, J<'a>)>, bool),
}

/// Which members of a record a format reads: every path of its
/// signature, conditions and fields, as a tree of keys (literal dotted keys
/// included). Parsing keeps only these and skips the rest unread, so a
/// format costs what it uses, not what the product writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Need {
    /// The whole value is read (a path ends here).
    everything: bool,
    children: Vec<(Box<str>, Need)>,
}

impl Need {
    /// Every member (no restriction).
    pub fn all() -> Need {
        Need {
            everything: true,
            children: Vec::new(),
        }
    }

    fn child(&mut self, key: &str) -> &mut Need {
        let i = match self.children.iter().position(|(k, _)| &**k == key) {
            Some(i) => i,
            None => {
                self.children.push((key.into(), Need::default()));
                self.children.len() - 1
            }
        };
        &mut self.children[i].1
    }

    fn find(&self, key: &str) -> Option<&Need> {
        self.children
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, n)| n)
    }

    /// Adds what `path` reads; at its end, `at_end` says what is read
    /// below (everything, or the paths of `each` elements).
    pub fn add(&mut self, path: &Path, at_end: &dyn Fn(&mut Need)) {
        self.add_from(path, 0, at_end);
    }

    fn add_from(&mut self, path: &Path, i: usize, at_end: &dyn Fn(&mut Need)) {
        if self.everything {
            return;
        }
        if i == path.len() {
            at_end(self);
            return;
        }
        // An index reads an array's element: what follows applies to the
        // elements, which share their array's need.
        if path.is_index(i) {
            self.add_from(path, i + 1, at_end);
        }
        for j in path.runs(i) {
            let child = self.child(path.key_run(i, j));
            if let Some(k) = path.filter_key(j) {
                child.child(k).everything = true;
            }
            child.add_from(path, j + 1, at_end);
        }
    }

    /// Reads the whole value here.
    pub fn everything(&mut self) {
        self.everything = true;
        self.children.clear();
    }

    /// Adds everything `other` reads.
    pub fn merge(&mut self, other: &Need) {
        if self.everything {
            return;
        }
        if other.everything {
            self.everything();
            return;
        }
        for (k, n) in &other.children {
            self.child(k).merge(n);
        }
    }
}

/// Parses a record's JSON object, keeping what `need` reads.
pub fn parse<'a>(text: &'a str, need: &Need) -> Result<J<'a>, DecodeError> {
    if !text.starts_with('{') {
        return Err(DecodeError::NotJson("expected a JSON object".to_owned()));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let root = de.deserialize_any(Tree::below(need)).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(root)
}

fn classify(e: serde_json::Error) -> DecodeError {
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::BadField(e.to_string()),
        _ => DecodeError::NotJson(e.to_string()),
    }
}

impl J<'_> {
    /// The text of a scalar: strings as they are, numbers and booleans as
    /// JSON writes them.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            J::Str(s) => Some(Cow::Borrowed(s)),
            J::Int(i) => Some(Cow::Owned(i.to_string())),
            J::Float(f) => Some(Cow::Owned(float_text(*f))),
            J::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        }
    }

    /// As a `serde_json::Value` (for fields kept on an event).
    pub fn to_value(&self) -> Value {
        match self {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Int(i) => Value::from(*i),
            J::Float(f) => Value::from(*f),
            J::Str(s) => Value::String(s.to_string()),
            J::Arr(items) => Value::Array(items.iter().map(J::to_value).collect()),
            J::Obj(members, _) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// A number as text: whole numbers without a fraction.
pub(super) fn float_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

impl Node for J<'_> {
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            J::Obj(members, _) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn items(&self) -> Option<&[Self]> {
        match self {
            J::Arr(items) => Some(items),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, J::Null)
    }
    fn val(&self) -> Option<Val<'_>> {
        Some(match self {
            J::Null => return None,
            J::Bool(b) => Val::Bool(*b),
            J::Int(i) => Val::Num(*i as f64),
            J::Float(f) => Val::Num(*f),
            J::Str(s) => Val::Str(s),
            J::Arr(_) | J::Obj(..) => Val::Object,
        })
    }
    fn reads(&self, want: &str) -> bool {
        self.text().is_some_and(|t| t == want)
    }
    fn dotted_keys(&self) -> bool {
        matches!(self, J::Obj(_, true))
    }
}

/// The visitor building a [`J`]: with a need, only the members it reads
/// are kept (the rest skipped unread); without, every member.
#[derive(Clone, Copy)]
struct Tree<'n>(Option<&'n Need>);

impl<'n> Tree<'n> {
    /// The visitor of a member's value that `need` reads.
    fn below(need: &'n Need) -> Tree<'n> {
        Tree((!need.everything).then_some(need))
    }
}

impl<'de> de::DeserializeSeed<'de> for Tree<'_> {
    type Value = J<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<J<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree<'_> {
    type Value = J<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<J<'de>, E> {
        Ok(J::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<J<'de>, E> {
        Ok(i64::try_from(v).map_or(J::Float(v as f64), J::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<J<'de>, E> {
        Ok(J::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        // Elements share their array's need.
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(J::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        let capacity = self.0.map_or(8, |n| n.children.len()).min(16);
        let mut members = Vec::with_capacity(capacity);
        let mut dotted = false;
        while let Some(key) = map.next_key_seed(CowStr)? {
            // A secret-looking member is never kept (members no path
            // reads are skipped anyway).
            let below = match self.0 {
                None => (!is_secret_field(&key)).then_some(Tree(None)),
                Some(need) => need
                    .find(&key)
                    .filter(|_| !is_secret_field(&key))
                    .map(Tree::below),
            };
            let Some(below) = below else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            // A key given twice is ambiguous (which `tenant` is the
            // tenant?): the record is rejected as `bad_field`.
            if members
                .iter()
                .any(|(k, _): &(Cow<'_, str>, J<'_>)| *k == key)
            {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(below)?;
            dotted |= key.contains('.');
            members.push((key, value));
        }
        Ok(J::Obj(members, dotted))
    }
}
