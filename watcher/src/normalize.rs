//! Normalization: a Service (and its EndpointSlices) → the route state the contract publishes.
//!
//! Rules (kept from vulcaningress, see DESIGN.md): hostname `<name|host>-<namespace>.<env>.<domain>`
//! where the `host` annotation replaces only the name; `path` annotation as vulcand PathRegexp
//! (default `/.*`); backends by address mode. Anything that cannot be routed safely is a
//! [`Rejection`] with a fixed reason (a metric label) and a message for the log.

use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Service, ServicePort as K8sPort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use ksr_proto::{Backend, RoutePath, RouteState, Scheme, ServicePort, names};

/// Annotation replacing the name part of the hostname.
pub const HOST_ANNOTATION: &str = "host";
/// Annotation with the vulcand PathRegexp.
pub const PATH_ANNOTATION: &str = "path";
/// Annotation choosing the Service port (by name or number).
pub const PORT_ANNOTATION: &str = "port";
/// Annotation choosing how the edge speaks to the backends (`http`, `https`).
pub const SCHEME_ANNOTATION: &str = "scheme";
/// Annotation (`"true"`) that makes the edge skip verifying the backends' TLS certificates.
pub const TLS_SKIP_VERIFY_ANNOTATION: &str = "tls-insecure-skip-verify";
/// Annotation with tags (comma-separated) the Service adds to its Consul entry.
pub const CONSUL_TAGS_ANNOTATION: &str = "consul-tags";
/// Annotation prefix: `consul-meta.<key>: <value>` adds a metadata pair to its Consul entry.
pub const CONSUL_META_PREFIX: &str = "consul-meta.";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where traffic for a Service goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressMode {
    /// The Service's clusterIP and chosen port (as vulcaningress did).
    ClusterIp,
    /// The ready addresses of the Service's EndpointSlices, at the chosen port's target port.
    Endpoints,
    /// The configured node addresses at the chosen port's nodePort.
    NodePort,
}

/// Why a Service is not published as a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Fixed, metric-safe reason.
    pub reason: &'static str,
    pub message: String,
    /// An annotation mistake keeps the Service's last good route (the owner can fix the
    /// annotation without an outage); anything else means the Service is no longer routable
    /// (ExternalName, headless, no clusterIP, no ports…) and it is removed from the edge.
    pub keeps_route: bool,
}

/// An annotation mistake: the last good route stays.
fn reject(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
        keeps_route: true,
    }
}

/// The Service itself cannot be routed any more: its route is removed.
fn unroutable(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
        keeps_route: false,
    }
}

/// The normalization settings of one watcher.
#[derive(Debug, Clone)]
pub struct Normalizer {
    pub environment: String,
    pub domain: String,
    pub mode: AddressMode,
    /// Node addresses for `node-port` mode.
    pub node_addresses: Vec<IpAddr>,
    /// Domains under which a `host` annotation may be a full hostname (empty: none).
    pub allowed_host_domains: Vec<String>,
    /// The largest event a Service may produce (bytes, encoded); larger ones are rejected.
    pub max_event_bytes: usize,
}

/// The longest cluster name (a DNS label): size checks assume it, so a Service that fits
/// fits in every cluster.
const LONGEST_CLUSTER: &str = "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

