//! Writing per-Service [`Status`] to the status bucket without ever holding up routing.
//!
//! The consumer loop hands over what each applied batch changed ([`StatusWriter::report`]
//! only takes a lock and wakes the writer); the writer task coalesces changes per Service
//! (the newest wins), skips standings it wrote already (the same standing at a later event is
//! not news: status costs JetStream writes only when a standing changes), and puts or deletes
//! keys concurrently.
//! A failed write is counted, logged and tried again later; the bucket is created when
//! missing. Nothing here can fail or slow down an apply.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use ksr_proto::ServiceKey;

use crate::metrics::MetricsRegistry;
use ksr_projection::status::{self, Change, Standing, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Status writes in flight at once.
const CONCURRENCY: usize = 32;
/// How long a starting writer may read what its publisher wrote before; a full report waits
/// as long for that read.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Waits after failed writes (or bucket creation) in a row: 1 s doubling up to 60 s.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// `ksr_<publisher>_status_…`.
#[derive(Debug, Clone, Default)]
struct StatusMetrics {
    writes: Counter,
    errors: Counter,
    pending: Gauge,
}

/// Where a publisher's status goes.
#[derive(Debug, Clone)]
pub struct StatusWriter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<HashMap<ServiceKey, (u64, Option<Standing>)>>,
    /// What is in the bucket for each Service, as far as this writer knows. A full report
    /// is compared with it as it is made, one Service at a time, so that only what differs
    /// is queued (at 100,000 Services a full report held as a list cost 25 MiB).
    written: Mutex<Written>,
    /// Hashes standings for [`Written`].
    hasher: RandomState,
    /// Whether what was written before this process started has been read.
    loaded: watch::Sender<bool>,
    wake: Notify,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<ServiceKey, (u64, Option<Standing>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `standing` is news against what is written for `service` (sequences are not
    /// compared: a stream created again starts them anew).
    fn is_news(
        &self,
        written: &Written,
        service: &ServiceKey,
        standing: &Option<Standing>,
    ) -> bool {
        written
            .services
            .get(service)
            .is_none_or(|w| w.standing != self.hasher.hash_one(standing))
    }
}

/// The statuses in the bucket: per Service its event's sequence and a hash of its standing
/// (a Service costs its key and three words, not its standing's strings).
#[derive(Debug, Default)]
struct Written {
    services: HashMap<ServiceKey, WrittenStatus>,
    /// Counts full reports, to tell the Services the last one listed.
    reports: u32,
}

#[derive(Debug, Clone, Copy)]
struct WrittenStatus {
    seq: u64,
    /// A hash of the standing written ([`Shared::hasher`]).
    standing: u64,
    /// A refusal: not a claim, so a full report (which lists claims) does not delete it.
    refused: bool,
    /// The last full report that listed the Service.
    listed: u32,
}

/// Who writes, and where.
#[derive(Debug, Clone)]
pub struct StatusTarget {
    /// `vulcand` or `consul`.
    pub target: &'static str,
    /// The durable consumer's name.
    pub publisher: String,
    /// The status bucket ([`status::bucket`]).
    pub bucket: String,
    /// Copies of the bucket when it is created (the route stream's).
    pub replicas: usize,
}

impl StatusWriter {
    /// Starts the writer task, which reads what this publisher wrote before once there is
    /// something to write; it stops with `shutdown`.
    pub fn start(
        js: jetstream::Context,
        to: StatusTarget,
        registry: &MetricsRegistry,
        shutdown: CancellationToken,
    ) -> Self {
        let metrics = StatusMetrics::default();
        registry.register(|r| {
            let r = r.sub_registry_with_prefix(to.target);
            r.register(
                "status_writes",
                "Per-Service status entries written to the status bucket",
                metrics.writes.clone(),
            );
            r.register(
                "status_errors",
                "Status writes that failed (advisory: routing is unaffected; retried)",
                metrics.errors.clone(),
            );
            r.register(
                "status_pending",
                "Per-Service status changes waiting to be written",
                metrics.pending.clone(),
            );
        });
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            written: Mutex::new(Written::default()),
            hasher: RandomState::new(),
            loaded: watch::Sender::new(false),
            wake: Notify::new(),
        });
        let task = Task {
            js,
            to,
            metrics,
            shared: shared.clone(),
        };
        tokio::spawn(task.run(shutdown));
        Self { shared }
    }

    /// Queues `changes` (the newest per Service wins); never waits.
    pub fn report(&self, changes: impl IntoIterator<Item = Change>) {
        let mut any = false;
        {
            let mut pending = self.shared.pending();
            for (key, seq, standing) in changes {
                let newer = pending.get(&key).is_none_or(|(s, _)| *s <= seq);
                if newer {
                    pending.insert(key, (seq, standing));
                    any = true;
                }
            }
        }
        if any {
            self.shared.wake.notify_one();
        }
    }

    /// Has the writer read what this publisher wrote before it started, if it has not yet
    /// (it does so when first woken, so that the read does not add to the memory of a
    /// start-up reconciliation), and waits for that at most `within`; false if not done.
    pub async fn loaded(&self, within: Duration) -> bool {
        let mut rx = self.shared.loaded.subscribe();
        if !*rx.borrow() {
            self.shared.wake.notify_one();
        }
        matches!(
            tokio::time::timeout(within, rx.wait_for(|l| *l)).await,
            Ok(Ok(_))
        )
    }

    /// Reports the standing of every Service claiming a name (after a reconciliation pass):
    /// `standings` hands each to the callback it is given. What differs from what this
    /// writer wrote is queued, and statuses it wrote for Services not among them are
    /// deleted (refusals stay: they are not claims). Compared as they come, so a report of
    /// every Service is never held at once; it waits (up to a minute) for the writer to
    /// have read the bucket, and is skipped (the next pass reports again) if it has not.
    pub async fn report_all(&self, standings: impl FnOnce(&mut dyn FnMut(Change))) {
        if !self.loaded(LOAD_TIMEOUT).await {
            tracing::warn!(
                "the status bucket is not read yet: the full status report waits for the next reconciliation"
            );
            return;
        }
        let shared = &self.shared;
        let started = std::time::Instant::now();
        let (mut listed, mut queued, mut deleted) = (0u64, 0u64, 0u64);
        {
            let mut written = shared.written();
            written.reports = written.reports.wrapping_add(1);
            let report = written.reports;
            let mut pending = shared.pending();
            standings(&mut |(key, seq, standing)| {
                listed += 1;
                if let Some(w) = written.services.get_mut(&key) {
                    w.listed = report;
                }
                match pending.get(&key) {
                    // A change reported since is newer.
                    Some((queued, _)) if *queued > seq => {}
                    Some(_) => {
                        pending.insert(key, (seq, standing));
                    }
                    None => {
                        if shared.is_news(&written, &key, &standing) {
                            queued += 1;
                            pending.insert(key, (seq, standing));
                        }
                    }
                }
            });
            for (key, w) in &written.services {
                if !w.refused && w.listed != report && !pending.contains_key(key) {
                    deleted += 1;
                    pending.insert(key.clone(), (w.seq, None));
                }
            }
        }
        tracing::debug!(
            listed,
            queued,
            deleted,
            seconds = started.elapsed().as_secs_f64(),
            "full status report compared with the bucket"
        );
        shared.wake.notify_one();
    }
}

