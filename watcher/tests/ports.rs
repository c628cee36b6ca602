//! Which Service port is routed, on Services as well-known projects write them: the port that
//! says it speaks HTTP, else the first TCP port; never UDP or SCTP; the `port` annotation
//! wins (and must name a TCP port).

use k8s_openapi::api::core::v1::Service;
use ksr_watcher::normalize::{AddressMode, Normalizer, chosen_port};

fn normalizer() -> Normalizer {
    Normalizer {
        environment: "test".into(),
        domain: "service.consul".into(),
        mode: AddressMode::ClusterIp,
        node_addresses: Vec::new(),
        allowed_host_domains: Vec::new(),
        max_event_bytes: 65536,
    }
}

fn parse(yaml: &str) -> Service {
    serde_saphyr::from_str(yaml).expect("a Service")
}

/// The backend port the route gets, or the rejection reason.
fn routed_port(yaml: &str) -> Result<u16, &'static str> {
    let svc = parse(yaml);
    normalizer()
        .route(&svc, &[])
        .map(|r| r.backends[0].port)
        .map_err(|e| e.reason)
}

// kube-dns (kubernetes/kubernetes cluster/addons/dns): UDP 53 first.
const KUBE_DNS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
"#;

// istio's ingress gateway (its Helm values): the status port before http2.
const ISTIO_GATEWAY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: status-port, port: 15021, protocol: TCP, targetPort: 15021}
  - {name: http2, port: 80, protocol: TCP, targetPort: 8080}
  - {name: https, port: 443, protocol: TCP, targetPort: 8443}
"#;

// istio's older chart: a metrics port named http-envoy-prom comes first.
const ISTIO_OLD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.21
  ports:
  - {name: http-envoy-prom, port: 15020, targetPort: 15020, protocol: TCP}
  - {name: status-port, port: 15021, targetPort: 15021}
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
"#;

// CockroachDB's public Service: gRPC before the HTTP admin UI.
const COCKROACH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: cockroachdb-public, namespace: db, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.30
  ports:
  - {name: grpc, port: 26257, targetPort: 26257}
  - {name: http, port: 8080, targetPort: 8080}
"#;

// The local demo's api: https listed before http.
const DEMO_API: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.40
  ports:
  - {name: https, port: 443}
  - {name: http, port: 80}
"#;

// An appProtocol says HTTP although the name does not.
const APP_PROTOCOL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: grafana, namespace: monitoring, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.50
  ports:
  - {name: service, port: 3000, appProtocol: http}
"#;

// Only UDP: nothing to route.
const SYSLOG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: syslog, namespace: logs, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.60
  ports:
  - {name: syslog, port: 514, protocol: UDP}
"#;

#[test]
fn the_port_that_says_http_is_routed_else_the_first_tcp_port() {
    assert_eq!(
        routed_port(ISTIO_GATEWAY),
        Ok(80),
        "http2, not the status port"
    );
    assert_eq!(routed_port(ISTIO_OLD), Ok(80), "http2 over http-envoy-prom");
    assert_eq!(routed_port(COCKROACH), Ok(8080), "http, not gRPC");
    assert_eq!(routed_port(DEMO_API), Ok(80), "http, not https");
    assert_eq!(routed_port(APP_PROTOCOL), Ok(3000));
    assert_eq!(
        routed_port(KUBE_DNS),
        Ok(53),
        "the first TCP port, never UDP"
    );
    assert_eq!(
        chosen_port(&parse(KUBE_DNS)).as_deref(),
        Some("dns-tcp (53/TCP)")
    );
    assert_eq!(routed_port(SYSLOG), Err("no_tcp_port"));
}

#[test]
fn the_port_annotation_wins_by_name_or_number_and_must_be_tcp() {
    let annotated = |yaml: &str, port: &str| {
        yaml.replace(
            "labels: {type: ingress}}",
            &format!("labels: {{type: ingress}}, annotations: {{port: \"{port}\"}}}}"),
        )
    };
    assert_eq!(routed_port(&annotated(COCKROACH, "grpc")), Ok(26257));
    assert_eq!(routed_port(&annotated(COCKROACH, "26257")), Ok(26257));
    assert_eq!(routed_port(&annotated(KUBE_DNS, "metrics")), Ok(9153));
    assert_eq!(
        routed_port(&annotated(KUBE_DNS, "dns")),
        Err("invalid_port_annotation"),
        "a UDP port is refused"
    );
    assert_eq!(
        routed_port(&annotated(COCKROACH, "nope")),
        Err("invalid_port_annotation")
    );
}

// kubernetes-dashboard (its recommended.yaml): one unnamed port 443 → 8443.
const DASHBOARD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: kubernetes-dashboard, namespace: kubernetes-dashboard, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.70
  ports:
  - {port: 443, targetPort: 8443}
"#;

// metrics-server (its components.yaml): a port named https with a named targetPort.
const METRICS_SERVER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.80
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: https}
"#;

