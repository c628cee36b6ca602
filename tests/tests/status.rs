//! The per-Service status bucket as a restarted publisher finds it: what its previous process
//! wrote is read back, so a restart writes only the standings that changed and deletes those
//! of Services that no longer claim a name (refusals stay).

use std::time::Duration;

use async_nats::jetstream;
use ksr_projection::status::{Standing, Status};
use ksr_proto::ServiceKey;
use ksr_runtime::metrics::MetricsRegistry;
use ksr_runtime::status_writer::{StatusTarget, StatusWriter};
use ksr_test_support::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn sample(registry: &MetricsRegistry, suffix: &str) -> f64 {
    registry
        .encode()
        .lines()
        .find(|l| {
            !l.starts_with('#')
                && l.split_whitespace()
                    .next()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until a writer has flushed at least `writes` writes and has nothing pending.
async fn flushed(registry: &MetricsRegistry, writes: f64) -> anyhow::Result<f64> {
    eventually(WAIT, || async {
        let (done, pending) = (
            sample(registry, "_status_writes_total"),
            sample(registry, "_status_pending"),
        );
        anyhow::ensure!(
            done >= writes && pending == 0.0,
            "{done} written, {pending} pending"
        );
        Ok(done)
    })
    .await
}

#[tokio::test]
async fn a_restarted_status_writer_writes_only_what_changed_and_deletes_what_no_longer_claims()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let to = StatusTarget {
        target: "vulcand",
        publisher: "ksr-vulcand-ksr".into(),
        bucket: "KSR_ROUTES_status".into(),
        replicas: 1,
    };
    let services: Vec<ServiceKey> = (0..300)
        .map(|i| ServiceKey::new("east", "shop", format!("s{i}")))
        .collect();
    let serving = |i: usize| {
        Some(Standing::Serving {
            name: format!("s{i}-shop.test"),
        })
    };

    let (first, stop) = (MetricsRegistry::new(), CancellationToken::new());
    let writer = StatusWriter::start(js.clone(), to.clone(), &first, stop.clone());
    // A refusal is not a claim: no full report lists it, and none deletes it.
    let refused = ServiceKey::new("east", "shop", "bad");
    let refusal = Standing::Rejected {
        reason: "path is not a valid regexp".into(),
    };
    writer.report([(refused.clone(), 1, Some(refusal.clone()))]);
    writer
        .report_all(|each| {
            services
                .iter()
                .enumerate()
                .for_each(|(i, k)| each((k.clone(), i as u64 + 1, serving(i))))
        })
        .await;
    assert_eq!(flushed(&first, 301.0).await?, 301.0);
    stop.cancel();
    let bucket = js.get_key_value("KSR_ROUTES_status").await?;
    let unchanged = "ksr-vulcand-ksr.east.shop.s5";
    let revision = bucket.entry(unchanged).await?.map(|e| e.revision);
    // Another publisher's status of a Service this one no longer serves stays.
    bucket
        .put("ksr-consul-ksr.east.shop.s1", "{}".into())
        .await?;

    // The restart: s0 now waits for another owner, s1 no longer claims a name, the rest
    // stand as they stood.
    let (second, stop) = (MetricsRegistry::new(), CancellationToken::new());
    let waiting = Standing::Waiting {
        name: "s0-shop.test".into(),
        owner: "other".into(),
        owner_since: 1,
    };
    let mut all: Vec<_> = services
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, k)| (k.clone(), 400 + i as u64, serving(i)))
        .collect();
    all.push((services[0].clone(), 401, Some(waiting.clone())));
    StatusWriter::start(js.clone(), to, &second, stop.clone())
        .report_all(|each| all.into_iter().for_each(each))
        .await;
    assert_eq!(
        flushed(&second, 2.0).await?,
        2.0,
        "only s0's write and s1's deletion"
    );
    stop.cancel();

    let s0 = bucket.get("ksr-vulcand-ksr.east.shop.s0").await?;
    let s0 = s0.map(|v| Status::decode(&v)).transpose()?;
    assert_eq!(s0.map(|s| s.standing), Some(waiting));
    assert!(bucket.get("ksr-vulcand-ksr.east.shop.s1").await?.is_none());
    assert!(bucket.get("ksr-consul-ksr.east.shop.s1").await?.is_some());
    let bad = bucket.get("ksr-vulcand-ksr.east.shop.bad").await?;
    let bad = bad.map(|v| Status::decode(&v)).transpose()?;
    assert_eq!(bad.map(|s| s.standing), Some(refusal));
    assert_eq!(bucket.entry(unchanged).await?.map(|e| e.revision), revision);
    Ok(())
}

#[tokio::test]
async fn a_full_report_and_the_changes_around_it_end_with_the_newest_standing_of_each_service()
-> anyhow::Result<()> {
    // A full report is merged with the changes queued before it by sequence, and changes
    // reported after it with both, the newest standing of each Service winning.
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let to = StatusTarget {
        target: "consul",
        publisher: "ksr-consul-ksr".into(),
        bucket: "KSR_ROUTES_status".into(),
        replicas: 1,
    };
    let key = |name: &str| ServiceKey::new("east", "shop", name);
    let serving = |name: &str| {
        Some(Standing::Serving {
            name: format!("{name}-shop.test"),
        })
    };
    let waiting = |name: &str| {
        Some(Standing::Waiting {
            name: format!("{name}-shop.test"),
            owner: "other".into(),
            owner_since: 1,
        })
    };
    let (registry, stop) = (MetricsRegistry::new(), CancellationToken::new());
    let writer = StatusWriter::start(js.clone(), to, &registry, stop.clone());
    assert!(
        writer.loaded(WAIT).await,
        "the writer read the (empty) bucket"
    );
    // Nothing below waits (the report finds the bucket read), so the writer task (on this
    // test's one thread) flushes only after all of it.
    writer.report([(key("older-before"), 1, waiting("older-before"))]);
    writer.report([(key("newer-before"), 9, waiting("newer-before"))]);
    writer
        .report_all(|each| {
            [
                (key("older-before"), 5, serving("older-before")),
                (key("newer-before"), 5, serving("newer-before")),
                (key("newer-after"), 5, serving("newer-after")),
                (key("older-after"), 5, serving("older-after")),
                (key("only-full"), 5, serving("only-full")),
            ]
            .into_iter()
            .for_each(each)
        })
        .await;
    writer.report([(key("newer-after"), 7, waiting("newer-after"))]);
    writer.report([(key("older-after"), 2, waiting("older-after"))]);
    writer.report([(key("only-changed"), 3, serving("only-changed"))]);
    assert_eq!(flushed(&registry, 6.0).await?, 6.0, "one write per Service");
    stop.cancel();

    let bucket = js.get_key_value("KSR_ROUTES_status").await?;
    for (name, want) in [
        ("older-before", serving("older-before")),
        ("newer-before", waiting("newer-before")),
        ("newer-after", waiting("newer-after")),
        ("older-after", serving("older-after")),
        ("only-full", serving("only-full")),
        ("only-changed", serving("only-changed")),
    ] {
        let got = bucket
            .get(format!("ksr-consul-ksr.east.shop.{name}"))
            .await?;
        let got = got.map(|v| Status::decode(&v)).transpose()?;
        assert_eq!(got.map(|s| s.standing), want, "{name}");
    }
    Ok(())
}
