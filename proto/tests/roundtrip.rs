//! Property tests: any valid event round-trips through the codec; validators agree with the
//! naming rules.

use std::net::IpAddr;

use ksr_proto::{
    Backend, Change, Event, RouteState, Scheme, ServiceKey, ServicePort, codec, names, route,
};
use proptest::prelude::*;

mod common;

fn label() -> impl Strategy<Value = String> {
    "[a-z]([-a-z0-9]{0,20}[a-z0-9])?"
}

fn backend() -> impl Strategy<Value = Backend> {
    (any::<IpAddr>(), 1u16.., any::<bool>()).prop_map(|(ip, port, ready)| Backend {
        ip,
        port,
        ready,
    })
}

fn route_state() -> impl Strategy<Value = RouteState> {
    (
        label(),
        label(),
        prop::sample::select(vec!["/.*", "/api/.*", "^/v[0-9]+/x$", "/static/"]),
        prop::collection::vec(
            (
                "[a-z]{0,8}",
                1u16..,
                prop::sample::select(vec!["TCP", "UDP"]),
            ),
            0..4,
        ),
        prop::collection::vec(backend(), 0..16),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of("[a-z]([a-z0-9-]{0,10}[a-z0-9])?\\.example\\.(com|org)"),
        any::<(bool, bool)>(),
        prop::collection::vec("[a-z][a-z0-9]{0,6}", 0..3),
        prop::collection::btree_map("[A-Za-z0-9_]{1,8}", "[ -~]{0,10}", 0..3),
    )
        .prop_map(
            |(
                label,
                environment,
                path,
                ports,
                backends,
                host_since,
                route_since,
                domain,
                tls,
                consul_tags,
                consul_meta,
            )| {
                // A full hostname (schema version 2) starts with the label.
                let full_host = domain.map(|d| format!("{label}.{d}"));
                let mut r = RouteState {
                    label,
                    environment,
                    domain: "service.consul".into(),
                    path: path.parse().expect("generated paths are valid"),
                    ports: ports
                        .into_iter()
                        .map(|(name, port, protocol)| ServicePort {
                            name,
                            port,
                            protocol: protocol.into(),
                        })
                        .collect(),
                    backends,
                    host_since,
                    route_since,
                    full_host,
                    // https (schema version 3), its certificate checked or not.
                    scheme: if tls.0 { Scheme::Https } else { Scheme::Http },
                    tls_skip_verify: tls.0 && tls.1,
                    // Consul tags and metadata (schema version 3 as well).
                    consul_tags,
                    consul_meta,
                };
                r.normalize();
                r
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    (
        label(),
        label(),
        label(),
        prop_oneof![
            route_state().prop_map(Change::Added),
            route_state().prop_map(Change::Updated),
            Just(Change::Removed),
        ],
        "[0-9]{1,12}",
        any::<i64>(),
        "[a-z0-9-]{0,30}",
        proptest::option::of("[ -~]{0,40}"),
    )
        .prop_map(
            |(cluster, namespace, name, change, rv, t, observer, manager)| Event {
                key: ServiceKey {
                    cluster,
                    namespace,
                    name,
                },
                change,
                resource_version: rv,
                observed_unix_ms: t,
                observer,
                manager,
            },
        )
}

proptest! {
    #[test]
    fn valid_events_round_trip(event in event()) {
        let bytes = codec::encode(&event).unwrap();
        prop_assert_eq!(codec::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn generated_labels_are_valid_names(l in label()) {
        prop_assert!(names::validate_namespace(&l).is_ok());
        prop_assert!(names::validate_service_name(&l).is_ok());
        prop_assert!(names::validate_cluster(&l).is_ok());
    }

    #[test]
    fn names_with_a_foreign_character_are_rejected(
        l in label(),
        bad in prop::sample::select(vec!['.', '*', '>', ' ', '_', 'A', '/', '\n', 'é']),
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = l.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let s: String = chars.into_iter().collect();
        prop_assert!(names::validate_cluster(&s).is_err());
        prop_assert!(names::validate_namespace(&s).is_err());
    }

    #[test]
    fn paths_with_a_backtick_or_control_char_are_rejected(
        prefix in "/[a-z]{0,10}",
        bad in prop::sample::select(vec!['`', '\n', '\r', '\t', '\0', '\u{7f}']),
    ) {
        let path = format!("{prefix}{bad}");
        prop_assert!(route::validate_path(&path).is_err());
    }

    #[test]
    fn any_string_is_validated_without_panicking(s in "\\PC{0,64}") {
        let _ = route::validate_path(&s);
        let _ = names::validate_domain(&s);
    }
}

#[test]
fn claims_continue_while_the_hostname_and_path_stay() {
    let base = RouteState {
        label: "web-a".into(),
        environment: "test".into(),
        domain: "service.consul".into(),
        path: ksr_proto::RoutePath::default_path(),
        ports: vec![],
        backends: vec![],
        host_since: 0,
        route_since: 0,
        full_host: None,
        scheme: Default::default(),
        tls_skip_verify: false,
        consul_tags: Vec::new(),
        consul_meta: Default::default(),
    };
    // First event (seq 5) begins both claims.
    let mut next = base.clone();
    next.continue_claims(Some((&base, 5)));
    assert_eq!((next.host_since, next.route_since), (5, 5));
    // A path change keeps the hostname claim, restarts the route claim.
    let mut moved = next.clone();
    moved.path = "/api".parse().expect("a valid path");
    moved.continue_claims(Some((&next, 9)));
    assert_eq!((moved.host_since, moved.route_since), (5, 0));
    assert_eq!(moved.route_claimed_since(12), 12);
    // A hostname change restarts both; no predecessor restarts both.
    let mut renamed = moved.clone();
    renamed.label = "other-a".into();
    renamed.continue_claims(Some((&moved, 12)));
    assert_eq!((renamed.host_since, renamed.route_since), (0, 0));
    let mut fresh = base.clone();
    fresh.host_since = 3;
    fresh.continue_claims(None);
    assert_eq!((fresh.host_since, fresh.route_since), (0, 0));
}

#[test]
fn a_full_hostname_is_a_consul_name_only_under_the_consul_domain() {
    let mut r = common::webtest1_route();
    assert_eq!(r.consul_name(), Some(("webtest1-default", "test")));
    r.label = "myapp".into();
    r.full_host = Some("myapp.mydomain.com".into());
    assert_eq!(r.hostname(), "myapp.mydomain.com");
    assert_eq!(r.consul_name(), None);
    r.full_host = Some("myapp.test.service.consul".into());
    assert_eq!(r.consul_name(), Some(("myapp", "test")));
    r.full_host = Some("myapp.x.test.service.consul".into());
    assert_eq!(r.consul_name(), None);
    r.full_host = Some("other.mydomain.com".into());
    assert!(r.validate().is_err(), "the label must be the first label");
}
