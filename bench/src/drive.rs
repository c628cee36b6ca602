//! Driving a publisher under test: load the stream, wait for the consumer to catch up.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use ksr_proto::Event;
use ksr_test_support::wait_until;

/// Publishes `events` with up to 512 acks in flight; returns how long it took.
pub async fn publish_all(
    js: &jetstream::Context,
    events: impl Iterator<Item = Event>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut acks = futures::stream::iter(events)
        .map(|e| {
            let js = js.clone();
            async move { ksr_test_support::events::publish(&js, &e).await }
        })
        .buffer_unordered(512);
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(started.elapsed())
}

/// Waits until durable consumer `durable` has delivered at least `count` messages and has
/// nothing pending or unacknowledged.
pub async fn caught_up(js: &jetstream::Context, durable: &str, count: u64) -> anyhow::Result<()> {
    wait_until("the consumer to catch up", Duration::from_secs(300), || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("KSR_ROUTES").await.ok()?;
            let mut c: jetstream::consumer::PullConsumer =
                stream.get_consumer(durable).await.ok()?;
            let info = c.info().await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= count)
                .then_some(())
        }
    })
    .await
}

/// Waits (up to `timeout`) until the publisher whose admin port is `admin_port` has finished a
/// reconciliation (`ksr_<name>_reconcile_runs_total` above 0); returns how it went as the
/// publisher's metrics say: "<seconds> s (<seconds per phase>), <repairs> repairs".
pub async fn reconciled(admin_port: u16, name: &str, timeout: Duration) -> anyhow::Result<String> {
    let metric = |body: &str, name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let body = wait_until("the start-up reconciliation", timeout, || async {
        let (_, body) = ksr_test_support::http::get(admin_port, "/metrics").await?;
        (metric(&body, &format!("ksr_{name}_reconcile_runs_total"))? > 0.0).then_some(body)
    })
    .await?;
    let phases: Vec<String> = ["records", "stream", "target", "tombstones"]
        .iter()
        .map(|p| {
            let key = format!("ksr_{name}_reconcile_phase_seconds{{phase=\"{p}\"}}");
            format!("{p} {:.2}", metric(&body, &key).unwrap_or(0.0))
        })
        .collect();
    let get = |m: &str| metric(&body, &format!("ksr_{name}_{m}")).unwrap_or(0.0);
    Ok(format!(
        "{:.2} s ({}), {} repairs",
        get("reconcile_duration_seconds"),
        phases.join(", "),
        get("reconcile_repairs_total")
    ))
}

/// Kills `publisher` (as a crash would) and starts binary `binary` again with `args`: the
/// restart of a converged publisher — its records loaded, its statuses read back, a full
/// reconciliation — timed, with the new process's RSS after it and at its peak. Returns the
/// new process.
pub async fn restart(
    publisher: crate::procs::Proc,
    binary: &str,
    args: &[String],
    admin_port: u16,
    name: &str,
) -> anyhow::Result<crate::procs::Proc> {
    drop(publisher);
    let started = Instant::now();
    let publisher = crate::procs::Proc::spawn(binary, args)?;
    let reconcile = reconciled(admin_port, name, Duration::from_secs(300)).await?;
    let took = started.elapsed();
    let (rss, peak) = publisher.memory_mib();
    println!(
        "  after a restart: reconciliation {reconcile}; restart → reconciled {:.2} s; publisher RSS after it {rss:.1} MiB (peak {peak:.1} MiB)",
        took.as_secs_f64()
    );
    Ok(publisher)
}
