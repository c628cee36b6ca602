//! The Consul projection against real nats-server and Consul; names checked through DNS.

mod common;

use common::{Bench, ROUTER, WAIT};
use ksr_projection::apply::Store;
use ksr_proto::Change;
use ksr_test_support::events::{added, event, removed, route};
use ksr_test_support::eventually;

#[tokio::test]
async fn an_added_service_resolves_to_the_router_and_disappears_after_removal() -> anyhow::Result<()>
{
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    bench
        .publish(&added("east", "default", "webtest1", &["10.0.0.1"]))
        .await?;
    bench
        .wait_resolves("webtest1-default.test.service.consul", true)
        .await?;
    // Case-insensitive, and `.dc1` may follow `service`.
    let a = bench
        .resolve("WebTest1-Default.test.service.dc1.consul")
        .await?;
    assert_eq!(a.addrs, vec![ROUTER]);
    // The router itself is registered as `vulcan`, tagged with the environment.
    bench
        .wait_resolves("test.vulcan.service.consul", true)
        .await?;

    // The host annotation moves the name.
    let moved = route("myapp-default", "test", "/.*", &["10.0.0.1"]);
    bench
        .publish(&event(
            "east",
            "default",
            "webtest1",
            Change::Updated(moved),
        ))
        .await?;
    bench
        .wait_resolves("myapp-default.test.service.consul", true)
        .await?;
    bench
        .wait_resolves("webtest1-default.test.service.consul", false)
        .await?;

    bench
        .publish(&removed("east", "default", "webtest1"))
        .await?;
    bench
        .wait_resolves("myapp-default.test.service.consul", false)
        .await?;
    let snap = bench.settled().await?;
    let instances: Vec<&String> = snap.keys().filter(|k| k.starts_with("svc:")).collect();
    assert_eq!(instances, vec!["svc:vulcan.test"], "only the router stays");
    Ok(())
}

#[tokio::test]
async fn a_full_hostname_registers_only_under_the_consul_domain() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let mut elsewhere = route("myapp", "test", "/.*", &["10.0.0.1"]);
    elsewhere.full_host = Some("myapp.mydomain.com".into());
    let mut consul = route("api", "test", "/.*", &["10.0.0.2"]);
    consul.full_host = Some("api.test.service.consul".into());
    bench
        .publish(&event("east", "default", "a", Change::Added(elsewhere)))
        .await?;
    bench
        .publish(&event("east", "default", "b", Change::Added(consul)))
        .await?;
    bench.wait_resolves("api.test.service.consul", true).await?;
    let snap = bench.settled().await?;
    let mut instances: Vec<&String> = snap.keys().filter(|k| k.starts_with("svc:")).collect();
    instances.sort();
    assert_eq!(instances.len(), 2, "the router and api only: {instances:?}");
    assert!(
        !instances.iter().any(|k| k.contains("myapp")),
        "{instances:?}"
    );
    Ok(())
}

#[tokio::test]
async fn backend_changes_do_not_rewrite_the_registration() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let first = added("east", "default", "web", &["10.0.0.1"]);
    let seq = bench.publish(&first).await?;
    let before = bench.settled().await?;
    // Only backends change: vulcand cares, Consul does not; no ModifyIndex churn. The watcher
    // stamps the continuing claim from the previous event.
    let mut next = route("web-default", "test", "/.*", &["10.0.0.1", "10.0.0.2"]);
    next.continue_claims(first.route().map(|r| (r, seq)));
    bench
        .publish(&event("east", "default", "web", Change::Updated(next)))
        .await?;
    let after = bench.settled().await?;
    assert_eq!(
        before.get("svc:web-default.test"),
        after.get("svc:web-default.test")
    );
    Ok(())
}

#[tokio::test]
async fn duplicates_out_of_order_and_replays_leave_the_catalog_unchanged() -> anyhow::Result<()> {
    use ksr_projection::Delivery;

    let bench = Bench::start().await?;
    let p = bench.projector().await?;
    let history = vec![
        (1, added("east", "a", "web", &["10.0.0.1"])),
        (2, added("east", "b", "api", &["10.0.1.1"])),
        (
            3,
            event(
                "east",
                "a",
                "web",
                Change::Updated(route("www-a", "test", "/.*", &["10.0.0.1"])),
            ),
        ),
        (4, removed("east", "b", "api")),
        (5, added("west", "a", "web", &["10.1.0.1"])),
    ];
    let d = |seq: u64, e: &ksr_proto::Event| Delivery {
        seq,
        incarnation: 1,
        event: e.clone(),
    };
    for (seq, e) in &history {
        p.apply_batch(&[d(*seq, e)]).await?;
    }
    let reference = bench.snapshot().await?;
    assert!(reference.contains_key("svc:www-a.test"));
    assert!(reference.contains_key("svc:web-a.test"));

    for (seq, e) in history.iter().rev() {
        let r = p.apply_batch(&[d(*seq, e)]).await?;
        assert_eq!((r.applied, r.stale), (0, 1));
    }
    let all: Vec<Delivery> = history.iter().map(|(s, e)| d(*s, e)).collect();
    p.apply_batch(&all).await?;
    let p2 = bench.projector().await?;
    assert_eq!(p2.apply_batch(&all).await?.stale, 5);
    assert_eq!(
        bench.snapshot().await?,
        reference,
        "same bytes, same ModifyIndexes"
    );
    Ok(())
}

