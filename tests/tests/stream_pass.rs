//! A reconciliation's stream pass against a real nats-server: pulled through the publisher's
//! replay consumer it reads exactly the newest acknowledged event of every Service (compared
//! with a model of the published history) and deletes the consumer; another reader waits for
//! the name while one holds it, and past its wait, or when the NATS role may not create it,
//! reads the same events pushed.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use ksr_proto::{Event, ServiceKey};
use ksr_runtime::config::replay_consumer;
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_runtime::stream_pass::{Acknowledged, Reading};
use ksr_test_support::nats::{NatsOptions, NatsServer};
use ksr_test_support::wait::eventually;

const STREAM: &str = "KSR_ROUTES";

fn replay_name() -> String {
    replay_consumer("ksr-vulcand-ksr")
}

/// The model: the newest event of each Service in `history`, kept when it is at or below
/// `floor` (a newer one not yet acknowledged leaves the Service to the consumer).
fn newest_acknowledged(history: &[(u64, Event)], floor: u64) -> BTreeMap<ServiceKey, u64> {
    let mut newest = BTreeMap::new();
    for (seq, event) in history {
        newest.insert(event.key.clone(), *seq);
    }
    newest.retain(|_, seq| *seq <= floor);
    newest
}

/// Everything `acknowledged` reads, by Service, and how many chunks it took; then closes it.
async fn read_all(
    mut acknowledged: Acknowledged,
) -> anyhow::Result<(BTreeMap<ServiceKey, u64>, usize)> {
    let (mut got, mut chunks) = (BTreeMap::new(), 0);
    loop {
        let chunk = acknowledged.next_chunk(1000).await?;
        if chunk.is_empty() {
            acknowledged.close().await;
            return Ok((got, chunks));
        }
        chunks += 1;
        for d in chunk {
            anyhow::ensure!(
                got.insert(d.event.key.clone(), d.seq).is_none(),
                "{:?} read twice",
                d.event.key
            );
        }
    }
}

/// How many consumers the stream has.
async fn consumers(stream: &jetstream::stream::Stream) -> anyhow::Result<usize> {
    Ok(stream.get_info().await?.state.consumer_count)
}

/// The routes stream on `js` with `n` events of up to `services` Services published.
async fn stream_with_history(
    js: &jetstream::Context,
    n: usize,
    services: usize,
) -> anyhow::Result<(jetstream::stream::Stream, Vec<(u64, Event)>)> {
    let stream = ensure_stream(js, &StreamSettings::routes(STREAM), true).await?;
    let history = ksr_test_support::events::publish_history(js, n, services).await?;
    Ok((stream, history))
}

#[tokio::test]
async fn pulled_through_the_replay_consumer_the_pass_reads_the_newest_acknowledged_events_and_deletes_it()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    // 2,500 events over 1,200 Services: about 1,100 subjects, read over two chunks.
    let (stream, history) = stream_with_history(&js, 2500, 1200).await?;
    let floor = history[2000].0;
    let want = newest_acknowledged(&history, floor);

    let reading = Reading::pulled_through(replay_name());
    let acknowledged = Acknowledged::open(&stream, floor, &reading).await?;
    assert!(acknowledged.pulled());
    assert_eq!(consumers(&stream).await?, 1);
    stream.consumer_info(replay_name()).await?;
    let (got, chunks) = read_all(acknowledged).await?;
    assert_eq!(got, want, "pulled");
    assert!(chunks >= 2, "{chunks} chunks");
    // Closed once read: the consumer is gone, and the next pass pulls again at once.
    assert_eq!(consumers(&stream).await?, 0);
    let again = Acknowledged::open(&stream, floor, &reading).await?;
    assert!(again.pulled());
    assert_eq!(read_all(again).await?.0, want, "pulled again");
    // A pass abandoned half-way (an error, a cancelled reconciliation) deletes it too.
    let mut abandoned = Acknowledged::open(&stream, floor, &reading).await?;
    assert!(abandoned.pulled());
    assert_eq!(abandoned.next_chunk(10).await?.len(), 10);
    drop(abandoned);
    eventually(Duration::from_secs(10), || async {
        let left = consumers(&stream).await?;
        anyhow::ensure!(left == 0, "{left} consumers left");
        Ok(())
    })
    .await?;

    // Pushed, the same events.
    let pushed = Acknowledged::open(&stream, floor, &Reading::pushed()).await?;
    assert!(!pushed.pulled());
    assert_eq!(read_all(pushed).await?.0, want, "pushed");
    Ok(())
}

