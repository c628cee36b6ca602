//! Races, crashes and drift: the projection always ends as the independent model says.

mod common;

use std::time::Duration;

use common::{Bench, assert_as_modelled, publish_history, route_id, wait_key};
use ksr_test_support::events::added;
use ksr_test_support::eventually;

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
async fn a_route_whose_record_was_rewritten_behind_the_publisher_is_repaired_from_it()
-> anyhow::Result<()> {
    // Reconciliation reads the records small (a revision per hostname, the keys as hashes)
    // and takes a whole record from the cache only when the cache holds the revision it
    // read; a record written by another hand is read again.
    let bench = Bench::start().await?;
    let _p = bench.publisher(&["--reconcile-interval", "300ms"]);
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    let id = route_id("web-shop.test.service.consul", "/.*");
    let server = format!("vulcand/backends/{id}/servers/east-10-0-0-1-80");
    wait_key(&bench, &server, Some(r#"{"URL":"http://10.0.0.1:80"}"#)).await?;

    let mut etcd = bench.etcd().await?;
    let records = bench.snapshot("ksr/").await?;
    let (key, record) = records
        .iter()
        .find(|(k, _)| k.contains("/hosts/"))
        .ok_or_else(|| anyhow::anyhow!("no host record in {records:?}"))?;
    // The same record with a space after it: another revision, the same content.
    let rewritten = format!("{record} ");
    etcd.put(key.as_str(), rewritten.as_str(), None).await?;
    etcd.delete(server.as_str(), None).await?;
    wait_key(&bench, &server, Some(r#"{"URL":"http://10.0.0.1:80"}"#)).await?;
    assert_eq!(bench.snapshot("ksr/").await?[key], rewritten);
    Ok(())
}

#[tokio::test]
async fn a_wiped_etcd_is_rebuilt_by_the_stream_pass_from_every_subject_of_the_stream()
-> anyhow::Result<()> {
    // The stream pass reads the newest event of every subject and applies them a chunk of
    // 1,000 at a time; with every record and key gone, each of them (about 1,900 subjects,
    // two chunks) must be applied again.
    let bench = Bench::start().await?;
    let p = bench.publisher(&["--reconcile-interval", "1h"]);
    let history = publish_history(&bench, 3000, 1500).await?;
    assert_as_modelled(&history, &bench.settled("").await?);
    p.shutdown().await?;
    let mut etcd = bench.etcd().await?;
    etcd.delete("", Some(etcd_client::DeleteOptions::new().with_all_keys()))
        .await?;
    assert!(bench.snapshot("").await?.is_empty());

    let p = bench.publisher(&["--reconcile-interval", "1h"]);
    eventually(Duration::from_secs(60), || async {
        anyhow::ensure!(p.metric("ksr_vulcand_reconcile_runs_total").await >= 1.0);
        Ok(())
    })
    .await?;
    assert_as_modelled(&history, &bench.snapshot("").await?);
    // Pulled through the replay consumer, which is gone once the pass is done.
    let pulled = r#"ksr_vulcand_reconcile_stream_passes_total{read="pulled"}"#;
    assert_eq!(p.metric(pulled).await, 1.0);
    let stream = bench.js.get_stream("KSR_ROUTES").await?;
    assert!(
        stream
            .consumer_info("ksr-vulcand-ksr_replay")
            .await
            .is_err()
    );
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

/// What an operator alerts on: when the last batch was applied and the last reconciliation
/// completed, and how many failed in a row since — through an etcd outage and back.
#[tokio::test]
async fn staleness_metrics_follow_an_etcd_outage() -> anyhow::Result<()> {
    let mut bench = Bench::start().await?;
    let p = bench.publisher(&[
        "--reconcile-interval",
        "200ms",
        "--max-retry-delay",
        "200ms",
    ]);
    bench
        .publish(&added("east", "shop", "a", &["10.0.0.1"]))
        .await?;
    bench.settled_vulcand().await?;
    let (applied, reconciled) = (
        "ksr_vulcand_last_apply_timestamp_seconds",
        "ksr_vulcand_last_reconcile_timestamp_seconds",
    );
    let failures = [
        "ksr_vulcand_consecutive_apply_failures",
        "ksr_vulcand_consecutive_reconcile_failures",
    ];
    eventually(common::WAIT, || async {
        anyhow::ensure!(p.metric(applied).await > 0.0, "nothing applied yet");
        anyhow::ensure!(p.metric(reconciled).await > 0.0, "no reconciliation yet");
        Ok(())
    })
    .await?;
    for f in failures {
        assert_eq!(p.metric(f).await, 0.0, "{f}");
    }
    assert!(
        p.metrics().await.contains("ksr_build_info{version=\""),
        "no build info"
    );

    bench.etcd.stop();
    bench
        .publish(&added("east", "shop", "b", &["10.0.0.2"]))
        .await?;
    let before = p.metric(applied).await;
    eventually(common::WAIT, || async {
        for f in failures {
            anyhow::ensure!(p.metric(f).await >= 1.0, "{f} counts no failure yet");
        }
        Ok(())
    })
    .await?;
    assert_eq!(
        p.metric(applied).await,
        before,
        "nothing was applied meanwhile"
    );

    bench.etcd.restart().await?;
    bench.settled_vulcand().await?;
    eventually(common::WAIT, || async {
        for f in failures {
            anyhow::ensure!(p.metric(f).await == 0.0, "{f} still counts failures");
        }
        anyhow::ensure!(p.metric(applied).await > before, "not applied since");
        Ok(())
    })
    .await
}
