//! Publishing to the stream: what it knows per subject, and exactly-once publishing of changes.
//!
//! For every Service subject of this cluster the watcher knows the last message (sequence and
//! event). A change is published with `Nats-Msg-Id` (cluster, key, predecessor, digest of the
//! change) and `Nats-Expected-Last-Subject-Sequence` = the known sequence, so two replicas
//! never publish on top of each other: one wins, the other gets "wrong last sequence", reloads
//! the subject, and finds either its own change (another replica published the identical
//! Msg-Id — success; nats-server ≥ 2.12 also answers a retried publish whose ack was lost
//! this way instead of with a duplicate ack) or a different one, and decides again.

use std::collections::HashMap;
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self};
use ksr_runtime::nats;

use ksr_proto::{Change, Event, RouteState, ServiceKey, codec, subject};
use ksr_runtime::replay;

use crate::Error;
use crate::metrics::WatcherMetrics;

/// The last message of a subject.
#[derive(Debug, Clone)]
pub struct Known {
    pub seq: u64,
    /// `None` when that message could not be decoded.
    pub event: Option<Event>,
    pub msg_id: Option<String>,
    /// The identity of the cluster whose watcher wrote it (`Ksr-Cluster-Id`), when it says.
    pub cluster_id: Option<String>,
}

impl Known {
    /// Whether the stream routes this Service.
    pub fn routed(&self) -> bool {
        self.route().is_some()
    }

    fn route(&self) -> Option<&RouteState> {
        self.event.as_ref().and_then(Event::route)
    }

    /// The known route with its claim starts made absolute (0 means "this event").
    fn effective_route(&self) -> Option<RouteState> {
        self.route().map(|r| {
            let mut r = r.clone();
            r.host_since = r.host_claimed_since(self.seq);
            r.route_since = r.route_claimed_since(self.seq);
            r
        })
    }
}

/// Provenance of a change.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub resource_version: String,
    pub manager: Option<String>,
}

/// Publishes one cluster's events.
#[derive(Debug, Clone)]
pub struct EventWriter {
    js: jetstream::Context,
    /// The stream as last found: got anew at every [`EventWriter::load`], so a stream that was
    /// deleted is created again (when allowed) and a recreated one is followed.
    stream: std::sync::Arc<std::sync::Mutex<Stream>>,
    settings: nats::StreamSettings,
    create: bool,
    cluster: String,
    /// What this watcher watches ([`subject::HEADER_CLUSTER_ID`]).
    cluster_id: String,
    observer: String,
    metrics: WatcherMetrics,
}

/// Who publishes: the cluster name, what it watches and the observing watcher.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster: String,
    /// [`subject::HEADER_CLUSTER_ID`]: the kube-system UID, or a directory digest.
    pub cluster_id: String,
    pub observer: String,
}

