//! Checkpoints make history reads start near their instant, never change their answers:
//! `state --at` and `diff` from checkpoints equal a replay from the first event, damaged or
//! stale checkpoints are skipped, and `checkpoint --follow` keeps writing until SIGTERM.

mod common;

use async_nats::jetstream::object_store::ObjectStore;
use futures::TryStreamExt;

use common::{Run, Running, Stream, ksrctl, publish_junk};
use ksr_proto::Change;
use ksr_test_support::events::{added, event, publish, removed, route};

/// `count` events from sequence `first` on: 7 Services in two clusters, added, updated
/// with new backends and paths, removed and added again; sequence 7 is unreadable.
async fn history(s: &Stream, first: u64, count: u64) -> anyhow::Result<()> {
    for seq in first..first + count {
        if seq == 7 {
            publish_junk(&s.js).await?;
            continue;
        }
        let n = seq % 7;
        let cluster = if n % 2 == 0 { "east" } else { "west" };
        let name = format!("svc{n}");
        let e = match (seq / 7) % 4 {
            0 => added(cluster, "shop", &name, &[&format!("10.0.{n}.1")]),
            3 => removed(cluster, "shop", &name),
            round => event(
                cluster,
                "shop",
                &name,
                Change::Updated(route(
                    &format!("{name}-shop"),
                    "test",
                    &format!("/v{round}/.*"),
                    &[&format!("10.0.{n}.{}", seq % 5 + 1)],
                )),
            ),
        };
        publish(&s.js, &e).await?;
    }
    Ok(())
}

async fn state(s: &Stream, at: &str, checkpoints: bool) -> anyhow::Result<Run> {
    let url = s.nats.url();
    let mut args = vec!["state", "--nats-url", &url, "--at", at, "-o", "json"];
    if !checkpoints {
        args.push("--no-checkpoints");
    }
    let run = ksrctl(&args).await?;
    assert_eq!(run.code, 0, "{run:?}");
    Ok(run)
}

async fn checkpoint(s: &Stream, every: &str) -> anyhow::Result<Run> {
    let run = ksrctl(&["checkpoint", "--nats-url", &s.nats.url(), "--every", every]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    Ok(run)
}

async fn bucket(s: &Stream) -> anyhow::Result<ObjectStore> {
    Ok(s.js.get_object_store("KSR_CHECKPOINTS").await?)
}

async fn names(s: &Stream) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = bucket(s)
        .await?
        .list()
        .await?
        .map_ok(|i| i.name)
        .try_collect()
        .await?;
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn state_at_and_diff_from_checkpoints_equal_a_replay_from_the_first_event()
-> anyhow::Result<()> {
    let s = Stream::start().await?;
    history(&s, 1, 41).await?;
    // No bucket yet: a plain replay, without a word about checkpoints.
    let run = state(&s, "#41", true).await?;
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "only the unreadable event: {run:?}"
    );
    let run = checkpoint(&s, "10").await?;
    for seq in ["#10:", "#20:", "#30:", "#40:"] {
        assert!(run.stdout.contains(&format!("checkpoint {seq}")), "{run:?}");
    }
    assert_eq!(names(&s).await?.len(), 4);
    let status = ksrctl(&["status", "--nats-url", &s.nats.url(), "-o", "json"]).await?;
    let status: serde_json::Value = serde_json::from_str(&status.stdout)?;
    assert_eq!(
        (
            &status["checkpoints"]["count"],
            &status["checkpoints"]["newest_seq"]
        ),
        (&serde_json::json!(4), &serde_json::json!(40)),
        "{status}"
    );

    for at in ["#3", "#10", "#15", "#33", "#41", "#500"] {
        let (fast, full) = (state(&s, at, true).await?, state(&s, at, false).await?);
        assert_eq!(fast.stdout, full.stdout, "state --at {at}");
        assert!(!full.stdout.is_empty() || at == "#3", "{full:?}");
        for run in [&fast, &full] {
            assert_eq!(
                run.stderr.contains("unreadable event at sequence 7"),
                at != "#3",
                "state --at {at}: {run:?}"
            );
        }
        let from_checkpoint = fast.stderr.contains("starting from checkpoint");
        assert_eq!(from_checkpoint, at != "#3", "state --at {at}: {fast:?}");
    }
    assert!(
        state(&s, "#33", true)
            .await?
            .stderr
            .contains("starting from checkpoint #30")
    );
    // A time instant: every event was stored before now.
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    assert_eq!(
        state(&s, &now, true).await?.stdout,
        state(&s, "#41", false).await?.stdout
    );

    let url = s.nats.url();
    let diff = |checkpoints: bool| {
        let url = url.clone();
        async move {
            let mut args = vec!["diff", "--nats-url", &url, "#5", "#33", "-o", "json"];
            if !checkpoints {
                args.push("--no-checkpoints");
            }
            ksrctl(&args).await
        }
    };
    let (fast, full) = (diff(true).await?, diff(false).await?);
    assert_eq!((fast.code, full.code), (0, 0), "{fast:?} {full:?}");
    assert!(!full.stdout.is_empty(), "{full:?}");
    assert_eq!(fast.stdout, full.stdout);
    assert!(fast.stderr.contains("checkpoint #30"), "{fast:?}");

    // Up to date until the next multiple of --every; then only the new one is written.
    let run = checkpoint(&s, "10").await?;
    assert!(run.stdout.contains("up to date"), "{run:?}");
    history(&s, 42, 9).await?;
    let run = checkpoint(&s, "10").await?;
    assert!(run.stdout.contains("checkpoint #50:"), "{run:?}");
    assert!(!run.stdout.contains("checkpoint #40:"), "{run:?}");
    assert_eq!(
        state(&s, "#50", true).await?.stdout,
        state(&s, "#50", false).await?.stdout
    );
    // Now (no --at), with the newest checkpoint on the stream's last event.
    let url = s.nats.url();
    let now = ksrctl(&["state", "--nats-url", &url, "-o", "json"]).await?;
    assert_eq!(now.code, 0, "{now:?}");
    assert!(now.stderr.contains("checkpoint #50"), "{now:?}");
    assert_eq!(now.stdout, state(&s, "#50", false).await?.stdout);
    Ok(())
}

