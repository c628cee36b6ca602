//! Races, ACLs, restarts and foreign entries: Consul always ends as the independent model says.

mod common;

use common::{Bench, ROUTER, WAIT, assert_as_modelled};
use ksr_test_support::consul::MASTER_TOKEN;
use ksr_test_support::events::{added, publish_history};
use ksr_test_support::{ConsulOptions, eventually};

#[tokio::test]
async fn two_replicas_racing_on_5000_events_end_as_the_model_says() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _a = bench.publisher(&["--batch-size", "50"]);
    let _b = bench.publisher(&["--batch-size", "50"]);
    let history = publish_history(&bench.js, 5000, 400).await?;
    bench.settled().await?;
    let got = bench.content().await?;
    assert!(
        got.values().any(|v| v.contains("ksr-clusters")),
        "history registers names"
    );
    assert_as_modelled(&history, &got);
    Ok(())
}

#[tokio::test]
async fn a_consul_restart_in_the_middle_of_a_run_loses_nothing() -> anyhow::Result<()> {
    let mut bench = Bench::start().await?;
    let _p = bench.publisher(&["--max-retry-delay", "500ms"]);
    let mut history = publish_history(&bench.js, 400, 100).await?;
    bench.consul.stop();
    history.extend(publish_history(&bench.js, 400, 100).await?);
    bench.consul.restart().await?;
    bench.settled().await?;
    assert_as_modelled(&history, &bench.content().await?);
    Ok(())
}

/// Waits until `p` reports not ready; returns why.
async fn not_ready(p: &common::Replica) -> anyhow::Result<String> {
    eventually(WAIT, || async {
        let (status, body) = p
            .readyz()
            .await
            .ok_or_else(|| anyhow::anyhow!("no answer"))?;
        anyhow::ensure!(status == 503, "still ready: {body}");
        Ok(body)
    })
    .await
}

