//! Our own state in etcd: per-Service fences and per-hostname claim records.
//!
//! A hostname belongs to one namespace (DESIGN.md): so the unit of ownership, and the record,
//! is the hostname. Each Service's claim on it carries the path it routes and its ready
//! backends; which namespace owns the hostname, and which Service owns each path under it,
//! are derived from the claims alone ([`crate::target`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use ksr_proto::{RoutePath, Scheme};

use ksr_projection::NameRecord;
pub use ksr_projection::ServiceRecord;
use ksr_projection::claims::Claim;

/// What a host record is about: one hostname as vulcand matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMeta {
    pub host: String,
}

/// What one Service routes on a hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathClaim {
    /// The vulcand PathRegexp (a record whose path vulcand would refuse is unreadable).
    pub path: RoutePath,
    /// Stream sequence at which the Service's continuous claim on hostname + path began
    /// (the claim's own `since` is the one on the hostname).
    pub path_since: u64,
    /// The Service's ready backends (read at their exact length, like the claims).
    #[serde(deserialize_with = "exact")]
    pub backends: Vec<SocketAddr>,
    /// How vulcand speaks to them (absent in records of earlier releases: http).
    #[serde(default, skip_serializing_if = "is_http")]
    pub scheme: Scheme,
    /// Whether vulcand skips verifying their certificates (https only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
}

fn exact<'de, De: serde::Deserializer<'de>>(d: De) -> Result<Vec<SocketAddr>, De::Error> {
    let mut v = Vec::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

fn is_http(s: &Scheme) -> bool {
    *s == Scheme::Http
}

/// One Service's claim on a hostname.
pub type HostClaim = Claim<PathClaim>;

/// Everything about one hostname: who claims it (with which path), who owns it, who waits.
pub type HostRecord = NameRecord<HostMeta, PathClaim>;

/// Records of ksr before hostnames were owned by one namespace (one record per host + path,
/// under `ksr/<owner>/vulcand/routes/`): read once, to migrate them ([`crate::store`]).
pub mod legacy {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RouteMeta {
        pub host: String,
        pub path: String,
    }

    pub type RouteRecord = NameRecord<RouteMeta, Vec<SocketAddr>>;
}