#[tokio::test]
async fn a_replica_waits_for_the_replay_consumer_another_holds_and_reads_pushed_past_its_wait()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let (stream, history) = stream_with_history(&js, 600, 300).await?;
    let floor = history.last().map_or(0, |(seq, _)| *seq);
    let want = newest_acknowledged(&history, floor);

    // Replicas, each with its own Reading of the same name.
    let first = Acknowledged::open(&stream, floor, &Reading::pulled_through(replay_name())).await?;
    assert!(first.pulled());
    // Past its wait, pushed: it never shares (and splits) the first one's consumer.
    let impatient =
        Reading::pulled_through(replay_name()).waiting_at_most(Duration::from_millis(300));
    let second = Acknowledged::open(&stream, floor, &impatient).await?;
    assert!(!second.pulled());
    assert_eq!(read_all(second).await?.0, want, "second, pushed");
    // Within its wait (the default), it pulls once the first pass is done.
    let waiting = tokio::spawn({
        let stream = stream.clone();
        async move {
            let reading = Reading::pulled_through(replay_name());
            Acknowledged::open(&stream, floor, &reading).await
        }
    });
    assert_eq!(read_all(first).await?.0, want, "first, pulled");
    let third = waiting.await??;
    assert!(
        third.pulled(),
        "the third replica did not wait for the consumer"
    );
    assert_eq!(
        read_all(third).await?.0,
        want,
        "third, pulled after waiting"
    );
    Ok(())
}

#[tokio::test]
async fn a_nats_role_that_may_not_create_the_replay_consumer_reads_pushed_and_stops_asking()
-> anyhow::Result<()> {
    // A role generated before the replay consumer existed: everything but its creation.
    let nats = NatsServer::start_with(NatsOptions {
        config: Some(
            r#"authorization {
                users = [{
                    user: old, password: role,
                    permissions: {
                        publish: { allow: [">"], deny: ["$JS.API.CONSUMER.CREATE.KSR_ROUTES.ksr-vulcand-ksr_replay.>"] },
                        subscribe: ">"
                    }
                }]
            }"#
            .to_owned(),
        ),
    })
    .await?;
    let client = async_nats::ConnectOptions::with_user_and_password("old".into(), "role".into())
        .connect(nats.url())
        .await?;
    // The refusal shows as a request nobody answers: keep that short here.
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_millis(500));
    let (stream, history) = stream_with_history(&js, 300, 100).await?;
    let floor = history.last().map_or(0, |(seq, _)| *seq);
    let want = newest_acknowledged(&history, floor);

    let reading = Reading::pulled_through(replay_name());
    let first = Acknowledged::open(&stream, floor, &reading).await?;
    assert!(!first.pulled());
    assert_eq!(read_all(first).await?.0, want);
    let refused = |log: String| {
        log.lines()
            .filter(|l| l.contains("Violation") && l.contains("_replay"))
            .count()
    };
    eventually(Duration::from_secs(10), || async {
        anyhow::ensure!(
            refused(nats.log()) >= 1,
            "no violation logged:\n{}",
            nats.log()
        );
        Ok(())
    })
    .await?;
    let asked = refused(nats.log());
    // The next pass does not ask again (no second violation), and reads the same.
    let second = Acknowledged::open(&stream, floor, &reading).await?;
    assert!(!second.pulled());
    assert_eq!(read_all(second).await?.0, want);
    assert_eq!(refused(nats.log()), asked, "asked again:\n{}", nats.log());
    Ok(())
}
