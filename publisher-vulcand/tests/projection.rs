//! The vulcand projection against real nats-server and etcd, key by key.

mod common;

use common::{Bench, WAIT, route_id, wait_key};
use ksr_projection::apply::Store;
use ksr_proto::Change;
use ksr_test_support::events::{added, event, removed, route};
use ksr_test_support::eventually;

const HOST: &str = "webtest1-default.test.service.consul";

fn frontend(id: &str, host: &str, path: &str) -> String {
    format!(
        r#"{{"Type":"http","BackendId":"{id}","Route":"Host(`{host}`) && PathRegexp(`{path}`)"}}"#
    )
}

#[tokio::test]
async fn added_updated_removed_produce_exactly_the_vulcand_keys() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let id = route_id(HOST, "/mycontext/.*");

    let r1 = route(
        "webtest1-default",
        "test",
        "/mycontext/.*",
        &["10.0.0.1", "10.0.0.2"],
    );
    bench
        .publish(&event("east", "default", "webtest1", Change::Added(r1)))
        .await?;
    let keys = eventually(WAIT, || async {
        let k = bench.snapshot("vulcand/").await?;
        anyhow::ensure!(k.len() == 4, "{k:#?}");
        Ok(k)
    })
    .await?;
    let expected: Vec<(String, String)> = vec![
        (
            format!("vulcand/backends/{id}/backend"),
            r#"{"Type":"http"}"#.into(),
        ),
        (
            format!("vulcand/backends/{id}/servers/east-10-0-0-1-80"),
            r#"{"URL":"http://10.0.0.1:80"}"#.into(),
        ),
        (
            format!("vulcand/backends/{id}/servers/east-10-0-0-2-80"),
            r#"{"URL":"http://10.0.0.2:80"}"#.into(),
        ),
        (
            format!("vulcand/frontends/{id}/frontend"),
            frontend(&id, HOST, "/mycontext/.*"),
        ),
    ];
    assert_eq!(keys.into_iter().collect::<Vec<_>>(), expected);

    // An update that drops a backend removes exactly its server key.
    let r2 = route("webtest1-default", "test", "/mycontext/.*", &["10.0.0.2"]);
    bench
        .publish(&event("east", "default", "webtest1", Change::Updated(r2)))
        .await?;
    wait_key(
        &bench,
        &format!("vulcand/backends/{id}/servers/east-10-0-0-1-80"),
        None,
    )
    .await?;
    assert_eq!(bench.settled_vulcand().await?.len(), 3);

    // A host change moves the route: the old frontend and backend go, the new ones come.
    let r3 = route("myapp-default", "test", "/mycontext/.*", &["10.0.0.2"]);
    bench
        .publish(&event("east", "default", "webtest1", Change::Updated(r3)))
        .await?;
    let new_id = route_id("myapp-default.test.service.consul", "/mycontext/.*");
    wait_key(
        &bench,
        &format!("vulcand/frontends/{new_id}/frontend"),
        Some(&frontend(
            &new_id,
            "myapp-default.test.service.consul",
            "/mycontext/.*",
        )),
    )
    .await?;
    let keys = bench.settled_vulcand().await?;
    assert!(keys.keys().all(|k| k.contains(&new_id)), "{keys:#?}");

    bench
        .publish(&removed("east", "default", "webtest1"))
        .await?;
    eventually(WAIT, || async {
        let k = bench.snapshot("vulcand/").await?;
        anyhow::ensure!(k.is_empty(), "left behind: {k:#?}");
        Ok(())
    })
    .await?;
    // The fence stays as a tombstone; no route record is left.
    let state = bench.snapshot("ksr/ksr/vulcand/").await?;
    assert_eq!(state.len(), 1, "{state:#?}");
    assert!(
        state
            .values()
            .next()
            .is_some_and(|v| v.contains("\"claim\":null"))
    );
    Ok(())
}

