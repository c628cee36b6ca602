//! The ceiling of etcd's v2 API on this machine: how many key writes per second it accepts
//! from concurrent keep-alive clients, with nothing of ours in the path — the floor under
//! publisher-vulcand's v2 mode, which must write every vulcand key (1 + servers + 1 per
//! route) one request at a time (the v2 API has no multi-key writes).

use std::time::Instant;

use futures::StreamExt;
use ksr_test_support::{EtcdOptions, EtcdServer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys to write (5 per route of 3 addresses: 50,000 is 10,000 routes).
    #[arg(long, default_value_t = 50_000)]
    keys: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let etcd = EtcdServer::start_with(EtcdOptions {
        enable_v2: true,
        ..Default::default()
    })
    .await?;
    let http = reqwest::Client::new();
    let base = etcd.url();
    println!(
        "etcd v2 ceiling: {} PUTs, {} in flight",
        args.keys, args.concurrency
    );
    let started = Instant::now();
    let failures = futures::stream::iter(0..args.keys)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let url = format!("{base}/v2/keys/ceiling/r{}/k{}", i / 5, i % 5);
                let sent = http.put(url).form(&[("value", "x".repeat(120))]).send();
                matches!(sent.await, Ok(r) if r.status().is_success())
            }
        })
        .buffer_unordered(args.concurrency)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    let took = started.elapsed().as_secs_f64();
    println!(
        "  {} PUTs in {took:.2} s = {:.0} writes/s ({failures} failed)",
        args.keys,
        args.keys as f64 / took
    );
    Ok(())
}
