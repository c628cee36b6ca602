//! The `ksrctl` binary on a real stream: the diff output, `--follow` until Ctrl-C, `status`,
//! and an unreadable event reported with its sequence while the rest prints.

mod common;

use common::{Running, Stream, ksrctl, publish_junk};
use ksr_proto::Change;
use ksr_test_support::events::{added, event, publish, removed, route};

async fn scripted(s: &Stream) -> anyhow::Result<()> {
    publish(&s.js, &added("east", "default", "web", &["10.0.0.1"])).await?;
    publish(&s.js, &added("west", "shop", "api", &["10.1.0.1"])).await?;
    publish(
        &s.js,
        &event(
            "east",
            "default",
            "web",
            Change::Updated(route(
                "web-default",
                "test",
                "/v2/.*",
                &["10.0.0.1", "10.0.0.2"],
            )),
        ),
    )
    .await?;
    publish_junk(&s.js).await?;
    Ok(())
}

#[tokio::test]
async fn events_diff_shows_what_each_event_changed_and_reports_the_unreadable_one()
-> anyhow::Result<()> {
    let s = Stream::start().await?;
    scripted(&s).await?;
    let run = ksrctl(&["events", "--nats-url", &s.nats.url(), "-o", "diff"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("#1 "), "{run:?}");
    assert!(
        run.stdout
            .contains("+ web-default.test.service.consul /.* [10.0.0.1:80]"),
        "{run:?}"
    );
    assert!(run.stdout.contains("path: /.* → /v2/.*"), "{run:?}");
    assert!(run.stdout.contains("backends: +10.0.0.2:80"), "{run:?}");
    assert!(
        run.stderr.contains("unreadable event at sequence 4"),
        "{run:?}"
    );

    // JSON lines when piped, by default; newest first on request.
    let run = ksrctl(&["events", "--nats-url", &s.nats.url(), "--newest-first"]).await?;
    let first: serde_json::Value =
        serde_json::from_str(run.stdout.lines().next().unwrap_or_default())?;
    assert_eq!(first["seq"], 3, "{run:?}");
    assert_eq!(first["kind"], "updated");
    Ok(())
}

#[tokio::test]
async fn events_follow_prints_new_events_until_ctrl_c() -> anyhow::Result<()> {
    let s = Stream::start().await?;
    scripted(&s).await?;
    let url = s.nats.url();
    let mut run = Running::spawn(&[
        "events",
        "--follow",
        "--cluster",
        "west",
        "--nats-url",
        &url,
        "-o",
        "json",
    ])?;

    let history: serde_json::Value = serde_json::from_str(&run.line().await?)?;
    assert_eq!(history["name"], "api");
    publish(&s.js, &added("east", "default", "other", &["10.0.0.9"])).await?;
    publish(&s.js, &removed("west", "shop", "api")).await?;
    let live: serde_json::Value = serde_json::from_str(&run.line().await?)?;
    assert_eq!(
        (live["kind"].as_str(), live["name"].as_str()),
        (Some("removed"), Some("api"))
    );

    assert_eq!(run.stop("INT").await?, Some(130), "Ctrl-C ends it cleanly");
    Ok(())
}

#[tokio::test]
async fn status_shows_the_stream_consumer_lag_and_each_clusters_last_event() -> anyhow::Result<()> {
    let s = Stream::start().await?;
    scripted(&s).await?;
    let stream = s.js.get_stream("KSR_ROUTES").await?;
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("ksr-vulcand-ksr".into()),
            ..Default::default()
        })
        .await?;
    // --nats-url may list several servers (the first is down here): any one will do.
    let urls = format!("nats://127.0.0.1:1,{}", s.nats.url());
    let run = ksrctl(&["status", "--nats-url", &urls, "-o", "json"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let st: serde_json::Value = serde_json::from_str(run.stdout.trim())?;
    assert_eq!(st["stream"]["messages"], 4);
    assert_eq!(st["stream"]["last_seq"], 4);
    assert_eq!(st["consumers"][0]["name"], "ksr-vulcand-ksr");
    assert_eq!(st["consumers"][0]["pending"], 4);
    let clusters: Vec<(String, u64)> = st["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap_or_default().to_owned(),
                c["last_seq"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        clusters,
        vec![("east".to_owned(), 4), ("west".to_owned(), 2)]
    );
    let table = ksrctl(&["status", "--nats-url", &s.nats.url(), "-o", "table"]).await?;
    assert!(table.stdout.contains("ksr-vulcand-ksr"), "{table:?}");
    Ok(())
}
