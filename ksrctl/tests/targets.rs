//! `verify` and `rebuild` against real etcd and Consul, next to the real publishers: drift
//! made by hand is found, a rebuild into an empty target equals what the publishers wrote.

mod common;

use common::{Stream, consul_publisher, ksrctl, register, vulcand_publisher};
use ksr_test_support::events::{publish_history, wait_consumer_settled};
use ksr_test_support::{ConsulServer, EtcdServer, assert_same_entries};

#[tokio::test]
async fn verify_finds_a_hand_deleted_etcd_key_and_rebuild_restores_what_the_publisher_wrote()
-> anyhow::Result<()> {
    let s = Stream::start().await?;
    let (live, empty) = (EtcdServer::start().await?, EtcdServer::start().await?);
    let _publisher = vulcand_publisher(&s.nats, &live);
    publish_history(&s.js, 600, 60).await?;
    wait_consumer_settled(&s.js, "ksr-vulcand-ksr").await?;
    let published = live.contents("").await?;
    let url = s.nats.url();
    let verify = |etcd: String| {
        let url = url.clone();
        async move {
            ksrctl(&[
                "verify",
                "vulcand",
                "--nats-url",
                &url,
                "--etcd-endpoints",
                &etcd,
                "-o",
                "table",
            ])
            .await
        }
    };

    let clean = verify(live.endpoint()).await?;
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(
        clean.stdout.contains("0 missing, 0 extra, 0 different"),
        "{clean:?}"
    );

    // Rebuilding into an empty etcd gives exactly what the publisher wrote, key by key.
    let rebuilt = ksrctl(&[
        "rebuild",
        "vulcand",
        "--nats-url",
        &url,
        "--etcd-endpoints",
        &empty.endpoint(),
    ])
    .await?;
    assert_eq!(rebuilt.code, 0, "{rebuilt:?}");
    assert_same_entries("etcd", &empty.contents("").await?, &published);

    // A key deleted by hand is drift; a dry run shows the repair and changes nothing.
    let key = published
        .keys()
        .find(|k| k.starts_with("vulcand/frontends/"))
        .expect("the history routes something")
        .clone();
    let mut etcd = etcd_client::Client::connect([live.endpoint()], None).await?;
    etcd.delete(key.as_str(), None).await?;
    let drift = verify(live.endpoint()).await?;
    assert_eq!(drift.code, 1, "{drift:?}");
    assert!(
        drift.stdout.contains(&format!("missing    {key}")),
        "{drift:?}"
    );
    assert!(
        drift.stdout.contains("1 missing, 0 extra, 0 different"),
        "{drift:?}"
    );
    let dry = ksrctl(&[
        "rebuild",
        "--dry-run",
        "vulcand",
        "--nats-url",
        &url,
        "--etcd-endpoints",
        &live.endpoint(),
        "-o",
        "table",
    ])
    .await?;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains(&format!("put     {key}")), "{dry:?}");
    assert!(
        !live.contents("").await?.contains_key(&key),
        "a dry run writes nothing"
    );

    // The rebuild (same fenced apply as the publisher, which is still running) repairs it.
    let repaired = ksrctl(&[
        "rebuild",
        "vulcand",
        "--nats-url",
        &url,
        "--etcd-endpoints",
        &live.endpoint(),
    ])
    .await?;
    assert_eq!(repaired.code, 0, "{repaired:?}");
    assert!(repaired.stdout.contains("rewrote 1 keys"), "{repaired:?}");
    assert_same_entries("etcd", &live.contents("").await?, &published);
    assert_eq!(verify(live.endpoint()).await?.code, 0);
    Ok(())
}

