//! The vulcand publisher's test bench: real nats-server and etcd, the real publisher process
//! code (`app::run`) configured through its real command line.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
        let nats = NatsServer::start().await?;
        let etcd = EtcdServer::start().await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
        Ok(Self { nats, etcd, js })
    }

    pub async fn publish(&self, event: &Event) -> anyhow::Result<u64> {
        ksr_test_support::events::publish(&self.js, event).await
    }

    /// Starts a publisher replica; extra command-line flags may be given.
    pub fn publisher(&self, extra: &[&str]) -> Replica {
        let admin_port = ksr_test_support::free_ports(1).expect("a free port")[0];
        let mut args = vec![
            "ksr-publisher-vulcand".to_owned(),
            "--nats-url".into(),
            self.nats.url(),
            "--etcd-endpoints".into(),
            self.etcd.endpoint(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from(args).expect("test config parses");
        let stop = CancellationToken::new();
        let task = tokio::spawn(app::run(config, stop.clone()));
        Replica {
            admin_port,
            stop,
            task: Some(task),
        }
    }

    pub async fn etcd(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.etcd.endpoint()], None).await?)
    }

    /// Every key and value under `prefix`.
    pub async fn snapshot(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let mut client = self.etcd().await?;
        let resp = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// The vulcand keys (not our state), once the consumer has no pending messages and the
    /// keys have stopped changing.
    pub async fn settled_vulcand(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.settled("vulcand/").await
    }

    /// Waits until every published message is acknowledged, then snapshots `prefix`.
    pub async fn settled(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let js = self.js.clone();
        eventually(WAIT, || {
            let js = js.clone();
            async move {
                let stream = js.get_stream("KSR_ROUTES").await?;
                let mut consumer: jetstream::consumer::PullConsumer = stream
                    .get_consumer("ksr-vulcand-ksr")
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                let info = consumer.info().await?;
                anyhow::ensure!(
                    info.num_pending == 0 && info.num_ack_pending == 0,
                    "consumer not caught up: {} pending, {} unacknowledged",
                    info.num_pending,
                    info.num_ack_pending
                );
                Ok(())
            }
        })
        .await?;
        self.snapshot(prefix).await
    }
}

/// A running publisher replica; stopped on drop.
pub struct Replica {
    pub admin_port: u16,
    pub stop: CancellationToken,
    pub task: Option<JoinHandle<Result<(), ksr_publisher_vulcand::Error>>>,
}

impl Replica {
    /// Stops the replica and waits for it to finish (it drains its batch).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

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

/// A deterministic history as a watcher would publish it: `n` events over `services`
/// Services in two clusters, with fan-in (same namespace/name in both clusters), conflicts
/// (a few shared host labels), updates, moves and removals. `host_since`/`route_since` are
/// stamped from each subject's previous event, as the watcher does; returns (seq, event).
pub async fn publish_history(
    bench: &Bench,
    n: usize,
    services: usize,
) -> anyhow::Result<Vec<(u64, Event)>> {
    use ksr_proto::{Change, RouteState};
    use std::collections::HashMap;

    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut last: HashMap<ksr_proto::ServiceKey, (u64, Option<RouteState>)> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = next(services as u64);
        let cluster = if next(2) == 0 { "east" } else { "west" };
        let namespace = format!("ns{}", s % 7);
        let name = format!("svc{s}");
        let key = ksr_proto::ServiceKey::new(cluster, &namespace, &name);
        let prev = last.get(&key).cloned();
        let change = if next(6) == 0 {
            Change::Removed
        } else {
            // Mostly the Service's own label; sometimes a label shared with others (conflict).
            let label = if next(10) == 0 {
                format!("shared{}-x", next(3))
            } else {
                format!("{name}-{namespace}")
            };
            let path = if next(4) == 0 { "/api/.*" } else { "/.*" };
            let ips: Vec<String> = (0..1 + next(3))
                .map(|_| format!("10.{}.{}.{}", s % 200, next(4), 1 + next(250)))
                .collect();
            let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            let mut r = ksr_test_support::events::route(&label, "test", path, &ip_refs);
            let prev_route = prev
                .as_ref()
                .and_then(|(seq, r)| r.as_ref().map(|r| (r, *seq)));
            r.continue_claims(prev_route);
            if prev_route.is_some() {
                Change::Updated(r)
            } else {
                Change::Added(r)
            }
        };
        if matches!(change, Change::Removed) && prev.as_ref().is_none_or(|(_, r)| r.is_none()) {
            continue;
        }
        let e = ksr_test_support::events::event(cluster, &namespace, &name, change);
        let seq = bench.publish(&e).await?;
        last.insert(key, (seq, e.route().cloned()));
        out.push((seq, e));
    }
    Ok(out)
}

/// What etcd must hold after `history`: the newest event per Service applied to an empty etcd
/// in one pass (a rebuild), through the library directly.
pub async fn rebuilt_from_latest(
    history: &[(u64, Event)],
) -> anyhow::Result<BTreeMap<String, String>> {
    use ksr_publisher_vulcand::{layout::Layout, publisher::*};
    use ksr_runtime::consumer::{Delivery, coalesce};

    let etcd = EtcdServer::start().await?;
    let client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let registry = ksr_runtime::metrics::MetricsRegistry::new();
    let p = VulcandProjector::new(
        client.kv_client(),
        Layout::new("vulcand", "ksr"),
        128,
        VulcandMetrics::new(&registry),
    )
    .await?;
    let latest: Vec<Delivery> = coalesce(history.to_vec());
    for chunk in latest.chunks(500) {
        p.apply_batch(chunk).await?;
    }
    let mut client = client;
    let resp = client
        .get("", Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}