struct Task {
    js: jetstream::Context,
    to: StatusTarget,
    metrics: StatusMetrics,
    shared: Arc<Shared>,
}

impl Task {
    async fn run(self, stop: CancellationToken) {
        let mut backoff = crate::retry::Backoff::new(RETRY_MIN, RETRY_MAX);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.shared.wake.notified() => {}
        }
        // The bucket, and what is in it, before anything is written.
        let kv = loop {
            if let Some(kv) = self.open().await {
                break kv;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.load_written(&kv) => {}
        }
        self.shared.loaded.send_replace(true);
        backoff.reset();
        loop {
            while self.flush(&kv).await {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            backoff.reset();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// The bucket, created when missing.
    async fn open(&self) -> Option<kv::Store> {
        let name = &self.to.bucket;
        if let Ok(kv) = self.js.get_key_value(name).await {
            return Some(kv);
        }
        let config = kv::Config {
            bucket: name.clone(),
            description: "kube-service-router: each publisher's status of each Service".into(),
            history: 1,
            num_replicas: self.to.replicas.max(1),
            ..Default::default()
        };
        match self.js.create_key_value(config).await {
            Ok(kv) => Some(kv),
            Err(e) => {
                self.metrics.errors.inc();
                tracing::warn!(bucket = name, error = %e, "cannot create the status bucket (advisory); retrying");
                None
            }
        }
    }

    /// Learns what this publisher's statuses in the bucket are (another process of it may
    /// have written them before this one started), so that a restart writes only the
    /// standings that changed — not one status per Service — and the first full report
    /// deletes those of Services that no longer claim a name. Advisory like every status
    /// write: when the bucket cannot be read (or not within [`LOAD_TIMEOUT`]), what was read
    /// is kept and the rest is written again.
    async fn load_written(&self, kv: &kv::Store) {
        let started = std::time::Instant::now();
        let mut loaded = HashMap::new();
        let read = tokio::time::timeout(
            LOAD_TIMEOUT,
            read_statuses(&self.js, kv, &self.to.publisher, |service, status| {
                let status = WrittenStatus {
                    seq: status.seq,
                    refused: matches!(status.standing, Standing::Rejected { .. }),
                    standing: self.shared.hasher.hash_one(Some(status.standing)),
                    listed: 0,
                };
                loaded.insert(service, status);
            }),
        )
        .await;
        let found = loaded.len();
        {
            let mut written = self.shared.written();
            if written.services.is_empty() {
                written.services = loaded;
            } else {
                for (service, status) in loaded {
                    written.services.entry(service).or_insert(status);
                }
            }
        }
        match read {
            Ok(Ok(())) => tracing::debug!(
                bucket = self.to.bucket,
                statuses = found,
                seconds = started.elapsed().as_secs_f64(),
                "read this publisher's statuses"
            ),
            Ok(Err(e)) => {
                tracing::warn!(bucket = self.to.bucket, statuses = found, error = %e, "cannot read the status bucket (advisory): unknown statuses are written again")
            }
            Err(_) => tracing::warn!(
                bucket = self.to.bucket,
                statuses = found,
                "reading the status bucket timed out (advisory): unknown statuses are written again"
            ),
        }
    }

    /// Writes what is pending; true if some write failed (it stays pending).
    async fn flush(&self, kv: &kv::Store) -> bool {
        let batch: Vec<_> = self.shared.pending().drain().collect();
        let due: Vec<_> = {
            let written = self.shared.written();
            batch
                .into_iter()
                // Only a new standing is news: the same standing at a later event (new
                // backends, say) is not written again, so status costs writes only when a
                // Service's standing changes, not on every event.
                .filter(|(k, (_, standing))| self.shared.is_news(&written, k, standing))
                .collect()
        };
        self.metrics.pending.set(due.len() as i64);
        let to = &self.to;
        let results: Vec<_> = futures::stream::iter(due)
            .map(|(service, (seq, standing))| async move {
                let key = status::key(&to.publisher, &service);
                let result = match &standing {
                    Some(s) => {
                        let value = Status {
                            target: to.target.to_owned(),
                            publisher: to.publisher.clone(),
                            seq,
                            standing: s.clone(),
                            at_ms: status::unix_now_ms(),
                        };
                        kv.put(&key, value.encode().into())
                            .await
                            .map(|_| ())
                            .map_err(BoxError::from)
                    }
                    None => kv.purge(&key).await.map_err(BoxError::from),
                };
                (service, seq, standing, result)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = false;
        let mut retry = Vec::new();
        {
            let mut written = self.shared.written();
            for (service, seq, standing, result) in results {
                match result {
                    Ok(()) => {
                        self.metrics.writes.inc();
                        match &standing {
                            None => {
                                written.services.remove(&service);
                            }
                            Some(s) => {
                                let status = WrittenStatus {
                                    seq,
                                    refused: matches!(s, Standing::Rejected { .. }),
                                    standing: self.shared.hasher.hash_one(&standing),
                                    listed: written.reports,
                                };
                                written.services.insert(service, status);
                            }
                        }
                    }
                    Err(e) => {
                        self.metrics.errors.inc();
                        if !failed {
                            tracing::warn!(bucket = self.to.bucket, error = %e, "status write failed (advisory: routing is unaffected); retrying");
                        }
                        failed = true;
                        retry.push((service, (seq, standing)));
                    }
                }
            }
        }
        let mut pending = self.shared.pending();
        // Back in the queue unless something newer arrived meanwhile.
        for (service, entry) in retry {
            pending.entry(service).or_insert(entry);
        }
        self.metrics.pending.set(pending.len() as i64);
        failed
    }
}

/// Hands `each` every status `publisher` has in the bucket (its newest value per Service,
/// deleted ones left out), read through an ordered consumer of the bucket's stream (as a KV watch reads
/// it) until it has delivered the last one.
async fn read_statuses(
    js: &jetstream::Context,
    kv: &kv::Store,
    publisher: &str,
    mut each: impl FnMut(ServiceKey, Status),
) -> Result<(), BoxError> {
    use jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
    let consumer = kv
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: format!("{}{publisher}.>", kv.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let pending = msg.info()?.pending;
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some();
        let key = msg.subject.as_str().strip_prefix(kv.prefix.as_str());
        if !deleted
            && let Some((_, service)) = key.and_then(status::parse_key)
            && let Ok(s) = Status::decode(&msg.payload)
        {
            each(service, s);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(())
}