#[tokio::test]
async fn with_acls_a_wrong_token_is_a_clear_error_and_the_events_apply_once_it_is_fixed()
-> anyhow::Result<()> {
    let bench = Bench::start_with(ConsulOptions {
        acl: true,
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, MASTER_TOKEN)?;
    let p = bench.publisher(&[
        "--consul-token-file",
        token_file.to_str().unwrap_or_default(),
        "--max-retry-delay",
        "300ms",
    ]);
    bench
        .publish(&added("east", "default", "first", &["10.0.0.1"]))
        .await?;
    bench.settled().await?;

    std::fs::write(&token_file, "00000000-0000-0000-0000-00000000dead")?;
    bench
        .publish(&added("east", "default", "second", &["10.0.0.2"]))
        .await?;
    let reason = not_ready(&p).await?;
    assert!(
        reason.contains("ACL not found") && reason.contains("denied"),
        "{reason}"
    );
    let metrics = ksr_test_support::http::get(p.admin_port, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(
        metrics.contains(r#"ksr_consul_apply_errors_total{reason="acl_denied"}"#),
        "{metrics}"
    );

    std::fs::write(&token_file, MASTER_TOKEN)?;
    eventually(WAIT, || async {
        let snap = bench.snapshot().await?;
        anyhow::ensure!(
            snap.contains_key("svc:second-default.test"),
            "not yet registered"
        );
        Ok(())
    })
    .await?;
    bench.settled().await?;

    // A token file that disappears is an error naming it, never an anonymous request; the
    // events wait and apply once it is back.
    std::fs::remove_file(&token_file)?;
    bench
        .publish(&added("east", "default", "third", &["10.0.0.3"]))
        .await?;
    let reason = not_ready(&p).await?;
    assert!(reason.contains("token file"), "{reason}");
    let metrics = ksr_test_support::http::get(p.admin_port, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(
        metrics.contains(r#"ksr_consul_apply_errors_total{reason="token_unreadable"}"#),
        "{metrics}"
    );
    std::fs::write(&token_file, MASTER_TOKEN)?;
    bench.settled().await?;
    assert!(
        bench
            .snapshot()
            .await?
            .contains_key("svc:third-default.test")
    );
    Ok(())
}

#[tokio::test]
async fn a_token_file_that_cannot_be_read_at_start_up_stops_the_publisher_naming_the_flag()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&["--consul-token-file", "/nonexistent/ksr-token"]);
    let err = p
        .shutdown()
        .await
        .expect_err("the publisher must not start");
    let text = err.to_string();
    assert!(
        text.contains("--consul-token-file") && text.contains("/nonexistent/ksr-token"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn reconciliation_restores_ours_removes_our_orphans_and_never_touches_foreign_entries()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&["--reconcile-interval", "300ms"]);
    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    bench
        .wait_resolves("web-default.test.service.consul", true)
        .await?;

    // A foreign node with an instance of our service name, and an orphan on our node.
    bench
        .register(serde_json::json!({
            "Node": "someone-else", "Address": "127.0.0.50",
            "Service": {"ID": "theirs", "Service": "test", "Tags": ["theirs-x"], "Address": "127.0.0.50", "Port": 8080}
        }))
        .await?;
    bench
        .register(serde_json::json!({
            "Node": "ksr", "Address": ROUTER.to_string(), "SkipNodeUpdate": true,
            "Service": {"ID": "stale-default.test", "Service": "test", "Tags": ["stale-default"], "Address": ROUTER.to_string(), "Port": 80}
        }))
        .await?;
    // Our own instance deleted by hand.
    bench
        .deregister(serde_json::json!({"Node": "ksr", "ServiceID": "web-default.test"}))
        .await?;

    bench
        .wait_resolves("web-default.test.service.consul", true)
        .await?;
    bench
        .wait_resolves("stale-default.test.service.consul", false)
        .await?;
    let theirs = bench.resolve("theirs-x.test.service.consul").await?;
    assert_eq!(
        theirs.addrs,
        vec![std::net::Ipv4Addr::new(127, 0, 0, 50)],
        "foreign instance still resolves"
    );
    let instances = bench.instances("test").await?;
    assert!(
        instances.contains(&("someone-else".into(), "theirs".into())),
        "{instances:?}"
    );
    assert!(
        instances.contains(&("ksr".into(), "web-default.test".into())),
        "{instances:?}"
    );
    assert!(
        !instances.iter().any(|(_, id)| id == "stale-default.test"),
        "{instances:?}"
    );
    // Our node keeps its metadata.
    let node: serde_json::Value = ksr_test_support::http_client()
        .get(format!("{}/v1/catalog/node/ksr", bench.consul.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(node["Node"]["Meta"]["ksr-owner"], "ksr");
    Ok(())
}

#[tokio::test]
async fn an_instance_whose_record_was_rewritten_behind_the_publisher_is_restored_from_it()
-> anyhow::Result<()> {
    // Reconciliation reads the records small (a revision and a digest per name) and takes a
    // whole record from the cache only when the cache holds the revision it read; a record
    // written by another hand has a revision the cache does not know, so it is read again.
    let bench = Bench::start().await?;
    let _p = bench.publisher(&["--reconcile-interval", "300ms"]);
    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    bench
        .wait_resolves("web-default.test.service.consul", true)
        .await?;
    let http = ksr_test_support::http_client();
    let url = format!(
        "{}/v1/kv/ksr/ksr/consul/names/web-default.test",
        bench.consul.url()
    );
    let record = http.get(format!("{url}?raw")).send().await?.bytes().await?;
    anyhow::ensure!(!record.is_empty(), "no name record at {url}");
    // The same record with a space after it: another revision, the same content.
    let rewritten = [&record[..], b" "].concat();
    let resp = http.put(&url).body(rewritten.clone()).send().await?;
    assert!(resp.status().is_success());
    bench
        .deregister(serde_json::json!({"Node": "ksr", "ServiceID": "web-default.test"}))
        .await?;
    bench
        .wait_resolves("web-default.test.service.consul", true)
        .await?;
    let instances = bench.instances("test").await?;
    assert_eq!(instances, vec![("ksr".into(), "web-default.test".into())]);
    let after = http.get(format!("{url}?raw")).send().await?.bytes().await?;
    assert_eq!(after, rewritten, "the record itself is left as it was");
    Ok(())
}

/// Creates a policy from `rules` and a token holding it; returns the token's secret.
async fn token_for(bench: &Bench, name: &str, rules: &str) -> anyhow::Result<String> {
    let http = ksr_test_support::http_client();
    let url = bench.consul.url();
    let resp = http
        .put(format!("{url}/v1/acl/policy"))
        .header("X-Consul-Token", MASTER_TOKEN)
        .json(&serde_json::json!({"Name": name, "Rules": rules}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "policy: {}", resp.text().await?);
    let token: serde_json::Value = http
        .put(format!("{url}/v1/acl/token"))
        .header("X-Consul-Token", MASTER_TOKEN)
        .json(&serde_json::json!({"Policies": [{"Name": name}]}))
        .send()
        .await?
        .json()
        .await?;
    Ok(token["SecretID"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_documented_least_privilege_policies_are_enough() -> anyhow::Result<()> {
    let bench = Bench::start_with(ConsulOptions {
        acl: true,
        ..Default::default()
    })
    .await?;
    let root = ksr_test_support::workspace_root().join("deploy/consul");
    let publisher_rules = std::fs::read_to_string(root.join("ksr-publisher-policy.hcl"))?;
    let dns_rules = std::fs::read_to_string(root.join("dns-read-policy.hcl"))?;
    let token = token_for(&bench, "ksr-publisher", &publisher_rules).await?;
    // DNS under default deny: give the anonymous token the documented read policy.
    let http = ksr_test_support::http_client();
    token_for(&bench, "dns-read", &dns_rules).await?;
    let resp = http
        .put(format!(
            "{}/v1/acl/token/00000000-0000-0000-0000-000000000002",
            bench.consul.url()
        ))
        .header("X-Consul-Token", MASTER_TOKEN)
        .json(&serde_json::json!({"Policies": [{"Name": "dns-read"}]}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "anonymous token: {}",
        resp.text().await?
    );

    // Two routers, health-checked: the second router's node and both checks are covered.
    let second = std::net::Ipv4Addr::new(127, 0, 0, 10);
    let (port, _a, _b) = common::two_endpoints(ROUTER, second).await?;
    let health = format!("http://{{address}}:{port}/");
    let _p = bench.publisher_for(
        &format!("{ROUTER},{second}"),
        &[
            "--consul-token",
            &token,
            "--reconcile-interval",
            "300ms",
            "--router-health-url",
            &health,
            "--router-health-interval",
            "200ms",
        ],
    );
    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    for name in [
        "web-default.test.service.consul",
        "test.vulcan.service.consul",
    ] {
        ksr_test_support::eventually(common::WAIT, || async {
            let mut got = bench.resolve(name).await?.addrs;
            got.sort();
            anyhow::ensure!(got == vec![ROUTER, second], "{name}: {got:?}");
            Ok(())
        })
        .await?;
    }
    ksr_test_support::eventually(common::WAIT, || async {
        let checks = bench
            .consul
            .get_json("/v1/health/node/ksr-127-0-0-10")
            .await?;
        anyhow::ensure!(checks.to_string().contains("ksr-router-health"), "{checks}");
        Ok(())
    })
    .await?;
    bench
        .publish(&ksr_test_support::events::removed("east", "default", "web"))
        .await?;
    bench
        .wait_resolves("web-default.test.service.consul", false)
        .await
}

/// Routes `web` in `shop` (`web-shop.test`), waits until it resolves and the consumer has
/// settled, and stops the publisher.
async fn route_web_then_stop(bench: &Bench) -> anyhow::Result<()> {
    let p = bench.publisher(&[]);
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    bench
        .wait_resolves("web-shop.test.service.consul", true)
        .await?;
    bench.settled().await?;
    p.shutdown().await
}

/// Overwrites Consul KV `key` with something that is not JSON (a corrupt record).
async fn corrupt(bench: &Bench, key: &str) -> anyhow::Result<()> {
    let mut req = ksr_test_support::http_client()
        .put(format!("{}/v1/kv/{key}", bench.consul.url()))
        .body("{not json");
    if let Some(t) = bench.consul.master_token() {
        req = req.header("X-Consul-Token", t);
    }
    anyhow::ensure!(req.send().await?.status().is_success());
    Ok(())
}

#[tokio::test]
async fn a_corrupt_record_is_quarantined_reported_and_repaired_while_the_rest_flows()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&[]);
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    bench
        .publish(&added("east", "other", "api", &["10.0.0.2"]))
        .await?;
    bench
        .wait_resolves("web-shop.test.service.consul", true)
        .await?;
    bench
        .wait_resolves("api-other.test.service.consul", true)
        .await?;
    bench.settled().await?;
    p.shutdown().await?;

    let name = "ksr/ksr/consul/names/web-shop.test";
    let fence = "ksr/ksr/consul/services/east/other/api";
    for key in [name, fence] {
        corrupt(&bench, key).await?;
    }

    let p = bench.publisher(&[]);
    p.ready().await?;
    let (status, text) = p.readyz().await.expect("readyz answers");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(name) && text.contains(fence), "{text}");
    bench
        .publish(&added("east", "third", "new", &["10.0.0.3"]))
        .await?;
    bench
        .wait_resolves("new-third.test.service.consul", true)
        .await?;
    // Both names kept resolving, and their records are readable again.
    bench
        .wait_resolves("web-shop.test.service.consul", true)
        .await?;
    bench
        .wait_resolves("api-other.test.service.consul", true)
        .await?;
    eventually(WAIT, || async {
        let snap = bench.snapshot().await?;
        for key in [name, fence] {
            use base64::Engine;
            let v = snap.get(&format!("kv:{key}")).cloned().unwrap_or_default();
            let b64: String = serde_json::from_str(&v)?;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
            serde_json::from_slice::<serde_json::Value>(&raw)
                .map_err(|e| anyhow::anyhow!("{key} still unreadable: {e}"))?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_instance_whose_record_is_unreadable_and_cannot_be_rebuilt_is_left_alone()
-> anyhow::Result<()> {
    // The stream no longer holds the Service's event (retention, a purge), so the stream
    // pass cannot rewrite its corrupt record: reconciliation must leave the instance it
    // registered alone (quarantined), never deregister it as an orphan.
    let bench = Bench::start().await?;
    route_web_then_stop(&bench).await?;
    bench.js.get_stream("KSR_ROUTES").await?.purge().await?;
    corrupt(&bench, "ksr/ksr/consul/names/web-shop.test").await?;

    let p = bench.publisher(&["--reconcile-interval", "200ms"]);
    eventually(WAIT, || async {
        let runs = p.metric("ksr_consul_reconcile_runs_total").await;
        anyhow::ensure!(runs >= 2.0, "{runs} reconcile runs so far");
        Ok(())
    })
    .await?;
    assert_eq!(p.metric("ksr_consul_reconcile_repairs_total").await, 0.0);
    bench
        .wait_resolves("web-shop.test.service.consul", true)
        .await?;
    let catalog = bench.consul.contents("ksr", false).await?;
    assert!(catalog.contains_key("svc:web-shop.test"), "{catalog:?}");
    Ok(())
}
