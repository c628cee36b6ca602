//! The watcher against a fake apiserver speaking the real list/watch protocol (bookmarks,
//! 410 Gone, dropped connections, failing lists) and a real nats-server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Bench, WAIT};
use ksr_proto::EventKind::{Added, Removed, Updated};
use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::eventually;
use serde_json::{Value, json};

fn svc(ns: &str, name: &str, ip: &str, annotations: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "labels": {"type": "ingress"}, "annotations": annotations},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(ns: &str, service: &str, name: &str, endpoints: &[(&str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    json!({"metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080}]})
}

fn kube_watcher(bench: &Bench, api: &FakeApiServer, extra: &[&str]) -> common::Replica {
    bench.watcher_with(&["--source", "kubernetes", "--kube-url", api.url()], extra)
}

/// The stream's current state: namespace/name → backend addresses "ip:port(ready)".
async fn stream_state(bench: &Bench) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let stream = bench.js.get_stream("KSR_ROUTES").await?;
    let latest = ksr_runtime::replay::latest_per_subject(&stream, "ksr.routes.>").await?;
    Ok(latest
        .into_iter()
        .filter_map(|l| l.event.ok())
        .filter_map(|e| {
            let r = e.route()?;
            let b = r
                .backends
                .iter()
                .map(|b| {
                    format!(
                        "{}:{}{}",
                        b.ip,
                        b.port,
                        if b.ready { "" } else { "(not ready)" }
                    )
                })
                .collect();
            Some((format!("{}/{}", e.key.namespace, e.key.name), b))
        })
        .collect())
}

#[tokio::test]
async fn a_labelled_service_is_published_updated_and_removed_exactly_once() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        svc(
            "default",
            "webtest1",
            "10.96.0.10",
            json!({"path": "/mycontext/.*"}),
        ),
    );
    let mut plain = svc("default", "plain", "10.96.0.11", json!({}));
    plain["metadata"]["labels"] = json!({"app": "plain"});
    api.apply(Resource::Services, plain);
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    bench.wait_events(&[(Added, "default/webtest1")]).await?;

    // A no-op update (new resourceVersion, an unrelated annotation) publishes nothing: the
    // watcher evaluates it on its own (its `unchanged` counter moves) before the real change
    // is even made, so the two never share a coalescing window.
    api.apply(
        Resource::Services,
        svc(
            "default",
            "webtest1",
            "10.96.0.10",
            json!({"path": "/mycontext/.*", "note": "x"}),
        ),
    );
    eventually(WAIT, || async {
        let n = w.metric("ksr_watcher_unchanged_total").await;
        anyhow::ensure!(n >= 1.0, "the no-op update was not evaluated yet ({n})");
        Ok(())
    })
    .await?;
    bench.wait_events(&[(Added, "default/webtest1")]).await?;
    api.apply(
        Resource::Services,
        svc(
            "default",
            "webtest1",
            "10.96.0.10",
            json!({"path": "/v2/.*"}),
        ),
    );
    bench
        .wait_events(&[(Added, "default/webtest1"), (Updated, "default/webtest1")])
        .await?;
    api.delete(Resource::Services, "default", "webtest1");
    bench
        .wait_events(&[
            (Added, "default/webtest1"),
            (Updated, "default/webtest1"),
            (Removed, "default/webtest1"),
        ])
        .await?;
    let (_, watches) = api.requests(Resource::Services);
    assert!(watches >= 1, "the watcher watched");
    Ok(())
}

#[tokio::test]
async fn endpoints_mode_publishes_addresses_with_readiness_and_coalesces_churn()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        svc("shop", "web", "10.96.0.20", json!({})),
    );
    api.apply(
        Resource::EndpointSlices,
        slice(
            "shop",
            "web",
            "web-abc",
            &[("10.1.0.1", true), ("10.1.0.2", false)],
        ),
    );
    let w = kube_watcher(
        &bench,
        &api,
        &["--address-mode", "endpoints", "--coalesce-window", "400ms"],
    );
    w.ready().await?;
    bench.wait_events(&[(Added, "shop/web")]).await?;
    assert_eq!(
        stream_state(&bench).await?["shop/web"],
        vec!["10.1.0.1:8080", "10.1.0.2:8080(not ready)"]
    );

    // Twelve endpoint changes paced 100 ms apart, spread over several 400 ms windows: one
    // event per window at most (never one per change), the last change wins, and nothing
    // follows once the churn stops.
    let started = std::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for i in 3..15 {
        pace.tick().await;
        let eps: Vec<(String, bool)> = (1..=i).map(|n| (format!("10.1.0.{n}"), true)).collect();
        let refs: Vec<(&str, bool)> = eps.iter().map(|(ip, r)| (ip.as_str(), *r)).collect();
        api.apply(
            Resource::EndpointSlices,
            slice("shop", "web", "web-abc", &refs),
        );
    }
    let windows = (started.elapsed().as_millis() / 400) as usize + 2;
    eventually(WAIT, || async {
        anyhow::ensure!(stream_state(&bench).await?["shop/web"].len() == 14);
        Ok(())
    })
    .await?;
    let events = bench.events().await?;
    let updates = events.len() - 1;
    assert!(
        (2..=windows).contains(&updates),
        "12 changes over {windows} windows made {updates} updates: {events:?}"
    );
    let mut want = vec![(Added, "shop/web")];
    want.extend(std::iter::repeat_n((Updated, "shop/web"), updates));
    bench.wait_events(&want).await?;
    Ok(())
}

