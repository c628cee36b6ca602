//! Kubernetes Events on the Service for its owner, recorded by the fake apiserver: published
//! (as what), rejected (and why), unrouted; a flapping Service makes a bounded number of writes.

mod common;

use std::time::Duration;

use common::Bench;
use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::eventually;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn svc(name: &str, labelled: bool, annotations: Value) -> Value {
    let labels = if labelled {
        json!({"type": "ingress"})
    } else {
        json!({})
    };
    json!({"metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"),
                        "labels": labels, "annotations": annotations},
           "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 80}]}})
}

/// The Events on Service `name`: (type, reason, note, series count).
fn events_of(api: &FakeApiServer, name: &str) -> Vec<(String, String, String, i64)> {
    let mut out: Vec<(String, String, String, i64, String)> = api
        .events()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&e["type"]),
                s(&e["reason"]),
                s(&e["note"]),
                e["series"]["count"].as_i64().unwrap_or(1),
                s(&e["eventTime"]),
            )
        })
        .collect();
    out.sort_by(|a, b| a.4.cmp(&b.4));
    out.into_iter()
        .map(|(t, r, n, c, _)| (t, r, n, c))
        .collect()
}

#[tokio::test]
async fn owners_see_their_service_routed_rejected_and_unrouted() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(Resource::Services, svc("web", true, json!({})));
    api.apply(
        Resource::Services,
        svc("bad", true, json!({"path": "/static/**"})),
    );
    let w = bench.watcher_with(&["--source", "kubernetes", "--kube-url", api.url()], &[]);
    w.ready().await?;
    eventually(WAIT, || async {
        let web = events_of(&api, "web");
        anyhow::ensure!(
            web.iter().any(|(t, r, n, _)| t == "Normal"
                && r == "Published"
                && n.contains("web-team.test.service.consul")),
            "{web:?}"
        );
        let bad = events_of(&api, "bad");
        anyhow::ensure!(
            bad.iter().any(|(t, r, n, _)| t == "Warning"
                && r == "Rejected"
                && n.contains("invalid_path_annotation")
                && n.contains("/static/**")),
            "{bad:?}"
        );
        Ok(())
    })
    .await?;
    // Every Event names its Service as Kubernetes does (kind, namespace, name, uid) and its
    // reporter.
    for e in api.events() {
        let name = e["regarding"]["name"].as_str().unwrap_or_default();
        assert_eq!(e["regarding"]["kind"], "Service");
        assert_eq!(e["regarding"]["namespace"], "team");
        assert_eq!(e["regarding"]["uid"], format!("uid-{name}"));
        assert_eq!(e["reportingController"], "kube-service-router");
        assert_eq!(e["reportingInstance"], "ksr-watcher-east");
        assert_eq!(e["metadata"]["namespace"], "team");
    }

    // A new host annotation: a new Routed Event naming it. The label removed: Unrouted.
    api.apply(
        Resource::Services,
        svc("web", true, json!({"host": "shop"})),
    );
    eventually(WAIT, || async {
        let web = events_of(&api, "web");
        anyhow::ensure!(
            web.iter()
                .any(|(_, r, n, _)| r == "Published" && n.contains("shop-team.test.service.consul")),
            "{web:?}"
        );
        Ok(())
    })
    .await?;
    api.apply(
        Resource::Services,
        svc("web", false, json!({"host": "shop"})),
    );
    eventually(WAIT, || async {
        let web = events_of(&api, "web");
        anyhow::ensure!(
            web.last().is_some_and(|(_, r, _, _)| r == "Unrouted"),
            "{web:?}"
        );
        Ok(())
    })
    .await?;
    assert!(w.metric("ksr_watcher_kubernetes_events_total").await >= 4.0);
    Ok(())
}

#[tokio::test]
async fn a_flapping_service_makes_a_bounded_number_of_event_writes() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    api.apply(Resource::Services, svc("web", true, json!({"host": "a"})));
    let w = bench.watcher_with(&["--source", "kubernetes", "--kube-url", api.url()], &[]);
    w.ready().await?;
    // 30 changes, each published (the stream shows it) before the next.
    let mut published = bench.events().await?.len();
    for i in 0..30 {
        let host = if i % 2 == 0 { "b" } else { "a" };
        api.apply(Resource::Services, svc("web", true, json!({"host": host})));
        eventually(WAIT, || async {
            let n = bench.events().await?.len();
            anyhow::ensure!(n > published, "change {i} not published yet");
            Ok(())
        })
        .await?;
        published = bench.events().await?.len();
    }
    // Let the writer take every outcome it was handed.
    eventually(WAIT, || async {
        let written = w.metric("ksr_watcher_kubernetes_events_total").await;
        anyhow::ensure!(written >= 1.0, "no Event yet");
        Ok(())
    })
    .await?;
    let (creates, patches) = api.event_writes();
    // A burst of 4, then one per 30 s: however fast the Service flaps.
    assert!(
        (1..=5).contains(&(creates + patches)),
        "{creates} creates and {patches} patches for 31 outcomes"
    );
    // Alternating between two outcomes counts them in two series instead of new Events.
    assert!(creates <= 2, "{creates} Events created");
    Ok(())
}

#[tokio::test]
async fn owners_see_a_removal_the_guard_holds_back() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let api = FakeApiServer::start().await?;
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    for n in &names {
        api.apply(Resource::Services, svc(n, true, json!({})));
    }
    let w = bench.watcher_with(
        &["--source", "kubernetes", "--kube-url", api.url()],
        &["--watch-timeout", "1"],
    );
    w.ready().await?;
    eventually(WAIT, || async {
        for n in &names {
            let e = events_of(&api, n);
            anyhow::ensure!(e.iter().any(|(_, r, _, _)| r == "Published"), "{n}: {e:?}");
        }
        Ok(())
    })
    .await?;
    // Every Service goes while the watch is silent, and the history is gone: the watcher
    // relists and sees a mass removal, which it holds back.
    let (_, watches) = api.requests(Resource::Services);
    api.hang_watches(1);
    api.drop_watches();
    ksr_test_support::wait_until("the hanging watch", WAIT, || async {
        (api.requests(Resource::Services).1 > watches).then_some(())
    })
    .await?;
    for n in &names {
        api.delete(Resource::Services, "team", n);
    }
    api.compact();
    eventually(WAIT, || async {
        for n in &names {
            let e = events_of(&api, n);
            anyhow::ensure!(
                e.iter().any(|(t, r, note, _)| t == "Warning"
                    && r == "HeldBack"
                    && note.contains("ksrctl confirm-removals --cluster east")),
                "{n}: {e:?}"
            );
        }
        Ok(())
    })
    .await?;
    // The Event names the Service as Kubernetes does, uid included.
    let held = api
        .events()
        .into_iter()
        .find(|e| e["reason"] == "HeldBack" && e["regarding"]["name"] == "s0")
        .expect("a HeldBack Event on s0");
    assert_eq!(held["regarding"]["uid"], "uid-s0");
    Ok(())
}
