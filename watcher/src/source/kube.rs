//! The Kubernetes source: kube-runtime watchers on Services (label-selected) and, in
//! `endpoints` mode, EndpointSlices. Errors are stream items (the watcher retries with
//! kube-runtime's default backoff); 410 Gone leads to a relist (`Init`…`InitDone`).

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Error;
use crate::inventory::{Kind, Resource, SourceEvent};
use crate::normalize::SERVICE_NAME_LABEL;

/// How to reach the apiserver.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// The apiserver URL, overriding kubeconfig / in-cluster discovery (no credentials are
    /// added: for a local proxy such as `kubectl proxy`, or tests).
    #[arg(long = "kube-url", env = "KSR_KUBE_URL", id = "kube_url")]
    pub url: Option<String>,
    /// Server-side watch timeout in seconds; a watch silent for longer than this plus 5 s
    /// (no events, no bookmarks) is considered dead and re-established.
    #[arg(long = "watch-timeout", env = "KSR_WATCH_TIMEOUT", id = "kube_watch_timeout", default_value_t = 290,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub watch_timeout: u32,
}

/// A client from `--kube-url`, else from KUBECONFIG / ~/.kube/config / the in-cluster
/// service account (bearer token, CA verification on).
/// The identity of the cluster `client` talks to: the UID of its `kube-system` namespace
/// (created once with the cluster, the same through every apiserver of it).
pub async fn cluster_identity(client: &kube::Client) -> Result<String, Error> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let ns = api.get("kube-system").await.map_err(|source| Error::Kube {
        what: "reading namespace kube-system (its UID names the cluster)",
        source,
    })?;
    ns.metadata
        .uid
        .map(|uid| format!("k8s:{uid}"))
        .ok_or(Error::NoClusterUid)
}

pub async fn client(args: &KubeArgs) -> Result<kube::Client, Error> {
    match &args.url {
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| Error::Config(format!("--kube-url {url:?}: {e}")))?;
            kube::Client::try_from(kube::Config::new(uri)).map_err(|source| Error::Kube {
                what: "building the client",
                source,
            })
        }
        None => {
            let config = kube::Config::infer().await.map_err(Error::KubeConfig)?;
            kube::Client::try_from(config).map_err(|source| Error::Kube {
                what: "building the client",
                source,
            })
        }
    }
}

/// kubectl's copy of the last applied manifest: never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the watcher keeps for every object but never reads, and a real object carries
/// in bulk: the field sets of `managedFields` (who changed the object last, and when, stay:
/// events record that manager) and kubectl's last-applied copy.
pub fn slim<K: kube::Resource>(mut obj: K) -> K {
    let meta = obj.meta_mut();
    for entry in meta.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    obj
}

/// A Service as the watcher keeps it: only what routing, the selector and Events read
/// (names, uid, resourceVersion, labels, annotations, who changed it last; the type, cluster
/// IP and ports), slimmed like any object. The rest of a real Service (its pod selector,
/// `clusterIPs`, IP families, status…) would be held for every Service and never read.
pub fn slim_service(svc: Service) -> Service {
    let Service { metadata, spec, .. } = slim(svc);
    let metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        labels: metadata.labels,
        annotations: metadata.annotations,
        managed_fields: metadata.managed_fields,
        ..ObjectMeta::default()
    };
    let spec = spec.map(|spec| ServiceSpec {
        type_: spec.type_,
        cluster_ip: spec.cluster_ip,
        ports: spec.ports,
        ..ServiceSpec::default()
    });
    Service {
        metadata,
        spec,
        status: None,
    }
}

fn events<K, F>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: Kind,
    wrap: F,
) -> impl Stream<Item = SourceEvent>
where
    F: Fn(K) -> Resource + Copy,
{
    stream.map(move |r| match r {
        Ok(watcher::Event::Init) => SourceEvent::Init(kind),
        Ok(watcher::Event::InitApply(o)) => SourceEvent::InitApply(wrap(o)),
        Ok(watcher::Event::InitDone) => SourceEvent::InitDone(kind),
        Ok(watcher::Event::Apply(o)) => SourceEvent::Apply(wrap(o)),
        Ok(watcher::Event::Delete(o)) => SourceEvent::Delete(wrap(o)),
        Err(e) => SourceEvent::Error(e.to_string()),
    })
}

