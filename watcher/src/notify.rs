//! Kubernetes Events on the Service for its owner — published, rejected (and why), unrouted,
//! held back; and from the publishers' status: routed (by which target, as what), in conflict
//! (who holds the name), refused — so `kubectl describe service X` tells a team what the router
//! did with its Service.
//!
//! Events are advisory: the runner hands outcomes over without waiting ([`Notifier::notify`]
//! never blocks; a full queue drops the outcome and counts it), and a failed Event write is
//! counted and logged, never retried into the routing path. Per Service and source (the watcher, each publisher), an outcome equal to
//! the last one written is not written again, and writes are rate-limited by a token bucket
//! (a burst of [`BURST`], then one per [`REFILL`]): a flapping Service produces a bounded
//! number of writes, and its latest outcome is written once a token is available. The same
//! Event again within [`SERIES_WINDOW`] patches `series.count` of the first one instead of
//! creating another (events.k8s.io/v1 semantics; kube's recorder keys its series without the
//! note, which would keep an old hostname in a re-routed Service's Event, so the series are
//! kept here, keyed by reason *and* note).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::WatcherMetrics;

/// Event writes a Service may make at once.
pub const BURST: f64 = 4.0;
/// One more write per this long.
pub const REFILL: Duration = Duration::from_secs(30);
/// Outcomes waiting for the writer; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
/// The same Event again within this long is counted in the first one's series.
pub const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// `reportingController` of every Event.
const CONTROLLER: &str = "kube-service-router";

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Normal,
    Warning,
}

/// One Event to record about a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    type_: EventType,
    reason: &'static str,
    note: String,
}

/// What the router did with a Service, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published to the route stream under this hostname and path, to this Service port.
    Published {
        host: String,
        path: String,
        port: String,
        /// `http`, `https` (and whether certificates are verified).
        scheme: String,
    },
    /// Not routed: the spec is invalid (`reason` is the metric label, `message` says why).
    Rejected {
        reason: &'static str,
        message: String,
    },
    /// No longer routed: the label was removed or the Service became unroutable.
    Unrouted,
    /// Its removal is held back by the watcher's mass-removal guard until an operator confirms.
    HeldBack { cluster: String },
    /// A publisher's target serves it under `name`.
    Served {
        publisher: String,
        target: String,
        name: String,
    },
    /// A publisher keeps it waiting: `owner`'s older claim (since stream event `owner_since`)
    /// holds `name`.
    Conflict {
        publisher: String,
        target: String,
        name: String,
        owner: String,
        owner_since: u64,
    },
    /// A publisher's target refused its event.
    Refused {
        publisher: String,
        target: String,
        reason: String,
    },
    /// A publisher no longer reports on it (it claims nothing there): nothing to write, and
    /// that publisher's next report is news again.
    Cleared { publisher: String },
}

impl Outcome {
    /// Who says it: the watcher, or a publisher (each keeps its own last word per Service).
    fn source(&self) -> &str {
        match self {
            Outcome::Served { publisher, .. }
            | Outcome::Conflict { publisher, .. }
            | Outcome::Refused { publisher, .. }
            | Outcome::Cleared { publisher } => publisher,
            _ => "watcher",
        }
    }

    /// The Event to write (none for [`Outcome::Cleared`]).
    fn event(&self) -> Option<Event> {
        let (type_, reason, note) = match self {
            Outcome::Published {
                host,
                path,
                port,
                scheme,
            } => (
                EventType::Normal,
                "Published",
                format!(
                    "published to the route stream as {host} (path {path}) to port {port} over {scheme}; each publisher reports whether it serves it (Routed) or why not"
                ),
            ),
            Outcome::Rejected { reason, message } => (
                EventType::Warning,
                "Rejected",
                format!("not routed ({reason}): {message}"),
            ),
            Outcome::Unrouted => (
                EventType::Normal,
                "Unrouted",
                "no longer routed: its label was removed, it was deleted or it became unroutable"
                    .to_owned(),
            ),
            Outcome::HeldBack { cluster } => (
                EventType::Warning,
                "HeldBack",
                format!(
                    "its removal is held back: the watcher saw too many Services of cluster {cluster} go at once (mass-removal guard), so its route stays; an operator releases the removals with `ksrctl confirm-removals --cluster {cluster}`"
                ),
            ),
            Outcome::Served {
                publisher,
                target,
                name,
            } => (
                EventType::Normal,
                "Routed",
                format!("{target} serves it as {name} (publisher {publisher})"),
            ),
            Outcome::Conflict {
                publisher,
                target,
                name,
                owner,
                owner_since,
            } => (
                EventType::Warning,
                "Conflict",
                format!(
                    "{target} does not serve it: {name} is held by {owner}, whose claim is older (since stream event #{owner_since}); this Service waits and takes over when that claim goes (publisher {publisher})"
                ),
            ),
            Outcome::Refused {
                publisher,
                target,
                reason,
            } => (
                EventType::Warning,
                "Rejected",
                format!("{target} refused it: {reason} (publisher {publisher})"),
            ),
            Outcome::Cleared { .. } => return None,
        };
        Some(Event {
            type_,
            reason,
            note: truncate(note, 1024),
        })
    }
}

