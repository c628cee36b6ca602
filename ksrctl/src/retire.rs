//! `retire-cluster`: a decommissioned cluster's routes go, deliberately.
//!
//! Publishes `Removed` for every live Service of the cluster, each guarded by the subject's
//! last sequence (as the watcher publishes), after checking that no watcher of the cluster
//! answers: a running watcher would put its Services back, and a publish that finds the
//! subject changed stops the command.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;

use ksr_proto::{Change, Event, EventKind, codec, subject};

use crate::cli::NatsArgs;
use crate::{Error, Outcome, read};

/// Who the events say removed the Services.
const OBSERVER: &str = "ksrctl retire-cluster";

pub async fn retire(args: &NatsArgs, cluster: &str) -> Result<Outcome, Error> {
    let (js, stream) = read::open(args).await?;
    let client = js.client();
    let ping = tokio::time::timeout(
        Duration::from_secs(3),
        client.request(subject::watcher_ping_subject(cluster), Vec::new().into()),
    )
    .await;
    if let Ok(Ok(reply)) = ping {
        return Err(Error::Usage(format!(
            "a watcher of cluster {cluster} is running ({}): stop it before retiring the cluster, \
             or it would publish its Services again",
            String::from_utf8_lossy(&reply.payload)
        )));
    }
    let latest =
        ksr_runtime::replay::latest_per_subject(&stream, &subject::cluster_filter(cluster)).await?;
    let live: Vec<(u64, Event)> = latest
        .into_iter()
        .filter_map(|l| Some((l.seq, l.event.ok()?)))
        .filter(|(_, e)| e.route().is_some())
        .collect();
    let observed_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut removed = Vec::new();
    for (seq, live) in live {
        let event = Event {
            key: live.key.clone(),
            change: Change::Removed,
            resource_version: String::new(),
            observed_unix_ms,
            observer: OBSERVER.into(),
            manager: None,
        };
        let payload =
            codec::encode(&event).map_err(|e| Error::Usage(format!("{}: {e}", event.key)))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            subject::HEADER_SCHEMA,
            codec::version_for(&event).to_string().as_str(),
        );
        headers.insert(subject::HEADER_KIND, EventKind::Removed.as_str());
        headers.insert(subject::HEADER_CLUSTER, cluster);
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(subject::msg_id(&event.key, seq, &event.change))
            .expected_last_subject_sequence(seq);
        let acked = match js.send_publish(subject::subject(&event.key), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_) => {
                println!("removed {}", event.key);
                removed.push(event.key);
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                return Err(Error::Usage(format!(
                    "{} changed while retiring (is a watcher of cluster {cluster} running?); \
                     {} Services were removed, run the command again once it is stopped",
                    event.key,
                    removed.len()
                )));
            }
            Err(e) => return Err(crate::nats_err(format!("publishing {}", event.key))(e)),
        }
    }
    println!(
        "retired cluster {cluster}: {} Services removed; the publishers remove their routes",
        removed.len()
    );
    Ok(Outcome::Clean)
}
