//! An independent specification of what etcd and Consul must hold, written from the contract.
//!
//! The publishers decide through a planner, claim records and fences; this module decides
//! from the rules as the contract states them (shared/DESIGN.md, the README's
//! *publisher-vulcand* and *publisher-consul* sections), sharing no code with them, so a
//! planner bug cannot pass on both sides:
//!
//! - A hostname belongs to the namespace whose Service's continuous claim on it began first
//!   (a stream sequence). Within that namespace each path goes to the Service (all its
//!   clusters) whose claim on hostname + path began first; the others wait.
//! - Each routed hostname + path is `vulcand/backends/<id>/backend` `{"Type":"http"}` (with
//!   `"Settings":{"TLS":{"InsecureSkipVerify":true}}` when the routing Service's oldest cluster
//!   asks not to verify certificates), one `servers/<cluster>-<ip>-<port>`
//!   `{"URL":"<scheme>://ip:port"}` per ready address of the routing Service in every cluster
//!   (its own scheme), and `vulcand/frontends/<id>/frontend`; `<id>` is
//!   `<owner>.<hostname>.<FNV-1a 64 of the path, 16 hex>`.
//! - Each Consul name `<tag>.<env>` is one instance on our node, owned by the namespace that
//!   claimed it first, at the router's address, with `ksr-*` metadata; plus the router's own
//!   `vulcan.<env>` entry.
//! - Fences hold the newest applied stream sequence of every Service and the name it claims.
//!
//! The claim ages come from the stream by [`Ages`], again from the contract's definition
//! (the sequence at which a Service's unbroken run of events on one hostname began), never
//! from the `host_since` the watcher stamped: a watcher that stamps wrongly fails here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use ksr_proto::{Event, ServiceKey};

/// The settings the projection depends on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub owner: String,
    pub vulcand_prefix: String,
    pub router_address: String,
    pub router_port: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            owner: "ksr".into(),
            vulcand_prefix: "vulcand".into(),
            router_address: "127.0.0.1".into(),
            router_port: 80,
        }
    }
}

/// One cluster's Service as it must be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// The hostname vulcand matches.
    pub hostname: String,
    /// (tag, environment) when Consul DNS answers for the hostname.
    pub consul: Option<(String, String)>,
    pub path: String,
    /// Ready addresses: each becomes a server.
    pub servers: Vec<SocketAddr>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Whether vulcand must skip verifying the servers' certificates.
    pub skip_verify: bool,
    /// What it adds to its Consul entry.
    pub consul_tags: Vec<String>,
    pub consul_meta: BTreeMap<String, String>,
    /// Where its claim on the hostname, and on hostname + path, began.
    pub host_since: u64,
    pub route_since: u64,
}

/// A Consul catalog entry as our node must hold it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConsulEntry {
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
}

/// Who owns a name and who waits for it, as the claim records must say.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Status {
    pub owner: String,
    pub waiting: Vec<String>,
}

/// Everything the targets must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Every vulcand key (with its prefix) and its exact value.
    pub vulcand: BTreeMap<String, String>,
    /// Host record id (`<owner>.<hostname>`) → status.
    pub hosts: BTreeMap<String, Status>,
    /// Catalog entries on our node, by ID.
    pub consul: BTreeMap<String, ConsulEntry>,
    /// Consul name record id (`<tag>.<env>`) → status.
    pub names: BTreeMap<String, Status>,
}

/// The 64-bit FNV-1a hash (the route id's digest).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The oldest claim of `claims` by (age, group): the group that owns.
fn oldest<'a>(claims: impl Iterator<Item = (u64, &'a str)>) -> Option<&'a str> {
    claims.min().map(|(_, g)| g)
}

