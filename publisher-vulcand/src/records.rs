//! Our own state in etcd: per-Service fences and per-route claim records.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use ksr_runtime::claims::Claim;
use ksr_runtime::plan::NameRecord;
pub use ksr_runtime::plan::ServiceRecord;

/// What a vulcand route is: a hostname and a path regexp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMeta {
    pub host: String,
    pub path: String,
}

/// One Service's claim on a route; its data is the Service's ready backends.
pub type RouteClaim = Claim<Vec<SocketAddr>>;

/// Everything about one vulcand route (host + path): who claims it, who owns it, who waits.
pub type RouteRecord = NameRecord<RouteMeta, Vec<SocketAddr>>;
