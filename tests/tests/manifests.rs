//! The Kubernetes manifests under deploy/kubernetes: typed, runnable, and least-privilege.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

fn root() -> PathBuf {
    ksr_test_support::workspace_root().join("deploy/kubernetes")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("manifest dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("readable manifest");
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every base manifest as (kind, object).
fn base_objects() -> Vec<(String, Value)> {
    yaml_files(&root().join("base"))
        .iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml"))
        .flat_map(|p| docs(p))
        .map(|d| (d["kind"].as_str().unwrap_or_default().to_owned(), d))
        .collect()
}

/// The object as k8s-openapi reads it; serialized back it must still hold every field of the
/// source, so a field Kubernetes does not know (a typo such as `securityContex`, silently dropped by a
/// lenient apply) fails here.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let name = &doc["metadata"]["name"];
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&object).unwrap_or_else(|e| panic!("{name}: {e}"));
    // (Serializing may add what the source leaves implicit, such as the `apiVersion` and
    // `kind` of a StatefulSet's volume claim templates; it must not lose anything.)
    let mut lost = Vec::new();
    unknown_fields(doc, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{name}: fields Kubernetes does not know: {lost:?}"
    );
    object
}

/// Paths in `source` that `typed` does not have.
fn unknown_fields(source: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (source, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, w, format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path} ({a} read as {b})")),
        _ => {}
    }
}

#[test]
fn every_base_manifest_is_a_typed_kubernetes_object() {
    let objects = base_objects();
    assert!(!objects.is_empty());
    for (kind, doc) in &objects {
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "Service" => drop(typed::<Service>(doc)),
            "ConfigMap" => drop(typed::<ConfigMap>(doc)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(doc)),
            "StatefulSet" => drop(typed::<StatefulSet>(doc)),
            "Deployment" => drop(typed::<Deployment>(doc)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(doc)),
            other => panic!("unexpected kind {other} in deploy/kubernetes/base"),
        }
    }
}

