//! Representative events shared by the golden-vector and property tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ksr_proto::{Backend, Change, Event, RouteState, ServiceKey, ServicePort};

pub fn webtest1_route() -> RouteState {
    RouteState {
        label: "webtest1-default".into(),
        environment: "test".into(),
        domain: "service.consul".into(),
        path: "/mycontext/.*".parse().expect("a valid path"),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        backends: vec![
            Backend {
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
                port: 80,
                ready: true,
            },
            Backend {
                ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9)),
                port: 8080,
                ready: false,
            },
        ],
        host_since: 0,
        route_since: 0,
        full_host: None,
        scheme: Default::default(),
        tls_skip_verify: false,
        consul_tags: Vec::new(),
        consul_meta: Default::default(),
    }
}

/// (file stem, event) for every golden vector of schema version 1.
pub fn golden_v1() -> Vec<(&'static str, Event)> {
    let key = ServiceKey::new("east", "default", "webtest1");
    let mut updated = webtest1_route();
    updated.label = "myapp-default".into();
    updated.backends.truncate(1);
    updated.host_since = 0;
    updated.route_since = 0;
    let mut moved_backends = webtest1_route();
    moved_backends.backends.truncate(1);
    moved_backends.host_since = 41;
    moved_backends.route_since = 41;
    vec![
        (
            "v1_added",
            Event {
                key: key.clone(),
                change: Change::Added(webtest1_route()),
                resource_version: "12345".into(),
                observed_unix_ms: 1_764_230_400_000,
                observer: "ksr-watcher-0".into(),
                manager: Some("kubectl-client-side-apply".into()),
            },
        ),
        (
            "v1_updated",
            Event {
                key: key.clone(),
                change: Change::Updated(updated),
                resource_version: "12399".into(),
                observed_unix_ms: 1_764_230_460_123,
                observer: "ksr-watcher-1".into(),
                manager: None,
            },
        ),
        (
            "v1_updated_continuing",
            Event {
                key: key.clone(),
                change: Change::Updated(moved_backends),
                resource_version: "12398".into(),
                observed_unix_ms: 1_764_230_450_000,
                observer: "ksr-watcher-0".into(),
                manager: Some("kube-controller-manager".into()),
            },
        ),
        (
            "v1_removed",
            Event {
                key,
                change: Change::Removed,
                resource_version: "12400".into(),
                observed_unix_ms: 1_764_230_520_999,
                observer: "ksr-watcher-0".into(),
                manager: None,
            },
        ),
    ]
}

/// (file stem, event) for every golden vector of schema version 2: events version 1 cannot
/// carry (a full hostname from an allowed domain).
pub fn golden_v2() -> Vec<(&'static str, Event)> {
    let mut route = webtest1_route();
    route.label = "myapp".into();
    route.full_host = Some("myapp.mydomain.com".into());
    route.host_since = 7;
    route.route_since = 7;
    vec![(
        "v2_added_full_host",
        Event {
            key: ServiceKey::new("east", "default", "webtest1"),
            change: Change::Added(route),
            resource_version: "22222".into(),
            observed_unix_ms: 1_780_000_000_000,
            observer: "ksr-watcher-0".into(),
            manager: None,
        },
    )]
}

/// (file stem, event) for every golden vector of schema version 3: https to the backends.
pub fn golden_v3() -> Vec<(&'static str, Event)> {
    let mut verified = webtest1_route();
    verified.ports[0] = ServicePort {
        name: "https".into(),
        port: 443,
        protocol: "TCP".into(),
    };
    verified.scheme = ksr_proto::Scheme::Https;
    let mut unverified = verified.clone();
    verified.consul_tags = vec!["canary".into(), "v2".into()];
    verified.consul_meta = [("team".to_owned(), "web shop".to_owned())].into();
    unverified.tls_skip_verify = true;
    unverified.full_host = Some("webtest1-default.mydomain.com".into());
    let event = |change| Event {
        key: ServiceKey::new("east", "default", "webtest1"),
        change,
        resource_version: "33333".into(),
        observed_unix_ms: 1_790_000_000_000,
        observer: "ksr-watcher-0".into(),
        manager: None,
    };
    vec![
        ("v3_added_https_consul_tags", event(Change::Added(verified))),
        (
            "v3_updated_https_unverified_full_host",
            event(Change::Updated(unverified)),
        ),
    ]
}

/// Every golden vector with the schema version it must be written at.
pub fn golden_all() -> Vec<(&'static str, u16, Event)> {
    let v1 = golden_v1().into_iter().map(|(s, e)| (s, 1, e));
    let v2 = golden_v2().into_iter().map(|(s, e)| (s, 2, e));
    let v3 = golden_v3().into_iter().map(|(s, e)| (s, 3, e));
    v1.chain(v2).chain(v3).collect()
}
