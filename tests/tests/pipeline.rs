//! End to end, across the real processes: two watchers (two clusters, each with its own fake
//! apiserver), both publishers, real nats-server, etcd and Consul.

use std::process::Command;
use std::time::Duration;

use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::{
    ConsulServer, EtcdServer, NatsServer, Proc, dns, eventually, workspace_binary,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const ROUTER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 9);

struct System {
    nats: NatsServer,
    etcd: EtcdServer,
    consul: ConsulServer,
    east: FakeApiServer,
    west: FakeApiServer,
    /// The watchers of east and west, in that order.
    watchers: Vec<Proc>,
    /// The two publishers (they can be stopped and started again).
    publishers: Vec<Proc>,
    logs: tempfile::TempDir,
}

fn spawn(
    logs: &std::path::Path,
    name: &str,
    binary: &str,
    args: &[String],
) -> anyhow::Result<Proc> {
    Proc::spawn_workspace(logs, name, binary, args)
}

impl System {
    async fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let etcd = EtcdServer::start().await?;
        let consul = ConsulServer::start().await?;
        let (east, west) = (FakeApiServer::start().await?, FakeApiServer::start().await?);
        let logs = tempfile::tempdir()?;
        let mut procs = Vec::new();
        for (cluster, api) in [("east", &east), ("west", &west)] {
            procs.push(spawn(
                logs.path(),
                &format!("watcher-{cluster}"),
                "ksr-watcher",
                &[
                    "--cluster".into(),
                    cluster.into(),
                    "--nats-url".into(),
                    nats.url(),
                    "--kube-url".into(),
                    api.url().into(),
                    "--admin-addr".into(),
                    "127.0.0.1:0".into(),
                ],
            )?);
        }
        let mut sys = Self {
            nats,
            etcd,
            consul,
            east,
            west,
            watchers: procs,
            publishers: Vec::new(),
            logs,
        };
        sys.start_publishers()?;
        Ok(sys)
    }

    fn start_publishers(&mut self) -> anyhow::Result<()> {
        let vulcand = spawn(
            self.logs.path(),
            "vulcand",
            "ksr-publisher-vulcand",
            &[
                // Several servers, the first one down: the client uses the other.
                "--nats-url".into(),
                format!("nats://127.0.0.1:1,{}", self.nats.url()),
                "--etcd-endpoints".into(),
                self.etcd.endpoint(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
            ],
        )?;
        let consul = spawn(
            self.logs.path(),
            "consul",
            "ksr-publisher-consul",
            &[
                "--nats-url".into(),
                self.nats.url(),
                "--consul-address".into(),
                self.consul.url(),
                "--router-address".into(),
                ROUTER.to_string(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
            ],
        )?;
        self.publishers = vec![vulcand, consul];
        Ok(())
    }

    /// The vulcand servers of the route for `host` (path `/.*`), from etcd.
    async fn servers(&self, host: &str) -> anyhow::Result<Vec<String>> {
        let mut client = etcd_client::Client::connect([self.etcd.endpoint()], None).await?;
        let id = ksr_publisher_vulcand::layout::Layout::new("vulcand", "ksr").route_id(host, "/.*");
        let resp = client
            .get(
                format!("vulcand/backends/{id}/servers/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let mut urls: Vec<String> = resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect();
        urls.sort();
        Ok(urls)
    }

    /// `e` with the end of every process's log.
    fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let mut text = e.to_string();
        for p in self.watchers.iter().chain(&self.publishers) {
            text.push_str(&format!("\n--- {p:?}\n{}", p.log_tail()));
        }
        anyhow::anyhow!(text)
    }

    async fn resolves(&self, host: &str) -> anyhow::Result<bool> {
        let a = dns::query_a(self.consul.dns_port(), host).await?;
        Ok(a.addrs == vec![ROUTER])
    }
}

fn svc(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "labels": {"type": "ingress"}},
           "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})
}

#[tokio::test]
async fn a_service_from_two_clusters_becomes_one_route_and_one_name_and_goes_away()
-> anyhow::Result<()> {
    let sys = System::start().await?;
    let host = "web-default.test.service.consul";
    sys.east.apply(Resource::Services, svc("web", "10.96.0.1"));
    eventually(WAIT, || async {
        anyhow::ensure!(
            sys.servers(host).await? == vec![r#"{"URL":"http://10.96.0.1:80"}"#.to_owned()],
            "no route yet"
        );
        anyhow::ensure!(sys.resolves(host).await?, "no name yet");
        Ok(())
    })
    .await?;

    // The same Service in the second cluster fans in: one frontend, servers from both.
    sys.west.apply(Resource::Services, svc("web", "10.97.0.1"));
    eventually(WAIT, || async {
        let servers = sys.servers(host).await?;
        anyhow::ensure!(servers.len() == 2, "{servers:?}");
        Ok(())
    })
    .await?;

    // Deleted in one cluster: only its server goes; in both: route and name go.
    sys.east.delete(Resource::Services, "default", "web");
    eventually(WAIT, || async {
        anyhow::ensure!(
            sys.servers(host).await? == vec![r#"{"URL":"http://10.97.0.1:80"}"#.to_owned()]
        );
        Ok(())
    })
    .await?;
    sys.west.delete(Resource::Services, "default", "web");
    eventually(WAIT, || async {
        anyhow::ensure!(sys.servers(host).await?.is_empty(), "route still there");
        let a = dns::query_a(sys.consul.dns_port(), host).await?;
        anyhow::ensure!(a.rcode == dns::NXDOMAIN, "name still resolves: {a:?}");
        Ok(())
    })
    .await
}

/// Every vulcand key in `etcd`.
async fn vulcand_keys(
    etcd: &EtcdServer,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    etcd.contents("vulcand/").await
}

/// Fails unless etcd's vulcand keys are exactly what the independent model says the
/// stream's newest events project to (not a rebuild through the same planner).
async fn vulcand_as_modelled(sys: &System) -> anyhow::Result<()> {
    use ksr_test_support::model::{Settings, differences, expected, services_from_stream};
    let js = async_nats::jetstream::new(async_nats::connect(sys.nats.url()).await?);
    let events = ksr_test_support::events::stream_events(&js).await?;
    let want = expected(&Settings::default(), &services_from_stream(&events));
    let diff = differences(
        "vulcand keys",
        &vulcand_keys(&sys.etcd).await?,
        &want.vulcand,
    );
    anyhow::ensure!(diff.is_empty(), "{diff}");
    Ok(())
}

/// Deletes the stream, as `nats stream rm` (or a lost volume) does, and waits until the
/// watchers have created it again and republished their clusters' `services` Services.
async fn recreate_stream(sys: &System, services: u64) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(sys.nats.url()).await?);
    js.delete_stream("KSR_ROUTES").await?;
    eventually(WAIT, || async {
        let mut stream = js.get_stream("KSR_ROUTES").await?;
        let n = stream.info().await?.state.messages;
        anyhow::ensure!(n >= services, "the new stream holds {n} events");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_recreated_stream_is_followed_and_the_targets_equal_a_rebuild_from_it()
-> anyhow::Result<()> {
    let mut sys = System::start().await?;
    for (api, name, ip) in [
        (&sys.east, "a", "10.96.0.1"),
        (&sys.east, "b", "10.96.0.2"),
        (&sys.west, "c", "10.97.0.1"),
    ] {
        api.apply(Resource::Services, svc(name, ip));
    }
    let host = |n: &str| format!("{n}-default.test.service.consul");
    eventually(WAIT, || async {
        for n in ["a", "b", "c"] {
            anyhow::ensure!(sys.servers(&host(n)).await?.len() == 1, "{n} not routed");
            anyhow::ensure!(sys.resolves(&host(n)).await?, "{n} not resolvable");
        }
        Ok(())
    })
    .await?;
    // A history long enough that every fence sits far above what the new stream will reach.
    for i in 1..=40 {
        sys.east
            .apply(Resource::Services, svc("a", &format!("10.96.1.{i}")));
        let want = vec![format!(r#"{{"URL":"http://10.96.1.{i}:80"}}"#)];
        eventually(WAIT, || async {
            anyhow::ensure!(
                sys.servers(&host("a")).await? == want,
                "update {i} not applied"
            );
            Ok(())
        })
        .await?;
    }
    let before = vulcand_keys(&sys.etcd).await?;

    // The stream is deleted while every process runs: sequences restart at 1, below every
    // fence. Nothing is lost, and changes after the recreation apply.
    recreate_stream(&sys, 3).await?;
    assert_eq!(
        vulcand_keys(&sys.etcd).await?,
        before,
        "nothing changed, nothing lost"
    );
    sys.east.delete(Resource::Services, "default", "a");
    sys.west.apply(Resource::Services, svc("d", "10.97.0.4"));
    eventually(WAIT, || async {
        anyhow::ensure!(sys.servers(&host("a")).await?.is_empty(), "a still routed");
        anyhow::ensure!(!sys.resolves(&host("a")).await?, "a still resolves");
        anyhow::ensure!(sys.servers(&host("d")).await?.len() == 1, "d not routed");
        anyhow::ensure!(sys.resolves(&host("d")).await?, "d not resolvable");
        Ok(())
    })
    .await?;

    // Again while the publishers are down: they bind to the new stream when they start.
    sys.publishers.clear();
    recreate_stream(&sys, 3).await?;
    sys.east.delete(Resource::Services, "default", "b");
    sys.start_publishers()?;
    eventually(WAIT, || async {
        anyhow::ensure!(sys.servers(&host("b")).await?.is_empty(), "b still routed");
        anyhow::ensure!(!sys.resolves(&host("b")).await?, "b still resolves");
        for n in ["c", "d"] {
            anyhow::ensure!(sys.servers(&host(n)).await?.len() == 1, "{n} not routed");
            anyhow::ensure!(sys.resolves(&host(n)).await?, "{n} not resolvable");
        }
        Ok(())
    })
    .await?;

    // Consul equals a rebuild from the new stream into an empty Consul, entry by entry
    // (records and catalog instances, without ModifyIndexes).
    let fresh = ConsulServer::start().await?;
    let rebuild = Command::new(workspace_binary("ksrctl")?)
        .args(["rebuild", "consul", "--nats-url", &sys.nats.url()])
        .args([
            "--consul-address",
            &fresh.url(),
            "--router-address",
            &ROUTER.to_string(),
        ])
        .output()?;
    anyhow::ensure!(rebuild.status.success(), "{rebuild:?}");
    eventually(WAIT, || async {
        let live = sys.consul.contents("ksr", false).await?;
        let rebuilt = fresh.contents("ksr", false).await?;
        anyhow::ensure!(live == rebuilt, "live {live:#?}\nrebuilt {rebuilt:#?}");
        Ok(())
    })
    .await?;

    // etcd equals a rebuild from the new stream into an empty etcd, key by key.
    let empty = EtcdServer::start().await?;
    let rebuild = Command::new(workspace_binary("ksrctl")?)
        .args(["rebuild", "vulcand", "--nats-url", &sys.nats.url()])
        .args(["--etcd-endpoints", &empty.endpoint()])
        .output()?;
    anyhow::ensure!(rebuild.status.success(), "{rebuild:?}");
    eventually(WAIT, || async {
        let (live, rebuilt) = (vulcand_keys(&sys.etcd).await?, vulcand_keys(&empty).await?);
        anyhow::ensure!(live == rebuilt, "live {live:#?}\nrebuilt {rebuilt:#?}");
        Ok(())
    })
    .await?;
    // And both are what the model says the new stream projects to.
    vulcand_as_modelled(&sys).await
}

fn ksrctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(workspace_binary("ksrctl")?)
        .args(args)
        .output()?)
}

#[tokio::test]
async fn a_retired_cluster_loses_exactly_its_routes_and_its_tombstones_are_collected()
-> anyhow::Result<()> {
    let mut sys = System::start().await?;
    sys.east.apply(Resource::Services, svc("a", "10.96.0.1"));
    sys.east.apply(Resource::Services, svc("b", "10.96.0.2"));
    sys.west.apply(Resource::Services, svc("c", "10.97.0.1"));
    let host = |n: &str| format!("{n}-default.test.service.consul");
    eventually(WAIT, || async {
        for n in ["a", "b", "c"] {
            anyhow::ensure!(sys.servers(&host(n)).await?.len() == 1, "{n} not routed");
        }
        Ok(())
    })
    .await?;
    let url = sys.nats.url();

    // Refused while the cluster's watcher runs.
    let refused = ksrctl(&["retire-cluster", "east", "--nats-url", &url])?;
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("a watcher of cluster east is running"),
        "{err}"
    );

    sys.watchers.remove(0);
    let retired = ksrctl(&["retire-cluster", "east", "--nats-url", &url])?;
    assert!(retired.status.success(), "{retired:?}");
    let out = String::from_utf8_lossy(&retired.stdout);
    assert!(out.contains("2 Services removed"), "{out}");
    eventually(WAIT, || async {
        for n in ["a", "b"] {
            anyhow::ensure!(sys.servers(&host(n)).await?.is_empty(), "{n} still routed");
            anyhow::ensure!(!sys.resolves(&host(n)).await?, "{n} still resolves");
        }
        anyhow::ensure!(sys.servers(&host("c")).await?.len() == 1, "west lost c");
        anyhow::ensure!(sys.resolves(&host("c")).await?, "west lost c's name");
        Ok(())
    })
    .await?;

    // The tombstones of a and b protect nothing once no event of theirs can come again
    // (here: the stream is created again): the publishers' reconciliation collects them, and
    // etcd, records included, equals a rebuild from the stream.
    recreate_stream(&sys, 1).await?;
    let empty = EtcdServer::start().await?;
    eventually(WAIT, || async {
        let fences = sys.etcd.contents("ksr/ksr/vulcand/services/east/").await?;
        anyhow::ensure!(fences.is_empty(), "tombstones left: {fences:?}");
        Ok(())
    })
    .await?;
    let rebuild = ksrctl(&[
        "rebuild",
        "vulcand",
        "--nats-url",
        &url,
        "--etcd-endpoints",
        &empty.endpoint(),
    ])?;
    anyhow::ensure!(rebuild.status.success(), "{rebuild:?}");
    eventually(WAIT, || async {
        let live = sys.etcd.contents("").await?;
        let rebuilt = empty.contents("").await?;
        anyhow::ensure!(live == rebuilt, "live {live:#?}\nrebuilt {rebuilt:#?}");
        Ok(())
    })
    .await?;
    vulcand_as_modelled(&sys).await
}

#[tokio::test]
async fn a_service_that_becomes_external_name_or_headless_leaves_etcd_and_consul()
-> anyhow::Result<()> {
    let sys = System::start().await?;
    sys.east.apply(Resource::Services, svc("x", "10.96.0.7"));
    sys.east.apply(Resource::Services, svc("y", "10.96.0.8"));
    let host = |n: &str| format!("{n}-default.test.service.consul");
    eventually(WAIT, || async {
        for n in ["x", "y"] {
            anyhow::ensure!(sys.servers(&host(n)).await?.len() == 1, "{n} not routed");
            anyhow::ensure!(sys.resolves(&host(n)).await?, "{n} not resolvable");
        }
        Ok(())
    })
    .await?;
    // Kubernetes may hand the old clusterIP to another Service: the route must go.
    sys.east.apply(
        Resource::Services,
        json!({"metadata": {"name": "x", "namespace": "default", "labels": {"type": "ingress"}},
               "spec": {"type": "ExternalName", "externalName": "db.example.org"}}),
    );
    sys.east.apply(Resource::Services, svc("y", "None"));
    eventually(WAIT, || async {
        for n in ["x", "y"] {
            anyhow::ensure!(sys.servers(&host(n)).await?.is_empty(), "{n} still routed");
            anyhow::ensure!(!sys.resolves(&host(n)).await?, "{n} still resolves");
        }
        Ok(())
    })
    .await
}

/// A labelled Service of namespace `ns` with a uid and annotations.
fn owned_svc(ns: &str, name: &str, annotations: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                        "labels": {"type": "ingress"}, "annotations": annotations},
           "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80}]}})
}

/// (type, reason, note) of the Events on `ns/name`.
fn events_on(api: &FakeApiServer, ns: &str, name: &str) -> Vec<(String, String, String)> {
    api.events()
        .into_iter()
        .filter(|e| e["regarding"]["namespace"] == ns && e["regarding"]["name"] == name)
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (s(&e["type"]), s(&e["reason"]), s(&e["note"]))
        })
        .collect()
}

