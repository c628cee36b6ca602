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
    _nats: NatsServer,
    etcd: EtcdServer,
    consul: ConsulServer,
    east: FakeApiServer,
    west: FakeApiServer,
    _procs: Vec<Proc>,
    _logs: tempfile::TempDir,
}

fn spawn(
    logs: &std::path::Path,
    name: &str,
    binary: &str,
    args: &[String],
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(workspace_binary(binary)?);
    cmd.args(args).env("KSR_LOG", "info");
    Proc::spawn(name, cmd, &logs.join(format!("{name}.log")))
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
        procs.push(spawn(
            logs.path(),
            "vulcand",
            "ksr-publisher-vulcand",
            &[
                "--nats-url".into(),
                nats.url(),
                "--etcd-endpoints".into(),
                etcd.endpoint(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
            ],
        )?);
        procs.push(spawn(
            logs.path(),
            "consul",
            "ksr-publisher-consul",
            &[
                "--nats-url".into(),
                nats.url(),
                "--consul-address".into(),
                consul.url(),
                "--router-address".into(),
                ROUTER.to_string(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
            ],
        )?);
        Ok(Self {
            _nats: nats,
            etcd,
            consul,
            east,
            west,
            _procs: procs,
            _logs: logs,
        })
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