impl Normalizer {
    /// The route of `svc`, given the EndpointSlices that belong to it.
    pub fn route(&self, svc: &Service, slices: &[&EndpointSlice]) -> Result<RouteState, Rejection> {
        let meta = &svc.metadata;
        let name = meta.name.as_deref().unwrap_or_default();
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        // The names become a subject, etcd keys and DNS labels: the rules the codec applies.
        ksr_proto::ServiceKey::new(LONGEST_CLUSTER, namespace, name)
            .validate()
            .map_err(|e| unroutable("invalid_name", e.to_string()))?;
        let no_annotations = std::collections::BTreeMap::new();
        let annotations = meta.annotations.as_ref().unwrap_or(&no_annotations);
        let host = annotations.get(HOST_ANNOTATION).map(|h| h.trim());
        let (label, full_host) = match host {
            Some(h) if h.contains('.') => {
                let full = self.full_host(h)?;
                let first = full.split('.').next().unwrap_or_default().to_owned();
                (first, Some(full))
            }
            _ => {
                let label = names::host_label(name, host, namespace).map_err(|e| {
                    let host_invalid = host.is_some()
                        && names::validate_host_annotation(host.unwrap_or_default()).is_err();
                    match (host_invalid, host.is_some()) {
                        (true, _) => reject("invalid_host_annotation", e.to_string()),
                        (false, true) => reject("hostname_too_long", e.to_string()),
                        // The name and namespace never change: this Service is not routable.
                        (false, false) => unroutable("hostname_too_long", e.to_string()),
                    }
                })?;
                (label, None)
            }
        };
        // Trimmed like the host: a path with white space at either end can never match.
        let path = match annotations.get(PATH_ANNOTATION) {
            Some(p) => RoutePath::new(p.trim())
                .map_err(|e| reject("invalid_path_annotation", e.to_string()))?,
            None => RoutePath::default_path(),
        };

        let spec = svc.spec.as_ref();
        let k8s_ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let chosen = choose_port(
            k8s_ports,
            annotations.get(PORT_ANNOTATION).map(String::as_str),
        )?;
        let (scheme, tls_skip_verify) = backend_scheme(annotations, &chosen)?;
        let (consul_tags, consul_meta) = consul_extras(annotations)?;
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(unroutable(
                "external_name",
                "an ExternalName Service is a DNS alias: it has no addresses to route to",
            ));
        }
        let backends = match self.mode {
            AddressMode::ClusterIp => {
                let ip = match spec.and_then(|s| s.cluster_ip.as_deref()) {
                    Some("None") => {
                        return Err(unroutable(
                            "headless",
                            "a headless Service (clusterIP: None) has no cluster IP \
                             (use --address-mode endpoints)",
                        ));
                    }
                    None | Some("") => {
                        return Err(unroutable(
                            "no_cluster_ip",
                            "the Service has no clusterIP yet (a manifest that leaves it to \
                             the apiserver has none until created): set spec.clusterIP, or use \
                             --address-mode endpoints",
                        ));
                    }
                    Some(ip) => ip,
                };
                let ip = IpAddr::from_str(ip).map_err(|_| {
                    unroutable(
                        "invalid_cluster_ip",
                        format!("clusterIP {ip:?} is not an IP address"),
                    )
                })?;
                vec![Backend {
                    ip,
                    port: port_u16(chosen.port)?,
                    ready: true,
                }]
            }
            AddressMode::Endpoints => endpoint_backends(&chosen, slices)?,
            AddressMode::NodePort => {
                let node_port = chosen
                    .node_port
                    .ok_or_else(|| unroutable("no_node_port", "the chosen port has no nodePort (Service type is not NodePort/LoadBalancer)"))?;
                let port = port_u16(node_port)?;
                self.node_addresses
                    .iter()
                    .map(|ip| Backend {
                        ip: *ip,
                        port,
                        ready: true,
                    })
                    .collect()
            }
        };
        let mut state = RouteState {
            label,
            environment: self.environment.clone(),
            domain: self.domain.clone(),
            path,
            ports: k8s_ports
                .iter()
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: u16::try_from(p.port).ok()?,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    })
                })
                .collect(),
            backends,
            host_since: 0,
            route_since: 0,
            full_host,
            scheme,
            tls_skip_verify,
            consul_tags,
            consul_meta,
        };
        state.normalize();
        // Exactly what publishing checks: whatever passes here encodes.
        let probe = ksr_proto::Event {
            key: ksr_proto::ServiceKey::new(LONGEST_CLUSTER, namespace, name),
            change: ksr_proto::Change::Updated(state),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            observed_unix_ms: i64::MAX,
            observer: String::new(),
            manager: None,
        };
        let size = ksr_proto::codec::encode(&probe)
            .map_err(|e| reject("invalid_route", e.to_string()))?
            .len();
        if size > self.max_event_bytes {
            return Err(reject(
                "too_large",
                format!(
                    "its event would be {size} bytes, over --max-event-bytes {} ({} ports, {} \
                     backends)",
                    self.max_event_bytes,
                    k8s_ports.len(),
                    probe.route().map_or(0, |r| r.backends.len())
                ),
            ));
        }
        match probe.change {
            ksr_proto::Change::Updated(state) => Ok(state),
            _ => Err(reject(
                "invalid_route",
                "internal: the probe event changed kind",
            )),
        }
    }
}