#[tokio::test]
async fn damaged_and_stale_checkpoints_are_skipped_never_believed() -> anyhow::Result<()> {
    let s = Stream::start().await?;
    history(&s, 1, 24).await?;
    checkpoint(&s, "10").await?;
    let names = names(&s).await?;
    assert_eq!(names.len(), 2, "{names:?}");

    // The checkpoint at #20 overwritten with garbage: #10 is used instead.
    let store = bucket(&s).await?;
    let info = store.info(&names[1]).await?;
    store
        .put(
            async_nats::jetstream::object_store::ObjectMetadata {
                name: info.name.clone(),
                metadata: info.metadata.clone(),
                ..Default::default()
            },
            &mut b"KC\x01\x00garbage".as_slice(),
        )
        .await?;
    let fast = state(&s, "#22", true).await?;
    assert!(fast.stderr.contains("ignoring checkpoint"), "{fast:?}");
    assert!(fast.stderr.contains("checkpoint #10"), "{fast:?}");
    assert_eq!(fast.stdout, state(&s, "#22", false).await?.stdout);
    // The writer rewrites it.
    let run = checkpoint(&s, "10").await?;
    assert!(run.stdout.contains("checkpoint #20:"), "{run:?}");
    assert!(!state(&s, "#22", true).await?.stderr.contains("ignoring"));

    // The stream deleted and created again: sequences restart, old checkpoints are void.
    s.js.delete_stream("KSR_ROUTES").await?;
    ksr_runtime::nats::ensure_stream(
        &s.js,
        &ksr_runtime::nats::StreamSettings::routes("KSR_ROUTES"),
        true,
    )
    .await?;
    for i in 0..12 {
        publish(
            &s.js,
            &added("east", "fresh", &format!("new{i}"), &["10.9.0.1"]),
        )
        .await?;
    }
    let fast = state(&s, "#11", true).await?;
    assert!(
        !fast.stderr.contains("starting from checkpoint"),
        "{fast:?}"
    );
    assert_eq!(fast.stdout, state(&s, "#11", false).await?.stdout);
    assert_eq!(fast.stdout.lines().count(), 11);
    let run = checkpoint(&s, "10").await?;
    assert!(
        run.stdout
            .contains("deleted 2 checkpoints of an earlier stream"),
        "{run:?}"
    );
    assert!(run.stdout.contains("checkpoint #10:"), "{run:?}");
    Ok(())
}

#[tokio::test]
async fn checkpoint_follow_writes_as_events_arrive_until_sigterm() -> anyhow::Result<()> {
    let s = Stream::start().await?;
    history(&s, 1, 4).await?;
    let url = s.nats.url();
    let mut run = Running::spawn(&["checkpoint", "--follow", "--every", "5", "--nats-url", &url])?;
    history(&s, 5, 6).await?;
    for want in ["checkpoint #5:", "checkpoint #10:"] {
        let line = run.line().await?;
        assert!(line.starts_with(want), "{line}");
    }
    assert_eq!(
        state(&s, "#10", true).await?.stdout,
        state(&s, "#10", false).await?.stdout
    );

    assert_eq!(run.stop("TERM").await?, Some(0), "SIGTERM is a normal stop");
    Ok(())
}
