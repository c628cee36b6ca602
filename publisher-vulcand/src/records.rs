//! Our own state in etcd: per-Service fences and per-route claim records.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use ksr_runtime::claims::{Claim, Claims};

/// The fence of one Service: the stream sequence last applied and the route it claims.
/// A removed Service keeps its record (a tombstone) so an older replayed event cannot
/// resurrect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub seq: u64,
    pub route: Option<String>,
}

/// One Service's claim on a route; its data is the Service's ready backends.
pub type RouteClaim = Claim<Vec<SocketAddr>>;

/// Everything about one vulcand route (host + path): who claims it and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub host: String,
    pub path: String,
    /// Every Service claiming this host + path; `data` is its ready backends.
    pub claims: Claims<Vec<SocketAddr>>,
    /// `<namespace>/<name>` of the Service that owns the route (derived, for operators).
    pub owner: Option<String>,
    /// `<namespace>/<name>` of conflicting Services waiting for the route (derived).
    pub waiting: Vec<String>,
}

/// Claims group by Service (namespace + name): one Service's clusters fan in.
pub fn service_group(key: &ksr_proto::ServiceKey) -> (String, String) {
    (key.namespace.clone(), key.name.clone())
}

impl RouteRecord {
    pub fn new(host: &str, path: &str) -> Self {
        Self {
            host: host.to_owned(),
            path: path.to_owned(),
            claims: Claims::default(),
            owner: None,
            waiting: Vec::new(),
        }
    }

    /// The claims whose backends are projected, and the waiting ones.
    pub fn split(&self) -> (Vec<&RouteClaim>, Vec<&RouteClaim>) {
        self.claims.split(service_group)
    }

    /// Recomputes the derived `owner` and `waiting` fields.
    pub fn refresh_status(&mut self) {
        let (owners, waiting) = self.split();
        let owner = owners
            .first()
            .map(|c| format!("{}/{}", c.namespace, c.name));
        let mut w: Vec<String> = waiting
            .iter()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect();
        w.sort();
        w.dedup();
        self.owner = owner;
        self.waiting = w;
    }
}