/// Services matching `selector` in all namespaces (filtered later by the allow/deny lists),
/// merged with their EndpointSlices when `watch_slices`.
pub fn source(
    client: kube::Client,
    args: &KubeArgs,
    selector: &str,
    watch_slices: bool,
) -> impl Stream<Item = SourceEvent> {
    let config = watcher::Config::default().timeout(args.watch_timeout);
    let services = watcher(
        Api::<Service>::all(client.clone()),
        config.clone().labels(selector),
    )
    .default_backoff();
    let services = events(services, Kind::Services, |s| {
        Resource::Service(Box::new(slim_service(s)))
    });
    let slices = watch_slices.then(|| {
        let api = Api::<EndpointSlice>::all(client);
        let stream = watcher(api, config.labels(SERVICE_NAME_LABEL)).default_backoff();
        events(stream, Kind::Slices, |s| Resource::Slice(Box::new(slim(s))))
    });
    futures::stream::select(
        services.boxed(),
        futures::stream::iter(slices).flatten().boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slimming_keeps_what_is_read_and_drops_the_bulk() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "shop",
                "annotations": {
                    LAST_APPLIED: "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}",
                    "path": "/v1/.*",
                },
                "managedFields": [
                    {"manager": "kubectl-client-side-apply", "operation": "Update",
                     "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:ports": {}}}},
                    {"manager": "helm", "operation": "Update",
                     "time": "2026-11-30T11:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {}}}},
                ],
            },
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        }))
        .expect("a valid Service");
        let slim = slim(svc.clone());
        let annotations = slim.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["path"],
            "only the last-applied copy goes"
        );
        let fields = slim.metadata.managed_fields.clone().unwrap_or_default();
        assert_eq!(fields.len(), 2);
        assert!(fields.iter().all(|f| f.fields_v1.is_none()));
        let managers: Vec<_> = fields
            .iter()
            .map(|f| (f.manager.clone(), f.time.clone()))
            .collect();
        let before: Vec<_> = svc
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.manager, f.time))
            .collect();
        assert_eq!(managers, before, "who changed it, and when, stay");
        assert_eq!(slim.spec, svc.spec);
    }

    /// ingress-nginx's controller Service (its Helm chart, v1.1.0) as an apiserver returns it
    /// once a cloud load balancer is attached, labelled and annotated for ksr.
    fn ingress_nginx_as_served() -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "ingress-nginx-controller", "namespace": "ingress-nginx",
                "uid": "5b1f0d1e-9c38-4b7e-a8a5-0f3c1d2e4a61", "resourceVersion": "48213",
                "creationTimestamp": "2026-11-30T10:00:00Z",
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
                "labels": {
                    "type": "ingress",
                    "helm.sh/chart": "ingress-nginx-4.0.6",
                    "app.kubernetes.io/name": "ingress-nginx",
                    "app.kubernetes.io/instance": "ingress-nginx",
                    "app.kubernetes.io/version": "1.1.0",
                    "app.kubernetes.io/managed-by": "Helm",
                    "app.kubernetes.io/component": "controller"
                },
                "annotations": {"meta.helm.sh/release-name": "ingress-nginx", "path": "/shop/.*"},
                "managedFields": [
                    {"manager": "helm", "operation": "Update", "apiVersion": "v1",
                     "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:ports": {}}}},
                    {"manager": "cloud-controller-manager", "operation": "Update",
                     "apiVersion": "v1", "time": "2026-11-30T10:01:00Z",
                     "fieldsType": "FieldsV1", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}}
                ]
            },
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.14.7", "clusterIPs": ["10.96.14.7"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 31514,
                "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                "allocateLoadBalancerNodePorts": true,
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http",
                     "targetPort": "http", "nodePort": 30080},
                    {"name": "https", "port": 443, "protocol": "TCP", "appProtocol": "https",
                     "targetPort": "https", "nodePort": 30443}
                ],
                "selector": {
                    "app.kubernetes.io/name": "ingress-nginx",
                    "app.kubernetes.io/instance": "ingress-nginx",
                    "app.kubernetes.io/component": "controller"
                }
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
        }))
        .expect("a valid Service")
    }

    #[test]
    fn a_slimmed_service_routes_exactly_as_the_served_one_in_every_address_mode() {
        use crate::normalize::{AddressMode, Normalizer};
        use k8s_openapi::api::discovery::v1::EndpointSlice;

        let served = ingress_nginx_as_served();
        let kept = slim_service(served.clone());
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ingress-nginx-controller-x2k9q", "namespace": "ingress-nginx",
                         "labels": {"kubernetes.io/service-name": "ingress-nginx-controller"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "https", "port": 8443, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}]
        }))
        .expect("a valid EndpointSlice");
        for mode in [
            AddressMode::ClusterIp,
            AddressMode::NodePort,
            AddressMode::Endpoints,
        ] {
            let normalizer = Normalizer {
                environment: "test".into(),
                domain: "service.consul".into(),
                mode,
                node_addresses: vec!["192.0.2.1".parse().expect("an IP")],
                allowed_host_domains: Vec::new(),
                max_event_bytes: 65536,
            };
            let route = |svc: &Service| normalizer.route(svc, &[&slice]).map_err(|e| e.reason);
            let want = route(&served);
            assert!(want.is_ok(), "{mode:?}: {want:?}");
            assert_eq!(route(&kept), want, "{mode:?}");
        }
        // What Events and the published origin read stays; the bulk goes.
        assert_eq!(kept.metadata.uid, served.metadata.uid);
        assert_eq!(
            kept.metadata.resource_version,
            served.metadata.resource_version
        );
        assert_eq!(kept.metadata.labels, served.metadata.labels);
        let managers = |s: &Service| {
            s.metadata
                .managed_fields
                .iter()
                .flatten()
                .map(|f| (f.manager.clone(), f.time.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(managers(&kept), managers(&served));
        let spec = kept.spec.as_ref().expect("a spec");
        assert_eq!(spec.selector, None);
        assert_eq!(spec.cluster_ips, None);
        assert_eq!(kept.status, None);
        assert_eq!(kept.metadata.finalizers, None);
        assert_eq!(kept.metadata.creation_timestamp, None);
    }
}
