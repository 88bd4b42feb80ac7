//! Templated webhook bodies (minijinja): a preset (`slack`, `teams`,
//! `pagerduty`, embedded from `templates/`) or the user's file. The
//! template sees `alert` (the alert as its JSON has it), `vars` (the
//! sink's `template_vars`) and `secret` (the sink's template secret, e.g.
//! PagerDuty's routing key). A template whose name ends in `.json` (every
//! preset) escapes each `{{ }}` value as JSON, and its output must be a
//! JSON document. Undefined names are errors, so a typo fails `check` on
//! the sample alert instead of sending an empty field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::alert::Alert;

/// The presets, by name.
pub const PRESETS: &[(&str, &str)] = &[
    ("slack", include_str!("../../templates/slack.json")),
    ("teams", include_str!("../../templates/teams.json")),
    ("pagerduty", include_str!("../../templates/pagerduty.json")),
];

/// Where a template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Preset(&'static str),
    File(PathBuf),
}

/// A compiled body template.
pub struct Template {
    env: Environment<'static>,
    name: String,
    json: bool,
    vars: BTreeMap<String, String>,
    secret: Option<String>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .finish()
    }
}

/// Loop iterations and output a template may spend per alert (minijinja
/// fuel): a runaway template fails instead of stalling its sink.
const FUEL: u64 = 200_000;

/// `truncate(s, n, killwords, end)`: the Jinja filter (at most `n`
/// characters, `end` included).
fn truncate(s: String, n: Option<usize>, _killwords: Option<bool>, end: Option<String>) -> String {
    let n = n.unwrap_or(255);
    if s.chars().count() <= n {
        return s;
    }
    let end = end.unwrap_or_else(|| "...".to_owned());
    let keep = n.saturating_sub(end.chars().count());
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(&end);
    out
}

impl Template {
    /// Compiles the template; errors name it and say where it fails.
    pub fn compile(
        source: &Source,
        vars: BTreeMap<String, String>,
        secret: Option<String>,
    ) -> Result<Template, String> {
        let (name, text) = match source {
            Source::Preset(p) => {
                let text = PRESETS
                    .iter()
                    .find(|(n, _)| n == p)
                    .map(|(_, t)| (*t).to_owned())
                    .ok_or_else(|| format!("unknown template preset `{p}`"))?;
                (format!("{p}.json"), text)
            }
            Source::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("template {}: {e}", path.display()))?;
                let name = path.file_name().map_or_else(
                    || "template".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (name, text)
            }
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.add_filter("truncate", truncate);
        let json = name.ends_with(".json") || name.ends_with(".json.j2");
        env.add_template_owned(name.clone(), text)
            .map_err(|e| format!("template {name}: {}", describe(&e)))?;
        Ok(Template {
            env,
            name,
            json,
            vars,
            secret,
        })
    }

    /// Whether the body is JSON (`Content-Type: application/json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The body for `alert`; a JSON template's output is checked to parse.
    pub fn render(&self, alert: &Alert) -> Result<Vec<u8>, String> {
        let tmpl = self
            .env
            .get_template(&self.name)
            .map_err(|e| format!("template {}: {}", self.name, describe(&e)))?;
        let mut ctx = BTreeMap::new();
        ctx.insert("alert", Value::from_serialize(alert));
        ctx.insert("vars", Value::from_serialize(&self.vars));
        if let Some(s) = &self.secret {
            ctx.insert("secret", Value::from(s.as_str()));
        }
        let out = tmpl
            .render(ctx)
            .map_err(|e| format!("template {}: {}", self.name, describe(&e)))?;
        if self.json {
            // The error names a line and column, never the text (which
            // may hold the secret).
            serde_json::from_str::<serde::de::IgnoredAny>(&out)
                .map_err(|e| format!("template {}: the output is not JSON: {e}", self.name))?;
        }
        Ok(out.into_bytes())
    }
}

/// A minijinja error (with its place) and, for an undefined name, a hint.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        s.push_str("; names: alert.<field>, vars.<name>, secret (when a template secret is set); use |default(...) for optional fields");
    }
    s
}
