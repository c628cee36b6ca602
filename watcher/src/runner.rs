//! The watcher loop: source events → inventory → desired routes → stream, with coalescing.
//!
//! Changes mark Services dirty; dirty Services are diffed against what the stream says and the
//! differences published (many subjects at once) as soon as the source has nothing more to
//! say, each Service at most once per `window` ([`Coalescer`]): a lone change goes out at
//! once, endpoint churn within a window becomes one event. After every completed full list
//! (start-up, relist after 410 Gone) every Service of the list and every subject the stream
//! knows for this cluster is diffed, so Services deleted while the watcher was down or during
//! a watch gap are removed.
//! Nothing is published before the first full list completes. When publishing fails (NATS
//! down) the affected Services stay dirty and the stream's state is re-read before the next
//! attempt, so nothing buffered is ever lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use ksr_proto::{RouteState, ServiceKey};

use crate::notify::{Notifier, Outcome, ServiceRef};
use crate::status::StatusChange;
use ksr_projection::status::{Standing, Status};
use ksr_runtime::Health;

use crate::Error;
use crate::coalesce::Coalescer;
use crate::guard::RemovalGuard;
use crate::inventory::{Inventory, ObjKey, SourceEvent};
use crate::metrics::WatcherMetrics;
use crate::normalize::{Normalizer, Rejection};
use crate::publish::{EventWriter, Known, Origin};
use ksr_proto::selector::LabelSelector;

/// How many subjects are published concurrently.
const CONCURRENCY: usize = 256;

/// How many subjects of a flush are published before their results are taken in (a few
/// rounds of `CONCURRENCY`: the window drains only at a chunk's end).
const FLUSH_CHUNK: usize = 4 * CONCURRENCY;

/// What the watcher wants the stream to say about one Service.
enum Verdict {
    Route(RouteState, Origin),
    Absent(Origin),
    /// An annotation mistake: the last published state (if any) stays.
    Rejected(Rejection),
    /// No longer routable (ExternalName, headless, no clusterIP…): removed, and reported.
    Unroutable(Rejection, Origin),
}

/// How often the watcher checks that its stream is still the one it publishes to.
const STREAM_CHECK: Duration = Duration::from_secs(2);

/// How long bringing one subject up to date may take (publishes, acks, re-reads after
/// conflicts) before it counts as failed and is retried.
const SYNC_DEADLINE: Duration = Duration::from_secs(30);

/// Sleeps until `wake`; forever without one.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub cluster: String,
    pub selector: LabelSelector,
    pub window: Duration,
    pub guard: RemovalGuard,
    /// Publish although the stream holds this cluster name for another cluster identity.
    pub adopt: bool,
}

/// An operator's confirmation of held removals; answered with how many are released.
pub type Confirmation = tokio::sync::oneshot::Sender<usize>;

/// The watcher loop.
#[derive(Debug)]
pub struct Runner {
    config: RunnerConfig,
    inventory: Inventory,
    normalizer: Normalizer,
    writer: EventWriter,
    known: HashMap<ServiceKey, Box<Known>>,
    /// How many of `known` are routed (kept as `known` changes: counting is O(Services)).
    routed: usize,
    /// Services not routed for a bad spec, with the reason (logged when it changes).
    rejected: HashMap<ObjKey, &'static str>,
    /// Services whose path looks escaped twice, with that path (warned once per path).
    double_escaped: HashMap<ObjKey, String>,
    /// Removals the guard holds back until an operator confirms.
    held: BTreeSet<ObjKey>,
    /// Set by a confirmation: the next full diff publishes every removal.
    release: bool,
    metrics: WatcherMetrics,
    health: Health,
    /// Kubernetes Events for the owners of the Services (disabled without Kubernetes).
    notifier: Notifier,
    /// How Events refer to each routed Service, kept for its Unrouted Event: a Service that
    /// stops matching the selector is gone from the inventory by then.
    routed_refs: HashMap<ObjKey, ServiceRef>,
}

