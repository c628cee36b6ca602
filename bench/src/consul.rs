//! publisher-consul: 10,000 Services from an empty Consul, then churn latency from publish to
//! the name answering through Consul DNS, then a restart (records loaded, a full
//! reconciliation) with its memory.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::events::added;
use ksr_test_support::{ConsulServer, NatsServer, dns};

use crate::procs::Proc;
use crate::report::percentiles;

/// The routers' addresses: 127.0.0.9, 127.0.0.10 …
fn routers(n: u8) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::new(127, 0, 0, 9 + i)).collect()
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services in the initial projection.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Churn rate, new names per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Churn duration in seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Edge routers every name resolves to (one catalog entry per name and router).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    routers: u8,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let consul = ConsulServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
    let routers = routers(args.routers);
    let router_list = routers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "publisher-consul benchmark: {} Services × {} routers, then {} new names/s for {} s (Consul 1.8.7 with a data dir)",
        args.services, args.routers, args.rate, args.seconds
    );

    let events = (0..args.services).map(|i| {
        added(
            "east",
            &format!("ns{}", i % 50),
            &format!("svc{i}"),
            &["10.0.0.1"],
        )
    });
    let took = crate::drive::publish_all(&js, events).await?;
    println!(
        "  published {} events in {:.2} s",
        args.services,
        took.as_secs_f64()
    );

    let admin_port = ksr_test_support::free_ports(1)?[0];
    let publisher_args: Vec<String> = vec![
        "--nats-url".into(),
        nats.url(),
        "--consul-address".into(),
        consul.url(),
        "--router-address".into(),
        router_list,
        "--admin-addr".into(),
        format!("127.0.0.1:{admin_port}"),
        "--reconcile-interval".into(),
        "0".into(),
    ];
    let publisher = Proc::spawn("ksr-publisher-consul", &publisher_args)?;
    let t0 = Instant::now();
    crate::drive::caught_up(&js, "ksr-consul-ksr", args.services as u64).await?;
    let initial = t0.elapsed();
    let (_, body) = ksr_test_support::http::get(consul.http_port(), "/v1/catalog/service/test")
        .await
        .unwrap_or_default();
    let instances = body.matches("\"ServiceID\"").count();
    let (rss, peak) = publisher.memory_mib();
    println!(
        "  initial projection: {} Services ({instances} catalog instances) in {:.2} s from process start = {:.0} Services/s",
        args.services,
        initial.as_secs_f64(),
        args.services as f64 / initial.as_secs_f64()
    );
    println!("  publisher RSS after initial projection: {rss:.1} MiB (peak {peak:.1} MiB)");
    // The start-up reconciliation (a full one: every record and the router's whole node read).
    let reconcile =
        crate::drive::reconciled(admin_port, "consul", Duration::from_secs(300)).await?;
    let (rss, peak) = publisher.memory_mib();
    println!(
        "  start-up reconciliation of {} Services took {reconcile}; publisher RSS after it {rss:.1} MiB (peak {peak:.1} MiB)",
        args.services
    );
    let sample = dns::query_a(consul.dns_port(), "svc7-ns7.test.service.consul").await?;
    let mut got = sample.addrs.clone();
    got.sort();
    anyhow::ensure!(
        got == routers,
        "a projected name does not resolve to every router: {sample:?}"
    );
    let t = Instant::now();
    for i in 0..200 {
        let name = format!("svc{i}-ns{}.test.service.consul", i % 50);
        dns::query_a(consul.dns_port(), &name).await?;
    }
    println!(
        "  Consul DNS with {instances} instances of one service: {:.2} ms per query (sequential)",
        t.elapsed().as_secs_f64() * 1000.0 / 200.0
    );

    // Churn: each change is a new Service. Latency = publish → first DNS answer with the
    // router, sampled on every 10th name: each Consul DNS query of a tag scans every instance
    // of the service (~2 ms at 10,000), so probing every name would load Consul more than the
    // publisher does and measure the probe queue instead.
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let dns_port = consul.dns_port();
    let routers = std::sync::Arc::new(routers);
    let churn_start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tick.tick().await;
        let e = added("east", "churn", &format!("new{n}"), &["10.0.0.2"]);
        let js = js.clone();
        let routers = routers.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            ksr_test_support::events::publish(&js, &e).await.ok()?;
            if n % 10 != 0 {
                return None;
            }
            let name = format!("new{n}-churn.test.service.consul");
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(mut a) = dns::query_a(dns_port, &name).await
                    && {
                        a.addrs.sort();
                        a.addrs == *routers
                    }
                {
                    return Some(Ok(t.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Some(Err(()))
        }));
    }
    let sent_for = churn_start.elapsed();
    let (mut samples, mut missing) = (Vec::new(), 0);
    for t in tasks {
        match t.await.ok().flatten() {
            Some(Ok(d)) => samples.push(d),
            Some(Err(())) => missing += 1,
            None => {}
        }
    }
    println!(
        "  churn: {total} new names in {:.1} s ({:.0}/s); publish-to-DNS-answer (every 10th name) {}; {missing} never answered",
        sent_for.as_secs_f64(),
        total as f64 / sent_for.as_secs_f64(),
        percentiles(&mut samples)
    );
    let (rss, peak) = publisher.memory_mib();
    println!("  publisher RSS after churn: {rss:.1} MiB (peak {peak:.1} MiB)");
    crate::drive::restart(
        publisher,
        "ksr-publisher-consul",
        &publisher_args,
        admin_port,
        "consul",
    )
    .await?;
    Ok(())
}
