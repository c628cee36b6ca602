//! Following the publishers' per-Service status of this cluster's Services
//! ([`ksr_projection::status`]), for the Events their owners read.
//!
//! A background task watches the status bucket's keys of this cluster (`*.<cluster>.>`) from
//! the moment it starts, or from the bucket's beginning when the bucket did not exist yet
//! (statuses written while no watcher ran are not replayed as Events; `ksrctl explain` shows
//! them), resumes after the last revision it saw when the watch breaks,
//! and waits for the bucket when no publisher created it yet. Advisory: nothing here touches
//! what the watcher publishes.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ksr_projection::status::{self, Status};
use ksr_proto::ServiceKey;

/// Waits before opening the bucket or the watch again, failures in a row: 1 s doubling up
/// to 60 s.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One publisher's status of one Service changed (`None`: deleted, it claims nothing there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub publisher: String,
    pub service: ServiceKey,
    pub status: Option<Status>,
}

/// Starts following `bucket` for `cluster`'s Services; stops with `shutdown`.
pub fn follow(
    js: jetstream::Context,
    bucket: String,
    cluster: String,
    shutdown: CancellationToken,
) -> mpsc::Receiver<StatusChange> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = run(js, &bucket, &cluster, tx) => {}
        }
    });
    rx
}

async fn run(js: jetstream::Context, bucket: &str, cluster: &str, tx: mpsc::Sender<StatusChange>) {
    let filter = format!("*.{cluster}.>");
    let mut next_revision: Option<u64> = None;
    let mut said = false;
    let mut backoff = ksr_runtime::retry::Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(e) => {
                if !said {
                    tracing::info!(bucket, error = %e, "no status bucket yet (the publishers create it); Conflict Events wait for it");
                    said = true;
                }
                // Everything the bucket will hold is news: read it from its start.
                next_revision.get_or_insert(1);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let watch = match next_revision {
            Some(r) => kv.watch_from_revision(&filter, r).await,
            None => kv.watch(&filter).await,
        };
        let mut entries = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(bucket, error = %e, "cannot watch the status bucket; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "status watch broke; resuming");
                    break;
                }
            };
            next_revision = Some(entry.revision + 1);
            backoff.reset();
            let Some((publisher, service)) = status::parse_key(&entry.key) else {
                continue;
            };
            let status = match entry.operation {
                Operation::Put => match Status::decode(&entry.value) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(key = entry.key, error = %e, "unreadable status entry; ignored");
                        continue;
                    }
                },
                Operation::Delete | Operation::Purge => None,
            };
            let change = StatusChange {
                publisher,
                service,
                status,
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