#[tokio::test]
async fn verify_finds_hand_added_consul_instances_and_rebuild_equals_the_live_publisher()
-> anyhow::Result<()> {
    let s = Stream::start().await?;
    let (live, empty) = (ConsulServer::start().await?, ConsulServer::start().await?);
    let _publisher = consul_publisher(&s.nats, &live);
    publish_history(&s.js, 600, 60).await?;
    wait_consumer_settled(&s.js, "ksr-consul-ksr").await?;
    let published = live.contents("ksr", false).await?;
    let url = s.nats.url();
    let verify = |consul: String| {
        let url = url.clone();
        async move {
            ksrctl(&[
                "verify",
                "consul",
                "--nats-url",
                &url,
                "--consul-address",
                &consul,
                "-o",
                "table",
            ])
            .await
        }
    };
    let clean = verify(live.url()).await?;
    assert_eq!(clean.code, 0, "{clean:?}");

    let rebuilt = ksrctl(&[
        "rebuild",
        "consul",
        "--nats-url",
        &url,
        "--consul-address",
        &empty.url(),
    ])
    .await?;
    assert_eq!(rebuilt.code, 0, "{rebuilt:?}");
    assert_same_entries("Consul", &empty.contents("ksr", false).await?, &published);

    // An instance added by hand on our node, and one on another node answering for a
    // routed name.
    let routed = published
        .keys()
        .filter_map(|k| k.strip_prefix("svc:"))
        .find(|id| !id.starts_with("vulcan."))
        .and_then(|id| id.strip_suffix(".test"))
        .expect("the history registers names")
        .to_owned();
    register(&live, serde_json::json!({
        "Node": "ksr", "Address": "127.0.0.1", "SkipNodeUpdate": true,
        "Service": {"ID": "intruder.test", "Service": "test", "Tags": ["intruder"], "Address": "10.9.9.9", "Port": 80}
    })).await?;
    register(&live, serde_json::json!({
        "Node": "elsewhere", "Address": "127.0.0.2",
        "Service": {"ID": "copy", "Service": "test", "Tags": [routed], "Address": "10.9.9.8", "Port": 80}
    })).await?;
    let drift = verify(live.url()).await?;
    assert_eq!(drift.code, 1, "{drift:?}");
    assert!(
        drift.stdout.contains("extra      ksr/intruder.test"),
        "{drift:?}"
    );
    assert!(
        drift.stdout.contains("extra      elsewhere/copy"),
        "{drift:?}"
    );
    assert!(
        drift
            .stdout
            .contains("0 missing, 1 extra, 0 different, 1 foreign"),
        "{drift:?}"
    );

    // Rebuild removes our intruder and leaves the other node alone.
    let repaired = ksrctl(&[
        "rebuild",
        "consul",
        "--nats-url",
        &url,
        "--consul-address",
        &live.url(),
    ])
    .await?;
    assert_eq!(repaired.code, 0, "{repaired:?}");
    assert!(repaired.stdout.contains("deregistered 1"), "{repaired:?}");
    assert_same_entries("Consul", &live.contents("ksr", false).await?, &published);
    let after = verify(live.url()).await?;
    assert_eq!(
        after.code, 1,
        "the foreign instance is still drift: {after:?}"
    );
    assert!(
        after
            .stdout
            .contains("0 missing, 0 extra, 0 different, 1 foreign"),
        "{after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn verify_reports_a_frontend_of_ours_that_vulcand_cannot_load() -> anyhow::Result<()> {
    let s = Stream::start().await?;
    let etcd = EtcdServer::start().await?;
    // As an older ksr wrote it: vulcand refuses to start while it is there.
    let id = ksr_publisher_vulcand::layout::Layout::new("vulcand", "ksr")
        .route_id("gamma-default.test.service.consul", "/static/**");
    let key = format!("vulcand/frontends/{id}/frontend");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    client
        .put(
            key.as_str(),
            format!(
                r#"{{"Type":"http","BackendId":"{id}","Route":"Host(`gamma-default.test.service.consul`) && PathRegexp(`/static/**`)"}}"#
            ),
            None,
        )
        .await?;
    let run = ksrctl(&[
        "verify",
        "vulcand",
        "--nats-url",
        &s.nats.url(),
        "--etcd-endpoints",
        &etcd.endpoint(),
    ])
    .await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!("vulcand cannot load {key}"))
            && run.stderr.contains("invalid nested repetition operator"),
        "{run:?}"
    );
    Ok(())
}
