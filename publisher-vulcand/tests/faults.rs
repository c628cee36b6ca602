//! Races, crashes and drift: the projection always ends as the independent model says.

mod common;

use common::{Bench, assert_as_modelled, publish_history, route_id, wait_key};
use ksr_test_support::events::added;

#[tokio::test]
async fn two_replicas_racing_on_5000_events_end_as_the_model_says() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _a = bench.publisher(&["--batch-size", "50"]);
    let _b = bench.publisher(&["--batch-size", "50"]);
    let history = publish_history(&bench, 5000, 400).await?;
    let got = bench.settled("").await?;
    assert!(
        got.keys().any(|k| k.contains("/frontends/")),
        "history projects routes"
    );
    assert!(
        got.values().any(|v| v.contains("\"waiting\":[\"")),
        "history has conflicts"
    );
    assert_as_modelled(&history, &got);
    Ok(())
}

#[tokio::test]
async fn an_etcd_crash_in_the_middle_of_a_run_loses_nothing() -> anyhow::Result<()> {
    let mut bench = Bench::start().await?;
    let _p = bench.publisher(&["--max-retry-delay", "500ms"]);
    let mut history = publish_history(&bench, 600, 150).await?;
    bench.etcd.stop();
    // Events published while etcd is down are negative-acknowledged and come back.
    history.extend(
        publish_history(&bench, 600, 150)
            .await?
            .into_iter()
            .map(|(s, mut e)| {
                e.resource_version = "2".into();
                (s, e)
            }),
    );
    bench.etcd.restart().await?;
    let got = bench.settled("").await?;
    assert_as_modelled(&history, &got);
    Ok(())
}

#[tokio::test]
async fn a_hand_deleted_key_comes_back_orphans_go_and_foreign_keys_stay() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&["--reconcile-interval", "300ms"]);
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1", "10.0.0.2"]))
        .await?;
    let id = route_id("web-shop.test.service.consul", "/.*");
    let server = format!("vulcand/backends/{id}/servers/east-10-0-0-1-80");
    wait_key(&bench, &server, Some(r#"{"URL":"http://10.0.0.1:80"}"#)).await?;

    let mut etcd = bench.etcd().await?;
    etcd.delete(server.as_str(), None).await?;
    etcd.put(
        "vulcand/backends/foreign/backend",
        r#"{"Type":"http"}"#,
        None,
    )
    .await?;
    etcd.put(
        "vulcand/frontends/foreign/frontend",
        r#"{"Type":"http","BackendId":"foreign","Route":"Path(`/`)"}"#,
        None,
    )
    .await?;
    let orphan = "vulcand/backends/ksr.gone-shop.test.service.consul.0000000000000000/backend";
    etcd.put(orphan, r#"{"Type":"http"}"#, None).await?;

    wait_key(&bench, &server, Some(r#"{"URL":"http://10.0.0.1:80"}"#)).await?;
    wait_key(&bench, orphan, None).await?;
    let keys = bench.snapshot("vulcand/").await?;
    assert!(keys.contains_key("vulcand/backends/foreign/backend"));
    assert!(keys.contains_key("vulcand/frontends/foreign/frontend"));
    Ok(())
}

#[tokio::test]
async fn a_publisher_started_after_the_events_with_frequent_reconciles_ends_as_the_model_says()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    // Events exist before the publisher starts, and reconciliation runs every 100 ms while
    // the backlog drains in small batches: reconciling never removes or rewrites routes the
    // consumer has not applied yet (it repairs only against our records, and replays through
    // the same fences), so the end state is the rebuild's.
    let history = publish_history(&bench, 1500, 300).await?;
    let _p = bench.publisher(&["--reconcile-interval", "100ms", "--batch-size", "20"]);
    let got = bench.settled("").await?;
    assert_as_modelled(&history, &got);
    Ok(())
}
