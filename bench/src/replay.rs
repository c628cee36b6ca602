//! ksrctl's replay: `ksrctl state --at` over a stream of 1,000,000 events (two clusters,
//! Services added, updated many times and sometimes removed), timed end to end as an operator
//! runs it (release binary, output discarded): from the stream's first event, then from
//! checkpoints (`ksrctl checkpoint`, also timed); plus the bare in-process read-and-decode rate.

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

    // As an operator runs it: the release binary, output to /dev/null. First from the
    // stream's first event, then after `ksrctl checkpoint` from the nearest checkpoint.
    let url = nats.url();
    let at_last = format!("#{}", args.events);
    let at_odd = format!("#{}", args.events * 654_321 / 1_000_000);
    let ksrctl = |label: &str, args: Vec<String>, covered: u64| {
        let label = label.to_owned();
        async move {
            let (t, peak) = timed_ksrctl(&args).await?;
            println!(
                "  ksrctl {label}: {:.2} s{} (process start included), peak RSS {peak:.1} MiB",
                t.as_secs_f64(),
                if covered > 0 {
                    format!(
                        " for {covered} events = {:.0} events/s",
                        covered as f64 / t.as_secs_f64()
                    )
                } else {
                    String::new()
                }
            );
            anyhow::Ok(())
        }
    };
    let state = |at: &str, extra: &[&str]| {
        let mut a: Vec<String> = ["state", "--nats-url", &url, "--at", at, "--output", "json"]
            .map(String::from)
            .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    ksrctl(
        "state --at <last> --no-checkpoints",
        state(&at_last, &["--no-checkpoints"]),
        args.events,
    )
    .await?;
    ksrctl(
        "state --at <middle> --no-checkpoints",
        state(&format!("#{}", args.events / 2), &["--no-checkpoints"]),
        args.events / 2,
    )
    .await?;
    ksrctl(
        "checkpoint (every 100,000 events)",
        ["checkpoint", "--nats-url", &url]
            .map(String::from)
            .to_vec(),
        args.events,
    )
    .await?;
    let bucket = js
        .get_stream("OBJ_KSR_CHECKPOINTS")
        .await?
        .info()
        .await?
        .state
        .clone();
    println!(
        "  checkpoint bucket: {:.1} MiB stored in {} messages (chunks and metadata)",
        bucket.bytes as f64 / 1048576.0,
        bucket.messages
    );
    // Each answer: the nearest checkpoint, then the events after it (at most --every).
    for (label, upto) in [
        ("<last>", args.events),
        ("<last - 1>", args.events - 1),
        ("<0.654321 of the way>", at_odd[1..].parse::<u64>()?),
    ] {
        let replayed = upto % 100_000;
        ksrctl(
            &format!(
                "state --at {label} #{upto} from checkpoints (checkpoint #{} + {replayed} events replayed)",
                upto - replayed
            ),
            state(&format!("#{upto}"), &[]),
            upto,
        )
        .await?;
    }
    Ok(())
}

/// Runs the release `ksrctl` with `args` (output discarded): wall time and peak RSS.
async fn timed_ksrctl(args: &[String]) -> anyhow::Result<(Duration, f64)> {
    let started = Instant::now();
    let mut p = Proc::spawn_with("ksrctl", args, Stdio::null())?;
    let mut peak = 0.0f64;
    let status = loop {
        if let Some(status) = p.child.try_wait()? {
            break status;
        }
        peak = peak.max(p.memory_mib().1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t = started.elapsed();
    anyhow::ensure!(status.success(), "ksrctl {args:?} failed: {status}");
    Ok((t, peak))
}
