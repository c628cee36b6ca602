//! A reconciliation's stream pass: the newest acknowledged event of every Service, re-applied
//! through the projection's fences a chunk at a time.
//!
//! A publisher pulls them through its replay consumer (`<durable>_replay`,
//! [`crate::config::replay_consumer`]), so the pass holds a chunk or two of messages whatever
//! the stream's size; a pushed replay would hold what nats-server sent ahead (up to 32 MiB of
//! messages; publisher-vulcand's peak at 100,000 Services was 32–36 MiB higher). While
//! another replica's pass holds that name the pass waits for it (replicas started together
//! reconcile together), up to [`HELD_WAIT`]; past that, or when the NATS role may not create
//! it (a role generated before it existed), it reads pushed, as `ksrctl` always does, and
//! says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::Stream;

use backon::{ExponentialBuilder, Retryable};

use crate::RuntimeError;
use crate::replay::{PullError, Replay};

/// After the server left the replay consumer's creation unanswered, how long passes read
/// pushed before asking again (each unanswered request costs the JetStream timeout).
const REFUSED_FOR: Duration = Duration::from_secs(3600);

/// How long a pass waits, at most, for another replica's pass to release the replay
/// consumer before it reads pushed (a pass of 100,000 Services holds it for about a second).
pub const HELD_WAIT: Duration = Duration::from_secs(10);

/// How a stream pass reads the stream back: pushed ([`Reading::pushed`]), or pulled through
/// a named replay consumer when it can ([`Reading::pulled_through`]).
#[derive(Debug, Clone, Default)]
pub struct Reading {
    consumer: Option<String>,
    /// How long to wait for the consumer while another replica's pass holds it.
    held_wait: Duration,
    /// When the server last left the creation of `consumer` unanswered.
    refused_at: Arc<Mutex<Option<Instant>>>,
}

impl Reading {
    /// Always pushed (a reader without a consumer name of its own, such as `ksrctl`).
    pub fn pushed() -> Self {
        Self::default()
    }

    /// Pulled through the consumer named `consumer` (a publisher's
    /// [`crate::config::replay_consumer`]) whenever it can be created.
    pub fn pulled_through(consumer: impl Into<String>) -> Self {
        Self {
            consumer: Some(consumer.into()),
            held_wait: HELD_WAIT,
            ..Self::default()
        }
    }

    /// Waits at most `wait` (instead of [`HELD_WAIT`]) for a consumer another pass holds.
    pub fn waiting_at_most(mut self, wait: Duration) -> Self {
        self.held_wait = wait;
        self
    }

    /// The consumer to try pulling through now, if any.
    fn consumer(&self) -> Option<&str> {
        let refused = self.refused_at.lock().unwrap_or_else(|p| p.into_inner());
        match *refused {
            Some(at) if at.elapsed() < REFUSED_FOR => None,
            _ => self.consumer.as_deref(),
        }
    }

    async fn open(
        &self,
        stream: &Stream,
        filter: &str,
        policy: DeliverPolicy,
    ) -> Result<Replay, RuntimeError> {
        let Some(name) = self.consumer() else {
            return Replay::open(stream, filter, policy).await;
        };
        let waits = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(self.held_wait));
        let pulled = (|| Replay::pull(stream, filter, policy, name))
            .retry(waits)
            .when(PullError::is_taken)
            .await;
        match pulled {
            Ok(replay) => return Ok(replay),
            Err(e) if e.is_taken() => tracing::info!(
                consumer = name,
                waited_s = self.held_wait.as_secs_f64(),
                "stream pass reads pushed: the replay consumer is held by another replica's pass (or one that stopped within a minute)"
            ),
            Err(e) if e.is_unanswered() => {
                *self.refused_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                tracing::warn!(
                    consumer = name,
                    error = %e,
                    "stream pass reads pushed for the next hour: NATS did not answer the creation of the replay consumer (a NATS role generated before it existed? `ksrctl nats-auth` grants it); pushed, the pass holds up to 32 MiB more"
                );
            }
            Err(e) => tracing::warn!(
                consumer = name,
                error = %e,
                "stream pass reads pushed: cannot pull through the replay consumer"
            ),
        }
        Replay::open(stream, filter, policy).await
    }
}