#[tokio::test]
async fn one_name_from_two_clusters_is_one_instance_removed_with_the_last() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    bench
        .publish(&added("west", "shop", "web", &["10.1.0.1"]))
        .await?;
    let snap = bench.settled().await?;
    let body = snap.get("svc:web-shop.test").expect("one instance");
    assert!(body.contains(r#""ksr-clusters":"east,west""#), "{body}");
    bench.publish(&removed("east", "shop", "web")).await?;
    bench.settled().await?;
    bench
        .wait_resolves("web-shop.test.service.consul", true)
        .await?;
    bench.publish(&removed("west", "shop", "web")).await?;
    bench
        .wait_resolves("web-shop.test.service.consul", false)
        .await
}

#[tokio::test]
async fn colliding_names_from_two_namespaces_keep_the_older_claim() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    // `a` in `b-c` and `a-b` in `c` both make the tag `a-b-c`.
    bench
        .publish(&event(
            "east",
            "b-c",
            "a",
            Change::Added(route("a-b-c", "test", "/.*", &["10.0.0.1"])),
        ))
        .await?;
    bench
        .publish(&event(
            "east",
            "c",
            "a-b",
            Change::Added(route("a-b-c", "test", "/.*", &["10.0.0.2"])),
        ))
        .await?;
    let snap = bench.settled().await?;
    assert!(snap["svc:a-b-c.test"].contains(r#""ksr-namespace":"b-c""#));
    let record = &snap["kv:ksr/ksr/consul/names/a-b-c.test"];
    let decoded = String::from_utf8(base64_decode(record))?;
    assert!(
        decoded.contains(r#""owner":"b-c""#) && decoded.contains(r#""waiting":["c"]"#),
        "{decoded}"
    );
    bench.publish(&removed("east", "b-c", "a")).await?;
    eventually(WAIT, || async {
        let snap = bench.snapshot().await?;
        anyhow::ensure!(
            snap["svc:a-b-c.test"].contains(r#""ksr-namespace":"c""#),
            "{snap:?}"
        );
        Ok(())
    })
    .await
}

fn base64_decode(json_string: &str) -> Vec<u8> {
    use base64::Engine;
    let s: String = serde_json::from_str(json_string).unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

#[tokio::test]
async fn reconciling_a_converged_catalog_changes_nothing() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&["--reconcile-interval", "200ms"]);
    ksr_test_support::events::publish_history(&bench.js, 300, 60).await?;
    let before = bench.settled().await?;
    let metrics = |port| async move {
        ksr_test_support::http::get(port, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    };
    eventually(WAIT, || async {
        let m = metrics(p.admin_port).await;
        let runs = m
            .lines()
            .find_map(|l| l.strip_prefix("ksr_consul_reconcile_runs_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        anyhow::ensure!(runs >= 3, "{runs} reconcile runs so far");
        Ok(())
    })
    .await?;
    let m = metrics(p.admin_port).await;
    assert!(m.contains("ksr_consul_reconcile_repairs_total 0"), "{m}");
    assert_eq!(bench.snapshot().await?, before, "no ModifyIndex moved");
    // Every stream pass pulled through the replay consumer (one replica: never held).
    assert!(
        !m.contains(r#"ksr_consul_reconcile_stream_passes_total{read="pushed"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ksr_consul_reconcile_stream_passes_total{read="pulled"}"#),
        "{m}"
    );
    Ok(())
}

#[tokio::test]
async fn upsert_only_keeps_a_removed_name_resolvable() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&["--policy", "upsert-only"]);
    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    bench
        .wait_resolves("web-default.test.service.consul", true)
        .await?;
    bench.publish(&removed("east", "default", "web")).await?;
    bench
        .publish(&added("east", "default", "after", &["10.0.0.2"]))
        .await?;
    bench
        .wait_resolves("after-default.test.service.consul", true)
        .await?;
    bench.settled().await?;
    bench
        .wait_resolves("web-default.test.service.consul", true)
        .await?;
    eventually(WAIT, || async {
        let skipped = p.metric("ksr_consul_removals_skipped_total").await;
        anyhow::ensure!(skipped == 1.0, "skipped {skipped}");
        Ok(())
    })
    .await
}