/// What the targets must hold for `services` (every cluster's routed Services).
pub fn expected(settings: &Settings, services: &[Service]) -> Expected {
    let mut out = Expected::default();
    let owner = &settings.owner;
    let prefix = settings.vulcand_prefix.trim_end_matches('/');

    // vulcand: hostname → namespace → claims.
    let mut by_host: BTreeMap<&str, Vec<&Service>> = BTreeMap::new();
    for s in services {
        by_host.entry(&s.hostname).or_default().push(s);
    }
    for (host, claims) in &by_host {
        let ns = oldest(
            claims
                .iter()
                .map(|s| (s.host_since, s.key.namespace.as_str())),
        )
        .expect("a host in the map has a claim");
        let mut waiting: BTreeSet<String> = claims
            .iter()
            .filter(|s| s.key.namespace != ns)
            .map(|s| s.key.namespace.clone())
            .collect();
        let mut by_path: BTreeMap<&str, Vec<&Service>> = BTreeMap::new();
        for s in claims.iter().filter(|s| s.key.namespace == ns) {
            by_path.entry(&s.path).or_default().push(s);
        }
        for (path, owners) in by_path {
            let name = oldest(owners.iter().map(|s| (s.route_since, s.key.name.as_str())))
                .expect("a path in the map has a claim");
            let id = format!("{owner}.{host}.{:016x}", fnv1a64(path.as_bytes()));
            let first = owners
                .iter()
                .filter(|s| s.key.name == name)
                .min_by_key(|s| (s.route_since, s.key.cluster.as_str()));
            let backend = if first.is_some_and(|s| s.skip_verify) {
                r#"{"Type":"http","Settings":{"TLS":{"InsecureSkipVerify":true}}}"#
            } else {
                r#"{"Type":"http"}"#
            };
            out.vulcand
                .insert(format!("{prefix}/backends/{id}/backend"), backend.into());
            for s in &owners {
                if s.key.name != name {
                    waiting.insert(format!("{}/{} on {}", s.key.namespace, s.key.name, path));
                    continue;
                }
                for addr in &s.servers {
                    let ip = addr.ip().to_string().replace(['.', ':'], "-");
                    out.vulcand.insert(
                        format!(
                            "{prefix}/backends/{id}/servers/{}-{ip}-{}",
                            s.key.cluster,
                            addr.port()
                        ),
                        format!(
                            r#"{{"URL":{}}}"#,
                            json_str(&format!("{}://{addr}", s.scheme))
                        ),
                    );
                }
            }
            let route = format!("Host(`{host}`) && PathRegexp(`{path}`)");
            out.vulcand.insert(
                format!("{prefix}/frontends/{id}/frontend"),
                format!(
                    r#"{{"Type":"http","BackendId":{},"Route":{}}}"#,
                    json_str(&id),
                    json_str(&route)
                ),
            );
        }
        out.hosts.insert(
            format!("{owner}.{host}"),
            Status {
                owner: ns.to_owned(),
                waiting: waiting.into_iter().collect(),
            },
        );
    }

    // Consul: (tag, env) → claims; one instance per name, owned by the oldest namespace.
    let mut by_name: BTreeMap<(&str, &str), Vec<&Service>> = BTreeMap::new();
    let mut environments: BTreeSet<&str> = BTreeSet::new();
    for s in services {
        if let Some((tag, env)) = &s.consul {
            by_name.entry((tag, env)).or_default().push(s);
            environments.insert(env);
        }
    }
    for ((tag, env), claims) in by_name {
        let ns = oldest(
            claims
                .iter()
                .map(|s| (s.host_since, s.key.namespace.as_str())),
        )
        .expect("a name in the map has a claim");
        let owners: Vec<&&Service> = claims.iter().filter(|s| s.key.namespace == ns).collect();
        let join = |f: &dyn Fn(&Service) -> &str| {
            let set: BTreeSet<&str> = owners.iter().map(|s| f(s)).collect();
            set.into_iter().collect::<Vec<_>>().join(",")
        };
        let since = owners.iter().map(|s| s.host_since).min().unwrap_or(0);
        // Tags: the name's own, then the union of the owners' (sorted, 32 at most). Metadata:
        // each key as the oldest claim that sets it says (claim age, then Service key), 32
        // keys at most, the oldest claims' first; ksr's own keys last.
        let mut tags: BTreeSet<String> = owners
            .iter()
            .flat_map(|s| s.consul_tags.iter().cloned())
            .collect();
        tags.remove(tag);
        let mut entry_tags = vec![tag.to_owned()];
        entry_tags.extend(tags.into_iter().take(32));
        let mut by_age: Vec<&&&Service> = owners.iter().collect();
        by_age.sort_by(|a, b| (a.host_since, &a.key).cmp(&(b.host_since, &b.key)));
        let mut meta: BTreeMap<String, String> = BTreeMap::new();
        for s in by_age {
            for (k, v) in &s.consul_meta {
                if !meta.contains_key(k) && meta.len() < 32 {
                    meta.insert(k.clone(), v.clone());
                }
            }
        }
        meta.extend([
            ("ksr-owner".to_owned(), owner.clone()),
            ("ksr-namespace".to_owned(), ns.to_owned()),
            ("ksr-services".to_owned(), join(&|s| s.key.name.as_str())),
            ("ksr-clusters".to_owned(), join(&|s| s.key.cluster.as_str())),
            ("ksr-since".to_owned(), since.to_string()),
        ]);
        let id = format!("{tag}.{env}");
        out.consul.insert(
            id.clone(),
            ConsulEntry {
                service: env.to_owned(),
                tags: entry_tags,
                address: settings.router_address.clone(),
                port: settings.router_port,
                meta,
            },
        );
        let waiting: BTreeSet<String> = claims
            .iter()
            .filter(|s| s.key.namespace != ns)
            .map(|s| s.key.namespace.clone())
            .collect();
        out.names.insert(
            id,
            Status {
                owner: ns.to_owned(),
                waiting: waiting.into_iter().collect(),
            },
        );
    }
    out
}

