//! The Consul publisher's test bench: real nats-server and Consul, the real publisher process
//! code (`app::run`) configured through its real command line.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use ksr_proto::Event;
use ksr_publisher_consul::{app, config::Config};
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::{ConsulOptions, ConsulServer, NatsServer, dns, eventually, http_client};

pub const WAIT: Duration = Duration::from_secs(30);
/// Where the (imaginary) edge router listens: every name must resolve here.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

pub struct Bench {
    pub nats: NatsServer,
    pub consul: ConsulServer,
    pub js: jetstream::Context,
}

impl Bench {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    pub async fn start_with(options: ConsulOptions) -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let consul = ConsulServer::start_with(options).await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
        Ok(Self { nats, consul, js })
    }

    /// The incarnation of the bench's stream (what the publishers' fences carry).
    pub async fn incarnation(&self) -> anyhow::Result<u64> {
        let stream = self.js.get_stream("KSR_ROUTES").await?;
        Ok(ksr_runtime::nats::incarnation(&stream))
    }

    pub async fn publish(&self, event: &Event) -> anyhow::Result<u64> {
        ksr_test_support::events::publish(&self.js, event).await
    }

    /// Starts a publisher replica; extra command-line flags may be given.
    pub fn publisher(&self, extra: &[&str]) -> Replica {
        self.publisher_for(&ROUTER.to_string(), extra)
    }

    /// Starts a publisher replica for the routers `routers` (`--router-address`).
    pub fn publisher_for(&self, routers: &str, extra: &[&str]) -> Replica {
        let admin_port = ksr_test_support::free_ports(1).expect("a free port")[0];
        let mut args = vec![
            "ksr-publisher-consul".to_owned(),
            "--nats-url".into(),
            self.nats.url(),
            "--consul-address".into(),
            self.consul.url(),
            "--router-address".into(),
            routers.to_owned(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from(args).expect("test config parses");
        Replica::spawn(admin_port, |stop| app::run(config, stop))
    }

    /// An A query for `name` against Consul's DNS port.
    pub async fn resolve(&self, name: &str) -> anyhow::Result<dns::Answer> {
        Ok(dns::query_a(self.consul.dns_port(), name).await?)
    }

    /// Waits until `name` resolves to the router (or, for `false`, is NXDOMAIN).
    pub async fn wait_resolves(&self, name: &str, resolves: bool) -> anyhow::Result<()> {
        eventually(WAIT, || async {
            let a = self.resolve(name).await?;
            let ok = if resolves {
                a.rcode == dns::NOERROR && a.addrs == vec![ROUTER]
            } else {
                a.rcode == dns::NXDOMAIN
            };
            anyhow::ensure!(ok, "{name}: {a:?}");
            Ok(())
        })
        .await
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.consul.get_json(path).await
    }

    /// Our KV records and our node's instances, for byte-level comparisons.
    pub async fn snapshot(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.consul.contents("ksr", true).await
    }

    /// The snapshot without ModifyIndexes (for comparing two different Consuls).
    pub async fn content(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.consul.contents("ksr", false).await
    }

    /// Waits until every published message is acknowledged, then snapshots.
    pub async fn settled(&self) -> anyhow::Result<BTreeMap<String, String>> {
        ksr_test_support::events::wait_consumer_settled(&self.js, "ksr-consul-ksr").await?;
        self.snapshot().await
    }

    /// Registers `body` on `node` with the master token (foreign entries in tests).
    pub async fn register(&self, body: serde_json::Value) -> anyhow::Result<()> {
        self.catalog("register", body).await
    }

    /// Deregisters by hand what `body` names (`Node` with a `ServiceID` or a `CheckID`).
    pub async fn deregister(&self, body: serde_json::Value) -> anyhow::Result<()> {
        self.catalog("deregister", body).await
    }

    async fn catalog(&self, endpoint: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let mut req = http_client()
            .put(format!("{}/v1/catalog/{endpoint}", self.consul.url()))
            .json(&body);
        if let Some(t) = self.consul.master_token() {
            req = req.header("X-Consul-Token", t);
        }
        let resp = req.send().await?;
        anyhow::ensure!(resp.status().is_success(), "{}", resp.text().await?);
        Ok(())
    }

    /// The instances of Consul service `service` on every node: (node, service ID).
    pub async fn instances(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let list = self
            .get_json(&format!("/v1/catalog/service/{service}"))
            .await?;
        let mut out: Vec<(String, String)> = list
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["Node"].as_str().unwrap_or_default().to_owned(),
                            s["ServiceID"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }
}

/// A router's health endpoint: answers every request with 200 until dropped.
pub struct HealthEndpoint {
    task: tokio::task::JoinHandle<()>,
}

impl HealthEndpoint {
    pub fn serve(listener: TcpListener) -> Self {
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"Status\":\"ok\"}")
                        .await;
                });
            }
        });
        Self { task }
    }

    pub async fn start(ip: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        Ok(Self::serve(
            TcpListener::bind(SocketAddr::from((ip, port))).await?,
        ))
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Both routers' endpoints on one port (the URL template has one).
pub async fn two_endpoints(
    a: Ipv4Addr,
    b: Ipv4Addr,
) -> anyhow::Result<(u16, HealthEndpoint, HealthEndpoint)> {
    for _ in 0..50 {
        let first = TcpListener::bind(SocketAddr::from((a, 0))).await?;
        let port = first.local_addr()?.port();
        if let Ok(second) = TcpListener::bind(SocketAddr::from((b, port))).await {
            return Ok((
                port,
                HealthEndpoint::serve(first),
                HealthEndpoint::serve(second),
            ));
        }
    }
    anyhow::bail!("no port free on both {a} and {b}")
}

/// A running process of the crate under test.
pub type Replica = ksr_test_support::Replica<ksr_publisher_consul::Error>;

impl Bench {
    /// A projector on this Consul (node and router ensured), through the library directly.
    pub async fn projector(
        &self,
    ) -> anyhow::Result<ksr_publisher_consul::projector::ConsulProjector> {
        use ksr_publisher_consul::config::ConsulArgs;
        use ksr_publisher_consul::layout::Layout;
        use ksr_publisher_consul::projector::{ConsulProjector, metrics};
        use ksr_publisher_consul::reconcile::ensure_node_and_router;
        use ksr_publisher_consul::store::ConsulClient;
        use ksr_publisher_consul::target::ConsulTarget;

        let args = ConsulArgs {
            address: self.consul.url(),
            token: None,
            token_file: None,
            ca: None,
            cert: None,
            key: None,
        };
        let target = ConsulTarget {
            owner: "ksr".into(),
            routers: ksr_publisher_consul::routers::routers("ksr", &[ROUTER.into()])?,
            router_port: 80,
        };
        let registry = ksr_runtime::metrics::MetricsRegistry::new();
        ksr_runtime::tls::install_crypto_provider();
        let p = ConsulProjector::new(
            ConsulClient::new(&args)?,
            Layout::new("ksr"),
            target,
            metrics(&registry),
        )
        .await?;
        ensure_node_and_router(&p, "test").await?;
        Ok(p)
    }
}

/// Fails unless `got` ([`Bench::content`]) is what the independent model says `history`
/// must project to: catalog entries (the router's included), fences and name records.
pub fn assert_as_modelled(history: &[(u64, Event)], got: &BTreeMap<String, String>) {
    use ksr_test_support::model::{Ages, Settings, services_from_stream};
    let settings = Settings {
        router_address: ROUTER.to_string(),
        ..Settings::default()
    };
    let diff = ksr_test_support::verify::consul(
        &settings,
        &["test"],
        &services_from_stream(history),
        &Ages::from_stream(history),
        got,
    );
    assert!(diff.is_empty(), "Consul differs from the model:\n{diff}");
}

pub fn assert_same(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    ksr_test_support::assert_same_entries("Consul", got, want);
}