#[test]
fn kustomizations_reference_files_and_patches_that_exist() {
    let base: BTreeSet<(String, String)> = base_objects()
        .iter()
        .map(|(k, d)| {
            (
                k.clone(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for k in yaml_files(&root())
        .into_iter()
        .filter(|p| p.ends_with("kustomization.yaml"))
    {
        let dir = k.parent().expect("a directory");
        let doc = &docs(&k)[0];
        for r in doc["resources"].as_array().into_iter().flatten() {
            let path = dir.join(r.as_str().unwrap_or_default());
            assert!(
                path.exists(),
                "{} references missing {}",
                k.display(),
                path.display()
            );
        }
        for p in doc["patches"].as_array().into_iter().flatten() {
            let path = dir.join(p["path"].as_str().unwrap_or_default());
            for patch in docs(&path) {
                let target = (
                    patch["kind"].as_str().unwrap_or_default().to_owned(),
                    patch["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
                assert!(
                    base.contains(&target),
                    "{} patches {target:?}, which the base does not have",
                    path.display()
                );
            }
        }
    }
}

/// (image-name prefix, args) of every ksr container in base and overlay manifests.
fn ksr_containers() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for path in yaml_files(&root()) {
        for doc in docs(&path) {
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let args: Vec<String> = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                if name.starts_with("ksr-") && !args.is_empty() {
                    out.push((name.clone(), args));
                }
            }
        }
    }
    out
}

#[test]
fn every_ksr_container_command_line_is_accepted_by_its_binary() {
    let containers = ksr_containers();
    assert!(containers.len() >= 5, "{containers:?}");
    for (name, args) in containers {
        let result = match name.as_str() {
            "ksr-watcher" => ksr_watcher::config::Config::try_parse_from(
                std::iter::once("ksr-watcher".to_owned()).chain(args.clone()),
            )
            .map(drop),
            "ksr-publisher-vulcand" => ksr_publisher_vulcand::config::Config::try_parse_from(
                std::iter::once("x".to_owned()).chain(args.clone()),
            )
            .map(drop),
            "ksr-publisher-consul" => ksr_publisher_consul::config::Config::try_parse_from(
                std::iter::once("x".to_owned()).chain(args.clone()),
            )
            .map(drop),
            "ksr-checkpointer" => ksrctl::cli::Cli::try_parse_from(
                std::iter::once("ksrctl".to_owned()).chain(args.clone()),
            )
            .map(drop),
            other => panic!("unknown ksr workload {other}"),
        };
        if let Err(e) = result {
            panic!("{name} {args:?}:\n{e}");
        }
    }
}

#[tokio::test]
async fn the_watcher_role_grants_exactly_the_calls_the_watcher_makes() -> anyhow::Result<()> {
    use ksr_test_support::apiserver::{FakeApiServer, Resource};

    // What the manifests grant.
    let objects = base_objects();
    let role: ClusterRole = typed(
        &objects
            .iter()
            .find(|(k, _)| k == "ClusterRole")
            .expect("a ClusterRole")
            .1,
    );
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let binding: ClusterRoleBinding = typed(
        &objects
            .iter()
            .find(|(k, _)| k == "ClusterRoleBinding")
            .expect("a binding")
            .1,
    );
    let watcher: Deployment = typed(
        &objects
            .iter()
            .find(|(k, d)| k == "Deployment" && d["metadata"]["name"] == "ksr-watcher")
            .expect("the watcher")
            .1,
    );
    let account = watcher
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.service_account_name)
        .unwrap_or_default();
    assert!(
        binding
            .subjects
            .unwrap_or_default()
            .iter()
            .any(|s| s.name == account),
        "the binding names the watcher's account"
    );

    // What the watcher does (endpoints mode watches the most), against the fake apiserver.
    let nats = ksr_test_support::NatsServer::start().await?;
    let api = FakeApiServer::start().await?;
    let admin_port = ksr_test_support::free_ports(1)?[0];
    let config = ksr_watcher::config::Config::try_parse_from([
        "ksr-watcher",
        "--cluster",
        "c1",
        "--nats-url",
        &nats.url(),
        "--kube-url",
        api.url(),
        "--address-mode",
        "endpoints",
        "--admin-addr",
        &format!("127.0.0.1:{admin_port}"),
    ])?;
    let w =
        ksr_test_support::Replica::spawn(admin_port, |stop| ksr_watcher::app::run(config, stop));
    w.ready().await?;
    // A Service routed as `a`, then `b`, then `a` again: two Events created, one counted
    // again in its series (a patch).
    for host in ["a", "b", "a"] {
        api.apply(
            Resource::Services,
            serde_json::json!({"metadata": {"name": "web", "namespace": "team",
                    "labels": {"type": "ingress"}, "annotations": {"host": host}},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}),
        );
        let notes = move |api: &FakeApiServer| {
            api.events()
                .iter()
                .filter(|e| {
                    e["note"]
                        .as_str()
                        .is_some_and(|n| n.contains(&format!("{host}-team.")))
                })
                .count()
        };
        ksr_test_support::wait_until("the Event", std::time::Duration::from_secs(30), || {
            let seen = notes(&api) > 0;
            async move { seen.then_some(()) }
        })
        .await?;
    }
    ksr_test_support::wait_until(
        "an Event counted again",
        std::time::Duration::from_secs(30),
        || {
            let patched = api.event_writes().1 > 0;
            async move { patched.then_some(()) }
        },
    )
    .await?;
    ksr_test_support::wait_until(
        "watches on both resources",
        std::time::Duration::from_secs(30),
        || async {
            (api.requests(Resource::Services).1 > 0 && api.requests(Resource::EndpointSlices).1 > 0)
                .then_some(())
        },
    )
    .await?;
    let mut used = BTreeSet::new();
    for (resource, group, name) in [
        (Resource::Services, "", "services"),
        (
            Resource::EndpointSlices,
            "discovery.k8s.io",
            "endpointslices",
        ),
    ] {
        let (lists, watches) = api.requests(resource);
        if lists > 0 {
            used.insert((group.to_owned(), name.to_owned(), "list".to_owned()));
        }
        if watches > 0 {
            used.insert((group.to_owned(), name.to_owned(), "watch".to_owned()));
        }
    }
    if api.namespace_gets() > 0 {
        used.insert(("".to_owned(), "namespaces".to_owned(), "get".to_owned()));
    }
    let (creates, patches) = api.event_writes();
    for (n, verb) in [(creates, "create"), (patches, "patch")] {
        if n > 0 {
            used.insert((
                "events.k8s.io".to_owned(),
                "events".to_owned(),
                verb.to_owned(),
            ));
        }
    }
    assert_eq!(
        granted, used,
        "RBAC must grant exactly what the watcher calls"
    );
    Ok(())
}

#[test]
fn every_etcd_compacts_its_history_and_has_a_backend_quota() {
    let files = [
        root().join("base/etcd.yaml"),
        root().join("overlays/vulcand-v0.8/etcd.yaml"),
    ];
    for path in files {
        let set = docs(&path)
            .into_iter()
            .find(|d| d["kind"] == "StatefulSet")
            .unwrap_or_else(|| panic!("{}: no StatefulSet", path.display()));
        let command: Vec<String> = set["spec"]["template"]["spec"]["containers"][0]["command"]
            .as_array()
            .expect("a command")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        for flag in [
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
            "--quota-backend-bytes=2147483648",
        ] {
            assert!(
                command.iter().any(|a| a == flag),
                "{}: no {flag}",
                path.display()
            );
        }
    }
}

#[test]
fn every_ksr_process_authenticates_to_nats_with_its_roles_nkey_from_a_secret() {
    let mut seen = 0;
    for path in yaml_files(&root()) {
        for doc in docs(&path) {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let pod = &doc["spec"]["template"]["spec"];
            for c in pod["containers"].as_array().into_iter().flatten() {
                let args: Vec<&str> = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .collect();
                if !name.starts_with("ksr-") || !args.iter().any(|a| a.starts_with("--nats-url")) {
                    continue;
                }
                if path.ends_with("overlays/vulcand-v0.8/publisher-vulcand.yaml") {
                    // A patch: its volumes are the base's.
                    assert!(
                        args.contains(&"--nats-nkey=/var/run/secrets/ksr/nats/nkey"),
                        "{name}"
                    );
                    continue;
                }
                seen += 1;
                let nkey = args
                    .iter()
                    .find_map(|a| a.strip_prefix("--nats-nkey="))
                    .unwrap_or_else(|| panic!("{name} connects to NATS without --nats-nkey"));
                let dir = nkey.rsplit_once('/').map_or("", |(d, _)| d);
                let mount = c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["mountPath"] == dir)
                    .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
                let volume = pod["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap_or_else(|| panic!("{name}: no volume {}", mount["name"]));
                let secret = volume["secret"]["secretName"].as_str().unwrap_or_default();
                assert!(
                    secret.starts_with("ksr-nats-"),
                    "{name}: the NKey comes from {volume}"
                );
            }
        }
    }
    assert_eq!(seen, 4, "watcher, both publishers and the checkpointer");
    assert!(nats_conf().contains("include ksr-auth.conf"));
}

/// Every pod template of the base: (workload name, pod spec).
fn pods() -> Vec<(String, Value)> {
    base_objects()
        .into_iter()
        .filter(|(k, _)| k == "Deployment" || k == "StatefulSet")
        .map(|(_, d)| {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (name, d["spec"]["template"]["spec"].clone())
        })
        .collect()
}

#[test]
fn every_container_is_hardened_and_bounded() {
    let pods = pods();
    assert!(pods.len() >= 7, "{pods:?}");
    for (name, pod) in pods {
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert_eq!(
            sc["seccompProfile"]["type"], "RuntimeDefault",
            "{name}: seccomp"
        );
        for c in pod["containers"].as_array().into_iter().flatten() {
            let c_name = format!("{name}/{}", c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c_name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{c_name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{c_name}"
            );
            assert!(
                c["resources"]["requests"]["cpu"].is_string(),
                "{c_name}: cpu request"
            );
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{c_name}: memory request"
            );
            assert!(
                c["resources"]["limits"]["memory"].is_string(),
                "{c_name}: memory limit"
            );
            for e in c["env"].as_array().into_iter().flatten() {
                let n = e["name"].as_str().unwrap_or_default();
                assert!(
                    !(n.contains("TOKEN") || n.contains("PASSWORD")) || e["value"].is_null(),
                    "{c_name}: secret {n} passed as a value"
                );
            }
            for a in c["args"].as_array().into_iter().flatten() {
                let a = a.as_str().unwrap_or_default();
                assert!(
                    !(a.starts_with("--consul-token=") || a.starts_with("--etcd-password=")),
                    "{c_name}: secret passed as a flag: {a}"
                );
            }
        }
    }
}

#[test]
fn network_policies_let_only_our_processes_reach_nats_and_only_vulcand_and_its_publisher_reach_etcd()
 {
    let policies: Vec<Value> = base_objects()
        .into_iter()
        .filter(|(k, _)| k == "NetworkPolicy")
        .map(|(_, d)| d)
        .collect();
    let by_target = |app: &str| -> Vec<&Value> {
        policies
            .iter()
            .filter(|p| p["spec"]["podSelector"]["matchLabels"]["app"] == app)
            .collect()
    };
    assert!(
        policies
            .iter()
            .any(|p| p["spec"]["podSelector"] == serde_json::json!({})
                && p["spec"]["ingress"].is_null()),
        "a default deny of ingress"
    );
    let allowed = |app: &str| -> BTreeSet<String> {
        by_target(app)
            .iter()
            .flat_map(|p| p["spec"]["ingress"].as_array().cloned().unwrap_or_default())
            .flat_map(|rule| rule["from"].as_array().cloned().unwrap_or_default())
            .flat_map(|from| {
                from["podSelector"]["matchExpressions"][0]["values"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        allowed("etcd"),
        BTreeSet::from(["ksr-publisher-vulcand".to_owned(), "vulcand".to_owned()])
    );
    assert_eq!(
        allowed("nats"),
        [
            "ksr-watcher",
            "ksr-publisher-vulcand",
            "ksr-publisher-consul",
            "ksr-checkpointer"
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    );
    // The quorum members reach each other: NATS routes, etcd peers.
    for (app, port) in [("nats", 6222), ("etcd", 2380)] {
        assert!(
            by_target(app).iter().any(|p| {
                p["spec"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|rule| {
                        rule["from"][0]["podSelector"]["matchLabels"]["app"] == app
                            && rule["ports"][0]["port"] == port
                    })
            }),
            "{app} members cannot reach each other on {port}"
        );
    }
    for path in yaml_files(&root()) {
        for doc in docs(&path) {
            if doc["metadata"]["name"] != "vulcand" {
                continue;
            }
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let command: Vec<&str> = c["command"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .collect();
                assert!(
                    command.contains(&"-apiInterface=127.0.0.1"),
                    "{}: vulcand's API must listen on loopback: {command:?}",
                    path.display()
                );
            }
        }
    }
}

/// The NATS servers' configuration (the kustomization generates ConfigMap nats-config from it).
fn nats_conf() -> String {
    let kustomization = &docs(&root().join("base/kustomization.yaml"))[0];
    let generator = kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["name"] == "nats-config")
        .expect("a nats-config generator");
    assert_eq!(generator["files"], serde_json::json!(["nats.conf"]));
    assert_eq!(generator["options"]["disableNameSuffixHash"], true);
    std::fs::read_to_string(root().join("base/nats.conf")).expect("nats.conf")
}

/// The base workload called `name`.
fn workload(name: &str) -> Value {
    base_objects()
        .into_iter()
        .find(|(k, d)| (k == "Deployment" || k == "StatefulSet") && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name}"))
        .1
}

/// Every argument of the `ksr-...` workloads' containers.
fn args_of(name: &str) -> Vec<String> {
    ksr_containers()
        .into_iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, a)| a)
        .collect()
}

/// The servers a comma-separated flag value lists.
fn listed(args: &[String], flag: &str) -> Vec<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A three-member StatefulSet started all at once (members need each other to be ready):
/// its headless Service and each member's DNS name.
fn quorum(name: &str) -> (String, Vec<String>) {
    let set = workload(name);
    assert_eq!(set["spec"]["replicas"], 3, "{name}");
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel", "{name}");
    let service = set["spec"]["serviceName"]
        .as_str()
        .expect("serviceName")
        .to_owned();
    let members = (0..3)
        .map(|i| format!("{name}-{i}.{service}.kube-service-router.svc"))
        .collect();
    (service, members)
}

#[test]
fn nats_runs_as_a_three_server_cluster_and_every_client_knows_every_server() {
    let (service, pods) = quorum("nats");
    let conf = nats_conf();
    assert!(conf.contains("server_name: $POD_NAME"), "{conf}");
    for pod in &pods {
        assert!(
            conf.contains(&format!("nats-route://{pod}:6222")),
            "no route to {pod}"
        );
    }
    let headless = base_objects()
        .into_iter()
        .find(|(k, d)| k == "Service" && d["metadata"]["name"] == service)
        .expect("the headless Service")
        .1;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let want: Vec<String> = pods.iter().map(|p| format!("nats://{p}:4222")).collect();
    for name in [
        "ksr-watcher",
        "ksr-publisher-vulcand",
        "ksr-publisher-consul",
        "ksr-checkpointer",
    ] {
        assert_eq!(listed(&args_of(name), "--nats-url"), want, "{name}");
    }
    // What creates the stream or the checkpoint bucket makes it as replicated as the cluster.
    for name in ["ksr-watcher", "ksr-checkpointer"] {
        assert!(
            args_of(name).contains(&"--stream-replicas=3".to_owned()),
            "{name}"
        );
    }
}

#[test]
fn etcd_runs_as_three_members_and_the_publisher_knows_every_member() {
    let (_, members) = quorum("etcd");
    for path in [
        root().join("base/etcd.yaml"),
        root().join("overlays/vulcand-v0.8/etcd.yaml"),
    ] {
        let set = docs(&path)
            .into_iter()
            .find(|d| d["kind"] == "StatefulSet")
            .expect("etcd");
        let command: Vec<String> = serde_json::from_value(
            set["spec"]["template"]["spec"]["containers"][0]["command"].clone(),
        )
        .expect("a command");
        let initial = listed(&command, "--initial-cluster");
        let want: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("etcd-{i}=http://{m}:2380"))
            .collect();
        assert_eq!(initial, want, "{}", path.display());
        assert!(
            command.contains(&"--name=$(POD_NAME)".to_owned()),
            "{}",
            path.display()
        );
    }
    let want: Vec<String> = members.iter().map(|m| format!("{m}:2379")).collect();
    for (name, args) in ksr_containers()
        .into_iter()
        .filter(|(n, _)| n == "ksr-publisher-vulcand")
    {
        assert_eq!(listed(&args, "--etcd-endpoints"), want, "{name}");
    }
}

#[test]
fn replicated_workloads_spread_over_machines_keep_a_disruption_budget_and_probe_health() {
    let objects = base_objects();
    let budgets: Vec<&Value> = objects
        .iter()
        .filter(|(k, _)| k == "PodDisruptionBudget")
        .map(|(_, d)| d)
        .collect();
    let mut replicated = 0;
    for (kind, d) in objects
        .iter()
        .filter(|(k, _)| k == "Deployment" || k == "StatefulSet")
    {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let pod = &d["spec"]["template"]["spec"];
        if replicas > 1 {
            replicated += 1;
            let budget = budgets
                .iter()
                .find(|b| &b["spec"]["selector"]["matchLabels"] == labels)
                .unwrap_or_else(|| panic!("{kind} {name}: no PodDisruptionBudget"));
            let allows_one_down = budget["spec"]["maxUnavailable"] == 1
                || budget["spec"]["minAvailable"]
                    .as_u64()
                    .is_some_and(|m| m >= 1 && m < replicas);
            assert!(allows_one_down, "{name}: {budget}");
            let anti = &pod["affinity"]["podAntiAffinity"];
            let terms: Vec<&Value> = anti["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(
                    anti["preferredDuringSchedulingIgnoredDuringExecution"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| &t["podAffinityTerm"]),
                )
                .collect();
            assert!(
                terms
                    .iter()
                    .any(|t| &t["labelSelector"]["matchLabels"] == labels
                        && t["topologyKey"] == "kubernetes.io/hostname"),
                "{name}: replicas not spread over machines"
            );
            if kind == "StatefulSet" {
                // A quorum member per machine, or one machine's loss loses quorum.
                assert!(
                    anti["requiredDuringSchedulingIgnoredDuringExecution"].is_array(),
                    "{name}: quorum members must be on different machines"
                );
            }
        }
        // Our processes: alive on /livez, ready on /readyz (the checkpointer has no admin port).
        for c in pod["containers"].as_array().into_iter().flatten() {
            if name.starts_with("ksr-") && name != "ksr-checkpointer" {
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez", "{name}");
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            } else if name != "ksr-checkpointer" && name != "vulcand" {
                assert!(
                    c["readinessProbe"].is_object(),
                    "{name}: no readiness probe"
                );
                assert!(c["livenessProbe"].is_object(), "{name}: no liveness probe");
            }
        }
    }
    assert!(
        replicated >= 5,
        "nats, etcd, the watcher and both publishers"
    );
}

#[test]
fn every_ksr_container_runs_a_binary_of_the_one_image_kustomize_names() {
    let kustomization = &docs(&root().join("base/kustomization.yaml"))[0];
    let images = kustomization["images"].as_array().expect("images:");
    assert!(
        images
            .iter()
            .any(|i| i["name"] == "ksr" && i["newName"].is_string() && i["newTag"].is_string()),
        "{images:?}"
    );
    let dockerfile = std::fs::read_to_string(ksr_test_support::workspace_root().join("Dockerfile"))
        .expect("Dockerfile");
    let mut seen = 0;
    for path in yaml_files(&root()) {
        for doc in docs(&path) {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if !name.starts_with("ksr-") || c["image"].is_null() {
                    continue;
                }
                seen += 1;
                assert_eq!(c["image"], "ksr", "{name}");
                let command = c["command"][0].as_str().unwrap_or_default();
                let binary = command
                    .strip_prefix("/usr/local/bin/")
                    .unwrap_or_else(|| panic!("{name}: {command}"));
                assert!(
                    ksr_test_support::workspace_binary(binary).is_ok(),
                    "{name}: {binary} is not ours"
                );
                assert!(
                    dockerfile.contains(&format!("target/release/{binary}")),
                    "{name}: the image lacks {binary}"
                );
            }
        }
    }
    assert_eq!(seen, 4);
}

#[test]
fn the_nats_configuration_is_valid_for_the_real_nats_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("nats.conf"), nats_conf())?;
    let keys = dir.path().join("keys");
    let out = std::process::Command::new(ksr_test_support::workspace_binary("ksrctl")?)
        .args(["nats-auth", "--out"])
        .arg(&keys)
        .args(["--clusters", "cluster-1"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(keys.join("ksr-auth.conf"), dir.path().join("ksr-auth.conf"))?;
    let out = std::process::Command::new(ksr_test_support::server_binary("nats-server")?)
        .env("POD_NAME", "nats-0")
        .arg("-t")
        .arg("-c")
        .arg(dir.path().join("nats.conf"))
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success() && said.contains("is valid"), "{said}");
    Ok(())
}
