//! ksr-watcher: 10,000 Services listed from a (fake) apiserver → published to JetStream.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::{NatsServer, wait_until};
use serde_json::json;

use crate::procs::Proc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services in the cluster.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
    let api = FakeApiServer::start().await?;
    for i in 0..args.services {
        api.apply(
            Resource::Services,
            json!({"metadata": {"name": format!("svc{i}"), "namespace": format!("ns{}", i % 50), "labels": {"type": "ingress"}},
                   "spec": {"clusterIP": format!("10.96.{}.{}", i / 250 % 250, i % 250 + 1), "ports": [{"name": "http", "port": 80}]}}),
        );
    }
    println!(
        "watcher benchmark: {} labelled Services in a (fake) apiserver, list pages of 500",
        args.services
    );
    let watcher = Proc::spawn(
        "ksr-watcher",
        &[
            "--cluster".into(),
            "east".into(),
            "--nats-url".into(),
            nats.url(),
            "--kube-url".into(),
            api.url().to_owned(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ],
    )?;
    let t0 = Instant::now();
    wait_until("all Services published", Duration::from_secs(120), || {
        let mut s = stream.clone();
        async move {
            let info = s.info().await.ok()?;
            (info.state.messages >= args.services as u64).then_some(())
        }
    })
    .await?;
    let done = Instant::now();
    let listed = api.last_list_at().unwrap_or(t0);
    let after_list = done.saturating_duration_since(listed);
    let (rss, peak) = watcher.memory_mib();
    println!(
        "  start → {} events published: {:.2} s; list complete → all published: {:.2} s ({:.0} events/s)",
        args.services,
        (done - t0).as_secs_f64(),
        after_list.as_secs_f64(),
        args.services as f64 / after_list.as_secs_f64().max(1e-9)
    );
    println!("  watcher RSS: {rss:.1} MiB (peak {peak:.1} MiB)");
    Ok(())
}
