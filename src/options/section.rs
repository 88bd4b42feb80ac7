//! One entry of a family of kinds (a `[[sources]]` or `[[sinks]]` entry,
//! a `[[rule]]`) handed to its kind: the entry is read as a TOML table, the
//! keys every entry has are taken out, and the rest is deserialized into
//! the kind's own section (`deny_unknown_fields`). Keys another kind takes
//! are reported as "does not apply to type" (or kind), any other key as
//! unknown; the remaining keys are still validated, so one pass reports
//! every problem of every entry.

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Visitor};

/// The field names a section type deserializes (its serde `FIELDS`),
/// learned by asking its `Deserialize` impl to read a struct.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut found = None;
    let _ = T::deserialize(FieldNames(&mut found));
    found.unwrap_or(&[])
}

/// A deserializer that only records the fields a struct asks for.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `at` prefixes every message (e.g. `"sinks (hook): "`).
///
/// Takes the common keys of an entry (as the small struct `C`) out of
/// `table`, leaving the kind's keys.
pub fn common<C: DeserializeOwned>(
    table: &mut toml::Table,
    at: &str,
    errors: &mut Vec<String>,
) -> Option<C> {
    let mut picked = toml::Table::new();
    for key in fields_of::<C>() {
        if let Some(v) = table.remove(*key) {
            picked.insert((*key).to_owned(), v);
        }
    }
    match C::deserialize(toml::Value::Table(picked)) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.push(format!("{at}{}", e.message().trim_end()));
            None
        }
    }
}

/// Deserializes the kind section `T` of an entry whose `word` (`type` or
/// `kind`) is `type_name`; `kinds` are the field lists of every kind of the
/// family.
pub fn kind<T: DeserializeOwned>(
    mut table: toml::Table,
    at: &str,
    (word, type_name): (&str, &str),
    kinds: &[&'static [&'static str]],
    errors: &mut Vec<String>,
) -> Option<T> {
    let own = fields_of::<T>();
    let foreign: Vec<String> = table
        .keys()
        .filter(|k| !own.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in foreign {
        table.remove(&key);
        if kinds.iter().any(|fields| fields.contains(&key.as_str())) {
            errors.push(format!(
                "{at}`{key}` does not apply to {word} `{type_name}`"
            ));
        } else {
            let expected: Vec<String> = own.iter().map(|f| format!("`{f}`")).collect();
            errors.push(format!(
                "{at}unknown field `{key}`, expected one of {}",
                expected.join(", ")
            ));
        }
    }
    match T::deserialize(toml::Value::Table(table)) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("{at}{}", e.message().trim_end()));
            None
        }
    }
}

/// A section with no keys of its own (e.g. the stdout sink).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