#[tokio::test]
async fn a_lone_change_goes_out_at_once_and_a_second_one_waits_for_the_window() -> anyhow::Result<()>
{
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        svc("shop", "a", "10.96.0.30", json!({})),
    );
    // A window far longer than the test: whatever is published was not waiting for it.
    let w = kube_watcher(&bench, &api, &["--coalesce-window", "1h"]);
    w.ready().await?;
    bench.wait_events(&[(Added, "shop/a")]).await?;

    // A Service not published within the window goes out at once: "b" is new.
    api.apply(
        Resource::Services,
        svc("shop", "b", "10.96.0.31", json!({})),
    );
    bench
        .wait_events(&[(Added, "shop/a"), (Added, "shop/b")])
        .await?;
    api.apply(
        Resource::Services,
        svc("shop", "b", "10.96.0.31", json!({"path": "/v2/.*"})),
    );
    api.apply(
        Resource::Services,
        svc("shop", "a", "10.96.0.30", json!({"path": "/v3/.*"})),
    );
    // Published within the window ("a" by the first full diff, "b" just now), both changes
    // wait for the window's end: the metric counts them, the stream says what it said.
    eventually(WAIT, || async {
        let n = w.metric("ksr_watcher_pending_services").await;
        anyhow::ensure!(n == 2.0, "pending {n}");
        Ok(())
    })
    .await?;
    bench
        .wait_events(&[(Added, "shop/a"), (Added, "shop/b")])
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_410_mid_watch_relists_and_the_stream_ends_equal_to_the_cluster() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    for i in 0..5 {
        api.apply(
            Resource::Services,
            svc("team", &format!("s{i}"), &format!("10.96.1.{i}"), json!({})),
        );
    }
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    eventually(WAIT, || async {
        anyhow::ensure!(stream_state(&bench).await?.len() == 5);
        Ok(())
    })
    .await?;
    let (lists_before, _) = api.requests(Resource::Services);

    // The watch ends, changes happen, and history is compacted: the re-watch gets 410 and the
    // watcher relists; the Service deleted in the gap is removed, the changed one updated.
    api.drop_watches();
    api.delete(Resource::Services, "team", "s1");
    api.apply(
        Resource::Services,
        svc("team", "s2", "10.96.9.9", json!({})),
    );
    api.compact();
    api.drop_watches();
    eventually(WAIT, || async {
        let state = stream_state(&bench).await?;
        anyhow::ensure!(
            state.len() == 4 && state["team/s2"] == vec!["10.96.9.9:80"],
            "{state:?}"
        );
        Ok(())
    })
    .await?;
    let (lists_after, _) = api.requests(Resource::Services);
    assert!(
        lists_after > lists_before,
        "410 led to a relist ({lists_before} → {lists_after})"
    );
    let events = bench.events().await?;
    assert_eq!(
        events
            .iter()
            .filter(|(k, n)| *k == Removed && n == "team/s1")
            .count(),
        1,
        "{events:?}"
    );
    assert_eq!(events.len(), 7, "5 added, 1 removed, 1 updated: {events:?}");
    Ok(())
}