impl Normalizer {
    /// A `host` annotation that is a full hostname: allowed only under an allowed domain.
    fn full_host(&self, host: &str) -> Result<String, Rejection> {
        names::validate_hostname(host)
            .map_err(|e| reject("invalid_host_annotation", e.to_string()))?;
        let allowed = self.allowed_host_domains.iter().any(|d| {
            host == d
                || host
                    .strip_suffix(d.as_str())
                    .is_some_and(|r| r.ends_with('.'))
        });
        if allowed {
            return Ok(host.to_owned());
        }
        let domains = if self.allowed_host_domains.is_empty() {
            "none are allowed (--allowed-host-domains)".to_owned()
        } else {
            format!("allowed domains: {}", self.allowed_host_domains.join(", "))
        };
        Err(reject(
            "host_domain_not_allowed",
            format!(
                "host annotation {host:?} is a full hostname outside the allowed domains; {domains}"
            ),
        ))
    }
}

fn port_u16(p: i32) -> Result<u16, Rejection> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| unroutable("invalid_port", format!("port {p} is out of range")))
}

/// The port `svc` is routed to, as its owner reads it (see [`choose_port`]).
pub fn chosen_port(svc: &Service) -> Option<String> {
    let ports = svc.spec.as_ref()?.ports.as_deref().unwrap_or_default();
    let wanted = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PORT_ANNOTATION))
        .map(String::as_str);
    choose_port(ports, wanted).ok().map(|p| describe_port(&p))
}

/// Whether `port` carries TCP (the default protocol), the only one routed over HTTP.
fn is_tcp(port: &K8sPort) -> bool {
    port.protocol.as_deref().unwrap_or("TCP") == "TCP"
}

/// How the edge speaks to the backends behind `chosen`: the `scheme` annotation, else https
/// for a port named `https`, numbered 443 or whose `appProtocol` is `https`; and whether it
/// skips verifying their certificates (`tls-insecure-skip-verify: "true"`, https only).
pub fn backend_scheme(
    annotations: &std::collections::BTreeMap<String, String>,
    chosen: &K8sPort,
) -> Result<(Scheme, bool), Rejection> {
    let scheme = match annotations.get(SCHEME_ANNOTATION).map(|s| s.trim()) {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => {
            return Err(reject(
                "invalid_scheme_annotation",
                format!("scheme annotation {other:?}: must be http or https"),
            ));
        }
        None => {
            let says_https = chosen.name.as_deref() == Some("https")
                || chosen.port == 443
                || chosen.app_protocol.as_deref() == Some("https");
            if says_https {
                Scheme::Https
            } else {
                Scheme::Http
            }
        }
    };
    let skip = match annotations
        .get(TLS_SKIP_VERIFY_ANNOTATION)
        .map(|s| s.trim())
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(reject(
                "invalid_tls_annotation",
                format!("{TLS_SKIP_VERIFY_ANNOTATION} annotation {other:?}: must be true or false"),
            ));
        }
    };
    if skip && scheme != Scheme::Https {
        return Err(reject(
            "invalid_tls_annotation",
            format!(
                "{TLS_SKIP_VERIFY_ANNOTATION} applies to https backends only, and this route speaks http (set scheme: https)"
            ),
        ));
    }
    Ok((scheme, skip))
}

