//! The detection engine (DESIGN §3–§5): a pure, deterministic state machine.
//!
//! [`Engine::advance_to`] moves the engine clock (never back) and fires the
//! timers it passes; [`Engine::on_event`] applies one event to every rule.
//! Both append alerts to a caller-owned vector. The engine never reads the
//! wall clock and never does I/O; the caller owns time (watermarks) and
//! delivery. Its whole state is serializable ([`Engine::snapshot`]).
//!
//! State is keyed per rule by the joined key values (tenant first), capped
//! at `max_keys_per_rule`: at the cap the oldest keys are evicted and an
//! internal `state_pressure` alert says so.

pub mod clock;
pub mod condition;
mod detect;
pub mod rules;

use std::sync::Arc;

pub use condition::{Cond, FieldRef};
pub use detect::{DEFAULT_MAX_KEYS_PER_RULE, EngineConfig, SnapshotError};
pub use rules::{CountCondition, CountOp, Rule, RuleError, RuleKind, RuleSet, RuleSetError};

pub use detect::Engine;

/// The rule id of internal alerts raised when state is evicted at the cap.
pub const STATE_PRESSURE_RULE: &str = "state_pressure";

pub use crate::alert::KEY_SEP;

/// A shared, immutable rule set.
pub type Rules = Arc<RuleSet>;