#[tokio::test]
async fn failing_and_throttled_lists_at_start_up_are_retried_and_remove_nothing()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        svc("default", "a", "10.96.0.1", json!({})),
    );
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    bench.wait_events(&[(Added, "default/a")]).await?;
    w.shutdown().await?;

    api.fail_lists(1, 500, None);
    api.fail_lists(1, 429, Some(1));
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    let (lists, _) = api.requests(Resource::Services);
    assert!(lists >= 3, "the failed lists were retried ({lists})");
    assert_eq!(
        bench.events().await?,
        vec![(Added, "default/a".to_owned())],
        "nothing removed or republished"
    );
    Ok(())
}

#[tokio::test]
async fn dropped_watches_and_a_nats_restart_end_with_the_stream_equal_to_the_cluster()
-> anyhow::Result<()> {
    let mut bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    for i in 0..10 {
        api.apply(
            Resource::Services,
            svc("team", &format!("s{i}"), &format!("10.96.1.{i}"), json!({})),
        );
    }
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    // Staleness metrics: a full list and a complete publish happened, no failure streak.
    let listed = w
        .metric("ksr_watcher_last_full_list_timestamp_seconds")
        .await;
    let published = w.metric("ksr_watcher_last_publish_timestamp_seconds").await;
    assert!(listed > 0.0 && published > 0.0, "{listed} {published}");
    assert_eq!(
        w.metric("ksr_watcher_consecutive_publish_failures").await,
        0.0
    );
    api.drop_watches();
    for i in 0..5 {
        api.apply(
            Resource::Services,
            svc("team", &format!("s{i}"), &format!("10.96.2.{i}"), json!({})),
        );
    }
    api.drop_watches();
    bench.nats.stop();
    // Changes while NATS is down are not lost: the watcher re-diffs once it is back.
    api.delete(Resource::Services, "team", "s9");
    api.apply(
        Resource::Services,
        svc("team", "s8", "10.96.3.8", json!({})),
    );
    eventually(WAIT, || async {
        let failures = w.metric("ksr_watcher_consecutive_publish_failures").await;
        anyhow::ensure!(failures >= 1.0, "no failed publishing round counted yet");
        Ok(())
    })
    .await?;
    bench.nats.restart().await?;
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..9 {
        let ip = match i {
            0..5 => format!("10.96.2.{i}:80"),
            8 => "10.96.3.8:80".to_owned(),
            _ => format!("10.96.1.{i}:80"),
        };
        expected.insert(format!("team/s{i}"), vec![ip]);
    }
    eventually(WAIT, || async {
        let state = stream_state(&bench).await?;
        anyhow::ensure!(state == expected, "{state:#?}");
        let failures = w.metric("ksr_watcher_consecutive_publish_failures").await;
        anyhow::ensure!(failures == 0.0, "{failures} failed rounds in a row");
        Ok(())
    })
    .await?;
    let republished = w.metric("ksr_watcher_last_publish_timestamp_seconds").await;
    assert!(republished > published, "{republished} <= {published}");
    Ok(())
}