/// The newest event of every subject at or below `ack_floor` (events a consumer already
/// acknowledged, so their projection must exist), as deliveries for a fenced re-apply, read
/// a chunk at a time ([`Acknowledged::next_chunk`]) so a reconciliation of any size holds one
/// chunk, not the stream. Undecodable events are logged with their sequence and skipped.
#[derive(Debug)]
pub struct Acknowledged {
    replay: Replay,
    ack_floor: u64,
    incarnation: u64,
}

impl Acknowledged {
    pub async fn open(
        stream: &Stream,
        ack_floor: u64,
        reading: &Reading,
    ) -> Result<Self, RuntimeError> {
        let filter = ksr_proto::subject::all_filter();
        Ok(Self {
            replay: reading
                .open(stream, &filter, DeliverPolicy::LastPerSubject)
                .await?,
            ack_floor,
            incarnation: crate::nats::incarnation(stream),
        })
    }

    /// Whether the events are pulled through a replay consumer (rather than pushed).
    pub fn pulled(&self) -> bool {
        self.replay.pulled()
    }

    /// Ends the pass: a replay consumer is deleted before this returns.
    pub async fn close(self) {
        self.replay.close().await;
    }

    /// Up to `n` more deliveries, in stream order; empty once every one was read.
    pub async fn next_chunk(
        &mut self,
        n: usize,
    ) -> Result<Vec<ksr_projection::Delivery>, RuntimeError> {
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            let Some(l) = self.replay.next().await? else {
                break;
            };
            if l.seq > self.ack_floor {
                continue;
            }
            match l.event {
                Ok(event) => out.push(ksr_projection::Delivery {
                    seq: l.seq,
                    incarnation: self.incarnation,
                    event,
                }),
                Err(e) => tracing::warn!(
                    seq = l.seq,
                    subject = l.subject,
                    reason = e.reason(),
                    error = %e,
                    "reconcile: skipping undecodable event"
                ),
            }
        }
        Ok(out)
    }
}

/// What a stream pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passed {
    /// Events whose projection was missing or behind, applied (the others were skipped by
    /// their fence).
    pub applied: u64,
    /// Whether they were pulled through the replay consumer (rather than pushed).
    pub pulled: bool,
}

/// The stream pass of a reconciliation: every delivery [`Acknowledged`] reads goes through
/// `store`'s fenced apply, a chunk of 1,000 at a time.
pub async fn reapply_acknowledged<S>(
    store: &S,
    stream: &Stream,
    ack_floor: u64,
    reading: &Reading,
) -> Result<Passed, S::Error>
where
    S: ksr_projection::apply::Store,
    S::Error: From<RuntimeError>,
{
    let mut acknowledged = Acknowledged::open(stream, ack_floor, reading).await?;
    let mut passed = Passed {
        applied: 0,
        pulled: acknowledged.pulled(),
    };
    loop {
        let chunk = acknowledged.next_chunk(1000).await?;
        if chunk.is_empty() {
            acknowledged.close().await;
            return Ok(passed);
        }
        passed.applied += store.apply_batch(&chunk).await?.applied;
    }
}

/// Every delivery [`Acknowledged`] reads (pushed), at once.
pub async fn acknowledged_latest(
    stream: &Stream,
    ack_floor: u64,
) -> Result<Vec<ksr_projection::Delivery>, RuntimeError> {
    let mut all = Acknowledged::open(stream, ack_floor, &Reading::pushed()).await?;
    let mut out = Vec::new();
    loop {
        let chunk = all.next_chunk(usize::MAX).await?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend(chunk);
    }
}
