//! Every rule is checked once, up front: whatever normalization accepts, publishing encodes;
//! whatever it refuses comes with a reason. Property-tested over generated Services whose
//! names, annotations and specs are drawn from real and hostile values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ksr_proto::{Change, Event, ServiceKey, codec};
use ksr_watcher::normalize::{AddressMode, Normalizer};
use proptest::prelude::*;

fn normalizer() -> Normalizer {
    Normalizer {
        environment: "test".into(),
        domain: "service.consul".into(),
        mode: AddressMode::ClusterIp,
        node_addresses: Vec::new(),
        allowed_host_domains: vec!["example.org".into()],
        max_event_bytes: 4096,
    }
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("web".to_owned()),
        Just("2fa-server".to_owned()),
        Just("a".repeat(63)),
        Just("UPPER".to_owned()),
        "[a-z0-9-]{1,70}",
    ]
}

fn annotation() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        Just("myapp".to_owned()),
        Just("myapp.example.org".to_owned()),
        Just("x.other.net".to_owned()),
        Just("Frontend".to_owned()),
        Just("/static/**".to_owned()),
        Just(" /api ".to_owned()),
        Just("/v1/\\d+".to_owned()),
        Just("(?<v>x)".to_owned()),
        "[ -~]{0,20}",
    ])
}

fn service() -> impl Strategy<Value = Service> {
    (
        name(),
        name(),
        annotation(),
        annotation(),
        prop::collection::vec(
            (1i32..70000, prop::sample::select(vec!["TCP", "UDP"])),
            0..600,
        ),
        prop::sample::select(vec!["10.96.0.1", "None", "", "fd00::1", "not-an-ip"]),
    )
        .prop_map(|(name, namespace, host, path, ports, ip)| {
            let mut annotations = BTreeMap::new();
            if let Some(h) = host {
                annotations.insert("host".to_owned(), h);
            }
            if let Some(p) = path {
                annotations.insert("path".to_owned(), p);
            }
            Service {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(namespace),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: (!ip.is_empty()).then(|| ip.to_owned()),
                    ports: Some(
                        ports
                            .into_iter()
                            .map(|(port, protocol)| ServicePort {
                                port,
                                protocol: Some(protocol.to_owned()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn what_normalization_accepts_encodes(svc in service()) {
        let n = normalizer();
        match n.route(&svc, &[]) {
            Ok(route) => {
                let event = Event {
                    key: ServiceKey::new(
                        "east",
                        svc.metadata.namespace.clone().unwrap_or_default(),
                        svc.metadata.name.clone().unwrap_or_default(),
                    ),
                    change: Change::Added(route),
                    resource_version: String::new(),
                    observed_unix_ms: 0,
                    observer: "ksr-watcher".into(),
                    manager: None,
                };
                let bytes = codec::encode(&event);
                prop_assert!(bytes.is_ok(), "accepted but unencodable: {:?}", bytes.err());
                prop_assert!(bytes.map(|b| b.len()).unwrap_or(0) <= n.max_event_bytes);
            }
            Err(rejection) => prop_assert!(!rejection.message.is_empty() && !rejection.reason.is_empty()),
        }
    }
}

#[test]
fn a_name_kubernetes_refuses_is_a_counted_rejection_not_a_retry_storm() {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("2fa-server".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.1".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = normalizer()
        .route(&svc, &[])
        .expect_err("2fa-server is not a Service name");
    assert_eq!(r.reason, "invalid_name");
}

#[test]
fn a_service_too_large_for_one_event_is_rejected_as_too_large() {
    let ports = (1..=5000)
        .map(|port| ServicePort {
            port,
            name: Some(format!("p{port}")),
            ..Default::default()
        })
        .collect();
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("huge".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.1".into()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = normalizer().route(&svc, &[]).expect_err("too large");
    assert_eq!(r.reason, "too_large");
    assert!(r.message.contains("5000 ports"), "{}", r.message);
}
