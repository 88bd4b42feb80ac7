//! The `match` kind (DESIGN §4): every matching event is an alert, keyed by
//! `group_by`. It keeps no state.

use serde::Deserialize;

use super::super::rules::{RuleKind, condition, key_fields};

/// `kind = "match"`: the rule's own keys as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    #[serde(rename = "match")]
    match_: Option<toml::Table>,
    group_by: Option<Vec<String>>,
}

impl Raw {
    pub fn compile(self, errors: &mut Vec<String>) -> Option<RuleKind> {
        let group_by = key_fields(self.group_by.as_deref(), "group_by", errors);
        condition("match", self.match_.as_ref(), errors)
            .map(|when| RuleKind::Match { when, group_by })
    }
}