fn has(events: &[(String, String, String)], type_: &str, reason: &str, words: &[&str]) -> bool {
    events
        .iter()
        .any(|(t, r, n)| t == type_ && r == reason && words.iter().all(|w| n.contains(w)))
}

/// Waits until east's Service `ns/name` has a Routed Event from vulcand and from Consul, each
/// naming `name_prefix`.
async fn served_by_both(
    sys: &System,
    ns: &str,
    name: &str,
    name_prefix: &str,
) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        let e = events_on(&sys.east, ns, name);
        for target in ["vulcand", "consul"] {
            let words = format!("{target} serves it as {name_prefix}");
            anyhow::ensure!(has(&e, "Normal", "Routed", &[&words]), "{target}: {e:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn owners_learn_from_each_publisher_whether_it_serves_their_service_or_who_holds_its_name()
-> anyhow::Result<()> {
    let mut sys = System::start().await?;
    // `x` in namespace `b-c` and `host: x-b` in namespace `c` both make `x-b-c`: one hostname
    // for vulcand and one name for Consul. The older claim keeps both.
    sys.east
        .apply(Resource::Services, owned_svc("b-c", "x", json!({})));
    let host = "x-b-c.test.service.consul";
    served_by_both(&sys, "b-c", "x", "x-b-c.test")
        .await
        .map_err(|e| sys.with_logs(e))?;
    sys.east.apply(
        Resource::Services,
        owned_svc("c", "intruder", json!({"host": "x-b"})),
    );
    eventually(WAIT, || async {
        let e = events_on(&sys.east, "c", "intruder");
        for (target, name) in [("vulcand", host), ("consul", host)] {
            anyhow::ensure!(
                has(&e, "Warning", "Conflict", &[target, name, "held by b-c"]),
                "{target}: {e:?}"
            );
        }
        Ok(())
    })
    .await?;
    // What the targets hold agrees (read with etcd's own client): b-c's route only.
    assert_eq!(sys.servers(host).await?.len(), 1);
    // `ksrctl explain` tells the same story from the stream and the publishers' reports.
    let explained = eventually(WAIT, || async {
        let out = Command::new(workspace_binary("ksrctl")?)
            .args(["explain", "east/c/intruder", "--output", "table"])
            .args(["--nats-url", &sys.nats.url()])
            .output()?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            text.matches("held by b-c").count() == 2
                && text.contains("ksr-vulcand-ksr")
                && text.contains("ksr-consul-ksr")
                && text.contains("Every publisher has applied its newest event"),
            "{text}"
        );
        Ok(text)
    })
    .await?;
    assert!(
        explained.contains("Events in the stream (1)"),
        "{explained}"
    );

    // A status lost (here: purged by hand; in life, a crash between a commit and its report)
    // is written again by the publisher's next start, after its first reconciliation pass.
    let js = async_nats::jetstream::new(async_nats::connect(sys.nats.url()).await?);
    let bucket = js.get_key_value("KSR_ROUTES_status").await?;
    let key = "ksr-vulcand-ksr.east.c.intruder";
    bucket.purge(key).await?;
    sys.publishers.clear();
    sys.start_publishers()?;
    eventually(WAIT, || async {
        let entry = bucket.get(key).await?;
        let status = entry
            .map(|v| ksr_projection::status::Status::decode(&v))
            .transpose()?;
        anyhow::ensure!(
            status.as_ref().is_some_and(|s| matches!(
                &s.standing,
                ksr_projection::status::Standing::Waiting { owner, .. } if owner == "b-c"
            )),
            "{status:?}"
        );
        Ok(())
    })
    .await?;
    // The owner goes: the waiting Service takes the name over, and its owner is told so.
    sys.east.delete(Resource::Services, "b-c", "x");
    served_by_both(&sys, "c", "intruder", "x-b-c.test").await?;
    // Every one of these Events refers to the Service with its uid (what `kubectl describe`
    // selects on).
    for e in sys.east.events() {
        let r = &e["regarding"];
        let uid = format!(
            "uid-{}-{}",
            r["namespace"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default()
        );
        assert_eq!(r["uid"], uid.as_str(), "{e}");
    }
    Ok(())
}

#[tokio::test]
async fn https_backends_and_consul_tags_and_metadata_go_from_annotations_to_etcd_and_consul()
-> anyhow::Result<()> {
    let sys = System::start().await?;
    // kubernetes-dashboard's Service (one port 443 → 8443), with a self-signed certificate
    // and a team's tags and metadata.
    sys.east.apply(
        Resource::Services,
        json!({"metadata": {"name": "dash", "namespace": "kd", "uid": "uid-dash",
                            "labels": {"type": "ingress"},
                            "annotations": {"tls-insecure-skip-verify": "true",
                                            "consul-tags": "canary,ops",
                                            "consul-meta.team": "platform"}},
               "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 443, "targetPort": 8443}]}}),
    );
    let host = "dash-kd.test.service.consul";
    eventually(WAIT, || async {
        anyhow::ensure!(
            sys.servers(host).await? == vec![r#"{"URL":"https://10.96.7.7:443"}"#.to_owned()],
            "servers {:?}",
            sys.servers(host).await?
        );
        Ok(())
    })
    .await
    .map_err(|e| sys.with_logs(e))?;
    // vulcand's backend carries the TLS setting, read back with etcd's own client.
    let mut client = etcd_client::Client::connect([sys.etcd.endpoint()], None).await?;
    let id = ksr_publisher_vulcand::layout::Layout::new("vulcand", "ksr").route_id(host, "/.*");
    let backend = client
        .get(format!("vulcand/backends/{id}/backend"), None)
        .await?;
    let value: Value = serde_json::from_slice(backend.kvs()[0].value())?;
    assert_eq!(
        value,
        json!({"Type": "http", "Settings": {"TLS": {"InsecureSkipVerify": true}}})
    );
    // Consul's catalog holds the tags and metadata, and its DNS answers by tag.
    eventually(WAIT, || async {
        let entry = sys
            .consul
            .get_json("/v1/catalog/service/test?tag=canary")
            .await?;
        let first = &entry[0];
        anyhow::ensure!(
            first["ServiceTags"] == json!(["dash-kd", "canary", "ops"])
                && first["ServiceMeta"]["team"] == "platform",
            "{entry}"
        );
        anyhow::ensure!(
            sys.resolves("ops.test.service.consul").await?,
            "no DNS answer by tag"
        );
        Ok(())
    })
    .await
}
