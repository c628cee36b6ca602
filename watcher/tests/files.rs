//! The watcher over a manifest directory, against a real nats-server: exactly one event per
//! real change, nothing for no-ops, rejections with reasons, removals after downtime.

mod common;

use common::{Bench, service};
use ksr_proto::EventKind::{Added, Removed, Updated};
use ksr_test_support::eventually;

#[tokio::test]
async fn create_update_delete_of_a_labelled_service_gives_exactly_one_event_each()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    bench.write(
        "web",
        &service(
            "default",
            "webtest1",
            "10.96.0.10",
            &[("path", "/mycontext/.*")],
        ),
    );
    // Unlabelled Services are never published.
    bench.write(
        "other",
        &service("default", "plain", "10.96.0.11", &[]).replace("type: ingress", "app: plain"),
    );
    let w = bench.watcher(&[]);
    w.ready().await?;
    bench.wait_events(&[(Added, "default/webtest1")]).await?;

    // A relist where webtest1 is unchanged (another file changed) publishes nothing; a
    // real change publishes once.
    let before = common::relists(&w).await;
    bench.write(
        "other",
        &service("default", "plain", "10.96.0.12", &[]).replace("type: ingress", "app: plain"),
    );
    common::relisted_since(&w, before).await?;
    bench.wait_events(&[(Added, "default/webtest1")]).await?;
    bench.write(
        "web",
        &service(
            "default",
            "webtest1",
            "10.96.0.10",
            &[("path", "/mycontext/.*")],
        ),
    );
    bench.write(
        "web",
        &service(
            "default",
            "webtest1",
            "10.96.0.10",
            &[("path", "/other/.*"), ("host", "myapp")],
        ),
    );
    bench
        .wait_events(&[(Added, "default/webtest1"), (Updated, "default/webtest1")])
        .await?;
    let events = bench.full_events().await?;
    let route = events[1].1.route().expect("updated carries the route");
    assert_eq!(route.hostname(), "myapp-default.test.service.consul");
    assert_eq!(route.path, "/other/.*");
    assert_eq!(route.backends.len(), 1);
    assert_eq!(route.backends[0].ip.to_string(), "10.96.0.10");
    assert_eq!(route.backends[0].port, 80);
    // The hostname changed: a new claim begins.
    assert_eq!((route.host_since, route.route_since), (0, 0));

    bench.remove("web");
    bench
        .wait_events(&[
            (Added, "default/webtest1"),
            (Updated, "default/webtest1"),
            (Removed, "default/webtest1"),
        ])
        .await?;
    Ok(())
}

#[tokio::test]
async fn each_invalid_annotation_is_rejected_with_its_reason_and_the_rest_flows()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let long = "a".repeat(60);
    bench.write(
        "bad-path",
        &service("default", "badpath", "10.96.0.1", &[("path", "/a`b")]),
    );
    bench.write(
        "bad-regex",
        &service(
            "default",
            "badregex",
            "10.96.0.2",
            &[("path", "/(unclosed")],
        ),
    );
    bench.write(
        "bad-host",
        &service(
            "default",
            "badhost",
            "10.96.0.3",
            &[("host", "myapp.mydomain.com")],
        ),
    );
    bench.write(
        "bad-label",
        &service("default", "badlabel", "10.96.0.7", &[("host", "Front_End")]),
    );
    bench.write("long", &service("default", &long, "10.96.0.4", &[]));
    bench.write("headless", &service("default", "headless", "None", &[]));
    bench.write(
        "bad-port",
        &service("default", "badport", "10.96.0.6", &[("port", "metrics")]),
    );
    bench.write("good", &service("default", "good", "10.96.0.5", &[]));
    let w = bench.watcher(&[]);
    w.ready().await?;
    bench.wait_events(&[(Added, "default/good")]).await?;
    let metrics = w.metrics().await;
    for reason in [
        "invalid_path_annotation",
        "invalid_host_annotation",
        "host_domain_not_allowed",
        "hostname_too_long",
        "headless",
        "invalid_port_annotation",
    ] {
        assert!(
            metrics.contains(&format!(
                "ksr_watcher_rejections_total{{reason=\"{reason}\"}}"
            )),
            "{reason} missing in\n{metrics}"
        );
    }
    assert_eq!(w.metric("ksr_watcher_rejected_services").await, 7.0);
    // A later invalid edit of a routed Service keeps its last valid route.
    bench.write(
        "good",
        &service("default", "good", "10.96.0.5", &[("path", "bad`")]),
    );
    eventually(common::WAIT, || async {
        let rejected = w.metric("ksr_watcher_rejected_services").await;
        anyhow::ensure!(rejected == 8.0, "{rejected} Services rejected");
        Ok(())
    })
    .await?;
    bench.wait_events(&[(Added, "default/good")]).await?;
    Ok(())
}