#[tokio::test]
async fn a_hanging_watch_is_detected_and_re_established() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        svc("default", "a", "10.96.0.1", json!({})),
    );
    // A watch silent for longer than timeoutSeconds + 5 s counts as dead.
    let w = kube_watcher(&bench, &api, &["--watch-timeout", "1"]);
    w.ready().await?;
    bench.wait_events(&[(Added, "default/a")]).await?;
    let (_, watches_before) = api.requests(Resource::Services);
    api.hang_watches(1);
    api.drop_watches();
    // The re-watch hangs; the change below can only arrive once the watcher gives up on it.
    ksr_test_support::wait_until("the hanging watch", WAIT, || async {
        (api.requests(Resource::Services).1 > watches_before).then_some(())
    })
    .await?;
    api.apply(
        Resource::Services,
        svc("default", "a", "10.96.0.2", json!({})),
    );
    bench
        .wait_events(&[(Added, "default/a"), (Updated, "default/a")])
        .await?;
    let (_, watches_after) = api.requests(Resource::Services);
    assert!(
        watches_after >= watches_before + 2,
        "re-watched after the hang ({watches_before} → {watches_after})"
    );
    Ok(())
}

#[tokio::test]
async fn a_set_based_selector_is_sent_to_the_apiserver_and_selects_as_kubernetes_does()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    let labelled = |name: &str, labels: Value| {
        json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
               "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}})
    };
    api.apply(Resource::Services, labelled("prod", json!({"env": "prod"})));
    api.apply(
        Resource::Services,
        labelled("staging", json!({"env": "staging"})),
    );
    api.apply(Resource::Services, labelled("dev", json!({"env": "dev"})));
    api.apply(
        Resource::Services,
        labelled("canary", json!({"env": "prod", "canary": "true"})),
    );
    let w = kube_watcher(
        &bench,
        &api,
        &["--selector", "env in (prod,staging),!canary"],
    );
    w.ready().await?;
    bench
        .wait_events_unordered(&[(Added, "default/prod"), (Added, "default/staging")])
        .await?;
    Ok(())
}

/// Runs `ksrctl confirm-removals` (the real binary) against the bench's NATS.
async fn confirm_removals(bench: &Bench, cluster: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(ksr_test_support::workspace_binary("ksrctl")?)
        .args([
            "confirm-removals",
            "--cluster",
            cluster,
            "--nats-url",
            &bench.nats.url(),
        ])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_watcher_restarted_on_an_empty_apiserver_or_a_selector_that_matches_nothing_removes_nothing_until_confirmed()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for n in &names {
        api.apply(
            Resource::Services,
            svc("default", n, "10.96.0.1", json!({})),
        );
    }
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    let added: Vec<_> = names
        .iter()
        .map(|n| (Added, format!("default/{n}")))
        .collect();
    let added_ref: Vec<_> = added.iter().map(|(k, n)| (*k, n.as_str())).collect();
    bench.wait_events_unordered(&added_ref).await?;
    w.shutdown().await?;

    // A selector that now matches nothing: every Service looks deleted. Nothing is removed.
    let w = kube_watcher(&bench, &api, &["--selector", "type=ingres"]);
    eventually(WAIT, || async {
        let held = w.metric("ksr_watcher_held_removals").await;
        anyhow::ensure!(held == 10.0, "held {held}");
        Ok(())
    })
    .await?;
    let (status, text) = w.readyz().await.expect("readyz answers");
    assert_eq!(status, 503);
    assert!(
        text.contains("holding 10 removals") && text.contains("ksrctl confirm-removals"),
        "{text}"
    );
    w.shutdown().await?;

    // An empty apiserver of the same cluster (a restored or replaced control plane): held as
    // well, and released on confirmation.
    let empty = FakeApiServer::start_with_uid(&api.cluster_uid()).await?;
    let w = kube_watcher(&bench, &empty, &[]);
    eventually(WAIT, || async {
        let held = w.metric("ksr_watcher_held_removals").await;
        anyhow::ensure!(held == 10.0, "held {held}");
        Ok(())
    })
    .await?;
    bench.wait_events_unordered(&added_ref).await?;
    let said = confirm_removals(&bench, "east").await?;
    assert!(said.contains("publishes the 10 removals"), "{said}");
    let mut all = added.clone();
    all.extend(names.iter().map(|n| (Removed, format!("default/{n}"))));
    let all_ref: Vec<_> = all.iter().map(|(k, n)| (*k, n.as_str())).collect();
    bench.wait_events_unordered(&all_ref).await?;
    w.ready().await?;
    assert_eq!(w.metric("ksr_watcher_held_removals").await, 0.0);
    Ok(())
}

