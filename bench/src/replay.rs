//! ksrctl's replay: `ksrctl state --at` over a stream of 1,000,000 events (two clusters,
//! Services added, updated many times and sometimes removed), timed end to end as an operator
//! runs it (release binary, output discarded), plus the bare in-process read-and-decode rate.

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ksr_proto::{Change, Event};
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_runtime::replay::Replay;
use ksr_test_support::NatsServer;
use ksr_test_support::events::{event, route};

use crate::procs::Proc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the stream.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Services they are spread over.
    #[arg(long, default_value_t = 10_000)]
    services: u64,
}

/// The `i`th event: Service `i % services`, alternately in east and west; every 50th change
/// of a Service removes it, the next one adds it again.
fn nth(i: u64, services: u64) -> Event {
    let s = i % services;
    let round = i / services;
    let cluster = if s.is_multiple_of(2) { "east" } else { "west" };
    let ns = format!("ns{}", s % 40);
    let name = format!("svc{s}");
    let change = if round % 50 == 49 {
        Change::Removed
    } else {
        let ips = [1, 2, 3].map(|k| format!("10.{}.{}.{}", s / 250 % 250, s % 250, k + round % 7));
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let r = route(&format!("{name}-{ns}"), "test", "/.*", &refs);
        if round.is_multiple_of(50) {
            Change::Added(r)
        } else {
            Change::Updated(r)
        }
    };
    event(cluster, &ns, &name, change)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
    println!(
        "ksrctl replay benchmark: {} events over {} Services in 2 clusters",
        args.events, args.services
    );
    let took =
        crate::drive::publish_all(&js, (0..args.events).map(|i| nth(i, args.services))).await?;
    let bytes = js.get_stream("KSR_ROUTES").await?.info().await?.state.bytes;
    println!(
        "  published in {:.1} s ({:.0} events/s), stream {:.1} MiB",
        took.as_secs_f64(),
        args.events as f64 / took.as_secs_f64(),
        bytes as f64 / 1048576.0
    );

    // In process: the ordered consumer and the codec alone.
    let started = Instant::now();
    let mut replay = Replay::open(
        &stream,
        &ksr_proto::subject::all_filter(),
        jetstream::consumer::DeliverPolicy::All,
    )
    .await?;
    let (mut decoded, mut failed) = (0u64, 0u64);
    while let Some(r) = replay.next().await? {
        match r.event {
            Ok(_) => decoded += 1,
            Err(_) => failed += 1,
        }
    }
    let t = started.elapsed();
    println!(
        "  in-process read+decode: {decoded} events ({failed} unreadable) in {:.2} s = {:.0} events/s",
        t.as_secs_f64(),
        decoded as f64 / t.as_secs_f64()
    );

    // As an operator runs it: the release binary, output to /dev/null.
    for (label, upto) in [
        ("state --at <last seq>", args.events),
        ("state --at <middle seq>", args.events / 2),
    ] {
        let at = format!("#{upto}");
        let started = Instant::now();
        let mut p = Proc::spawn_with(
            "ksrctl",
            &[
                "state".into(),
                "--nats-url".into(),
                nats.url(),
                "--at".into(),
                at,
                "--output".into(),
                "json".into(),
            ],
            Stdio::null(),
        )?;
        let mut peak = 0.0f64;
        let status = loop {
            if let Some(status) = p.child.try_wait()? {
                break status;
            }
            peak = peak.max(p.memory_mib().1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let t = started.elapsed();
        anyhow::ensure!(status.success(), "ksrctl {label} failed: {status}");
        println!(
            "  ksrctl {label}: {:.2} s for {upto} events = {:.0} events/s (process start included), peak RSS {peak:.1} MiB",
            t.as_secs_f64(),
            upto as f64 / t.as_secs_f64()
        );
    }
    Ok(())
}
