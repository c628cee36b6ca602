//! The etcd v2 mode for vulcand v0.8: the same projection under `/vulcand` through the v2 API.

mod common;

use std::collections::BTreeMap;

use common::{Bench, WAIT};
use ksr_publisher_vulcand::layout::Layout;
use ksr_publisher_vulcand::v2::V2Client;
use ksr_test_support::events::{added, removed};
use ksr_test_support::eventually;

/// A v2 client configured by the publisher's own flags.
fn v2_client(flags: &[&str]) -> anyhow::Result<V2Client> {
    use clap::Parser;
    let config = ksr_publisher_vulcand::config::Config::try_parse_from(
        std::iter::once("x").chain(flags.iter().copied()),
    )?;
    ksr_runtime::tls::install_crypto_provider();
    Ok(V2Client::new(&config.target.etcd)?)
}

async fn v2_tree(bench: &Bench) -> anyhow::Result<BTreeMap<String, String>> {
    let endpoint = bench.etcd.endpoint();
    Ok(v2_client(&["--etcd-endpoints", &endpoint])?
        .tree("/vulcand")
        .await?)
}

/// Every v2 directory under /vulcand, empty or not.
async fn v2_dirs(bench: &Bench) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = ksr_test_support::http_client()
        .get(format!(
            "{}/v2/keys/vulcand?recursive=true",
            bench.etcd.url()
        ))
        .send()
        .await?
        .json()
        .await?;
    fn walk(n: &serde_json::Value, out: &mut Vec<String>) {
        if n["dir"].as_bool() == Some(true) {
            out.push(n["key"].as_str().unwrap_or_default().to_owned());
            for c in n["nodes"].as_array().into_iter().flatten() {
                walk(c, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&v["node"], &mut out);
    Ok(out)
}

#[tokio::test]
async fn v2_mode_writes_the_projection_under_slash_vulcand_and_leaves_no_empty_dirs()
-> anyhow::Result<()> {
    let bench = Bench::start_v2().await?;
    let _p = bench.publisher(&["--etcd-api", "v2"]);
    let id = Layout::new("/vulcand", "ksr").route_id("web-shop.test.service.consul", "/.*");
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1", "10.0.0.2"]))
        .await?;
    let tree = eventually(WAIT, || async {
        let t = v2_tree(&bench).await?;
        anyhow::ensure!(t.len() == 4, "{t:#?}");
        Ok(t)
    })
    .await?;
    let expected: BTreeMap<String, String> = [
        (format!("/vulcand/backends/{id}/backend"), r#"{"Type":"http"}"#.to_owned()),
        (format!("/vulcand/backends/{id}/servers/east-10-0-0-1-80"), r#"{"URL":"http://10.0.0.1:80"}"#.to_owned()),
        (format!("/vulcand/backends/{id}/servers/east-10-0-0-2-80"), r#"{"URL":"http://10.0.0.2:80"}"#.to_owned()),
        (
            format!("/vulcand/frontends/{id}/frontend"),
            format!(r#"{{"Type":"http","BackendId":"{id}","Route":"Host(`web-shop.test.service.consul`) && PathRegexp(`/.*`)"}}"#),
        ),
    ]
    .into();
    assert_eq!(tree, expected);
    // Nothing of the projection in the v3 keyspace: only our records.
    assert!(bench.snapshot("vulcand").await?.is_empty());

    bench
        .publish(&added("east", "shop", "web", &["10.0.0.2"]))
        .await?;
    eventually(WAIT, || async {
        let t = v2_tree(&bench).await?;
        anyhow::ensure!(t.len() == 3, "{t:#?}");
        Ok(())
    })
    .await?;
    bench.publish(&removed("east", "shop", "web")).await?;
    eventually(WAIT, || async {
        let t = v2_tree(&bench).await?;
        let dirs = v2_dirs(&bench).await?;
        anyhow::ensure!(
            t.is_empty() && dirs.iter().all(|d| !d.contains(&id)),
            "keys {t:#?} dirs {dirs:#?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn v2_reconciliation_restores_our_keys_and_leaves_foreign_ones() -> anyhow::Result<()> {
    let bench = Bench::start_v2().await?;
    let _p = bench.publisher(&["--etcd-api", "v2", "--reconcile-interval", "300ms"]);
    let id = Layout::new("/vulcand", "ksr").route_id("web-shop.test.service.consul", "/.*");
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    let server = format!("/vulcand/backends/{id}/servers/east-10-0-0-1-80");
    eventually(WAIT, || async {
        anyhow::ensure!(v2_tree(&bench).await?.contains_key(&server));
        Ok(())
    })
    .await?;
    let http = ksr_test_support::http_client();
    http.delete(format!("{}/v2/keys{server}", bench.etcd.url()))
        .send()
        .await?;
    let frontend = format!("/vulcand/frontends/{id}/frontend");
    let routed = v2_tree(&bench).await?[&frontend].clone();
    let stray = Layout::new("/vulcand", "ksr").route_id("gone-shop.test.service.consul", "/.*");
    let base = bench.etcd.url();
    for (key, value) in [
        (
            "/vulcand/backends/foreign/backend".to_owned(),
            r#"{"Type":"http"}"#,
        ),
        (
            frontend.clone(),
            r#"{"Type":"http","BackendId":"elsewhere","Route":"Path(`/`)"}"#,
        ),
        (
            format!("/vulcand/frontends/{stray}/frontend"),
            routed.as_str(),
        ),
    ] {
        http.put(format!("{base}/v2/keys{key}"))
            .form(&[("value", value)])
            .send()
            .await?
            .error_for_status()?;
    }
    // Empty directories: one of ours (vulcand v0.8 would not start) and a foreign one.
    let empty = Layout::new("/vulcand", "ksr").route_id("empty-shop.test.service.consul", "/.*");
    for dir in [
        format!("/vulcand/backends/{empty}/servers"),
        "/vulcand/backends/empty".to_owned(),
    ] {
        http.put(format!("{base}/v2/keys{dir}"))
            .form(&[("dir", "true")])
            .send()
            .await?
            .error_for_status()?;
    }
    eventually(WAIT, || async {
        let t = v2_tree(&bench).await?;
        let ours: Vec<&String> = t.keys().filter(|k| k.contains("/ksr.")).collect();
        anyhow::ensure!(
            t.contains_key(&server)
                && t.get(&frontend) == Some(&routed)
                && ours.len() == 3
                && t.contains_key("/vulcand/backends/foreign/backend"),
            "{t:#?}"
        );
        for dir in [&stray, &empty] {
            let left = http
                .get(format!("{base}/v2/keys/vulcand/backends/{dir}"))
                .send()
                .await?;
            anyhow::ensure!(left.status() == 404, "{}", left.text().await?);
        }
        Ok(())
    })
    .await?;
    let foreign_dir = http
        .get(format!("{base}/v2/keys/vulcand/backends/empty"))
        .send()
        .await?;
    anyhow::ensure!(
        foreign_dir.status() == 200,
        "foreign directories are left alone"
    );
    Ok(())
}

#[tokio::test]
async fn v2_mode_uses_every_endpoint_and_fails_over_when_the_first_is_down() -> anyhow::Result<()> {
    let bench = Bench::start_v2().await?;
    // Nothing listens on the first endpoint (a member that is down).
    let dead = ksr_test_support::free_ports(1)?[0];
    let endpoints = format!("127.0.0.1:{dead},{}", bench.etcd.endpoint());
    let client = v2_client(&["--etcd-endpoints", &endpoints])?;
    assert!(client.tree("/vulcand").await?.is_empty());
    // The publisher itself with the dead member first (v3 records and v2 keys alike).
    let url = bench.nats.url();
    let _p = common::spawn_publisher(&[
        "--nats-url",
        &url,
        "--etcd-endpoints",
        &endpoints,
        "--etcd-api",
        "v2",
    ])?;
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    eventually(WAIT, || async {
        let t = client.tree("/vulcand").await?;
        anyhow::ensure!(t.len() == 3, "{t:#?}");
        Ok(())
    })
    .await?;
    // With no member reachable the error names every endpoint.
    let down = format!("127.0.0.1:{dead}");
    let err = v2_client(&["--etcd-endpoints", &down])?
        .tree("/vulcand")
        .await
        .expect_err("nothing answers");
    assert!(err.to_string().contains(&down), "{err}");
    Ok(())
}

/// Replicas racing in v2 mode: each syncs hostnames concurrently after its commits, and the
/// v2 tree (with our records in v3) ends exactly as the independent model says.
#[tokio::test]
async fn two_v2_replicas_racing_on_2000_events_end_as_the_model_says() -> anyhow::Result<()> {
    let bench = Bench::start_v2().await?;
    let _a = bench.publisher(&["--etcd-api", "v2", "--batch-size", "50"]);
    let _b = bench.publisher(&["--etcd-api", "v2", "--batch-size", "50"]);
    let history = common::publish_history(&bench, 2000, 300).await?;
    let records = bench.settled("ksr/").await?;
    use ksr_test_support::model::{Ages, Settings, services_from_stream};
    let (services, ages) = (services_from_stream(&history), Ages::from_stream(&history));
    // The v2 writes follow the record commits: wait for the tree to get there.
    eventually(WAIT, || async {
        let mut got = records.clone();
        for (key, value) in v2_tree(&bench).await? {
            got.insert(key.trim_start_matches('/').to_owned(), value);
        }
        let diff = ksr_test_support::verify::vulcand(&Settings::default(), &services, &ages, &got);
        anyhow::ensure!(diff.is_empty(), "v2 differs from the model:\n{diff}");
        Ok(())
    })
    .await?;
    let empty: Vec<String> = v2_dirs(&bench)
        .await?
        .into_iter()
        .filter(|d| d.matches('/').count() > 2)
        .collect();
    let tree = v2_tree(&bench).await?;
    for dir in &empty {
        assert!(
            tree.keys().any(|k| k.starts_with(&format!("{dir}/"))),
            "empty v2 directory {dir} left behind"
        );
    }
    Ok(())
}

/// Turns etcd's v2 authentication on or off (root `root`/`pw`; with it on, the guest role the
/// publisher writes as may neither read nor write), leaving the v3 API as it is.
async fn lock_v2(bench: &Bench, locked: bool) -> anyhow::Result<()> {
    let (http, base) = (ksr_test_support::http_client(), bench.etcd.url());
    if locked {
        http.put(format!("{base}/v2/auth/users/root"))
            .body(r#"{"user":"root","password":"pw"}"#)
            .send()
            .await?
            .error_for_status()?;
        http.put(format!("{base}/v2/auth/enable"))
            .send()
            .await?
            .error_for_status()?;
        http.put(format!("{base}/v2/auth/roles/guest"))
            .basic_auth("root", Some("pw"))
            .body(r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#)
            .send()
            .await?
            .error_for_status()?;
    } else {
        http.delete(format!("{base}/v2/auth/enable"))
            .basic_auth("root", Some("pw"))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// A v2 write that fails after the v3 commit (the records say the route changed, vulcand's
/// keys do not yet) is retried with the failed batch's redelivery: the removed route goes and
/// the added one comes soon after v2 accepts writes again, not at the next reconciliation
/// (an hour away here).
#[tokio::test]
async fn a_v2_sync_that_failed_after_the_commit_is_retried_with_the_redelivery()
-> anyhow::Result<()> {
    let bench = Bench::start_v2().await?;
    let p = bench.publisher(&[
        "--etcd-api",
        "v2",
        "--reconcile-interval",
        "1h",
        "--max-retry-delay",
        "200ms",
    ]);
    let layout = Layout::new("/vulcand", "ksr");
    let (web, api) = (
        layout.route_id("web-shop.test.service.consul", "/.*"),
        layout.route_id("api-shop.test.service.consul", "/.*"),
    );
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    eventually(WAIT, || async {
        anyhow::ensure!(v2_tree(&bench).await?.len() == 3);
        anyhow::ensure!(p.metric("ksr_vulcand_reconcile_runs_total").await >= 1.0);
        Ok(())
    })
    .await?;

    lock_v2(&bench, true).await?;
    bench.publish(&removed("east", "shop", "web")).await?;
    bench
        .publish(&added("east", "shop", "api", &["10.0.0.2"]))
        .await?;
    // Committed in v3 (the records moved on), refused in v2.
    eventually(WAIT, || async {
        let records = bench.snapshot("ksr/").await?;
        anyhow::ensure!(
            records.keys().any(|k| k.contains("api-shop")),
            "api not committed yet: {records:#?}"
        );
        anyhow::ensure!(
            p.metric("ksr_vulcand_consecutive_apply_failures").await >= 1.0,
            "the v2 write did not fail yet"
        );
        Ok(())
    })
    .await?;

    lock_v2(&bench, false).await?;
    eventually(WAIT, || async {
        let t = v2_tree(&bench).await?;
        anyhow::ensure!(
            t.len() == 3 && t.keys().all(|k| k.contains(&api) && !k.contains(&web)),
            "{t:#?}"
        );
        Ok(())
    })
    .await?;
    let dirs = v2_dirs(&bench).await?;
    assert!(dirs.iter().all(|d| !d.contains(&web)), "{dirs:#?}");
    assert_eq!(
        p.metric("ksr_vulcand_reconcile_runs_total").await,
        1.0,
        "repaired by the redelivery, not by a reconciliation"
    );
    Ok(())
}
