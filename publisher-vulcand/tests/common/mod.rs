//! The vulcand publisher's test bench: real nats-server and etcd, the real publisher process
//! code (`app::run`) configured through its real command line.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;

use ksr_proto::Event;
use ksr_publisher_vulcand::{app, config::Config};
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::{EtcdServer, NatsServer, eventually};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Bench {
    pub nats: NatsServer,
    pub etcd: EtcdServer,
    pub js: jetstream::Context,
}

impl Bench {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ksr_test_support::EtcdOptions::default()).await
    }

    /// With etcd serving the v2 API too (for vulcand v0.8).
    pub async fn start_v2() -> anyhow::Result<Self> {
        Self::start_with(ksr_test_support::EtcdOptions {
            enable_v2: true,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(options: ksr_test_support::EtcdOptions) -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let etcd = EtcdServer::start_with(options).await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
        Ok(Self { nats, etcd, js })
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
        let (url, endpoint) = (self.nats.url(), self.etcd.endpoint());
        let mut args = vec!["--nats-url", &url, "--etcd-endpoints", &endpoint];
        args.extend(extra);
        spawn_publisher(&args).expect("test config parses")
    }

    pub async fn etcd(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.etcd.endpoint()], None).await?)
    }

    /// Every key and value under `prefix`.
    pub async fn snapshot(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        self.etcd.contents(prefix).await
    }

    /// The vulcand keys (not our state), once the consumer has no pending messages and the
    /// keys have stopped changing.
    pub async fn settled_vulcand(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.settled("vulcand/").await
    }

    /// Waits until every published message is acknowledged, then snapshots `prefix`.
    pub async fn settled(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        ksr_test_support::events::wait_consumer_settled(&self.js, "ksr-vulcand-ksr").await?;
        self.snapshot(prefix).await
    }
}

/// Starts a publisher replica with exactly `args` (and an admin port of its own).
pub fn spawn_publisher(args: &[&str]) -> anyhow::Result<Replica> {
    let admin_port = ksr_test_support::free_ports(1)?[0];
    let admin = format!("127.0.0.1:{admin_port}");
    let argv = std::iter::once("ksr-publisher-vulcand")
        .chain(args.iter().copied())
        .chain(["--admin-addr", admin.as_str()]);
    let config = Config::try_parse_from(argv)?;
    Ok(Replica::spawn(admin_port, |stop| app::run(config, stop)))
}

/// A running process of the crate under test.
pub type Replica = ksr_test_support::Replica<ksr_publisher_vulcand::Error>;

/// Waits until `key` under etcd has `value` (or is absent for `None`).
pub async fn wait_key(bench: &Bench, key: &str, value: Option<&str>) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        let snap = bench.snapshot(key).await?;
        let got = snap.get(key).map(String::as_str);
        anyhow::ensure!(got == value, "{key} is {got:?}, want {value:?}");
        Ok(())
    })
    .await
}

pub fn route_id(host: &str, path: &str) -> String {
    ksr_publisher_vulcand::layout::Layout::new("vulcand", "ksr").route_id(host, path)
}

/// A deterministic history as a watcher would publish it (see test-support).
pub async fn publish_history(
    bench: &Bench,
    n: usize,
    services: usize,
) -> anyhow::Result<Vec<(u64, Event)>> {
    ksr_test_support::events::publish_history(&bench.js, n, services).await
}

/// Fails unless `got` (every etcd key) is what the independent model says `history` must
/// project to: vulcand keys, fences and host records, both directions, value by value.
pub fn assert_as_modelled(history: &[(u64, Event)], got: &BTreeMap<String, String>) {
    use ksr_test_support::model::{Ages, Settings, services_from_stream};
    let diff = ksr_test_support::verify::vulcand(
        &Settings::default(),
        &services_from_stream(history),
        &Ages::from_stream(history),
        got,
    );
    assert!(diff.is_empty(), "etcd differs from the model:\n{diff}");
}