/// Events carry at most 1 KiB of note.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The Service an outcome is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl ServiceRef {
    fn object_reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }
}

/// Hands outcomes to the Event writer without waiting. A disabled notifier (no Kubernetes:
/// the files source) drops them.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// The writer's queue, and the metrics that count what it drops.
    queue: Option<(mpsc::Sender<(ServiceRef, Outcome)>, WatcherMetrics)>,
}

impl Notifier {
    /// Starts the Event writer on `client`, reporting as `instance` of kube-service-router;
    /// it stops with `shutdown`.
    pub fn start(
        client: kube::Client,
        instance: String,
        metrics: WatcherMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            client,
            instance,
            metrics: metrics.clone(),
            services: HashMap::new(),
            series: HashMap::new(),
        };
        tokio::spawn(writer.run(rx, shutdown));
        Self {
            queue: Some((tx, metrics)),
        }
    }

    /// Queues `outcome` for `service`; never waits.
    pub fn notify(&self, service: ServiceRef, outcome: Outcome) {
        if let Some((tx, metrics)) = &self.queue
            && tx.try_send((service, outcome)).is_err()
        {
            metrics.event_errors("dropped");
        }
    }
}

/// Per Service: the last outcome written, the token bucket, and an outcome waiting for a token.
#[derive(Debug)]
struct Entry {
    written: Option<Outcome>,
    tokens: f64,
    refilled: Instant,
    waiting: Option<(ServiceRef, Outcome)>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            written: None,
            tokens: BURST,
            refilled: now,
            waiting: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.refilled).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(BURST);
        self.refilled = now;
    }
}

/// An Event already created: its object's name and how often it happened.
#[derive(Debug)]
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

