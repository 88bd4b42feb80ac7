//! Routing (pure; the wall clock is an input): which sinks get an alert,
//! and how a storm is tamed. Routes are tried in order; an alert matching a
//! route goes to its sinks, and evaluation stops there unless the route
//! says `continue` (as in Alertmanager). An alert no route matched goes to
//! the default sinks.
//!
//! Per route, optionally:
//! - `repeat_interval`: an alert with the same (rule, tenant, key) as one
//!   this route passed less than the interval ago is suppressed (counted).
//! - `group_window`: alerts of the same (rule, tenant) are held for the
//!   window from the first one and then sent as one digest alert.

use std::collections::{BTreeMap, HashMap};

use crate::alert::{self, Alert, format_ts};

/// One route: every given list must contain the alert's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub rules: Vec<String>,
    pub severities: Vec<String>,
    pub tenants: Vec<String>,
    pub sinks: Vec<String>,
    pub continue_: bool,
    pub repeat_interval_ms: Option<i64>,
    pub group_window_ms: Option<i64>,
}

impl Route {
    pub fn matches(&self, alert: &Alert) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        any(&self.rules, &alert.rule)
            && any(&self.severities, alert.severity.name())
            && any(&self.tenants, &alert.tenant)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub routes: Vec<Route>,
    pub default_sinks: Vec<String>,
}

