//! The watcher's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use std::sync::atomic::AtomicU64;

use ksr_proto::EventKind;
use ksr_runtime::metrics::MetricsRegistry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    reason: &'static str,
}

/// Counters and histograms of the watcher (`ksr_watcher_*`).
#[derive(Debug, Clone)]
pub struct WatcherMetrics {
    published: Family<KindLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    path_warnings: Family<ReasonLabel, Counter>,
    pub publish_seconds: Histogram,
    pub conflicts: Counter,
    pub source_errors: Counter,
    pub relists: Counter,
    pub publish_errors: Counter,
    pub unchanged: Counter,
    pub services: Gauge,
    pub rejected_services: Gauge,
    pub held_removals: Gauge,
    pub pending_services: Gauge,
    /// When the source last completed a full list (Unix time).
    pub last_full_list: Gauge<f64, AtomicU64>,
    /// When every pending change was last published (Unix time).
    pub last_publish: Gauge<f64, AtomicU64>,
    /// Publishing rounds that left changes unpublished, in a row.
    pub publish_failures: Gauge,
    /// Copies of the stream that are current now (its leader and the replicas caught up), and
    /// how many it is configured to have.
    pub stream_replicas_current: Gauge,
    pub stream_replicas_desired: Gauge,
    events_written: Counter,
    event_errors: Family<ReasonLabel, Counter>,
}

impl WatcherMetrics {
    pub fn new(registry: &MetricsRegistry) -> Self {
        let m = Self {
            published: Family::default(),
            rejections: Family::default(),
            path_warnings: Family::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            conflicts: Counter::default(),
            source_errors: Counter::default(),
            relists: Counter::default(),
            publish_errors: Counter::default(),
            unchanged: Counter::default(),
            services: Gauge::default(),
            rejected_services: Gauge::default(),
            held_removals: Gauge::default(),
            pending_services: Gauge::default(),
            last_full_list: Gauge::default(),
            last_publish: Gauge::default(),
            publish_failures: Gauge::default(),
            stream_replicas_current: Gauge::default(),
            stream_replicas_desired: Gauge::default(),
            events_written: Counter::default(),
            event_errors: Family::default(),
        };
        registry.register(|r| {
            let r = r.sub_registry_with_prefix("watcher");
            r.register(
                "events_published",
                "Events published, by kind",
                m.published.clone(),
            );
            r.register(
                "rejections",
                "Evaluations of a selected Service that found it unroutable (every change and relist), by reason",
                m.rejections.clone(),
            );
            r.register(
                "path_warnings",
                "Routed Services whose path annotation looks wrong (double_escape: `\\\\d` \
                 where vulcaningress users meant `\\d`), counted when first seen",
                m.path_warnings.clone(),
            );
            r.register(
                "publish_duration_seconds",
                "Time from publish to the stream's ack",
                m.publish_seconds.clone(),
            );
            r.register(
                "publish_conflicts",
                "Publishes that found another writer first (wrong last sequence)",
                m.conflicts.clone(),
            );
            r.register(
                "publish_errors",
                "Publishes that failed (NATS unavailable); retried after a re-diff",
                m.publish_errors.clone(),
            );
            r.register(
                "unchanged",
                "Changes whose normalized route equals what the stream holds: nothing published (no-op updates, churn that cancels out)",
                m.unchanged.clone(),
            );
            r.register(
                "source_errors",
                "Errors from the source (watch restarts, failed lists, unreadable manifests)",
                m.source_errors.clone(),
            );
            r.register(
                "relists",
                "Full lists started (start-up, 410 Gone, manifest changes)",
                m.relists.clone(),
            );
            r.register(
                "services",
                "Routed Services this watcher knows in the stream",
                                m.services.clone(),
            );
            r.register(
                "held_removals",
                "Removals held back by the mass-removal guard until an operator confirms",
                m.held_removals.clone(),
            );
            r.register(
                "pending_services",
                "Changed Services not published yet (being diffed and published, or waiting for the next window)",
                m.pending_services.clone(),
            );
            r.register(
                "rejected_services",
                "Selected Services not routed now for a bad spec (see the rejections reasons)",
                m.rejected_services.clone(),
            );
            r.register(
                "last_full_list_timestamp_seconds",
                "When the source last completed a full list (Unix time; 0: never)",
                m.last_full_list.clone(),
            );
            r.register(
                "last_publish_timestamp_seconds",
                "When every pending change was last published (Unix time; 0: never)",
                m.last_publish.clone(),
            );
            r.register(
                "consecutive_publish_failures",
                "Publishing rounds in a row that left changes unpublished",
                m.publish_failures.clone(),
            );
            r.register(
                "stream_replicas_current",
                "Copies of the stream current now: its leader and every replica caught up and online",
                m.stream_replicas_current.clone(),
            );
            r.register(
                "stream_replicas_desired",
                "Copies of the stream its configuration asks for",
                m.stream_replicas_desired.clone(),
            );
            r.register(
                "kubernetes_events",
                "Kubernetes Events written on Services (created or counted in a series)",
                m.events_written.clone(),
            );
            r.register(
                "kubernetes_event_errors",
                "Kubernetes Events not written, by reason (dropped: queue full; write_failed)",
                m.event_errors.clone(),
            );
        });
        m
    }

    pub fn published(&self, kind: EventKind) {
        self.published
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn event_written(&self) {
        self.events_written.inc();
    }

    pub fn event_errors(&self, reason: &'static str) {
        self.event_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn path_warning(&self, reason: &'static str) {
        self.path_warnings
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabel { reason }).inc();
    }
}