/// The tags (`consul-tags: "a,b"`) and metadata (`consul-meta.<key>: value`) a Service adds
/// to its Consul entry, validated by Consul's rules and bounded.
pub fn consul_extras(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<(Vec<String>, std::collections::BTreeMap<String, String>), Rejection> {
    let mut tags: Vec<String> = annotations
        .get(CONSUL_TAGS_ANNOTATION)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags.dedup();
    if tags.len() > names::MAX_CONSUL_TAGS {
        return Err(reject(
            "invalid_consul_tags_annotation",
            format!(
                "{} Consul tags, at most {} are allowed",
                tags.len(),
                names::MAX_CONSUL_TAGS
            ),
        ));
    }
    for tag in &tags {
        names::validate_consul_tag(tag)
            .map_err(|e| reject("invalid_consul_tags_annotation", e.to_string()))?;
    }
    let meta: std::collections::BTreeMap<String, String> = annotations
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(CONSUL_META_PREFIX)?.to_owned(), v.clone())))
        .collect();
    if meta.len() > names::MAX_CONSUL_META {
        return Err(reject(
            "invalid_consul_meta_annotation",
            format!(
                "{} Consul metadata annotations, at most {} are allowed",
                meta.len(),
                names::MAX_CONSUL_META
            ),
        ));
    }
    for (key, value) in &meta {
        names::validate_consul_meta(key, value)
            .map_err(|e| reject("invalid_consul_meta_annotation", e.to_string()))?;
    }
    Ok((tags, meta))
}

/// How strongly `port` says it speaks HTTP: 3 by its `appProtocol` (`http`, `http2`, `h2c`,
/// `kubernetes.io/h2c`, `kubernetes.io/ws`), 2 by its name exactly (`http`, `http2`), 1 by a
/// name prefix (`http-*`, `http2-*`), 0 not at all. (`https` is not plain HTTP.)
fn http_rank(port: &K8sPort) -> u8 {
    let app = port
        .app_protocol
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = port
        .name
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if matches!(
        app.as_str(),
        "http" | "http2" | "h2c" | "kubernetes.io/h2c" | "kubernetes.io/ws"
    ) {
        3
    } else if matches!(name.as_str(), "http" | "http2") {
        2
    } else if name.starts_with("http-") || name.starts_with("http2-") {
        1
    } else {
        0
    }
}

/// The port to route: the one the `port` annotation names (by name or number; it must be
/// TCP), else the TCP port that says most clearly that it speaks HTTP (its `appProtocol`, then
/// its name; the first of equals), else the first TCP port. UDP and SCTP ports are never
/// routed.
pub fn choose_port(ports: &[K8sPort], wanted: Option<&str>) -> Result<K8sPort, Rejection> {
    if let Some(wanted) = wanted.map(str::trim) {
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(wanted) || p.port.to_string() == wanted)
            .ok_or_else(|| {
                reject(
                    "invalid_port_annotation",
                    format!("port annotation {wanted:?} names no port of the Service"),
                )
            })?;
        if !is_tcp(port) {
            return Err(reject(
                "invalid_port_annotation",
                format!(
                    "port annotation {wanted:?} names a {} port: only TCP ports can be routed",
                    port.protocol.as_deref().unwrap_or_default()
                ),
            ));
        }
        return Ok(port.clone());
    }
    if ports.is_empty() {
        return Err(unroutable("no_ports", "the Service has no ports"));
    }
    let tcp = ports.iter().filter(|p| is_tcp(p));
    // The highest rank wins; among equals the first (max_by_key keeps the last, so reverse).
    tcp.rev()
        .max_by_key(|p| http_rank(p))
        .cloned()
        .ok_or_else(|| {
            unroutable(
                "no_tcp_port",
                "the Service has only UDP or SCTP ports: nothing to route over HTTP",
            )
        })
}

/// How an owner reads the chosen port: `http (80/TCP)`, or `8080/TCP` without a name.
pub fn describe_port(port: &K8sPort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("{name} ({}/{protocol})", port.port),
        None => format!("{}/{protocol}", port.port),
    }
}

/// Ready and not-ready addresses of the slices, at the target port of the chosen port.
fn endpoint_backends(
    chosen: &K8sPort,
    slices: &[&EndpointSlice],
) -> Result<Vec<Backend>, Rejection> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == chosen.name.as_deref().unwrap_or_default()
            })
            .and_then(|p| p.port)
        else {
            continue;
        };
        let port = port_u16(port)?;
        for ep in &slice.endpoints {
            // The API says a missing `ready` condition means ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for addr in &ep.addresses {
                if let Ok(ip) = IpAddr::from_str(addr) {
                    out.push(Backend { ip, port, ready });
                }
            }
        }
    }
    Ok(out)
}
