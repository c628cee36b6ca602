//! Routes that appeared, disappeared or changed between two instants.

use std::collections::BTreeMap;

use serde::Serialize;

use ksr_proto::ServiceKey;

use super::Routed;

/// How a route differs between two instants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum RouteChange {
    Appeared {
        route: Routed,
    },
    Disappeared {
        route: Routed,
    },
    Changed {
        before: Box<Routed>,
        after: Box<Routed>,
    },
}

/// What changed from `before` to `after` (ignoring which event set an unchanged route).
pub fn diff(
    before: &BTreeMap<ServiceKey, Routed>,
    after: &BTreeMap<ServiceKey, Routed>,
) -> Vec<RouteChange> {
    let same = |a: &Routed, b: &Routed| {
        (&a.host, &a.path, &a.port, &a.scheme, &a.backends)
            == (&b.host, &b.path, &b.port, &b.scheme, &b.backends)
    };
    let mut out = Vec::new();
    for (k, b) in before {
        match after.get(k) {
            None => out.push(RouteChange::Disappeared { route: b.clone() }),
            Some(a) if !same(a, b) => out.push(RouteChange::Changed {
                before: Box::new(b.clone()),
                after: Box::new(a.clone()),
            }),
            _ => {}
        }
    }
    for (k, a) in after {
        if !before.contains_key(k) {
            out.push(RouteChange::Appeared { route: a.clone() });
        }
    }
    out
}

/// One line per change: `+` appeared, `-` disappeared, `~` changed.
pub fn diff_text(changes: &[RouteChange]) -> String {
    let show = |r: &Routed| {
        format!(
            "{} {} {} [{}] ({}/{}/{})",
            r.host,
            r.path,
            r.scheme,
            r.backends.join(" "),
            r.cluster,
            r.namespace,
            r.name
        )
    };
    let mut out = String::new();
    for c in changes {
        let line = match c {
            RouteChange::Appeared { route } => format!("+ {}", show(route)),
            RouteChange::Disappeared { route } => format!("- {}", show(route)),
            RouteChange::Changed { before, after } => {
                format!("~ {}  →  {}", show(before), show(after))
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