impl Router {
    /// The matching routes' indexes (`None`: the default route).
    fn matching(&self, alert: &Alert) -> Vec<Option<usize>> {
        let mut out = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            if route.matches(alert) {
                out.push(Some(i));
                if !route.continue_ {
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(None);
        }
        out
    }

    /// The sinks of an alert, each once, in route order (no suppression or
    /// grouping).
    pub fn sinks(&self, alert: &Alert) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.matching(alert) {
            let sinks = r.map_or(&self.default_sinks, |i| &self.routes[i].sinks);
            for s in sinks {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }
}

/// Alerts of a group window being collected.
#[derive(Debug)]
struct Group {
    opened_ms: i64,
    members: Vec<Alert>,
    count: u64,
    /// Event-time span of every member (kept or only counted).
    start: i64,
    end: i64,
}

/// Members kept per digest (the rest are counted).
const DIGEST_MEMBERS: usize = 5;

/// What routing decided for some alerts.
#[derive(Debug, Default)]
pub struct Routed {
    /// Alerts to deliver now, with their sinks.
    pub deliver: Vec<(Alert, Vec<String>)>,
    pub suppressed: u64,
    pub grouped: u64,
}

/// Routing with the state that repeat suppression and grouping need.
#[derive(Debug)]
pub struct RouteState {
    router: Router,
    /// (route, rule, tenant, key) → last passed (wall ms).
    last: HashMap<(usize, String), i64>,
    groups: BTreeMap<(usize, String, String), Group>,
}

fn key_text(a: &Alert) -> String {
    let mut s = format!("{}\u{1f}{}", a.rule, a.tenant);
    for (k, v) in &a.key {
        s.push('\u{1f}');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

impl RouteState {
    pub fn new(router: Router) -> RouteState {
        RouteState {
            router,
            last: HashMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// Routes one alert at wall time `now`.
    pub fn route(&mut self, alert: Alert, now: i64, out: &mut Routed) {
        let mut direct: Vec<String> = Vec::new();
        for r in self.router.matching(&alert) {
            let Some(i) = r else {
                extend(&mut direct, &self.router.default_sinks);
                continue;
            };
            let route = &self.router.routes[i];
            if let Some(interval) = route.repeat_interval_ms {
                let k = (i, key_text(&alert));
                match self.last.get(&k) {
                    Some(&t) if now - t < interval => {
                        out.suppressed += 1;
                        continue;
                    }
                    _ => {
                        self.last.insert(k, now);
                    }
                }
            }
            if route.group_window_ms.is_some() {
                let g = self
                    .groups
                    .entry((i, alert.rule.clone(), alert.tenant.clone()))
                    .or_insert_with(|| Group {
                        opened_ms: now,
                        members: Vec::new(),
                        count: 0,
                        start: i64::MAX,
                        end: i64::MIN,
                    });
                g.count += 1;
                g.start = g.start.min(alert.window_start.unwrap_or(alert.ts));
                g.end = g.end.max(alert.ts);
                if g.members.len() < DIGEST_MEMBERS {
                    g.members.push(alert.clone());
                }
                out.grouped += 1;
                continue;
            }
            extend(&mut direct, &route.sinks);
        }
        if !direct.is_empty() {
            out.deliver.push((alert, direct));
        }
    }

    /// Closes the groups whose window ended (all of them with `all`) and
    /// returns their digests; forgets repeat state older than its interval.
    pub fn flush(&mut self, now: i64, all: bool, out: &mut Routed) {
        let due: Vec<(usize, String, String)> = self
            .groups
            .iter()
            .filter(|((i, _, _), g)| {
                all || self.router.routes[*i]
                    .group_window_ms
                    .is_some_and(|w| now - g.opened_ms >= w)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(g) = self.groups.remove(&k) {
                let sinks = self.router.routes[k.0].sinks.clone();
                out.deliver.push((digest(g), sinks));
            }
        }
        let routes = &self.router.routes;
        self.last.retain(|(i, _), t| {
            routes[*i]
                .repeat_interval_ms
                .is_some_and(|iv| now - *t < iv)
        });
    }

    /// Repeat-suppression state, to save: (route index, key, last passed).
    pub fn repeat_state(&self) -> Vec<(u32, String, i64)> {
        let mut rows: Vec<_> = self
            .last
            .iter()
            .map(|((i, k), t)| (*i as u32, k.clone(), *t))
            .collect();
        rows.sort();
        rows
    }

    /// Restores saved repeat-suppression state. Rows of routes that no
    /// longer exist or no longer suppress repeats are dropped.
    pub fn restore_repeat_state(&mut self, rows: Vec<(u32, String, i64)>) {
        for (i, k, t) in rows {
            let i = i as usize;
            if self
                .router
                .routes
                .get(i)
                .is_some_and(|r| r.repeat_interval_ms.is_some())
            {
                self.last.insert((i, k), t);
            }
        }
    }

    /// Alerts held in open groups.
    pub fn held(&self) -> usize {
        self.groups.values().map(|g| g.members.len()).sum()
    }
}

fn extend(out: &mut Vec<String>, sinks: &[String]) {
    for s in sinks {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
}

/// One alert standing for a group: the first member's fields, a count of
/// all members, their time span, and up to five of their events.
fn digest(g: Group) -> Alert {
    let mut members = g.members;
    if g.count == 1
        && let Some(only) = members.pop()
    {
        return only;
    }
    members.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.id.cmp(&b.id)));
    let Some(first) = members.first().cloned() else {
        // A group always has a member; an empty one yields an inert alert.
        return Alert {
            id: String::new(),
            rule: String::new(),
            title: String::new(),
            severity: crate::alert::Severity::Low,
            tenant: String::new(),
            key: BTreeMap::new(),
            ts: g.opened_ms,
            detected_at: None,
            count: 0,
            window_start: None,
            window_end: None,
            summary: String::new(),
            events: Vec::new(),
        };
    };
    let (start, end) = (g.start, g.end);
    let ids: String = members
        .iter()
        .map(|a| a.id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let fp = alert::fingerprint(&ids, 0);
    let mut keys: Vec<String> = members
        .iter()
        .map(|a| {
            a.key
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    keys.dedup();
    let more = if g.count as usize > members.len() {
        ", ..."
    } else {
        ""
    };
    Alert {
        id: alert::alert_id("digest", &first.tenant, &first.rule, g.opened_ms, &fp),
        rule: first.rule.clone(),
        title: format!("{} ({} alerts)", first.title, g.count),
        severity: members
            .iter()
            .map(|a| a.severity)
            .max()
            .unwrap_or(first.severity),
        tenant: first.tenant.clone(),
        key: [("digest".to_owned(), first.rule.clone())]
            .into_iter()
            .collect(),
        ts: first.ts,
        detected_at: first.detected_at,
        count: g.count,
        window_start: Some(start),
        window_end: Some(end),
        summary: format!(
            "{} alerts of rule {} for tenant {} between {} and {} ({}{more}). First: {}",
            g.count,
            first.rule,
            first.tenant,
            format_ts(start),
            format_ts(end),
            keys.join("; "),
            first.summary
        ),
        events: members
            .iter()
            .filter_map(|a| a.events.first().cloned())
            .collect(),
    }
}
