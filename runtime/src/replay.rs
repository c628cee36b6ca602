//! Reading the stream back: every event, or the newest event of every Service subject.
//!
//! Used wherever the stream's state is needed as a whole: the watcher's start-up diff, the
//! publishers' reconciliation, audits and tests. An ordered push consumer (ephemeral, flow
//! controlled; measurably faster than pulling for a bulk read) delivers the messages
//! (`DeliverPolicy::LastPerSubject` for the current state); it is read until the server
//! reports nothing pending. nats-server runs a push consumer up to 32 MiB ahead of its
//! reader, so a reader that works as it reads (a publisher's stream pass) pulls instead,
//! through a consumer it names ([`Replay::pull`]): a chunk at a time.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull, push};
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

/// Messages a pulled replay asks for at a time (at most two such requests are outstanding).
const PULLED_CHUNK: usize = 500;

/// How long the server keeps a pulled replay's consumer once its reader stopped asking (a
/// reader that crashed): until then another reader of that name cannot pull through it.
const PULLED_IDLE: Duration = Duration::from_secs(60);

/// Where a replay's messages come from.
enum Messages {
    Pushed(Box<push::Ordered>),
    Pulled(Box<Pulled>),
}

/// Messages pulled through a named consumer, deleted when the replay is closed or dropped.
struct Pulled {
    messages: pull::Stream,
    consumer: Named,
}

/// A pulled replay's consumer: deleted by [`Named::delete`], or else when dropped.
struct Named {
    stream: Stream,
    name: Option<String>,
}

impl Named {
    async fn delete(mut self) {
        if let Some(name) = self.name.take() {
            delete(&self.stream, &name).await;
        }
    }
}

async fn delete(stream: &Stream, name: &str) {
    if let Err(e) = stream.delete_consumer(name).await {
        tracing::debug!(consumer = name, error = %e, "cannot delete a pulled replay's consumer; the server expires it");
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        // A replay abandoned on an error: deleted now rather than after PULLED_IDLE.
        let Some(name) = self.name.take() else {
            return;
        };
        let stream = self.stream.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { delete(&stream, &name).await });
        }
    }
}

impl Messages {
    async fn next(&mut self) -> Option<Result<async_nats::jetstream::Message, String>> {
        match self {
            Messages::Pushed(m) => m.next().await.map(|r| r.map_err(|e| e.to_string())),
            Messages::Pulled(p) => p
                .messages
                .next()
                .await
                .map(|r| r.map_err(|e| e.to_string())),
        }
    }
}

/// A replay in progress: the messages that were in the stream when it was opened, one at a
/// time, so callers can fold a long history without holding it (and show progress).
pub struct Replay {
    stream: String,
    total: u64,
    done: bool,
    /// Keep waiting for new messages instead of ending at the last one.
    follow: bool,
    messages: Option<Messages>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("stream", &self.stream)
            .field("total", &self.total)
            .field("pulled", &self.pulled())
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
            Some(Messages::Pushed(Box::new(
                messages.map_err(|e| err("cannot replay", &e))?,
            )))
        };
        Ok(Self {
            stream: name,
            total: if follow { 0 } else { total },
            done: total == 0 && !follow,
            follow,
            messages,
        })
    }

    /// The messages `policy` selects on subjects matching `filter`, pulled a chunk at a time
    /// through a consumer named `name` that this reader alone uses: its role may create, pull
    /// from and delete that name and no other consumer's. Fails with
    /// `ConsumerCreateStrictErrorKind::AlreadyExists` while another reader holds the name,
    /// and times out when the role may not create it; the consumer is deleted when the replay
    /// is closed ([`Replay::close`]) or dropped, or by the server [`PULLED_IDLE`] after its
    /// reader stopped.
    pub async fn pull(
        stream: &Stream,
        filter: &str,
        policy: DeliverPolicy,
        name: &str,
    ) -> Result<Self, PullError> {
        let consumer = stream
            .create_consumer_strict(pull::Config {
                name: Some(name.to_owned()),
                // Unique to this reader, so that another reader's creation of the name fails
                // instead of sharing (and splitting) this one's messages.
                description: Some(format!("ksr stream pass {}", unique_inbox())),
                deliver_policy: policy,
                filter_subject: filter.to_owned(),
                ack_policy: AckPolicy::None,
                inactive_threshold: PULLED_IDLE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(PullError::Create)?;
        let total = consumer.cached_info().num_pending;
        let messages = match consumer
            .stream()
            .max_messages_per_batch(PULLED_CHUNK)
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                // Not left for PULLED_IDLE: the caller reads pushed now and pulls next time.
                delete(stream, name).await;
                return Err(PullError::Pull(e));
            }
        };
        // Held even when empty, so that closing the replay deletes the consumer.
        let messages = Messages::Pulled(Box::new(Pulled {
            messages,
            consumer: Named {
                stream: stream.clone(),
                name: Some(name.to_owned()),
            },
        }));
        Ok(Self {
            stream: stream.cached_info().config.name.clone(),
            total,
            done: total == 0,
            follow: false,
            messages: Some(messages),
        })
    }

    /// Ends the replay; a pulled one's consumer is deleted before this returns (so the next
    /// pass, however soon, can create it again). Dropping a pulled replay deletes it too, a
    /// moment later.
    pub async fn close(self) {
        if let Some(Messages::Pulled(pulled)) = self.messages {
            let Pulled { messages, consumer } = *pulled;
            drop(messages);
            consumer.delete().await;
        }
    }

    /// Whether the messages are pulled ([`Replay::pull`]) rather than pushed.
    pub fn pulled(&self) -> bool {
        matches!(self.messages, Some(Messages::Pulled(_)))
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

/// Why a pulled replay could not start ([`Replay::pull`]).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot create the replay consumer: {0}")]
    Create(#[source] async_nats::jetstream::stream::ConsumerCreateStrictError),
    #[error("cannot pull from the replay consumer: {0}")]
    Pull(#[source] async_nats::jetstream::consumer::StreamError),
}

impl PullError {
    /// Another reader holds the consumer's name (the server refused to create it again).
    pub fn is_taken(&self) -> bool {
        use async_nats::jetstream::stream::ConsumerCreateStrictErrorKind as K;
        matches!(self, PullError::Create(e) if matches!(e.kind(), K::AlreadyExists))
    }

    /// The server did not answer the creation: with NATS authorization, a role that may not
    /// create this consumer (the server drops the request and logs a violation).
    pub fn is_unanswered(&self) -> bool {
        use async_nats::jetstream::stream::ConsumerCreateStrictErrorKind as K;
        matches!(self, PullError::Create(e) if matches!(e.kind(), K::TimedOut))
    }
}