fn origin_of(svc: &Service) -> Origin {
    let manager = svc
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .and_then(|f| f.manager.clone());
    Origin {
        resource_version: svc.metadata.resource_version.clone().unwrap_or_default(),
        manager,
    }
}

impl Runner {
    pub fn new(
        config: RunnerConfig,
        inventory: Inventory,
        normalizer: Normalizer,
        writer: EventWriter,
        metrics: WatcherMetrics,
        health: Health,
    ) -> Self {
        Self {
            config,
            inventory,
            normalizer,
            writer,
            known: HashMap::new(),
            routed: 0,
            rejected: HashMap::new(),
            double_escaped: HashMap::new(),
            held: BTreeSet::new(),
            release: false,
            metrics,
            health,
            notifier: Notifier::default(),
            routed_refs: HashMap::new(),
        }
    }

    /// Records what happens to each Service as Kubernetes Events on it through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// The Service `key` as an Event refers to it, if it still exists.
    fn service_ref(&self, key: &ObjKey) -> Option<ServiceRef> {
        let svc = self.inventory.service(key)?;
        Some(ServiceRef {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: svc.metadata.uid.clone(),
        })
    }

    fn service_key(&self, key: &ObjKey) -> ServiceKey {
        ServiceKey::new(&self.config.cluster, &key.0, &key.1)
    }

    fn desired(&self, key: &ObjKey) -> Verdict {
        let Some(svc) = self.inventory.service(key) else {
            return Verdict::Absent(Origin::default());
        };
        let origin = origin_of(svc);
        let no_labels = BTreeMap::new();
        let labels = svc.metadata.labels.as_ref().unwrap_or(&no_labels);
        if !self.config.selector.matches(labels) {
            return Verdict::Absent(origin);
        }
        match self.normalizer.route(svc, &self.inventory.slices_of(key)) {
            Ok(route) => Verdict::Route(route, origin),
            Err(rejection) if rejection.keeps_route => Verdict::Rejected(rejection),
            Err(rejection) => Verdict::Unroutable(rejection, origin),
        }
    }

    /// Counts and logs a rejection: a warning when a Service becomes unroutable or its
    /// reason changes, a debug line when a relist finds it still so.
    fn note_rejected(&mut self, key: ObjKey, rejection: &Rejection) {
        self.metrics.rejected(rejection.reason);
        if let Some(service) = self.service_ref(&key) {
            self.notifier.notify(
                service,
                Outcome::Rejected {
                    reason: rejection.reason,
                    message: rejection.message.clone(),
                },
            );
        }
        let (cluster, namespace, service) = (&self.config.cluster, &key.0, &key.1);
        let (reason, error) = (rejection.reason, &rejection.message);
        if self.rejected.get(&key) == Some(&reason) {
            tracing::debug!(
                cluster,
                namespace,
                service,
                reason,
                error,
                "Service still not routed"
            );
        } else {
            tracing::warn!(
                cluster,
                namespace,
                service,
                reason,
                error,
                keeps_route = rejection.keeps_route,
                "Service not routed"
            );
        }
        self.rejected.insert(key, reason);
    }

    /// Warns (once per path) about a path that looks escaped twice: routed as written, which
    /// is not what the same annotation meant to vulcaningress.
    fn note_double_escape(&mut self, key: &ObjKey, path: Option<&str>) {
        let Some(path) = path.filter(|p| ksr_proto::route::looks_double_escaped(p)) else {
            self.double_escaped.remove(key);
            return;
        };
        if self.double_escaped.get(key).map(String::as_str) == Some(path) {
            return;
        }
        self.metrics.path_warning("double_escape");
        tracing::warn!(
            cluster = self.config.cluster,
            namespace = key.0,
            service = key.1,
            path,
            "path annotation looks escaped twice (`\\\\d` matches a backslash and `d`); \
             vulcaningress read it as a Go interpreted string, ksr routes it as written: \
             write `\\d` for a digit"
        );
        self.double_escaped.insert(key.clone(), path.to_owned());
    }

