//! Schema version 1, frozen: decoded forever, and still written for every event it can
//! represent (no full hostname, nothing of version 3), so publishers of the previous release keep
//! reading what a newer watcher writes during a rolling upgrade.

use bincode::{Decode, Encode};

use crate::model::{Backend, Change, Event, RouteState, Scheme, ServiceKey, ServicePort};

#[derive(Debug, Clone, Encode, Decode)]
pub(crate) struct RouteStateV1 {
    label: String,
    environment: String,
    domain: String,
    path: String,
    ports: Vec<ServicePort>,
    backends: Vec<Backend>,
    host_since: u64,
    route_since: u64,
}

#[derive(Debug, Clone, Encode, Decode)]
pub(crate) enum ChangeV1 {
    Added(RouteStateV1),
    Updated(RouteStateV1),
    Removed,
}

#[derive(Debug, Clone, Encode, Decode)]
pub(crate) struct EventV1 {
    key: ServiceKey,
    change: ChangeV1,
    resource_version: String,
    observed_unix_ms: i64,
    observer: String,
    manager: Option<String>,
}

impl From<RouteStateV1> for RouteState {
    fn from(r: RouteStateV1) -> Self {
        RouteState {
            label: r.label,
            environment: r.environment,
            domain: r.domain,
            path: crate::route::RoutePath::decoded(r.path),
            ports: r.ports,
            backends: r.backends,
            host_since: r.host_since,
            route_since: r.route_since,
            full_host: None,
            scheme: Scheme::Http,
            tls_skip_verify: false,
            consul_tags: Vec::new(),
            consul_meta: Default::default(),
        }
    }
}

impl From<EventV1> for Event {
    fn from(e: EventV1) -> Self {
        Event {
            key: e.key,
            change: match e.change {
                ChangeV1::Added(r) => Change::Added(r.into()),
                ChangeV1::Updated(r) => Change::Updated(r.into()),
                ChangeV1::Removed => Change::Removed,
            },
            resource_version: e.resource_version,
            observed_unix_ms: e.observed_unix_ms,
            observer: e.observer,
            manager: e.manager,
        }
    }
}

fn route_v1(r: &RouteState) -> Option<RouteStateV1> {
    let plain = r.full_host.is_none() && crate::v2::plain_backends(r);
    plain.then(|| RouteStateV1 {
        label: r.label.clone(),
        environment: r.environment.clone(),
        domain: r.domain.clone(),
        path: r.path.to_string(),
        ports: r.ports.clone(),
        backends: r.backends.clone(),
        host_since: r.host_since,
        route_since: r.route_since,
    })
}

impl EventV1 {
    /// The version-1 form of `e`, or None when version 1 cannot carry it.
    pub(crate) fn of(e: &Event) -> Option<Self> {
        Some(EventV1 {
            key: e.key.clone(),
            change: match &e.change {
                Change::Added(r) => ChangeV1::Added(route_v1(r)?),
                Change::Updated(r) => ChangeV1::Updated(route_v1(r)?),
                Change::Removed => ChangeV1::Removed,
            },
            resource_version: e.resource_version.clone(),
            observed_unix_ms: e.observed_unix_ms,
            observer: e.observer.clone(),
            manager: e.manager.clone(),
        })
    }
}
