//! Writing per-Service [`Status`] to the status bucket without ever holding up routing.
//!
//! The consumer loop hands over what each applied batch changed ([`StatusWriter::report`]
//! only takes a lock and wakes the writer); the writer task coalesces changes per Service
//! (the newest wins), skips standings it wrote already (the same standing at a later event is
//! not news: status costs JetStream writes only when a standing changes), and puts or deletes
//! keys concurrently.
//! A failed write is counted, logged and tried again later; the bucket is created when
//! missing. Nothing here can fail or slow down an apply.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use ksr_proto::ServiceKey;

use crate::metrics::MetricsRegistry;
use ksr_projection::status::{self, Change, Standing, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Status writes in flight at once.
const CONCURRENCY: usize = 32;
/// How long a starting writer may read what its publisher wrote before.
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
    /// The last full report, not yet flushed: every Service with a standing. It is compared
    /// with what was written when the writer flushes — only what differs is queued — and
    /// what this writer wrote for any other Service (a refusal aside) is deleted. Kept
    /// aside, not queued: at 100,000 Services queueing it whole held every key twice more.
    full: Mutex<Option<Vec<Change>>>,
    wake: Notify,
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
    /// Starts the writer task; it stops with `shutdown`.
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
            full: Mutex::new(None),
            wake: Notify::new(),
        });
        let task = Task {
            js,
            to,
            metrics,
            shared: shared.clone(),
            written: HashMap::new(),
        };
        tokio::spawn(task.run(shutdown));
        Self { shared }
    }

    /// Queues `changes` (the newest per Service wins); never waits.
    pub fn report(&self, changes: impl IntoIterator<Item = Change>) {
        let mut any = false;
        if let Ok(mut pending) = self.shared.pending.lock() {
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
}

impl StatusWriter {
    /// Reports the standing of every Service claiming a name (after a reconciliation pass):
    /// what differs from what this writer wrote is written, and statuses it wrote for
    /// Services not among them are deleted (refusals stay: they are not claims).
    pub fn report_all(&self, all: Vec<Change>) {
        if let Ok(mut full) = self.shared.full.lock() {
            *full = Some(all);
        }
        self.shared.wake.notify_one();
    }
}

struct Task {
    js: jetstream::Context,
    to: StatusTarget,
    metrics: StatusMetrics,
    shared: Arc<Shared>,
    /// What is in the bucket for each Service, as far as this writer knows.
    written: HashMap<ServiceKey, (u64, Option<Standing>)>,
}

impl Task {
    async fn run(mut self, stop: CancellationToken) {
        let mut store = None;
        let mut backoff = crate::retry::Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.shared.wake.notified() => {}
            }
            loop {
                if store.is_none() {
                    store = self.open().await;
                    if let Some(kv) = &store {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = self.load_written(kv) => {}
                        }
                    }
                }
                let failed = match &store {
                    Some(kv) => self.flush(kv).await,
                    None => true,
                };
                if !failed {
                    backoff.reset();
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
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
    async fn load_written(&mut self, kv: &kv::Store) {
        let started = std::time::Instant::now();
        let mut loaded = HashMap::new();
        let read = tokio::time::timeout(
            LOAD_TIMEOUT,
            read_statuses(&self.js, kv, &self.to.publisher, &mut loaded),
        )
        .await;
        let found = loaded.len();
        for (service, entry) in loaded {
            self.written.entry(service).or_insert(entry);
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
    async fn flush(&mut self, kv: &kv::Store) -> bool {
        let full = self.shared.full.lock().ok().and_then(|mut f| f.take());
        let batch: Vec<_> = match self.shared.pending.lock() {
            Ok(mut p) => {
                let mut batch = Vec::new();
                if let Some(full) = full {
                    let listed: HashSet<&ServiceKey> = full.iter().map(|(k, _, _)| k).collect();
                    for (key, (seq, standing)) in &self.written {
                        let refused = matches!(standing, Some(Standing::Rejected { .. }));
                        if !refused && !listed.contains(key) && !p.contains_key(key) {
                            p.insert(key.clone(), (*seq, None));
                        }
                    }
                    drop(listed);
                    for (key, seq, standing) in full {
                        match p.get(&key) {
                            // A change reported since is newer.
                            Some((queued, _)) if *queued > seq => {}
                            Some(_) => {
                                p.insert(key, (seq, standing));
                            }
                            // Not news unless it differs from what was written.
                            None => {
                                if self.written.get(&key).map(|(_, s)| s) != Some(&standing) {
                                    batch.push((key, (seq, standing)));
                                }
                            }
                        }
                    }
                }
                batch.extend(p.drain());
                batch
            }
            Err(_) => return false,
        };
        let due: Vec<_> = batch
            .into_iter()
            // Only a new standing is news: the same standing at a later event (new backends,
            // say) is not written again, so status costs writes only when a Service's
            // standing changes, not on every event.
            .filter(|(k, (_, standing))| self.written.get(k).map(|(_, s)| s) != Some(standing))
            .collect();
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
        for (service, seq, standing, result) in results {
            match result {
                Ok(()) => {
                    self.metrics.writes.inc();
                    if standing.is_none() {
                        self.written.remove(&service);
                    } else {
                        self.written.insert(service, (seq, standing));
                    }
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    if !failed {
                        tracing::warn!(bucket = self.to.bucket, error = %e, "status write failed (advisory: routing is unaffected); retrying");
                    }
                    failed = true;
                    // Back in the queue unless something newer arrived meanwhile.
                    if let Ok(mut p) = self.shared.pending.lock() {
                        p.entry(service).or_insert((seq, standing));
                    }
                }
            }
        }
        self.metrics
            .pending
            .set(self.shared.pending.lock().map_or(0, |p| p.len() as i64));
        failed
    }
}

/// Every status `publisher` has in the bucket (its newest value per Service, deleted ones
/// left out), read through an ordered consumer of the bucket's stream (as a KV watch reads
/// it) until it has delivered the last one.
async fn read_statuses(
    js: &jetstream::Context,
    kv: &kv::Store,
    publisher: &str,
    out: &mut HashMap<ServiceKey, (u64, Option<Standing>)>,
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
            out.insert(service, (s.seq, Some(s.standing)));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(())
}