    /// Runs until `shutdown` or the source ends.
    pub async fn run(
        mut self,
        source: impl Stream<Item = SourceEvent>,
        mut confirmations: tokio::sync::mpsc::Receiver<Confirmation>,
        mut statuses: tokio::sync::mpsc::Receiver<StatusChange>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        self.health.set_not_ready("reading the stream");
        let Some(known) =
            ksr_runtime::retry::until_ready(&shutdown, &self.health, "stream state", || {
                self.writer.load()
            })
            .await
        else {
            return Ok(());
        };
        self.set_known(known);
        if let Some(theirs) = self.foreign_identity() {
            let ours = self.writer.cluster_id().to_owned();
            if !self.config.adopt {
                let why = format!(
                    "refusing to publish: the stream holds cluster {} for another cluster \
                     (its events come from {theirs}, this watcher watches {ours}: another \
                     apiserver, or a copied --cluster?). Give this cluster its own --cluster, or \
                     restart with --adopt-cluster to take the name over deliberately",
                    self.config.cluster
                );
                tracing::error!(cluster = self.config.cluster, theirs, ours, "{why}");
                self.health.set_not_ready(why);
                shutdown.cancelled().await;
                return Ok(());
            }
            tracing::warn!(
                cluster = self.config.cluster,
                theirs,
                ours,
                "adopting the cluster name (--adopt-cluster)"
            );
        }
        self.health.set_not_ready("waiting for the first full list");
        let mut source = std::pin::pin!(source);
        let mut dirty: Coalescer<ObjKey> = Coalescer::new(self.config.window);
        let mut full = false;
        let mut reload = false;
        let mut ready = false;
        // After a failed attempt, the next one waits a window (no busy retry while NATS is down).
        let mut not_before = Instant::now();
        // A stream deleted or created again while nothing changes is noticed here.
        let mut stream_check = tokio::time::interval(STREAM_CHECK);
        stream_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = if !self.inventory.synced() {
                None
            } else if full || reload {
                Some(Instant::now())
            } else {
                dirty.due_at(Instant::now())
            }
            .map(|t| t.max(not_before));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                event = source.next() => {
                    let Some(event) = event else {
                        return Err(Error::SourceEnded);
                    };
                    match &event {
                        SourceEvent::Error(e) => {
                            self.metrics.source_errors.inc();
                            tracing::warn!(cluster = self.config.cluster, error = e, "source error; it retries");
                        }
                        SourceEvent::Init(_) => {
                            self.metrics.relists.inc();
                        }
                        _ => {}
                    }
                    let outcome = self.inventory.apply(event);
                    if outcome.resynced {
                        self.metrics.last_full_list.set(ksr_runtime::consumer::unix_now());
                    }
                    let now = Instant::now();
                    for key in outcome.dirty {
                        dirty.mark(key, now);
                    }
                    self.metrics.pending_services.set(dirty.pending() as i64);
                    full |= outcome.resynced;
                }
                _ = stream_check.tick() => {
                    let changed = tokio::time::timeout(STREAM_CHECK * 5, self.writer.stream_changed()).await;
                    if changed.unwrap_or(false) {
                        tracing::warn!(cluster = self.config.cluster, "the stream is gone or was created again");
                        reload = true;
                    }
                }
                Some(reply) = confirmations.recv() => {
                    let n = self.held.len();
                    if n > 0 {
                        tracing::warn!(cluster = self.config.cluster, removals = n, "an operator confirmed the held removals; publishing them");
                        self.release = true;
                        full = true;
                    }
                    let _ = reply.send(n);
                }
                // After the source: its news is taken in first, so a burst is one flush.
                _ = sleep_until(wake) => {
                    if reload {
                        match self.writer.load().await {
                            Ok(known) => {
                                self.set_known(known);
                                reload = false;
                                full = true;
                            }
                            Err(e) => {
                                self.health.set_not_ready(format!("stream: {e}"));
                                not_before = Instant::now() + self.config.window;
                                continue;
                            }
                        }
                    }
                    let now = Instant::now();
                    let is_full = std::mem::take(&mut full);
                    let mut keys = dirty.take(now, is_full);
                    if is_full {
                        keys.extend(self.inventory.service_keys().cloned());
                        keys.extend(self.known.keys().map(|k| (k.namespace.clone(), k.name.clone())));
                        dirty.published(keys.iter().cloned(), now);
                    }
                    self.metrics.pending_services.set((keys.len() + dirty.pending()) as i64);
                    let (failed, uncertain) = self.flush(keys, is_full).await;
                    self.metrics.held_removals.set(self.held.len() as i64);
                    if failed.is_empty() {
                        self.metrics.last_publish.set(ksr_runtime::consumer::unix_now());
                        self.metrics.publish_failures.set(0);
                        if !ready {
                            ready = true;
                            tracing::info!(cluster = self.config.cluster, services = self.known.len(), "first full list published");
                        }
                        if self.held.is_empty() {
                            self.health.set_ready();
                        } else {
                            self.health.set_not_ready(self.held_text());
                        }
                    } else {
                        self.metrics.publish_failures.inc();
                        self.health.set_not_ready(format!("{} Services could not be published yet", failed.len()));
                        dirty.retry(failed, Instant::now());
                        not_before = Instant::now() + self.config.window;
                        // What may have been stored is read back from the stream; what
                        // certainly was not (no stream leader answered) is simply retried,
                        // without a replay that would wait for the new leader.
                        reload |= uncertain;
                    }
                    self.metrics.pending_services.set(dirty.pending() as i64);
                    self.metrics.services.set(self.routed as i64);
                }
                // Last (the select is biased): advisory news never delays publishing, however
                // many statuses the publishers write.
                Some(change) = statuses.recv() => self.tell_status(change),
            }
        }
    }

    /// Replaces what the stream is known to say.
    fn set_known(&mut self, known: HashMap<ServiceKey, Box<Known>>) {
        self.routed = known.values().filter(|k| k.routed()).count();
        self.known = known;
    }

    /// Records what the stream now says about `key` (`None`: nothing).
    fn remember(&mut self, key: ServiceKey, known: Option<Known>) {
        let now = known.as_ref().is_some_and(Known::routed);
        let before = match known {
            Some(known) => self.known.insert(key, Box::new(known)),
            None => self.known.remove(&key),
        };
        self.routed =
            self.routed + usize::from(now) - usize::from(before.is_some_and(|k| k.routed()));
    }

    /// Another cluster identity the stream's events of this cluster name carry, if any
    /// (events without one, from older watchers, say nothing).
    fn foreign_identity(&self) -> Option<String> {
        let ours = self.writer.cluster_id();
        self.known
            .values()
            .filter_map(|k| k.cluster_id.as_deref())
            .find(|id| *id != ours)
            .map(str::to_owned)
    }

    /// What `/readyz` says while removals are held.
    fn held_text(&self) -> String {
        format!(
            "holding {} removals of cluster {}: more than --max-removals {} and {} % of its routed \
             Services disappeared in one list (an empty or wrong apiserver, or a selector that \
             matches nothing?). If they are really gone: ksrctl confirm-removals --cluster {}",
            self.held.len(),
            self.config.cluster,
            self.config.guard.max,
            self.config.guard.percent,
            self.config.cluster,
        )
    }

    /// Applies the mass-removal guard to the jobs of a flush: a full diff whose removals trip
    /// it holds them all; later flushes keep holding those until a confirmation.
    fn hold_removals(&mut self, jobs: Vec<Job>, full: bool) -> Vec<Job> {
        let (removals, rest): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.route.is_none());
        if full {
            let routed = self.routed;
            let release = std::mem::take(&mut self.release);
            if !release && self.config.guard.trips(removals.len(), routed) {
                if self.held.len() != removals.len() {
                    tracing::warn!(
                        cluster = self.config.cluster,
                        removals = removals.len(),
                        routed,
                        "mass removal held back: {}",
                        "confirm with ksrctl confirm-removals, or restart with --allow-mass-removal"
                    );
                }
                let held: BTreeSet<ObjKey> = removals.into_iter().map(|j| j.obj).collect();
                for obj in held.difference(&self.held) {
                    let service = self.routed_refs.get(obj).cloned();
                    if let Some(service) = service.or_else(|| self.service_ref(obj)) {
                        let cluster = self.config.cluster.clone();
                        self.notifier.notify(service, Outcome::HeldBack { cluster });
                    }
                }
                self.held = held;
                return rest;
            }
            self.held.clear();
            return rest.into_iter().chain(removals).collect();
        }
        let released = removals.into_iter().filter(|j| !self.held.contains(&j.obj));
        rest.into_iter().chain(released).collect()
    }

    /// Publishes the differences for `keys`; returns the keys that failed, and whether any
    /// of them may have been stored all the same.
    async fn flush(&mut self, keys: BTreeSet<ObjKey>, full: bool) -> (Vec<ObjKey>, bool) {
        let mut wanted = Vec::with_capacity(keys.len());
        for obj in keys {
            let (route, origin) = match self.desired(&obj) {
                Verdict::Route(r, o) => (Some(r), o),
                Verdict::Absent(o) => (None, o),
                Verdict::Rejected(rejection) => {
                    self.note_rejected(obj, &rejection);
                    continue;
                }
                Verdict::Unroutable(rejection, origin) => {
                    self.note_rejected(obj.clone(), &rejection);
                    wanted.push((obj, None, origin));
                    continue;
                }
            };
            self.rejected.remove(&obj);
            self.note_double_escape(&obj, route.as_ref().map(|r| r.path.as_str()));
            wanted.push((obj, route, origin));
        }
        self.metrics
            .rejected_services
            .set(self.rejected.len() as i64);
        let jobs: Vec<Job> = wanted
            .into_iter()
            .filter_map(|(obj, route, origin)| {
                let key = self.service_key(&obj);
                // Cheap pre-check: most keys of a full diff are unchanged.
                if self
                    .writer
                    .change_for(
                        &key,
                        route.as_ref(),
                        self.known.get(&key).map(|k| &**k),
                        &origin,
                    )
                    .is_none()
                {
                    if !full {
                        self.metrics.unchanged.inc();
                    }
                    return None;
                }
                Some(Job {
                    obj,
                    key,
                    route,
                    origin,
                })
            })
            .collect();
        // A Service that comes back is no longer a held removal.
        let jobs = self.hold_removals(jobs, full);
        // A chunk at a time, each taken in before the next: what the stream said and now says
        // about a Service is held for one chunk, not for every Service of a full list at once.
        let mut failed = Vec::new();
        let mut uncertain = false;
        let mut jobs = jobs.into_iter();
        loop {
            let chunk: Vec<(Job, Option<Known>)> = jobs
                .by_ref()
                .take(FLUSH_CHUNK)
                .map(|job| {
                    let known = self.known.get(&job.key).map(|k| Known::clone(k));
                    (job, known)
                })
                .collect();
            if chunk.is_empty() {
                break;
            }
            let writer = &self.writer;
            let results: Vec<(Job, Result<Option<Known>, Error>)> = futures::stream::iter(chunk)
                .map(|(job, known)| async move {
                    let sync = writer.sync(&job.key, job.route.as_ref(), known, &job.origin);
                    // A connection that swallows requests must not stall every other Service.
                    let r = tokio::time::timeout(SYNC_DEADLINE, sync)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Stalled {
                                key: job.key.clone(),
                                after: SYNC_DEADLINE,
                            })
                        });
                    (job, r)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for (job, r) in results {
                if let Err(e) = self.take_in(&job, r) {
                    uncertain |= !e.certainly_not_stored();
                    failed.push(job.obj);
                }
            }
        }
        (failed, uncertain)
    }

    /// Takes in what publishing `job` did: the stream's new state of its Service and its
    /// owner told, or the error counted and logged (the caller retries it).
    fn take_in(&mut self, job: &Job, result: Result<Option<Known>, Error>) -> Result<(), Error> {
        match result {
            Ok(known) => {
                self.tell_owner(&job.obj, job.route.as_ref());
                self.remember(job.key.clone(), known);
                Ok(())
            }
            Err(e) => {
                self.metrics.publish_errors.inc();
                tracing::warn!(cluster = job.key.cluster, namespace = job.key.namespace, service = job.key.name, error = %e, "publish failed; will retry");
                Err(e)
            }
        }
    }
}