struct Writer {
    client: kube::Client,
    /// `reportingInstance` (the watcher of one cluster).
    instance: String,
    metrics: WatcherMetrics,
    /// Per (namespace, Service, source of the outcome).
    services: HashMap<(String, String, String), Entry>,
    /// Per (namespace, Service, reason, note).
    series: HashMap<(String, String, &'static str, String), Series>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<(ServiceRef, Outcome)>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = rx.recv() => match got {
                    Some((service, outcome)) => self.offer(service, outcome).await,
                    None => return,
                },
                _ = tick.tick() => self.flush_waiting().await,
            }
        }
    }

    /// Writes `outcome` now if it is news and the Service has a token; keeps it waiting if it
    /// is news without a token.
    async fn offer(&mut self, service: ServiceRef, outcome: Outcome) {
        let now = Instant::now();
        let key = (
            service.namespace.clone(),
            service.name.clone(),
            outcome.source().to_owned(),
        );
        if let Outcome::Cleared { .. } = outcome {
            self.services.remove(&key);
            return;
        }
        let entry = self
            .services
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now));
        if entry.written.as_ref() == Some(&outcome) {
            // Back to what the owner last saw: nothing new to say.
            entry.waiting = None;
            return;
        }
        entry.refill(now);
        if entry.tokens < 1.0 {
            entry.waiting = Some((service, outcome));
            return;
        }
        entry.tokens -= 1.0;
        entry.waiting = None;
        entry.written = Some(outcome.clone());
        self.write(&service, &outcome).await;
    }

    /// Writes the waiting outcomes of Services that have a token again; forgets Services
    /// quiet for an hour (the map stays bounded by the Services that changed lately).
    async fn flush_waiting(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for entry in self.services.values_mut() {
            entry.refill(now);
            if entry.waiting.is_some() && entry.tokens >= 1.0 {
                entry.tokens -= 1.0;
                if let Some((service, outcome)) = entry.waiting.take() {
                    entry.written = Some(outcome.clone());
                    due.push((service, outcome));
                }
            }
        }
        self.services.retain(|_, e| {
            e.waiting.is_some() || now.duration_since(e.refilled) < Duration::from_secs(3600)
        });
        self.series
            .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
        for (service, outcome) in due {
            self.write(&service, &outcome).await;
        }
    }

    async fn write(&mut self, service: &ServiceRef, outcome: &Outcome) {
        let Some(event) = outcome.event() else {
            return;
        };
        match self.record(service, event).await {
            Ok(()) => self.metrics.event_written(),
            Err(e) => {
                self.metrics.event_errors("write_failed");
                tracing::warn!(namespace = service.namespace, service = service.name, error = %e, "could not record a Kubernetes Event (advisory; routing is unaffected)");
            }
        }
    }

    /// Creates the Event, or counts it in the series of the same Event created lately.
    async fn record(&mut self, service: &ServiceRef, event: Event) -> Result<(), kube::Error> {
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &service.namespace);
        let now = Timestamp::now();
        let key = (
            service.namespace.clone(),
            service.name.clone(),
            event.reason,
            event.note.clone(),
        );
        if let Some(series) = self.series.get_mut(&key)
            && series.last.elapsed() < SERIES_WINDOW
        {
            let count = series.count + 1;
            let patch = K8sEvent {
                series: Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                }),
                ..Default::default()
            };
            api.patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            series.count = count;
            series.last = Instant::now();
            return Ok(());
        }
        let name = format!("{}.{:x}", service.name, now.as_nanosecond());
        let created = K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(service.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(event.reason.into()),
            action: Some("Route".into()),
            note: Some(event.note),
            regarding: Some(service.object_reference()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &created).await?;
        self.series.insert(
            key,
            Series {
                name,
                count: 1,
                last: Instant::now(),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_events_an_owner_understands() {
        let routed = Outcome::Published {
            host: "web-shop.test.service.consul".into(),
            path: "/.*".into(),
            port: "http (80/TCP)".into(),
            scheme: "http".into(),
        }
        .event()
        .unwrap();
        assert_eq!(routed.reason, "Published");
        assert_eq!(routed.type_, EventType::Normal);
        assert!(routed.note.contains("web-shop.test.service.consul"));
        let rejected = Outcome::Rejected {
            reason: "invalid_path_annotation",
            message: "x".repeat(5000),
        }
        .event()
        .unwrap();
        assert_eq!(rejected.type_, EventType::Warning);
        assert!(rejected.note.len() <= 1024);
        let conflict = Outcome::Conflict {
            publisher: "ksr-vulcand-ksr".into(),
            target: "vulcand".into(),
            name: "web.example.com path /.*".into(),
            owner: "shop".into(),
            owner_since: 12,
        };
        assert_eq!(conflict.source(), "ksr-vulcand-ksr");
        let event = conflict.event().unwrap();
        assert_eq!(
            (event.reason, event.type_),
            ("Conflict", EventType::Warning)
        );
        assert!(event.note.contains("held by shop"), "{}", event.note);
        assert!(event.note.contains("#12"), "{}", event.note);
        let cleared = Outcome::Cleared {
            publisher: "ksr-vulcand-ksr".into(),
        };
        assert_eq!(cleared.event(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_a_burst_then_one_write_per_refill() {
        let start = Instant::now();
        let mut e = Entry::new(start);
        for _ in 0..4 {
            e.refill(Instant::now());
            assert!(e.tokens >= 1.0);
            e.tokens -= 1.0;
        }
        e.refill(Instant::now());
        assert!(e.tokens < 1.0, "the burst is spent");
        tokio::time::advance(REFILL).await;
        e.refill(Instant::now());
        assert!(e.tokens >= 1.0, "one more after a refill period");
    }
}
