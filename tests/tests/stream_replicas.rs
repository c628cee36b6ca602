//! The route stream on a three-node NATS cluster: made with the replicas asked for by watchers
//! racing to create it, raised (never lowered) by `ksrctl stream-upgrade` when it exists with
//! fewer, and one incarnation whichever server answers — the fence of every record depends on
//! it.

use async_nats::jetstream::{self, stream};
use ksr_runtime::nats::{
    INCARNATION_KEY, StreamSettings, StreamUpgrade, ensure_stream, incarnation, upgrade_stream,
};
use ksr_test_support::NatsCluster;

fn settings(replicas: usize) -> StreamSettings {
    let mut s = StreamSettings::routes("KSR_ROUTES");
    s.replicas = replicas;
    s
}

/// A JetStream context on one node only.
async fn on(cluster: &NatsCluster, node: usize) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(
        async_nats::connect(cluster.nodes[node].url()).await?,
    ))
}

/// The incarnation each node reports for the stream.
async fn incarnations(cluster: &NatsCluster) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for node in 0..cluster.nodes.len() {
        let js = on(cluster, node).await?;
        let s = ensure_stream(&js, &settings(3), false).await?;
        out.push(incarnation(&s));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_racing_to_create_the_stream_make_one_r3_stream_with_one_incarnation()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let (a, b, c) = (
        on(&cluster, 0).await?,
        on(&cluster, 1).await?,
        on(&cluster, 2).await?,
    );
    // Each retries as a watcher does: on a cluster, JetStream answers only one of several
    // concurrent creates with different configurations (each stamps its own incarnation) and lets the others time out (10 s; measured
    // here, nats-server 2.10.27) — a one-off delay at a fresh installation, never a second
    // stream or incarnation.
    let make = |js: jetstream::Context| async move {
        let r3 = settings(3);
        ksr_test_support::eventually(std::time::Duration::from_secs(60), || async {
            Ok(ensure_stream(&js, &r3, true).await?)
        })
        .await
    };
    let (sa, sb, sc) = tokio::join!(make(a), make(b), make(c));
    let (sa, sb, sc) = (sa?, sb?, sc?);
    assert_eq!(sa.cached_info().config.num_replicas, 3);
    assert_eq!(incarnation(&sa), incarnation(&sb));
    assert_eq!(incarnation(&sb), incarnation(&sc));
    let seen = incarnations(&cluster).await?;
    assert!(seen.iter().all(|i| *i == seen[0]), "{seen:?}");
    // Through the stream leader's loss too.
    let mut cluster = cluster;
    let leader = cluster.stream_leader("KSR_ROUTES").await?;
    cluster.nodes[leader].stop();
    let survivor = (leader + 1) % 3;
    let js = on(&cluster, survivor).await?;
    let after = ksr_test_support::eventually(std::time::Duration::from_secs(30), || async {
        Ok(incarnation(&ensure_stream(&js, &settings(3), false).await?))
    })
    .await?;
    assert_eq!(after, seen[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_stream_made_by_hand_is_raised_to_r3_and_stamped_once_by_an_operator()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let js = on(&cluster, 0).await?;
    // As an operator (or an older release) made it: one replica, no incarnation stamp.
    js.create_stream(stream::Config {
        name: "KSR_ROUTES".into(),
        subjects: vec![ksr_proto::subject::all_filter()],
        duplicate_window: std::time::Duration::from_secs(120),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let before = {
        let mut s = js.get_stream("KSR_ROUTES").await?;
        u64::try_from(s.info().await?.created.unix_timestamp_nanos())?
    };
    // A publisher (never creates) before the watcher: the server's creation time.
    let read = ensure_stream(&js, &settings(3), false).await?;
    assert_eq!(read.cached_info().config.num_replicas, 1);
    assert_eq!(incarnation(&read), before);
    // A watcher may only create it: it leaves it as it is (and says so in its log).
    let watched = ensure_stream(&js, &settings(3), true).await?;
    assert_eq!(watched.cached_info().config.num_replicas, 1);
    // `ksrctl stream-upgrade` raises it and stamps the creation time it was made with.
    let out = std::process::Command::new(ksr_test_support::workspace_binary("ksrctl")?)
        .args(["stream-upgrade", "--stream-replicas", "3", "--nats-url"])
        .arg(cluster.urls())
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        said.trim(),
        format!("stream KSR_ROUTES: replicas 1 → 3; incarnation stamped {before}")
    );
    let raised = ensure_stream(&js, &settings(3), false).await?;
    assert_eq!(raised.cached_info().config.num_replicas, 3);
    assert_eq!(
        raised.cached_info().config.metadata.get(INCARNATION_KEY),
        Some(&before.to_string())
    );
    let seen = ksr_test_support::eventually(std::time::Duration::from_secs(30), || async {
        let seen = incarnations(&cluster).await?;
        anyhow::ensure!(seen.iter().all(|i| *i == before), "{seen:?}");
        Ok(seen)
    })
    .await?;
    assert_eq!(seen.len(), 3);
    // Asking for fewer replicas never lowers them; a stamped stream keeps its stamp.
    let again = upgrade_stream(&js, "KSR_ROUTES", 1).await?;
    assert_eq!(
        again,
        StreamUpgrade {
            replicas: (3, 3),
            stamped: None
        }
    );
    let kept = ensure_stream(&js, &settings(1), true).await?;
    assert_eq!(kept.cached_info().config.num_replicas, 3);
    assert_eq!(incarnation(&kept), before);
    Ok(())
}

#[tokio::test]
async fn a_single_server_refuses_replicas_it_cannot_keep() -> anyhow::Result<()> {
    let nats = ksr_test_support::NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    ensure_stream(&js, &settings(1), true).await?;
    let refused = upgrade_stream(&js, "KSR_ROUTES", 3).await.unwrap_err();
    assert!(refused.to_string().contains("not clustered"), "{refused}");
    let kept = ensure_stream(&js, &settings(1), false).await?;
    assert_eq!(kept.cached_info().config.num_replicas, 1);
    Ok(())
}