impl EventWriter {
    /// `create`: whether a stream that vanished may be created again.
    pub fn new(
        js: jetstream::Context,
        stream: Stream,
        settings: nats::StreamSettings,
        create: bool,
        who: Identity,
        metrics: WatcherMetrics,
    ) -> Self {
        Self {
            js,
            stream: std::sync::Arc::new(std::sync::Mutex::new(stream)),
            settings,
            create,
            cluster: who.cluster,
            cluster_id: who.cluster_id,
            observer: who.observer,
            metrics,
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    fn stream(&self) -> Stream {
        self.stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the stream is gone or was created again since it was last got (then the next
    /// [`EventWriter::load`] follows the new one).
    pub async fn stream_changed(&self) -> bool {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match self.js.get_stream(&self.settings.name).await {
            Ok(now) => {
                self.observe_replicas(now.cached_info());
                nats::incarnation(&now) != nats::incarnation(&self.stream())
            }
            // Only a stream the server says is gone; not NATS being unreachable.
            Err(e) => matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND),
        }
    }

    /// Sets the replica gauges from the stream's state as its leader reports it.
    fn observe_replicas(&self, info: &jetstream::stream::Info) {
        let desired = info.config.num_replicas.max(1);
        let current = match &info.cluster {
            // Not clustered: the one copy.
            None => 1,
            Some(c) => {
                usize::from(c.leader.as_deref().is_some_and(|l| !l.is_empty()))
                    + c.replicas
                        .iter()
                        .filter(|p| p.current && !p.offline)
                        .count()
            }
        };
        self.metrics
            .stream_replicas_desired
            .set(i64::try_from(desired).unwrap_or(i64::MAX));
        self.metrics
            .stream_replicas_current
            .set(i64::try_from(current).unwrap_or(i64::MAX));
    }

    /// The last message of every subject of this cluster, from the stream as it is now: a
    /// stream that vanished is created again (when `--create-stream` allows), and then this
    /// cluster's full state is republished by the diff that follows (it knows nothing).
    /// Each boxed: a table slot holds a pointer, not a whole event (slots are 10–50 % empty).
    pub async fn load(&self) -> Result<HashMap<ServiceKey, Box<Known>>, Error> {
        let before = nats::incarnation(&self.stream());
        let stream = nats::ensure_stream(&self.js, &self.settings, self.create).await?;
        self.observe_replicas(stream.cached_info());
        if nats::incarnation(&stream) != before {
            tracing::warn!(
                cluster = self.cluster,
                stream = self.settings.name,
                "the stream was deleted or created again: republishing this cluster's state"
            );
        }
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = stream.clone();
        let latest =
            replay::latest_per_subject(&stream, &subject::cluster_filter(&self.cluster)).await?;
        let mut known = HashMap::with_capacity(latest.len());
        for l in latest {
            let Ok(key) = subject::parse_subject(&l.subject) else {
                tracing::warn!(
                    subject = l.subject,
                    seq = l.seq,
                    "ignoring a foreign subject in our cluster's range"
                );
                continue;
            };
            let event = match l.event {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(
                        seq = l.seq,
                        subject = l.subject,
                        reason = e.reason(),
                        error = %e,
                        "last event of a subject is undecodable; it will be superseded"
                    );
                    None
                }
            };
            known.insert(
                key,
                Box::new(Known {
                    seq: l.seq,
                    event,
                    msg_id: None,
                    cluster_id: l.cluster_id,
                }),
            );
        }
        Ok(known)
    }

    /// Reads one subject's last message.
    pub async fn load_subject(&self, key: &ServiceKey) -> Result<Option<Known>, Error> {
        match self
            .stream()
            .get_last_raw_message_by_subject(&subject::subject(key))
            .await
        {
            Ok(msg) => {
                let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
                Ok(Some(Known {
                    seq: msg.sequence,
                    event: codec::decode(&msg.payload).ok(),
                    msg_id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()),
                    cluster_id: header(subject::HEADER_CLUSTER_ID),
                }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(source) => Err(Error::LastEvent {
                subject: subject::subject(key),
                source,
            }),
        }
    }

    /// The event that takes the stream from `known` to `desired`, if any.
    pub fn change_for(
        &self,
        key: &ServiceKey,
        desired: Option<&RouteState>,
        known: Option<&Known>,
        origin: &Origin,
    ) -> Option<Event> {
        let change = match desired {
            Some(route) => {
                let mut route = route.clone();
                route.continue_claims(known.and_then(|k| k.route().map(|r| (r, k.seq))));
                // Compare claim starts as absolute sequences: the event that began a claim
                // says 0 ("this event"), its successors carry that event's sequence.
                if known.and_then(Known::effective_route).as_ref() == Some(&route) {
                    return None;
                }
                if known.and_then(Known::route).is_some() {
                    Change::Updated(route)
                } else {
                    Change::Added(route)
                }
            }
            None => {
                // Already removed (or never routed): nothing to say. An undecodable last
                // message is superseded by an explicit removal.
                match known {
                    None => return None,
                    Some(k) if k.event.as_ref().is_some_and(|e| e.route().is_none()) => {
                        return None;
                    }
                    Some(_) => Change::Removed,
                }
            }
        };
        Some(Event {
            key: key.clone(),
            change,
            resource_version: origin.resource_version.clone(),
            observed_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            observer: self.observer.clone(),
            manager: origin.manager.clone(),
        })
    }

    /// Brings one subject to `desired`, retrying on conflicts with other replicas; returns the
    /// subject's last message afterwards (unchanged when nothing had to be published).
    pub async fn sync(
        &self,
        key: &ServiceKey,
        desired: Option<&RouteState>,
        mut known: Option<Known>,
        origin: &Origin,
    ) -> Result<Option<Known>, Error> {
        for _attempt in 0..8 {
            let Some(event) = self.change_for(key, desired, known.as_ref(), origin) else {
                return Ok(known);
            };
            let expected = known.as_ref().map(|k| k.seq).unwrap_or(0);
            let msg_id = subject::msg_id(key, expected, &event.change);
            match self.publish(&event, expected, &msg_id).await? {
                Some(seq) => {
                    let kind = event.kind();
                    self.metrics.published(kind);
                    tracing::info!(cluster = key.cluster, namespace = key.namespace, service = key.name, seq, kind = %kind, "published");
                    return Ok(Some(Known {
                        seq,
                        event: Some(event),
                        msg_id: Some(msg_id),
                        cluster_id: Some(self.cluster_id.clone()),
                    }));
                }
                None => {
                    // Another writer got there first: look at what it wrote.
                    let fresh = self.load_subject(key).await?;
                    if let Some(f) = &fresh
                        && f.msg_id.as_deref() == Some(msg_id.as_str())
                    {
                        return Ok(fresh);
                    }
                    self.metrics.conflicts.inc();
                    tracing::debug!(
                        cluster = key.cluster,
                        namespace = key.namespace,
                        service = key.name,
                        "another writer published first; deciding again"
                    );
                    known = fresh;
                }
            }
        }
        Err(Error::Contention { key: key.clone() })
    }

    /// Publishes; `Ok(None)` when the expected last subject sequence was stale.
    async fn publish(
        &self,
        event: &Event,
        expected: u64,
        msg_id: &str,
    ) -> Result<Option<u64>, Error> {
        let payload = codec::encode(event).map_err(Error::Invalid)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            subject::HEADER_SCHEMA,
            codec::version_for(event).to_string().as_str(),
        );
        headers.insert(subject::HEADER_KIND, event.kind().as_str());
        headers.insert(subject::HEADER_CLUSTER, self.cluster.as_str());
        headers.insert(subject::HEADER_CLUSTER_ID, self.cluster_id.as_str());
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(msg_id)
            .expected_last_subject_sequence(expected);
        let started = Instant::now();
        let ack = match self
            .js
            .send_publish(subject::subject(&event.key), message)
            .await
        {
            Ok(future) => future.await,
            Err(e) => return Err(Error::Publish(e)),
        };
        self.metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        match ack {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(Error::Publish(e)),
        }
    }
}