impl Runner {
    /// After a published change: tells the Service's owner whether it is routed now, and as
    /// what; a Service no longer routed is told so unless its rejection was said already.
    fn tell_owner(&mut self, obj: &ObjKey, route: Option<&RouteState>) {
        let outcome = match route {
            Some(r) => {
                let Some(service) = self.service_ref(obj) else {
                    return;
                };
                self.routed_refs.insert(obj.clone(), service.clone());
                let port = self
                    .inventory
                    .service(obj)
                    .and_then(crate::normalize::chosen_port)
                    .unwrap_or_default();
                if r.tls_skip_verify {
                    tracing::warn!(
                        namespace = obj.0,
                        service = obj.1,
                        host = r.hostname(),
                        "routed over https without verifying the backends' certificates (tls-insecure-skip-verify)"
                    );
                }
                let routed = Outcome::Published {
                    host: r.hostname(),
                    path: r.path.to_string(),
                    port,
                    scheme: match (r.scheme, r.tls_skip_verify) {
                        (s, false) => s.to_string(),
                        (s, true) => format!("{s}, certificates not verified"),
                    },
                };
                (service, routed)
            }
            None => {
                let Some(service) = self.routed_refs.remove(obj) else {
                    return;
                };
                if self.rejected.contains_key(obj) {
                    return;
                }
                (service, Outcome::Unrouted)
            }
        };
        self.notifier.notify(outcome.0, outcome.1);
    }

