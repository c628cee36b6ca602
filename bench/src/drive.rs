//! Driving a publisher under test: load the stream, wait for the consumer to catch up.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use ksr_proto::Event;
use ksr_test_support::wait_until;

/// Publishes `events` with up to 512 acks in flight; returns how long it took.
pub async fn publish_all(
    js: &jetstream::Context,
    events: impl Iterator<Item = Event>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut acks = futures::stream::iter(events)
        .map(|e| {
            let js = js.clone();
            async move { ksr_test_support::events::publish(&js, &e).await }
        })
        .buffer_unordered(512);
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(started.elapsed())
}

/// Waits until durable consumer `durable` has delivered at least `count` messages and has
/// nothing pending or unacknowledged.
pub async fn caught_up(js: &jetstream::Context, durable: &str, count: u64) -> anyhow::Result<()> {
    wait_until("the consumer to catch up", Duration::from_secs(300), || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("KSR_ROUTES").await.ok()?;
            let mut c: jetstream::consumer::PullConsumer =
                stream.get_consumer(durable).await.ok()?;
            let info = c.info().await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= count)
                .then_some(())
        }
    })
    .await
}