/// The router's own entry, registered for every environment a publisher serves.
pub fn router_entry(settings: &Settings, environment: &str) -> (String, ConsulEntry) {
    (
        format!("vulcan.{environment}"),
        ConsulEntry {
            service: "vulcan".into(),
            tags: vec![environment.to_owned()],
            address: settings.router_address.clone(),
            port: settings.router_port,
            meta: BTreeMap::from([("ksr-owner".to_owned(), settings.owner.clone())]),
        },
    )
}

/// The newest event of every Service in a stream, and the claim ages the contract defines.
#[derive(Debug, Default, Clone)]
pub struct Ages {
    /// Service → (sequence of its newest event, its live claim: hostname, path, host and
    /// route claim start), None when the newest event removed it.
    newest: BTreeMap<ServiceKey, (u64, Option<Claim>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    host: String,
    path: String,
    host_since: u64,
    route_since: u64,
}

impl Ages {
    /// Walks `events` (any order; sorted here by sequence): a claim on a hostname begins at
    /// the first event of an unbroken run of events of the Service on that hostname (a
    /// removal or another hostname breaks it); the claim on hostname + path likewise.
    pub fn from_stream(events: &[(u64, Event)]) -> Self {
        let mut sorted: Vec<&(u64, Event)> = events.iter().collect();
        sorted.sort_by_key(|(seq, _)| *seq);
        let mut newest: BTreeMap<ServiceKey, (u64, Option<Claim>)> = BTreeMap::new();
        for (seq, event) in sorted {
            let prev = newest.get(&event.key).and_then(|(_, c)| c.clone());
            let claim = event.route().map(|r| {
                let host = r.hostname();
                let path = r.path.clone();
                let (host_since, route_since) = match &prev {
                    Some(p) if p.host == host && p.path == *path => (p.host_since, p.route_since),
                    Some(p) if p.host == host => (p.host_since, *seq),
                    _ => (*seq, *seq),
                };
                Claim {
                    host,
                    path: path.to_string(),
                    host_since,
                    route_since,
                }
            });
            newest.insert(event.key.clone(), (*seq, claim));
        }
        Self { newest }
    }

    /// The sequence of the Service's newest event.
    pub fn seq(&self, key: &ServiceKey) -> Option<u64> {
        self.newest.get(key).map(|(s, _)| *s)
    }

    /// (host since, route since) of a live Service whose newest event routes `host` + `path`.
    pub fn since(&self, key: &ServiceKey, host: &str, path: &str) -> Option<(u64, u64)> {
        match self.newest.get(key) {
            Some((_, Some(c))) if c.host == host && c.path == path => {
                Some((c.host_since, c.route_since))
            }
            _ => None,
        }
    }

    /// Every Service the stream knows: (key, newest sequence, live).
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, u64, bool)> {
        self.newest.iter().map(|(k, (s, c))| (k, *s, c.is_some()))
    }
}

