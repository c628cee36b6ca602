//! Schema version 2, frozen: version 1 plus a full hostname. Decoded forever, and still
//! written for every event it can represent (plain HTTP to the backends, no Consul tags or
//! metadata), so
//! publishers of the previous release keep reading what a newer watcher writes during a
//! rolling upgrade.

use bincode::{Decode, Encode};

use crate::model::{Backend, Change, Event, RouteState, Scheme, ServiceKey, ServicePort};

#[derive(Debug, Clone, Encode, Decode)]
pub(crate) struct RouteStateV2 {
    label: String,
    environment: String,
    domain: String,
    path: String,
    ports: Vec<ServicePort>,
    backends: Vec<Backend>,
    host_since: u64,
    route_since: u64,
    full_host: Option<String>,
}

#[derive(Debug, Clone, Encode, Decode)]
pub(crate) enum ChangeV2 {
    Added(RouteStateV2),
    Updated(RouteStateV2),
    Removed,
}

#[derive(Debug, Clone, Encode, Decode)]
pub(crate) struct EventV2 {
    key: ServiceKey,
    change: ChangeV2,
    resource_version: String,
    observed_unix_ms: i64,
    observer: String,
    manager: Option<String>,
}

impl From<RouteStateV2> for RouteState {
    fn from(r: RouteStateV2) -> Self {
        RouteState {
            label: r.label,
            environment: r.environment,
            domain: r.domain,
            path: crate::route::RoutePath::decoded(r.path),
            ports: r.ports,
            backends: r.backends,
            host_since: r.host_since,
            route_since: r.route_since,
            full_host: r.full_host,
            scheme: Scheme::Http,
            tls_skip_verify: false,
            consul_tags: Vec::new(),
            consul_meta: Default::default(),
        }
    }
}

impl From<EventV2> for Event {
    fn from(e: EventV2) -> Self {
        Event {
            key: e.key,
            change: match e.change {
                ChangeV2::Added(r) => Change::Added(r.into()),
                ChangeV2::Updated(r) => Change::Updated(r.into()),
                ChangeV2::Removed => Change::Removed,
            },
            resource_version: e.resource_version,
            observed_unix_ms: e.observed_unix_ms,
            observer: e.observer,
            manager: e.manager,
        }
    }
}

/// Whether `r` uses nothing version 3 added: plain HTTP to the backends, no Consul tags or
/// metadata.
pub(crate) fn plain_backends(r: &RouteState) -> bool {
    r.scheme == Scheme::Http
        && !r.tls_skip_verify
        && r.consul_tags.is_empty()
        && r.consul_meta.is_empty()
}

fn route_v2(r: &RouteState) -> Option<RouteStateV2> {
    plain_backends(r).then(|| RouteStateV2 {
        label: r.label.clone(),
        environment: r.environment.clone(),
        domain: r.domain.clone(),
        path: r.path.to_string(),
        ports: r.ports.clone(),
        backends: r.backends.clone(),
        host_since: r.host_since,
        route_since: r.route_since,
        full_host: r.full_host.clone(),
    })
}

impl EventV2 {
    /// The version-2 form of `e`, or None when version 2 cannot carry it.
    pub(crate) fn of(e: &Event) -> Option<Self> {
        Some(EventV2 {
            key: e.key.clone(),
            change: match &e.change {
                Change::Added(r) => ChangeV2::Added(route_v2(r)?),
                Change::Updated(r) => ChangeV2::Updated(route_v2(r)?),
                Change::Removed => ChangeV2::Removed,
            },
            resource_version: e.resource_version.clone(),
            observed_unix_ms: e.observed_unix_ms,
            observer: e.observer.clone(),
            manager: e.manager.clone(),
        })
    }
}
