//! `events --output diff`: what each event changed versus the previous event of its Service.

use std::collections::BTreeSet;

use ksr_proto::{Event, RouteState};

use crate::history::EventRow;

fn ready(route: &RouteState) -> BTreeSet<String> {
    route
        .ready_backends()
        .map(|b| std::net::SocketAddr::new(b.ip, b.port).to_string())
        .collect()
}

fn not_ready(route: &RouteState) -> BTreeSet<String> {
    route
        .backends
        .iter()
        .filter(|b| !b.ready)
        .map(|b| std::net::SocketAddr::new(b.ip, b.port).to_string())
        .collect()
}

fn set_change(what: &str, before: &BTreeSet<String>, after: &BTreeSet<String>) -> Option<String> {
    let added: Vec<String> = after.difference(before).map(|a| format!("+{a}")).collect();
    let gone: Vec<String> = before.difference(after).map(|a| format!("-{a}")).collect();
    if added.is_empty() && gone.is_empty() {
        return None;
    }
    Some(format!("{what}: {}", [added, gone].concat().join(" ")))
}

fn summary(route: &RouteState) -> String {
    let backends: Vec<String> = ready(route).into_iter().collect();
    format!(
        "{} {} [{}]",
        route.hostname(),
        route.path,
        backends.join(" ")
    )
}

/// The changed fields, one per line: route appeared (`+`) or went (`-`), or host, path,
/// ready and not-ready backends, ports that differ.
pub fn changes(before: Option<&Event>, after: &Event) -> Vec<String> {
    let before = before.and_then(Event::route);
    match (before, after.route()) {
        (None, Some(r)) => vec![format!("+ {}", summary(r))],
        (Some(r), None) => vec![format!("- {}", summary(r))],
        (None, None) => vec!["(not routed before either)".into()],
        (Some(b), Some(a)) => {
            let mut out = Vec::new();
            if b.hostname() != a.hostname() {
                out.push(format!("host: {} → {}", b.hostname(), a.hostname()));
            }
            if b.path != a.path {
                out.push(format!("path: {} → {}", b.path, a.path));
            }
            out.extend(set_change("backends", &ready(b), &ready(a)));
            out.extend(set_change("not ready", &not_ready(b), &not_ready(a)));
            if b.ports != a.ports {
                out.push(format!("ports: {:?} → {:?}", b.ports, a.ports));
            }
            if out.is_empty() {
                out.push("(no routing change)".into());
            }
            out
        }
    }
}

/// A block of text: the event's heading, then its changes indented.
pub fn block(row: &EventRow, lines: &[String]) -> String {
    let by = row
        .manager
        .as_deref()
        .map(|m| format!(", by {m}"))
        .unwrap_or_default();
    let mut out = format!(
        "#{} {} {} {}/{}/{} (resourceVersion {}{by})\n",
        row.seq, row.time, row.kind, row.cluster, row.namespace, row.name, row.resource_version
    );
    for l in lines {
        out.push_str("    ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksr_proto::{Backend, Change, ServiceKey};

    fn event(path: &str, ips: &[(&str, bool)]) -> Event {
        let route = RouteState {
            label: "web-default".into(),
            environment: "test".into(),
            domain: "service.consul".into(),
            path: path.parse().expect("a valid path"),
            ports: vec![],
            backends: ips
                .iter()
                .map(|(ip, ready)| Backend {
                    ip: ip.parse().unwrap(),
                    port: 80,
                    ready: *ready,
                })
                .collect(),
            host_since: 0,
            route_since: 0,
            full_host: None,
            scheme: Default::default(),
            tls_skip_verify: false,
            consul_tags: Vec::new(),
            consul_meta: Default::default(),
        };
        Event {
            key: ServiceKey::new("east", "default", "web"),
            change: Change::Updated(route),
            resource_version: "1".into(),
            observed_unix_ms: 0,
            observer: "t".into(),
            manager: None,
        }
    }

    #[test]
    fn an_update_lists_only_what_changed() {
        let a = event("/.*", &[("10.0.0.1", true), ("10.0.0.2", true)]);
        let b = event(
            "/v2/.*",
            &[("10.0.0.1", true), ("10.0.0.3", true), ("10.0.0.2", false)],
        );
        assert_eq!(
            changes(Some(&a), &b),
            vec![
                "path: /.* → /v2/.*",
                "backends: +10.0.0.3:80 -10.0.0.2:80",
                "not ready: +10.0.0.2:80",
            ]
        );
        assert_eq!(changes(Some(&a), &a), vec!["(no routing change)"]);
        assert_eq!(
            changes(None, &a),
            vec!["+ web-default.test.service.consul /.* [10.0.0.1:80 10.0.0.2:80]"]
        );
    }
}
