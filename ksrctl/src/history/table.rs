//! The routing table folded event by event, and how a route reads (port, scheme).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use ksr_proto::{Event, RouteState, ServiceKey};
use ksr_runtime::replay::Latest;

use super::{At, format_time};

/// One routed Service in a routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routed {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub path: String,
    /// The Service port routed, as far as the event tells (`http (80/TCP)`); in endpoints or
    /// node-port mode the backends' ports are target ports (`→ 8080`).
    pub port: String,
    /// How the edge speaks to the backends: `http`, `https`, or `https-unverified`
    /// (certificates not checked).
    pub scheme: String,
    pub backends: Vec<String>,
    /// Sequence and time of the event that set this state.
    pub seq: u64,
    pub since: String,
}

/// The routing table at `at`, from the stream's records (in stream order). Undecodable
/// records are skipped (callers report them).
pub fn state_at(records: &[Latest], at: At) -> BTreeMap<ServiceKey, Routed> {
    let mut table = Table::default();
    for r in records.iter().filter(|r| at.includes(r)) {
        if let Ok(event) = &r.event {
            table.apply(r.seq, r.published_unix_ns, event.clone());
        }
    }
    table.routes()
}

/// A routing table built event by event (stream order). Events are kept as they came and
/// rendered only at the end: a replay of a million events formats only the survivors.
#[derive(Debug, Default, Clone)]
pub struct Table {
    /// Per Service: sequence, store time and the event that set its route.
    entries: HashMap<ServiceKey, (u64, i64, Event)>,
}

impl Table {
    pub fn apply(&mut self, seq: u64, published_unix_ns: i64, event: Event) {
        if event.route().is_none() {
            self.entries.remove(&event.key);
        } else if let Some(slot) = self.entries.get_mut(&event.key) {
            *slot = (seq, published_unix_ns, event);
        } else {
            self.entries
                .insert(event.key.clone(), (seq, published_unix_ns, event));
        }
    }

    /// How many Services are routed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every routed Service's event, with its sequence and store time, in Service order.
    pub fn entries(&self) -> Vec<(u64, i64, &Event)> {
        let mut out: Vec<(&ServiceKey, u64, i64, &Event)> = self
            .entries
            .iter()
            .map(|(key, (seq, ns, event))| (key, *seq, *ns, event))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out.into_iter()
            .map(|(_, seq, ns, e)| (seq, ns, e))
            .collect()
    }

    /// The routing table.
    pub fn routes(&self) -> BTreeMap<ServiceKey, Routed> {
        self.entries
            .iter()
            .filter_map(|(key, (seq, ns, event))| {
                Some((key.clone(), routed(key, event.route()?, *seq, *ns)))
            })
            .collect()
    }
}

fn routed(key: &ServiceKey, route: &RouteState, seq: u64, published_unix_ns: i64) -> Routed {
    Routed {
        cluster: key.cluster.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        host: route.hostname(),
        path: route.path.to_string(),
        port: port_text(route),
        scheme: scheme_text(route),
        backends: route
            .ready_backends()
            .map(|b| std::net::SocketAddr::new(b.ip, b.port).to_string())
            .collect(),
        seq,
        since: format_time(published_unix_ns),
    }
}

/// The routed Service port: the Service port the backends' port is (cluster-ip mode), else the
/// backends' ports (target ports or node ports).
pub fn port_text(route: &RouteState) -> String {
    let mut ports: Vec<u16> = route.backends.iter().map(|b| b.port).collect();
    ports.sort_unstable();
    ports.dedup();
    match ports[..] {
        [] => "-".into(),
        [p] => match route.ports.iter().find(|s| s.port == p) {
            Some(s) if s.name.is_empty() => format!("{p}/{}", s.protocol),
            Some(s) => format!("{} ({p}/{})", s.name, s.protocol),
            None => format!("→ {p}"),
        },
        _ => format!(
            "→ {}",
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// `http`, `https` or `https-unverified`.
pub fn scheme_text(route: &RouteState) -> String {
    match (route.scheme, route.tls_skip_verify) {
        (s, false) => s.to_string(),
        (s, true) => format!("{s}-unverified"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::state_table;

    #[test]
    fn the_routed_port_is_named_when_the_event_tells_it() {
        let mut r = ksr_proto::RouteState {
            ports: vec![
                ksr_proto::ServicePort {
                    name: "https".into(),
                    port: 443,
                    protocol: "TCP".into(),
                },
                ksr_proto::ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: "TCP".into(),
                },
            ],
            backends: vec![ksr_proto::Backend {
                ip: "10.0.0.1".parse().unwrap(),
                port: 80,
                ready: true,
            }],
            ..serde_json::from_str(
                r#"{"label":"a-b","environment":"test","domain":"service.consul","path":"/.*",
                    "ports":[],"backends":[],"host_since":0,"route_since":0,"full_host":null}"#,
            )
            .unwrap()
        };
        assert_eq!(port_text(&r), "http (80/TCP)");
        assert_eq!(scheme_text(&r), "http");

        r.backends[0].port = 8443;
        r.scheme = ksr_proto::Scheme::Https;
        r.tls_skip_verify = true;
        assert_eq!(port_text(&r), "→ 8443", "a target port");
        assert_eq!(scheme_text(&r), "https-unverified");
        // Each column of the table stands under its header (in characters).
        let key = ServiceKey::new("east", "b", "a");
        let state = BTreeMap::from([(key.clone(), routed(&key, &r, 7, 0))]);
        let text = state_table(&state);
        let (header, row) = (text.lines().next().unwrap(), text.lines().nth(1).unwrap());
        let column = |line: &str, pat: &str| line.find(pat).map(|i| line[..i].chars().count());
        for (name, cell) in [
            ("PORT", "→ 8443"),
            ("SCHEME", "https-unverified"),
            ("BACKENDS", "10.0.0.1:8443"),
            ("SERVICE", "east/b/a"),
        ] {
            assert_eq!(column(header, name), column(row, cell), "{name}:\n{text}");
        }
    }
}
