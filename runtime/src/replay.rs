//! Reading the stream back: every event, or the newest event of every Service subject.
//!
//! Used wherever the stream's state is needed as a whole: the watcher's start-up diff, the
//! publishers' reconciliation, audits and tests. An ordered (ephemeral) consumer delivers the
//! messages (`DeliverPolicy::LastPerSubject` for the current state); it is read until the
//! server reports nothing pending.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
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
    /// The event, or why it could not be decoded (reason label, message).
    pub event: Result<Event, (&'static str, String)>,
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
    let name = stream.cached_info().config.name.clone();
    let err = |message: String| RuntimeError::Stream {
        stream: name.clone(),
        message,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: policy,
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("cannot create a replay consumer: {e}")))?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| err(format!("cannot replay: {e}")))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| err("replay stalled for 30 s".into()))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| err(format!("replay: {e}")))?;
        let info = msg.info().map_err(|e| err(format!("replay: {e}")))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let published_unix_ns =
            i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        out.push(Latest {
            seq,
            published_unix_ns,
            subject: msg.subject.to_string(),
            event: crate::consumer::decode_message(&msg),
        });
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The newest event of every subject at or below `ack_floor` (events a consumer already
/// acknowledged, so their projection must exist), as deliveries for a fenced re-apply.
/// Undecodable events are logged with their sequence and skipped.
pub async fn acknowledged_latest(
    stream: &Stream,
    ack_floor: u64,
) -> Result<Vec<crate::consumer::Delivery>, RuntimeError> {
    let latest = latest_per_subject(stream, &ksr_proto::subject::all_filter()).await?;
    Ok(latest
        .into_iter()
        .filter(|l| l.seq <= ack_floor)
        .filter_map(|l| match l.event {
            Ok(event) => Some(crate::consumer::Delivery { seq: l.seq, event }),
            Err((reason, message)) => {
                tracing::warn!(
                    seq = l.seq,
                    subject = l.subject,
                    reason,
                    error = message,
                    "reconcile: skipping undecodable event"
                );
                None
            }
        })
        .collect())
}
