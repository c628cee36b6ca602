//! Reading the stream back: every event, or the newest event of every Service subject.
//!
//! Used wherever the stream's state is needed as a whole: the watcher's start-up diff, the
//! publishers' reconciliation, audits and tests. An ordered push consumer (ephemeral, flow
//! controlled; measurably faster than pulling for a bulk read) delivers the messages
//! (`DeliverPolicy::LastPerSubject` for the current state); it is read until the server
//! reports nothing pending.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;

use ksr_proto::Event;

use crate::RuntimeError;

/// One message read back.
#[derive(Debug, Clone)]
pub struct Latest {
    pub seq: u64,
    /// When the stream stored it, nanoseconds since the Unix epoch.
    pub published_unix_ns: i64,
    pub subject: String,
    /// The event, or why it could not be decoded.
    pub event: Result<Event, crate::decode::DecodeError>,
    /// The identity of the cluster its watcher watched (`Ksr-Cluster-Id`), when it says.
    pub cluster_id: Option<String>,
}

/// The newest message of every subject matching `filter`, in stream order.
pub async fn latest_per_subject(
    stream: &Stream,
    filter: &str,
) -> Result<Vec<Latest>, RuntimeError> {
    read(stream, filter, DeliverPolicy::LastPerSubject).await
}

/// Every message on subjects matching `filter`, in stream order.
pub async fn all_events(stream: &Stream, filter: &str) -> Result<Vec<Latest>, RuntimeError> {
    read(stream, filter, DeliverPolicy::All).await
}

/// The messages `policy` selects on subjects matching `filter`, in stream order.
pub async fn read(
    stream: &Stream,
    filter: &str,
    policy: DeliverPolicy,
) -> Result<Vec<Latest>, RuntimeError> {
    let mut replay = Replay::open(stream, filter, policy).await?;
    let mut out = Vec::with_capacity(usize::try_from(replay.total()).unwrap_or(0));
    while let Some(record) = replay.next().await? {
        out.push(record);
    }
    Ok(out)
}

/// How long a bounded replay waits for its next message before failing (the caller retries
/// with a fresh consumer): messages flow continuously while any are pending.
const STALLED: Duration = Duration::from_secs(10);

/// A fresh delivery subject for a push consumer.
fn unique_inbox() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("_INBOX.ksr-replay.{}.{t:x}.{n}", std::process::id())
}

/// A replay in progress: the messages that were in the stream when it was opened, one at a
/// time, so callers can fold a long history without holding it (and show progress).
pub struct Replay {
    stream: String,
    total: u64,
    done: bool,
    /// Keep waiting for new messages instead of ending at the last one.
    follow: bool,
    messages: Option<push::Ordered>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("stream", &self.stream)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Starts an ordered consumer at `policy` on subjects matching `filter`.
    pub async fn open(
        stream: &Stream,
        filter: &str,
        policy: DeliverPolicy,
    ) -> Result<Self, RuntimeError> {
        Self::start(stream, filter, policy, false).await
    }

    /// Every message from stream sequence `from` on, then each new one as it is stored,
    /// without end.
    pub async fn follow(stream: &Stream, filter: &str, from: u64) -> Result<Self, RuntimeError> {
        let policy = DeliverPolicy::ByStartSequence {
            start_sequence: from.max(1),
        };
        Self::start(stream, filter, policy, true).await
    }

    async fn start(
        stream: &Stream,
        filter: &str,
        policy: DeliverPolicy,
        follow: bool,
    ) -> Result<Self, RuntimeError> {
        let name = stream.cached_info().config.name.clone();
        let err = |what: &str, e: &dyn std::fmt::Display| RuntimeError::Stream {
            stream: name.clone(),
            message: format!("{what}: {e}"),
        };
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: unique_inbox(),
                filter_subject: filter.to_owned(),
                deliver_policy: policy,
                ..Default::default()
            })
            .await
            .map_err(|e| err("cannot create a replay consumer", &e))?;
        // A bounded replay with nothing to read ends at once, without subscribing.
        let total = consumer.cached_info().num_pending;
        let messages = if total == 0 && !follow {
            None
        } else {
            let messages = consumer.messages().await;
            Some(messages.map_err(|e| err("cannot replay", &e))?)
        };
        Ok(Self {
            stream: name,
            total: if follow { 0 } else { total },
            done: total == 0 && !follow,
            follow,
            messages,
        })
    }

    /// How many messages the replay delivers in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The next message, or `None` once the last message present at opening was read.
    pub async fn next(&mut self) -> Result<Option<Latest>, RuntimeError> {
        let (false, Some(messages)) = (self.done, self.messages.as_mut()) else {
            return Ok(None);
        };
        let err = |message: String| RuntimeError::Stream {
            stream: self.stream.clone(),
            message,
        };
        let next = if self.follow {
            messages.next().await
        } else {
            tokio::time::timeout(STALLED, messages.next())
                .await
                .map_err(|_| err(format!("replay stalled for {} s", STALLED.as_secs())))?
        };
        let Some(msg) = next else {
            self.done = true;
            return Ok(None);
        };
        let msg = msg.map_err(|e| err(format!("replay: {e}")))?;
        let info = msg.info().map_err(|e| err(format!("replay: {e}")))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let published_unix_ns =
            i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        self.done = pending == 0 && !self.follow;
        let cluster_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(ksr_proto::subject::HEADER_CLUSTER_ID))
            .map(|v| v.as_str().to_owned());
        Ok(Some(Latest {
            seq,
            published_unix_ns,
            subject: msg.subject.to_string(),
            event: crate::decode::decode_message(&msg),
            cluster_id,
        }))
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
    pub async fn open(stream: &Stream, ack_floor: u64) -> Result<Self, RuntimeError> {
        let filter = ksr_proto::subject::all_filter();
        Ok(Self {
            replay: Replay::open(stream, &filter, DeliverPolicy::LastPerSubject).await?,
            ack_floor,
            incarnation: crate::nats::incarnation(stream),
        })
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

/// The stream pass of a reconciliation: every delivery [`Acknowledged`] reads goes through
/// `store`'s fenced apply, a chunk of 1,000 at a time. Returns how many events it applied
/// (those whose projection was missing or behind; the others are skipped by their fence).
pub async fn reapply_acknowledged<S>(
    store: &S,
    stream: &Stream,
    ack_floor: u64,
) -> Result<u64, S::Error>
where
    S: ksr_projection::apply::Store,
    S::Error: From<RuntimeError>,
{
    let mut acknowledged = Acknowledged::open(stream, ack_floor).await?;
    let mut applied = 0;
    loop {
        let chunk = acknowledged.next_chunk(1000).await?;
        if chunk.is_empty() {
            return Ok(applied);
        }
        applied += store.apply_batch(&chunk).await?.applied;
    }
}

/// Every delivery [`Acknowledged`] reads, at once.
pub async fn acknowledged_latest(
    stream: &Stream,
    ack_floor: u64,
) -> Result<Vec<ksr_projection::Delivery>, RuntimeError> {
    let mut all = Acknowledged::open(stream, ack_floor).await?;
    let mut out = Vec::new();
    loop {
        let chunk = all.next_chunk(usize::MAX).await?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend(chunk);
    }
}