#[tokio::test]
async fn a_second_watcher_given_the_same_cluster_name_for_another_cluster_is_refused_unless_it_adopts()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        svc("default", "web", "10.96.0.1", json!({})),
    );
    let first = kube_watcher(&bench, &api, &[]);
    first.ready().await?;
    bench.wait_events(&[(Added, "default/web")]).await?;

    // A copy-pasted manifest: same --cluster, another apiserver (another kube-system UID).
    let other = FakeApiServer::start().await?;
    other.apply(
        Resource::Services,
        svc("default", "api", "10.96.0.2", json!({})),
    );
    let second = kube_watcher(&bench, &other, &[]);
    eventually(WAIT, || async {
        let (status, text) = second
            .readyz()
            .await
            .ok_or_else(|| anyhow::anyhow!("no answer"))?;
        anyhow::ensure!(
            status == 503 && text.contains("refusing to publish"),
            "{text}"
        );
        anyhow::ensure!(
            text.contains(&other.cluster_uid()) && text.contains("--adopt-cluster"),
            "{text}"
        );
        Ok(())
    })
    .await?;
    // Replicas of the same cluster keep working together.
    let replica = kube_watcher(&bench, &api, &[]);
    replica.ready().await?;
    bench.wait_events(&[(Added, "default/web")]).await?;
    second.shutdown().await?;
    first.shutdown().await?;
    replica.shutdown().await?;

    // Deliberately: it takes the name over (its own state replaces the other's).
    let adopter = kube_watcher(&bench, &other, &["--adopt-cluster", "--allow-mass-removal"]);
    adopter.ready().await?;
    bench
        .wait_events_unordered(&[
            (Added, "default/web"),
            (Added, "default/api"),
            (Removed, "default/web"),
        ])
        .await?;
    Ok(())
}

/// A first list larger than a flush's chunk (1,024 Services) is published in several chunks:
/// the stream then holds exactly the model's route for each Service, one event each, and a
/// Service added after a dropped watch is the only event that follows.
#[tokio::test]
async fn a_list_larger_than_a_flush_chunk_is_published_whole_and_exactly() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    let n = 2_500;
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..n {
        let (ns, name) = (format!("ns{}", i % 7), format!("s{i}"));
        let ip = format!("10.{}.{}.{}", 100 + i / 65536, i / 256 % 256, i % 256);
        api.apply(Resource::Services, svc(&ns, &name, &ip, json!({})));
        // The contract: a ClusterIP Service routes to its cluster IP and Service port.
        expected.insert(format!("{ns}/{name}"), vec![format!("{ip}:80")]);
    }
    let w = kube_watcher(&bench, &api, &[]);
    w.ready().await?;
    eventually(WAIT, || async {
        let state = stream_state(&bench).await?;
        anyhow::ensure!(
            state.len() == n,
            "{} of {n} routes in the stream",
            state.len()
        );
        Ok(())
    })
    .await?;
    assert_eq!(stream_state(&bench).await?, expected);
    let published = bench.events().await?.len();
    assert_eq!(published, n, "one event per Service");
    api.drop_watches();
    api.apply(
        Resource::Services,
        svc("ns0", "late", "10.200.0.1", json!({})),
    );
    expected.insert("ns0/late".into(), vec!["10.200.0.1:80".into()]);
    eventually(WAIT, || async {
        anyhow::ensure!(
            stream_state(&bench).await? == expected,
            "the late Service is not routed yet"
        );
        Ok(())
    })
    .await?;
    assert_eq!(
        bench.events().await?.len(),
        n + 1,
        "nothing published twice"
    );
    Ok(())
}