/// The scheme and certificate check of the route, or the rejection reason.
fn routed_scheme(yaml: &str) -> Result<(&'static str, bool), &'static str> {
    normalizer()
        .route(&parse(yaml), &[])
        .map(|r| (r.scheme.as_str(), r.tls_skip_verify))
        .map_err(|e| e.reason)
}

fn with_annotations(yaml: &str, annotations: &str) -> String {
    yaml.replace(
        "labels: {type: ingress}}",
        &format!("labels: {{type: ingress}}, annotations: {{{annotations}}}}}"),
    )
}

#[test]
fn a_port_named_https_or_numbered_443_speaks_https_unless_the_scheme_annotation_says_otherwise() {
    assert_eq!(routed_scheme(DASHBOARD), Ok(("https", false)));
    assert_eq!(routed_scheme(METRICS_SERVER), Ok(("https", false)));
    // The demo api has https 443 and http 80: http 80 is routed, over http.
    assert_eq!(routed_scheme(DEMO_API), Ok(("http", false)));
    assert_eq!(routed_scheme(COCKROACH), Ok(("http", false)));
    // The annotation wins either way.
    assert_eq!(
        routed_scheme(&with_annotations(DASHBOARD, "scheme: http")),
        Ok(("http", false))
    );
    assert_eq!(
        routed_scheme(&with_annotations(COCKROACH, "scheme: https")),
        Ok(("https", false))
    );
    // The dashboard's self-signed certificate: not verified, only when asked.
    assert_eq!(
        routed_scheme(&with_annotations(
            DASHBOARD,
            "tls-insecure-skip-verify: \"true\""
        )),
        Ok(("https", true))
    );
    // Invalid values and a certificate check skipped on plain http are refused.
    assert_eq!(
        routed_scheme(&with_annotations(DASHBOARD, "scheme: HTTPS")),
        Err("invalid_scheme_annotation")
    );
    assert_eq!(
        routed_scheme(&with_annotations(
            DASHBOARD,
            "tls-insecure-skip-verify: \"yes\""
        )),
        Err("invalid_tls_annotation")
    );
    assert_eq!(
        routed_scheme(&with_annotations(
            COCKROACH,
            "tls-insecure-skip-verify: \"true\""
        )),
        Err("invalid_tls_annotation")
    );
}

/// The Consul tags and metadata of the route, or the rejection reason.
fn routed_consul(
    yaml: &str,
) -> Result<(Vec<String>, std::collections::BTreeMap<String, String>), &'static str> {
    normalizer()
        .route(&parse(yaml), &[])
        .map(|r| (r.consul_tags, r.consul_meta))
        .map_err(|e| e.reason)
}

#[test]
fn consul_tags_and_metadata_come_from_annotations_and_are_checked_by_consuls_rules() {
    let (tags, meta) = routed_consul(&with_annotations(
        COCKROACH,
        r#"consul-tags: " v2,canary, v2 ", consul-meta.team: db, consul-meta.tier_x: "1""#,
    ))
    .expect("routed");
    assert_eq!(tags, vec!["canary", "v2"], "trimmed, sorted, once each");
    assert_eq!(meta.get("team").map(String::as_str), Some("db"));
    assert_eq!(meta.get("tier_x").map(String::as_str), Some("1"));
    assert_eq!(
        routed_consul(COCKROACH),
        Ok((Vec::new(), Default::default()))
    );
    for (annotations, reason) in [
        (r#"consul-tags: "Canary""#, "invalid_consul_tags_annotation"),
        (r#"consul-tags: "a.b""#, "invalid_consul_tags_annotation"),
        (
            r#"consul-tags: "a,b,c,d,e,f,g,h,i""#,
            "invalid_consul_tags_annotation",
        ),
        (r#"consul-meta.a.b: "x""#, "invalid_consul_meta_annotation"),
        (
            r#"consul-meta.consul-x: "x""#,
            "invalid_consul_meta_annotation",
        ),
        (
            r#"consul-meta.ksr-owner: "x""#,
            "invalid_consul_meta_annotation",
        ),
    ] {
        assert_eq!(
            routed_consul(&with_annotations(COCKROACH, annotations)),
            Err(reason),
            "{annotations}"
        );
    }
    let long_value = format!("consul-meta.note: \"{}\"", "x".repeat(513));
    assert_eq!(
        routed_consul(&with_annotations(COCKROACH, &long_value)),
        Err("invalid_consul_meta_annotation")
    );
}

/// A rollout where the container port named `web` moved from 8080 to 9090: each
/// EndpointSlice carries the number its own pods resolve the named targetPort to.
#[test]
fn in_endpoints_mode_a_named_target_port_is_resolved_per_endpoint_slice() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let svc = parse(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {type: ingress}}
spec:
  clusterIP: 10.96.0.90
  ports:
  - {name: metrics, port: 9100, targetPort: 9100}
  - {name: http, port: 80, targetPort: web}
"#,
    );
    let slice = |name: &str, port: u16, ip: &str| -> EndpointSlice {
        serde_saphyr::from_str(&format!(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports:
- {{name: metrics, port: 9100, protocol: TCP}}
- {{name: http, port: {port}, protocol: TCP}}
endpoints:
- addresses: ["{ip}"]
  conditions: {{ready: true}}
"#
        ))
        .expect("an EndpointSlice")
    };
    let (old, new) = (
        slice("web-old", 8080, "10.1.0.1"),
        slice("web-new", 9090, "10.1.0.2"),
    );
    let mut n = normalizer();
    n.mode = AddressMode::Endpoints;
    let route = n.route(&svc, &[&old, &new]).expect("routed");
    let backends: Vec<String> = route
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect();
    assert_eq!(backends, vec!["10.1.0.1:8080", "10.1.0.2:9090"]);
}
