//! Defence in depth: a route vulcand cannot load never reaches etcd, whoever published it, and
//! one already there (written by an older ksr) is removed.

mod common;

use common::{Bench, WAIT, route_id};
use ksr_proto::{Change, codec, subject};
use ksr_test_support::events::{added, event, route};
use ksr_test_support::eventually;

/// The bytes of an event whose path is `bad`: encoded with a same-length valid path, then
/// patched, as an older watcher or another tool could have published it.
fn event_with_path(name: &str, bad: &str) -> Vec<u8> {
    let placeholder = "/".to_owned() + &"p".repeat(bad.len() - 1);
    let ev = event(
        "east",
        "default",
        name,
        Change::Added(route(
            &format!("{name}-default"),
            "test",
            &placeholder,
            &["10.0.0.9"],
        )),
    );
    let mut bytes = codec::encode(&ev).expect("valid placeholder");
    let at = bytes
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .expect("placeholder in payload");
    bytes[at..at + bad.len()].copy_from_slice(bad.as_bytes());
    bytes
}

#[tokio::test]
async fn a_route_go_cannot_parse_is_terminated_and_never_written() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&[]);
    for (name, bad) in [
        ("gamma", "/static/**"),
        ("delta", "(?<v>x)"),
        ("eps", "x{2}{3}"),
    ] {
        let ev = ksr_proto::ServiceKey::new("east", "default", name);
        ksr_test_support::events::publish_raw(
            &bench.js,
            &subject::subject(&ev),
            "added",
            "east",
            event_with_path(name, bad),
        )
        .await?;
    }
    bench
        .publish(&added("east", "default", "after", &["10.0.0.3"]))
        .await?;
    let keys = bench.settled_vulcand().await?;
    assert_eq!(keys.len(), 3, "only the valid Service is routed: {keys:#?}");
    assert!(
        keys.keys().all(|k| k.contains("after-default")),
        "{keys:#?}"
    );
    eventually(WAIT, || async {
        let n = p
            .metric(r#"ksr_vulcand_events_terminated_total{reason="invalid_path"}"#)
            .await;
        anyhow::ensure!(n == 3.0, "terminated invalid_path = {n}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_frontend_vulcand_cannot_load_left_by_an_older_version_is_removed() -> anyhow::Result<()>
{
    let bench = Bench::start().await?;
    let host = "gamma-default.test.service.consul";
    let id = route_id(host, "/static/**");
    let mut etcd = bench.etcd().await?;
    etcd.put(
        format!("vulcand/backends/{id}/backend"),
        r#"{"Type":"http"}"#,
        None,
    )
    .await?;
    let frontend = format!("vulcand/frontends/{id}/frontend");
    etcd.put(
        frontend.as_str(),
        format!(
            r#"{{"Type":"http","BackendId":"{id}","Route":"Host(`{host}`) && PathRegexp(`/static/**`)"}}"#
        ),
        None,
    )
    .await?;
    // A foreign frontend (not ours) is never touched, even a bad one.
    etcd.put(
        "vulcand/frontends/foreign/frontend",
        r#"{"Type":"http","BackendId":"x","Route":"Path(`/**`)"}"#,
        None,
    )
    .await?;
    let live = ksr_publisher_vulcand::drift::unloadable(&bench.snapshot("vulcand/").await?);
    assert!(
        live.iter()
            .any(|(k, why)| *k == frontend && why.contains("nested repetition")),
        "{live:?}"
    );

    let _p = bench.publisher(&[]);
    bench
        .publish(&added("east", "default", "web", &["10.0.0.3"]))
        .await?;
    eventually(WAIT, || async {
        let keys = bench.snapshot("vulcand/").await?;
        anyhow::ensure!(
            !keys.keys().any(|k| k.contains("gamma-default")),
            "the unloadable route is still there: {keys:#?}"
        );
        anyhow::ensure!(keys.contains_key("vulcand/frontends/foreign/frontend"));
        Ok(())
    })
    .await?;
    Ok(())
}
