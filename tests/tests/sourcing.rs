//! Multi-cluster by stream sourcing: each cluster's watcher writes its own stream, one
//! aggregate stream sources them, the publishers consume the aggregate.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use ksr_test_support::{EtcdServer, NatsServer, Proc, eventually, workspace_binary};

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    type: ingress\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
    )
}

#[tokio::test]
async fn an_aggregate_stream_sources_the_clusters_and_keeps_their_order_and_provenance()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let etcd = EtcdServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let dir = tempfile::tempdir()?;
    let mut procs = Vec::new();
    for (cluster, ip) in [("east", "10.96.0.1"), ("west", "10.97.0.1")] {
        let manifests = dir.path().join(cluster);
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("web.yaml"), service("web", ip))?;
        std::fs::write(
            manifests.join("only.yaml"),
            service(&format!("only-{cluster}"), ip),
        )?;
        let stream_name = format!("KSR_{}", cluster.to_uppercase());
        let mut cmd = Command::new(workspace_binary("ksr-watcher")?);
        cmd.args([
            "--cluster",
            cluster,
            "--nats-url",
            &nats.url(),
            "--stream",
            &stream_name,
            "--cluster-stream",
            "--source",
            "files",
            "--manifests",
            manifests.to_str().unwrap_or_default(),
            "--admin-addr",
            "127.0.0.1:0",
        ]);
        procs.push(Proc::spawn(
            &format!("watcher-{cluster}"),
            cmd,
            &dir.path().join(format!("{cluster}.log")),
        )?);
    }
    // Wait for both cluster streams (the watchers create them), then the aggregate.
    eventually(Duration::from_secs(30), || async {
        for s in ["KSR_EAST", "KSR_WEST"] {
            anyhow::ensure!(
                js.get_stream(s).await?.info().await?.state.messages == 2,
                "{s} not filled yet"
            );
        }
        Ok(())
    })
    .await?;
    js.create_stream(stream::Config {
        name: "KSR_ROUTES".into(),
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        sources: Some(
            ["KSR_EAST", "KSR_WEST"]
                .map(|name| stream::Source {
                    name: name.into(),
                    ..Default::default()
                })
                .to_vec(),
        ),
        ..Default::default()
    })
    .await?;
    let mut cmd = Command::new(workspace_binary("ksr-publisher-vulcand")?);
    cmd.args([
        "--nats-url",
        &nats.url(),
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--stream",
        "KSR_ROUTES",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    procs.push(Proc::spawn(
        "vulcand",
        cmd,
        &dir.path().join("vulcand.log"),
    )?);

    // The publisher sees both clusters: web fans in, each only-* has its own route.
    let client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    eventually(Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let all = client
                .get(
                    "vulcand/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await?;
            let frontends = all
                .kvs()
                .iter()
                .filter(|kv| kv.key_str().is_ok_and(|k| k.ends_with("/frontend")))
                .count();
            let servers = all
                .kvs()
                .iter()
                .filter(|kv| kv.key_str().is_ok_and(|k| k.contains("/servers/")))
                .count();
            anyhow::ensure!(
                (frontends, servers) == (3, 4),
                "{frontends} frontends, {servers} servers"
            );
            Ok(())
        }
    })
    .await?;

    // Provenance and per-cluster order: every aggregated message names its source stream, and
    // each cluster's messages keep their relative order.
    let aggregate = js.get_stream("KSR_ROUTES").await?;
    let all = ksr_runtime::replay::all_events(&aggregate, ">").await?;
    assert_eq!(all.len(), 4);
    for cluster in ["east", "west"] {
        let order: Vec<String> = all
            .iter()
            .filter(|l| l.subject.starts_with(&format!("ksr.routes.{cluster}.")))
            .map(|l| l.subject.clone())
            .collect();
        let source = js
            .get_stream(format!("KSR_{}", cluster.to_uppercase()))
            .await?;
        let original: Vec<String> = ksr_runtime::replay::all_events(&source, ">")
            .await?
            .into_iter()
            .map(|l| l.subject)
            .collect();
        assert_eq!(
            order, original,
            "{cluster} keeps its order in the aggregate"
        );
    }
    let first = aggregate.get_raw_message(all[0].seq).await?;
    let provenance = first
        .headers
        .get("Nats-Stream-Source")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(
        provenance.contains("KSR_EAST") || provenance.contains("KSR_WEST"),
        "provenance header: {provenance:?}"
    );
    Ok(())
}