/// The model's input for a stream whose events are themselves the desired state (publisher
/// tests that publish events directly): the newest route of every Service, read field by
/// field. The claim ages are the ones the events carry (`host_since`/`route_since`, 0 for
/// "this event begins it"), which publishers must honour as stamped; end-to-end tests take
/// them from [`Ages`] instead, which also checks the watcher's stamping.
pub fn services_from_stream(events: &[(u64, Event)]) -> Vec<Service> {
    let mut newest: HashMap<&ServiceKey, (u64, &Event)> = HashMap::new();
    for (seq, e) in events {
        let slot = newest.entry(&e.key).or_insert((*seq, e));
        if *seq >= slot.0 {
            *slot = (*seq, e);
        }
    }
    let mut out = Vec::new();
    for (key, (seq, e)) in newest {
        let Some(r) = e.route() else { continue };
        let hostname = r.hostname();
        let stamped = |since: u64| if since == 0 { seq } else { since.min(seq) };
        let (host_since, route_since) = (stamped(r.host_since), stamped(r.route_since));
        let suffix = format!(".{}.{}", r.environment, r.domain);
        let consul = hostname
            .strip_suffix(&suffix)
            .filter(|tag| !tag.contains('.'))
            .map(|tag| (tag.to_owned(), r.environment.clone()));
        out.push(Service {
            key: key.clone(),
            hostname,
            consul,
            path: r.path.to_string(),
            servers: r
                .backends
                .iter()
                .filter(|b| b.ready)
                .map(|b| SocketAddr::new(b.ip, b.port))
                .collect(),
            scheme: match r.scheme {
                ksr_proto::Scheme::Http => "http",
                ksr_proto::Scheme::Https => "https",
            },
            skip_verify: r.tls_skip_verify,
            consul_tags: r.consul_tags.clone(),
            consul_meta: r.consul_meta.clone(),
            host_since,
            route_since,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Differences between two maps, both directions, value by value: "" when equal.
pub fn differences<V: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &BTreeMap<String, V>,
    want: &BTreeMap<String, V>,
) -> String {
    let mut lines = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => lines.push(format!("  missing {k} = {v:?}")),
            Some(g) if g != v => {
                lines.push(format!("  wrong   {k}\n    got  {g:?}\n    want {v:?}"))
            }
            _ => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            lines.push(format!("  extra   {k} = {v:?}"));
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    let n = lines.len();
    lines.truncate(12);
    format!(
        "{what}: {n} differences ({} entries, want {}):\n{}\n",
        got.len(),
        want.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(c: &str, ns: &str, name: &str, host: &str, path: &str, since: (u64, u64)) -> Service {
        let tag = host.split('.').next().unwrap_or_default().to_owned();
        Service {
            key: ServiceKey::new(c, ns, name),
            hostname: host.into(),
            consul: Some((tag, "test".into())),
            path: path.into(),
            servers: vec![format!("10.0.{}.1:80", since.0).parse().unwrap()],
            scheme: "http",
            skip_verify: false,
            consul_tags: Vec::new(),
            consul_meta: BTreeMap::new(),
            host_since: since.0,
            route_since: since.1,
        }
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_first_namespace_owns_the_host_and_the_first_service_each_path() {
        let h = "x-b-c.test.service.consul";
        let want = expected(
            &Settings::default(),
            &[
                svc("east", "c", "intruder", h, "/admin.*", (1, 1)),
                svc("east", "b-c", "x", h, "/.*", (2, 2)),
                svc("west", "c", "x", h, "/.*", (3, 3)),
                svc("west", "c", "y", h, "/.*", (4, 4)),
            ],
        );
        let status = &want.hosts[&format!("ksr.{h}")];
        assert_eq!(status.owner, "c");
        assert_eq!(status.waiting, vec!["b-c", "c/y on /.*"]);
        let servers: Vec<&String> = want
            .vulcand
            .keys()
            .filter(|k| k.contains("/servers/"))
            .collect();
        assert_eq!(servers.len(), 2, "{servers:?}");
        assert_eq!(
            want.consul[&"x-b-c.test".to_owned()].meta["ksr-services"],
            "intruder,x,y"
        );
        assert_eq!(want.consul[&"x-b-c.test".to_owned()].meta["ksr-since"], "1");
        assert_eq!(want.names[&"x-b-c.test".to_owned()].waiting, vec!["b-c"]);
    }

    #[test]
    fn ages_follow_unbroken_runs_on_one_hostname() {
        use ksr_proto::Change;
        let r = |label: &str, path: &str| crate::events::route(label, "test", path, &["10.0.0.1"]);
        let e = |c: Change| crate::events::event("east", "a", "web", c);
        let events = vec![
            (3, e(Change::Added(r("web-a", "/.*")))),
            (5, e(Change::Updated(r("web-a", "/api")))),
            (8, e(Change::Updated(r("web-a", "/api")))),
        ];
        let ages = Ages::from_stream(&events);
        let key = ServiceKey::new("east", "a", "web");
        assert_eq!(
            ages.since(&key, "web-a.test.service.consul", "/api"),
            Some((3, 5))
        );
        let mut more = events.clone();
        more.push((9, e(Change::Removed)));
        more.push((12, e(Change::Added(r("web-a", "/api")))));
        let ages = Ages::from_stream(&more);
        assert_eq!(
            ages.since(&key, "web-a.test.service.consul", "/api"),
            Some((12, 12))
        );
    }
}
