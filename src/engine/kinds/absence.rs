//! The `absence` kind (DESIGN §4): a start event opens a deadline per key;
//! a stop event in time closes it; the clock passing the deadline fires.
//! One pending deadline per key, mirrored in an ordered timer set so the
//! engine fires timers in order of (deadline, rule id, key).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::super::condition::FieldRef;
use super::super::keys::{Key, KeyMap};
use super::super::rules::{
    DeadlineSpec, RuleKind, TASKS_FILE, TaskTables, condition, key_fields, positive_duration,
};
use super::Trigger;
use crate::event::Event;

/// `kind = "absence"`: the rule's own keys as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    start: Option<toml::Table>,
    stop: Option<toml::Table>,
    key: Option<Vec<String>>,
    deadline_field: Option<String>,
    deadline_by_task: Option<String>,
    deadline: Option<String>,
}

impl Raw {
    pub fn compile(self, tables: &TaskTables, errors: &mut Vec<String>) -> Option<RuleKind> {
        let key = key_fields(self.key.as_deref(), "key", errors);
        if self.key.as_ref().is_none_or(Vec::is_empty) {
            errors.push("`key` is required: the fields that tie a stop event to its start (e.g. [\"session_id\"])".to_owned());
        }
        let start = condition("start", self.start.as_ref(), errors);
        let stop = condition("stop", self.stop.as_ref(), errors);
        let default_ms = positive_duration("deadline", self.deadline.as_deref(), errors);
        if self.deadline.is_none() {
            errors.push(
                "`deadline` is required (the fallback when no field or task gives one)".to_owned(),
            );
        }
        let field = self.deadline_field.as_deref().map(FieldRef::parse);
        if let Some(FieldRef::Known(f)) = &field {
            errors.push(format!(
                "`deadline_field`: `{}` is a string field; name a numeric field in seconds",
                f.name()
            ));
        }
        let tasks = match self.deadline_by_task.as_deref() {
            None => None,
            Some(name) => match tables.get(name) {
                Some(t) => Some(t.clone()),
                None => {
                    errors.push(format!(
                        "`deadline_by_task`: no task table `{name}` in this rule set (it is read from `{TASKS_FILE}` beside the rules)"
                    ));
                    None
                }
            },
        };
        Some(RuleKind::Absence {
            start: start?,
            stop: stop?,
            key,
            deadline: DeadlineSpec {
                field,
                tasks,
                default_ms: default_ms?,
            },
        })
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub deadline: i64,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AbsenceState {
    pub pending: KeyMap<Pending>,
    pub timers: BTreeSet<(i64, Key)>,
}

impl AbsenceState {
    /// The earliest deadline, if it is below `clock` (due).
    pub fn due(&self, clock: i64) -> Option<i64> {
        self.timers.first().map(|(d, _)| *d).filter(|d| *d < clock)
    }

    /// Takes the earliest timer and its pending start, if still pending.
    pub fn pop_first(&mut self) -> Option<(i64, Key, Option<Pending>)> {
        let (deadline, key) = self.timers.pop_first()?;
        let pending = self.pending.remove(&key);
        Some((deadline, key, pending))
    }

    /// A stop event at `ts` for `key`: closes a deadline it is in time for.
    pub fn stop(&mut self, key: &str, ts: i64) {
        if let Some(p) = self.pending.get(key)
            && p.trigger.ts <= ts
            && ts <= p.deadline
        {
            let d = p.deadline;
            self.pending.remove(key);
            self.timers.remove(&(d, Key::from(key)));
        }
    }

    /// A start event: (re)opens the deadline of `key`.
    pub fn start(&mut self, key: &str, deadline: i64, trigger: Trigger) {
        let key: Key = key.into();
        let pending = Pending { deadline, trigger };
        if let Some(old) = self.pending.insert(key.clone(), pending) {
            self.timers.remove(&(old.deadline, key.clone()));
        }
        self.timers.insert((deadline, key));
    }
}

/// The deadline of a start event: its own field (seconds), else its
/// declared task's, else the rule's default.
pub fn deadline_ms(spec: &DeadlineSpec, ev: &Event<'_>) -> i64 {
    if let Some(field) = &spec.field
        && let Some(crate::condition::Val::Num(secs)) = field.lookup(ev)
        && secs.is_finite()
        && secs > 0.0
        && secs < 1.0e12
    {
        return (secs * 1000.0).round() as i64;
    }
    if let Some(tasks) = &spec.tasks
        && let Some(task) = ev.declared_task.as_deref()
        && let Some(ms) = tasks.get(task)
    {
        return *ms;
    }
    spec.default_ms
}