#[tokio::test]
async fn full_hostnames_route_exactly_under_allowed_domains_and_paths_are_trimmed()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let svc = |name: &str, ip: &str, ann: &[(&str, &str)]| service("default", name, ip, ann);
    bench.write(
        "a",
        &svc("a", "10.96.0.1", &[("host", "myapp.mydomain.com")]),
    );
    bench.write(
        "b",
        &svc("b", "10.96.0.2", &[("host", "app.teams.example.org")]),
    );
    bench.write("c", &svc("c", "10.96.0.3", &[("host", "x.other.net")]));
    bench.write("d", &svc("d", "10.96.0.4", &[("path", " /api/.* ")]));
    bench.write("e", &svc("e", "10.96.0.5", &[("path", r"/v1/\\d+")]));
    let w = bench.watcher(&["--allowed-host-domains", "mydomain.com,example.org"]);
    w.ready().await?;
    bench
        .wait_events_unordered(&[
            (Added, "default/a"),
            (Added, "default/b"),
            (Added, "default/d"),
            (Added, "default/e"),
        ])
        .await?;
    let events = bench.full_events().await?;
    let route = |name: &str| {
        events
            .iter()
            .find(|(_, e)| e.key.name == name)
            .and_then(|(_, e)| e.route().cloned())
            .expect("routed")
    };
    let a = route("a");
    assert_eq!(a.hostname(), "myapp.mydomain.com");
    assert_eq!(a.consul_name(), None, "not under the Consul domain");
    assert_eq!(route("b").hostname(), "app.teams.example.org");
    assert_eq!(route("d").path, "/api/.*");
    assert_eq!(route("e").path, r"/v1/\\d+", "routed as written");
    assert_eq!(
        w.metric(r#"ksr_watcher_rejections_total{reason="host_domain_not_allowed"}"#)
            .await,
        1.0
    );
    assert_eq!(
        w.metric(r#"ksr_watcher_path_warnings_total{reason="double_escape"}"#)
            .await,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_service_deleted_while_the_watcher_is_down_is_removed_once_after_restart()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    bench.write("a", &service("default", "a", "10.96.0.1", &[]));
    bench.write("b", &service("default", "b", "10.96.0.2", &[]));
    let w = bench.watcher(&[]);
    w.ready().await?;
    // Both are published in one flush, concurrently: order between subjects is free.
    bench
        .wait_events_unordered(&[(Added, "default/a"), (Added, "default/b")])
        .await?;
    w.shutdown().await?;

    bench.remove("b");
    let w = bench.watcher(&[]);
    w.ready().await?;
    eventually(common::WAIT, || async {
        let got = bench.events().await?;
        anyhow::ensure!(
            got.len() == 3 && got[2] == (Removed, "default/b".to_owned()),
            "{got:?}"
        );
        Ok(())
    })
    .await?;
    // A second restart publishes nothing new.
    w.shutdown().await?;
    let w = bench.watcher(&[]);
    w.ready().await?;
    assert_eq!(bench.events().await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_source_at_start_up_removes_nothing() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    bench.write("a", &service("default", "a", "10.96.0.1", &[]));
    let w = bench.watcher(&[]);
    w.ready().await?;
    bench.wait_events(&[(Added, "default/a")]).await?;
    w.shutdown().await?;

    // The directory is gone: no list, so no removal, and not ready.
    std::fs::rename(bench.manifests(), bench.dir.path().join("moved"))?;
    let w = bench.watcher(&[]);
    eventually(common::WAIT, || async {
        let m = w.metrics().await;
        anyhow::ensure!(
            m.contains("ksr_watcher_source_errors_total")
                && !m.contains("ksr_watcher_source_errors_total 0"),
            "{m}"
        );
        Ok(())
    })
    .await?;
    let (status, _) = ksr_test_support::http::get(w.admin_port, "/readyz")
        .await
        .unwrap_or_default();
    assert_eq!(status, 503);
    assert_eq!(bench.events().await?.len(), 1);

    // Back: the list completes and still nothing changes.
    std::fs::rename(bench.dir.path().join("moved"), bench.manifests())?;
    w.ready().await?;
    assert_eq!(bench.events().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn two_replicas_for_one_cluster_produce_the_same_stream_as_one() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    for i in 0..20 {
        bench.write(
            &format!("s{i}"),
            &service("team", &format!("s{i}"), &format!("10.96.1.{i}"), &[]),
        );
    }
    let a = bench.watcher(&[]);
    let b = bench.watcher(&["--observer", "replica-b"]);
    a.ready().await?;
    b.ready().await?;
    for i in 0..10 {
        bench.write(
            &format!("s{i}"),
            &service("team", &format!("s{i}"), &format!("10.96.2.{i}"), &[]),
        );
    }
    for i in 10..15 {
        bench.remove(&format!("s{i}"));
    }
    eventually(common::WAIT, || async {
        let got = bench.events().await?;
        let count = |k| got.iter().filter(|(kind, _)| *kind == k).count();
        anyhow::ensure!(
            (count(Added), count(Updated), count(Removed)) == (20, 10, 5),
            "{got:?}"
        );
        Ok(())
    })
    .await?;
    // Settled: each subject's history is exactly one Added, then at most one change.
    let got = bench.events().await?;
    assert_eq!(got.len(), 35, "{got:?}");
    Ok(())
}

#[tokio::test]
async fn set_based_selectors_select_manifests_as_kubernetes_does() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let with = |name: &str, labels: &str| {
        service("default", name, "10.96.0.9", &[]).replace("    type: ingress", labels)
    };
    bench.write("a", &with("a", "    tier: web"));
    bench.write("b", &with("b", "    tier: x"));
    bench.write("c", &with("c", "    other: web"));
    let w = bench.watcher(&["--selector", "tier notin (x)"]);
    w.ready().await?;
    bench
        .wait_events_unordered(&[(Added, "default/a"), (Added, "default/c")])
        .await?;
    Ok(())
}

#[test]
fn an_invalid_selector_is_refused_at_start_naming_the_flag() {
    use clap::Parser;
    for bad in ["env in (prod", "type=ingress,", "env IN (prod)", "a=b c"] {
        let err = ksr_watcher::config::Config::try_parse_from([
            "ksr-watcher",
            "--cluster",
            "east",
            "--selector",
            bad,
        ])
        .expect_err(bad)
        .to_string();
        assert!(err.contains("--selector"), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn a_service_that_stops_being_routable_is_removed_but_an_annotation_mistake_keeps_its_route()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    for name in ["ext", "headless", "typo"] {
        bench.write(name, &service("default", name, "10.96.0.20", &[]));
    }
    // Most real manifests leave clusterIP to the apiserver: say that, not "headless".
    bench.write(
        "noip",
        &service("default", "noip", "10.96.0.21", &[]).replace("  clusterIP: 10.96.0.21\n", ""),
    );
    let w = bench.watcher(&[]);
    w.ready().await?;
    bench
        .wait_events_unordered(&[
            (Added, "default/ext"),
            (Added, "default/headless"),
            (Added, "default/typo"),
        ])
        .await?;
    assert_eq!(
        w.metric(r#"ksr_watcher_rejections_total{reason="no_cluster_ip"}"#)
            .await
            .min(1.0),
        1.0
    );
    bench.write(
        "ext",
        &service("default", "ext", "10.96.0.20", &[]).replace(
            "spec:\n",
            "spec:\n  type: ExternalName\n  externalName: db.example.org\n",
        ),
    );
    bench.write("headless", &service("default", "headless", "None", &[]));
    bench.write(
        "typo",
        &service("default", "typo", "10.96.0.20", &[("path", "/static/**")]),
    );
    bench
        .wait_events_unordered(&[
            (Added, "default/ext"),
            (Added, "default/headless"),
            (Added, "default/typo"),
            (Removed, "default/ext"),
            (Removed, "default/headless"),
        ])
        .await?;
    eventually(common::WAIT, || async {
        let rejected = w.metric("ksr_watcher_rejected_services").await;
        anyhow::ensure!(rejected == 4.0, "{rejected} Services rejected");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_5000_port_service_is_rejected_as_too_large_while_100_others_flow() -> anyhow::Result<()>
{
    let bench = Bench::start().await?;
    let ports: String = (1..=5000)
        .map(|p| format!("  - name: p{p}\n    port: {p}\n"))
        .collect();
    let huge = service("default", "huge", "10.96.9.9", &[]);
    let huge = huge[..huge.find("  ports:").expect("ports")].to_owned() + "  ports:\n" + &ports;
    bench.write("huge", &huge);
    let mut want = Vec::new();
    for i in 0..100 {
        bench.write(
            &format!("s{i}"),
            &service("default", &format!("s{i}"), &format!("10.96.1.{i}"), &[]),
        );
        want.push(format!("default/s{i}"));
    }
    // 5,000 named ports encode to ~60 KiB: over this limit (the default, 256 KiB, is
    // sized for Services with ~10,000 endpoints).
    let w = bench.watcher(&["--max-event-bytes", "32768"]);
    w.ready().await?;
    let want: Vec<_> = want.iter().map(|n| (Added, n.as_str())).collect();
    bench.wait_events_unordered(&want).await?;
    assert_eq!(
        w.metric(r#"ksr_watcher_rejections_total{reason="too_large"}"#)
            .await
            .min(1.0),
        1.0
    );
    assert_eq!(w.metric("ksr_watcher_rejected_services").await, 1.0);
    Ok(())
}