#[tokio::test]
async fn duplicates_out_of_order_and_replays_leave_etcd_byte_identical() -> anyhow::Result<()> {
    use ksr_projection::Delivery;
    use ksr_publisher_vulcand::{layout::Layout, projector::*};

    let bench = Bench::start().await?;
    let kv = bench.etcd().await?.kv_client();
    let registry = ksr_runtime::metrics::MetricsRegistry::new();
    let p = VulcandProjector::new(
        kv,
        Layout::new("vulcand", "ksr"),
        128,
        ksr_publisher_vulcand::projector::metrics(&registry),
    )
    .await?;

    let history = vec![
        (1, added("east", "a", "web", &["10.0.0.1"])),
        (2, added("east", "b", "api", &["10.0.1.1", "10.0.1.2"])),
        (
            3,
            event(
                "east",
                "a",
                "web",
                Change::Updated(route("web-a", "test", "/.*", &["10.0.0.1", "10.0.0.9"])),
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
    let reference = bench.snapshot("").await?;
    assert!(
        reference
            .keys()
            .any(|k| k.contains("servers/west-10-1-0-1-80"))
    );

    // Everything again, in reverse, twice, and as one batch: nothing changes.
    for (seq, e) in history.iter().rev() {
        let r = p.apply_batch(&[d(*seq, e)]).await?;
        assert_eq!((r.applied, r.stale), (0, 1));
    }
    let all: Vec<Delivery> = history.iter().map(|(s, e)| d(*s, e)).collect();
    p.apply_batch(&all).await?;
    assert_eq!(bench.snapshot("").await?, reference);

    // A fresh projector (another replica, empty cache) replaying is also a no-op.
    let kv = bench.etcd().await?.kv_client();
    let p2 = VulcandProjector::new(
        kv,
        Layout::new("vulcand", "ksr"),
        128,
        ksr_publisher_vulcand::projector::metrics(&registry),
    )
    .await?;
    let r = p2.apply_batch(&all).await?;
    assert_eq!(r.stale, 5);
    assert_eq!(bench.snapshot("").await?, reference);
    Ok(())
}

#[tokio::test]
async fn one_service_in_two_clusters_fans_in_and_each_removal_removes_only_its_servers()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let id = route_id("web-shop.test.service.consul", "/.*");
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    bench
        .publish(&added("west", "shop", "web", &["10.1.0.1", "10.1.0.2"]))
        .await?;
    let keys = eventually(WAIT, || async {
        let k = bench.snapshot("vulcand/").await?;
        anyhow::ensure!(k.len() == 5, "{k:#?}");
        Ok(k)
    })
    .await?;
    assert_eq!(keys.keys().filter(|k| k.contains("/frontends/")).count(), 1);
    for sid in ["east-10-0-0-1-80", "west-10-1-0-1-80", "west-10-1-0-2-80"] {
        assert!(
            keys.contains_key(&format!("vulcand/backends/{id}/servers/{sid}")),
            "{sid}"
        );
    }

    bench.publish(&removed("west", "shop", "web")).await?;
    wait_key(
        &bench,
        &format!("vulcand/backends/{id}/servers/west-10-1-0-1-80"),
        None,
    )
    .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 3, "{keys:#?}");
    assert!(keys.contains_key(&format!("vulcand/frontends/{id}/frontend")));

    bench.publish(&removed("east", "shop", "web")).await?;
    eventually(WAIT, || async {
        let k = bench.snapshot("vulcand/").await?;
        anyhow::ensure!(k.is_empty(), "{k:#?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_hostname_belongs_to_the_first_namespace_and_passes_on_when_it_goes() -> anyhow::Result<()>
{
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    // `a` in namespace `b-c` and `host: a-b` in namespace `c` both produce `a-b-c`.
    let first = event(
        "east",
        "b-c",
        "a",
        Change::Added(route("a-b-c", "test", "/.*", &["10.0.0.1"])),
    );
    let second = event(
        "east",
        "c",
        "a-b",
        Change::Added(route("a-b-c", "test", "/.*", &["10.0.0.2"])),
    );
    // The same namespace's hostname with a path nobody else claims: still not theirs.
    let sneaky = event(
        "east",
        "c",
        "admin",
        Change::Added(route("a-b-c", "test", "/admin.*", &["10.0.0.3"])),
    );
    // Another Service of the owning namespace on another path: routed.
    let sibling = event(
        "east",
        "b-c",
        "api",
        Change::Added(route("a-b-c", "test", "/api/.*", &["10.0.0.4"])),
    );
    for ev in [&first, &second, &sneaky, &sibling] {
        bench.publish(ev).await?;
    }
    let host = "a-b-c.test.service.consul";
    let (id, api) = (route_id(host, "/.*"), route_id(host, "/api/.*"));
    let keys = bench.settled_vulcand().await?;
    let servers: std::collections::BTreeSet<&String> =
        keys.keys().filter(|k| k.contains("/servers/")).collect();
    let want = [
        format!("vulcand/backends/{id}/servers/east-10-0-0-1-80"),
        format!("vulcand/backends/{api}/servers/east-10-0-0-4-80"),
    ];
    assert_eq!(servers, want.iter().collect());
    assert!(!keys.keys().any(|k| k.contains(&route_id(host, "/admin.*"))));

    // The status is readable under our prefix: the owner and who waits.
    let record = bench
        .snapshot(&format!("ksr/ksr/vulcand/hosts/ksr.{host}"))
        .await?;
    let record: serde_json::Value =
        serde_json::from_str(record.values().next().expect("host record"))?;
    assert_eq!(record["owner"], "b-c");
    assert_eq!(record["waiting"], serde_json::json!(["c"]));

    // The owner's claims go: namespace `c` takes the hostname, both of its paths.
    bench.publish(&removed("east", "b-c", "a")).await?;
    bench.publish(&removed("east", "b-c", "api")).await?;
    wait_key(
        &bench,
        &format!("vulcand/backends/{id}/servers/east-10-0-0-2-80"),
        Some(r#"{"URL":"http://10.0.0.2:80"}"#),
    )
    .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 6, "{keys:#?}");
    assert!(keys.contains_key(&format!(
        "vulcand/frontends/{}/frontend",
        route_id(host, "/admin.*")
    )));
    Ok(())
}

#[tokio::test]
async fn a_full_hostname_is_routed_exactly() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let mut r = route("myapp", "test", "/.*", &["10.0.0.1"]);
    r.full_host = Some("myapp.mydomain.com".into());
    bench
        .publish(&event("east", "default", "web", Change::Added(r)))
        .await?;
    let id = route_id("myapp.mydomain.com", "/.*");
    wait_key(
        &bench,
        &format!("vulcand/frontends/{id}/frontend"),
        Some(&frontend(&id, "myapp.mydomain.com", "/.*")),
    )
    .await
}

#[tokio::test]
async fn within_a_namespace_the_older_claim_keeps_the_path_and_the_other_takes_over()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let one = event(
        "east",
        "shop",
        "web",
        Change::Added(route("web-shop", "test", "/.*", &["10.0.0.1"])),
    );
    let two = event(
        "east",
        "shop",
        "web2",
        Change::Added(route("web-shop", "test", "/.*", &["10.0.0.2"])),
    );
    bench.publish(&one).await?;
    bench.publish(&two).await?;
    let id = route_id("web-shop.test.service.consul", "/.*");
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 3, "{keys:#?}");
    assert!(keys.contains_key(&format!("vulcand/backends/{id}/servers/east-10-0-0-1-80")));
    let record = bench
        .snapshot("ksr/ksr/vulcand/hosts/ksr.web-shop.test.service.consul")
        .await?;
    let record: serde_json::Value =
        serde_json::from_str(record.values().next().expect("host record"))?;
    assert_eq!(record["waiting"], serde_json::json!(["shop/web2 on /.*"]));
    bench.publish(&removed("east", "shop", "web")).await?;
    wait_key(
        &bench,
        &format!("vulcand/backends/{id}/servers/east-10-0-0-2-80"),
        Some(r#"{"URL":"http://10.0.0.2:80"}"#),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn records_of_the_previous_version_are_migrated_and_the_keys_stay() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let host = "web-shop.test.service.consul";
    let id = route_id(host, "/.*");
    let mut etcd = bench.etcd().await?;
    // What the previous version left: a route record, a fence naming the route id, the keys.
    let claim = serde_json::json!([{"cluster": "east", "namespace": "shop", "name": "web",
        "since": 1, "seq": 1, "data": ["10.0.0.1:80"]}]);
    let record = serde_json::json!({"host": host, "path": "/.*", "claims": claim,
        "owner": "shop/web", "waiting": []});
    etcd.put(
        format!("ksr/ksr/vulcand/routes/{id}"),
        record.to_string(),
        None,
    )
    .await?;
    etcd.put(
        "ksr/ksr/vulcand/services/east/shop/web",
        serde_json::json!({"seq": 1, "claim": id}).to_string(),
        None,
    )
    .await?;
    let before = [
        (
            format!("vulcand/backends/{id}/backend"),
            r#"{"Type":"http"}"#.to_owned(),
        ),
        (
            format!("vulcand/backends/{id}/servers/east-10-0-0-1-80"),
            r#"{"URL":"http://10.0.0.1:80"}"#.to_owned(),
        ),
        (
            format!("vulcand/frontends/{id}/frontend"),
            frontend(&id, host, "/.*"),
        ),
    ];
    for (k, v) in &before {
        etcd.put(k.as_str(), v.as_str(), None).await?;
    }

    let _p = bench.publisher(&[]);
    bench
        .publish(&added("east", "other", "api", &["10.0.0.9"]))
        .await?;
    // The route records go, then the fences are repointed (a second step).
    eventually(WAIT, || async {
        let s = bench.snapshot("ksr/").await?;
        anyhow::ensure!(!s.keys().any(|k| k.contains("/routes/")), "{s:#?}");
        let fence: serde_json::Value =
            serde_json::from_str(&s["ksr/ksr/vulcand/services/east/shop/web"])?;
        anyhow::ensure!(fence["claim"] == format!("ksr.{host}"), "{fence}");
        Ok(())
    })
    .await?;
    let keys = bench.settled_vulcand().await?;
    for (k, v) in &before {
        assert_eq!(keys.get(k), Some(v), "{k}");
    }
    // The migrated Service still goes away when it is removed.
    bench.publish(&removed("east", "shop", "web")).await?;
    wait_key(&bench, &format!("vulcand/frontends/{id}/frontend"), None).await?;
    Ok(())
}

#[tokio::test]
async fn a_poison_message_is_terminated_and_the_next_events_apply() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    ksr_test_support::events::publish_raw(
        &bench.js,
        "ksr.routes.east.default.broken",
        "added",
        "east",
        b"garbage".to_vec(),
    )
    .await?;
    bench
        .publish(&added("east", "default", "after", &["10.0.0.3"]))
        .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 3, "{keys:#?}");
    Ok(())
}

#[tokio::test]
async fn a_service_with_more_backends_than_one_transaction_holds_is_projected_whole()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let ips: Vec<String> = (0..300)
        .map(|i| format!("10.2.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    bench
        .publish(&added("east", "big", "fleet", &ip_refs))
        .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 302);
    bench
        .publish(&added("east", "big", "fleet", &ip_refs[..10]))
        .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 12);
    Ok(())
}

#[tokio::test]
async fn upsert_only_never_deletes_and_counts_what_it_skipped() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&["--policy", "upsert-only", "--reconcile-interval", "200ms"]);
    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    assert_eq!(bench.settled_vulcand().await?.len(), 3);
    bench.publish(&removed("east", "default", "web")).await?;
    bench
        .publish(&added("east", "default", "after", &["10.0.0.2"]))
        .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(
        keys.len(),
        6,
        "the removed Service is still routed: {keys:#?}"
    );
    eventually(WAIT, || async {
        let skipped = p.metric("ksr_vulcand_removals_skipped_total").await;
        let runs = p.metric("ksr_vulcand_reconcile_runs_total").await;
        anyhow::ensure!(
            skipped == 1.0 && runs >= 2.0,
            "skipped {skipped}, runs {runs}"
        );
        Ok(())
    })
    .await?;
    // Reconciliation does not delete either.
    assert_eq!(bench.snapshot("vulcand/").await?, keys);
    Ok(())
}
