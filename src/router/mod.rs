//! Routing (pure): which sinks get an alert. Routes are tried in order; an
//! alert matching a route goes to its sinks, and evaluation stops there
//! unless the route says `continue` (as in Alertmanager). An alert no route
//! matched goes to the default sinks.

use crate::alert::Alert;

/// One route: every given list must contain the alert's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub rules: Vec<String>,
    pub severities: Vec<String>,
    pub tenants: Vec<String>,
    pub sinks: Vec<String>,
    pub continue_: bool,
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
    /// The sinks of an alert, each once, in route order.
    pub fn sinks(&self, alert: &Alert) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut matched = false;
        for route in &self.routes {
            if route.matches(alert) {
                matched = true;
                for s in &route.sinks {
                    if !out.contains(s) {
                        out.push(s.clone());
                    }
                }
                if !route.continue_ {
                    break;
                }
            }
        }
        if !matched {
            out.clone_from(&self.default_sinks);
        }
        out
    }
}