    /// A publisher's status of one of this cluster's Services: told to its owner when it
    /// says something new (served, waiting behind an older claim, refused).
    fn tell_status(&mut self, change: StatusChange) {
        if change.service.cluster != self.config.cluster {
            return;
        }
        let obj: ObjKey = (change.service.namespace, change.service.name);
        let service = self.service_ref(&obj);
        let Some(service) = service.or_else(|| self.routed_refs.get(&obj).cloned()) else {
            return;
        };
        let publisher = change.publisher;
        let outcome = match change.status {
            None => Outcome::Cleared { publisher },
            Some(Status {
                target, standing, ..
            }) => match standing {
                Standing::Serving { name } => Outcome::Served {
                    publisher,
                    target,
                    name,
                },
                Standing::Waiting {
                    name,
                    owner,
                    owner_since,
                } => Outcome::Conflict {
                    publisher,
                    target,
                    name,
                    owner,
                    owner_since,
                },
                Standing::Rejected { reason } => Outcome::Refused {
                    publisher,
                    target,
                    reason,
                },
            },
        };
        self.notifier.notify(service, outcome);
    }
}

/// One Service whose stream state must change.
struct Job {
    obj: ObjKey,
    key: ServiceKey,
    route: Option<RouteState>,
    origin: Origin,
}
