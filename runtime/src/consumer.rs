//! The projection consumer loop both publishers run: fetch, decode, coalesce, apply, ack.
//!
//! Messages are taken in batches (the first one awaited, then everything already buffered up
//! to the batch size), decoded (undecodable or mismatched ones are terminated, logged with
//! their stream sequence and counted: poison never blocks the stream), coalesced to the newest
//! event per Service, and handed to the [`Projector`]. Messages are acknowledged only after
//! the projector committed; on a transient failure every message of the batch is
//! negative-acknowledged with an exponential delay (backon) and comes back later.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::stream::Stream;
use backon::BackoffBuilder;
use futures::{FutureExt, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio_util::sync::CancellationToken;

use ksr_projection::delivery::{ApplyReport, Delivery, Projector, coalesce};
use ksr_proto::Event;

use crate::RuntimeError;
use crate::health::Health;
use crate::metrics::MetricsRegistry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The consumer loop's metrics.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    applied: Family<KindLabel, Counter>,
    stale: Counter,
    redelivered: Counter,
    removals_skipped: Counter,
    terminated: Family<ReasonLabel, Counter>,
    apply_errors: Family<ReasonLabel, Counter>,
    apply_seconds: Histogram,
    batch_size: Histogram,
    pending: Gauge,
    in_flight: Gauge,
    lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_apply: Gauge<f64, std::sync::atomic::AtomicU64>,
    apply_failures: Gauge,
    /// Reconciliation passes: when the last one succeeded, how many failed since.
    pub(crate) last_reconcile: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) reconcile_failures: Gauge,
}

impl ConsumerMetrics {
    /// Registers the metrics under `ksr_<publisher>_...`.
    pub fn new(registry: &MetricsRegistry, publisher: &str) -> Self {
        let m = Self {
            applied: Family::default(),
            stale: Counter::default(),
            redelivered: Counter::default(),
            removals_skipped: Counter::default(),
            terminated: Family::default(),
            apply_errors: Family::default(),
            apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            pending: Gauge::default(),
            in_flight: Gauge::default(),
            lag_seconds: Gauge::default(),
            last_apply: Gauge::default(),
            apply_failures: Gauge::default(),
            last_reconcile: Gauge::default(),
            reconcile_failures: Gauge::default(),
        };
        registry.register(|r| {
            let r = r.sub_registry_with_prefix(publisher);
            r.register(
                "events_applied",
                "Events written to the target, by kind",
                m.applied.clone(),
            );
            r.register(
                "events_stale",
                "Events skipped: the target already had a newer sequence",
                m.stale.clone(),
            );
            r.register(
                "redeliveries",
                "Messages delivered again (not acknowledged in time, negative-acknowledged, or \
                 delivered to a replica that died): the fence makes them harmless, their count \
                 shows what faults cost",
                m.redelivered.clone(),
            );
            r.register(
                "removals_skipped",
                "Removed events acknowledged but not applied (--policy upsert-only)",
                m.removals_skipped.clone(),
            );
            r.register(
                "events_terminated",
                "Poison events terminated, by reason",
                m.terminated.clone(),
            );
            r.register(
                "apply_errors",
                "Batches that failed and were negative-acknowledged, by reason",
                m.apply_errors.clone(),
            );
            r.register(
                "apply_duration_seconds",
                "Time to apply one batch",
                m.apply_seconds.clone(),
            );
            r.register(
                "batch_events",
                "Events per applied batch (after coalescing)",
                m.batch_size.clone(),
            );
            r.register(
                "consumer_pending",
                "Messages the consumer has not delivered yet",
                m.pending.clone(),
            );
            r.register(
                "deliveries_in_flight",
                "Messages fetched and being applied, not acknowledged yet",
                m.in_flight.clone(),
            );
            r.register(
                "consumer_lag_seconds",
                "Age of the newest applied event when it was applied",
                m.lag_seconds.clone(),
            );
            r.register(
                "last_apply_timestamp_seconds",
                "When a batch was last applied and acknowledged (Unix time; 0: never)",
                m.last_apply.clone(),
            );
            r.register(
                "consecutive_apply_failures",
                "Batches failed in a row since the last one applied",
                m.apply_failures.clone(),
            );
            r.register(
                "last_reconcile_timestamp_seconds",
                "When a reconciliation pass last completed (Unix time; 0: never)",
                m.last_reconcile.clone(),
            );
            r.register(
                "consecutive_reconcile_failures",
                "Reconciliation passes failed in a row since the last one completed",
                m.reconcile_failures.clone(),
            );
        });
        m
    }

    /// A batch applied: its time, and the failure streak ends.
    fn applied_now(&self) {
        self.last_apply.set(unix_now());
        self.apply_failures.set(0);
    }

    /// A reconciliation pass completed (`Ok`) or failed.
    pub(crate) fn reconciled(&self, ok: bool) {
        if ok {
            self.last_reconcile.set(unix_now());
            self.reconcile_failures.set(0);
        } else {
            self.reconcile_failures.inc();
        }
    }

    fn terminate(&self, reason: &'static str) {
        self.terminated.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// A report's status changes, with the Services whose events the target refused.
fn report_changes(
    report: &ApplyReport,
    deliveries: &[Delivery],
) -> Vec<ksr_projection::status::Change> {
    let mut out = report.changes.clone();
    for r in &report.rejected {
        if let Some(d) = deliveries.iter().find(|d| d.seq == r.seq) {
            let standing = ksr_projection::status::Standing::Rejected {
                reason: r.error.to_string(),
            };
            out.push((d.event.key.clone(), d.seq, Some(standing)));
        }
    }
    out
}

/// Loop settings.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    pub batch_size: usize,
    pub max_retry_delay: Duration,
    /// The incarnation of the stream consumed ([`crate::nats::incarnation`]).
    pub incarnation: u64,
    /// Where each applied batch's status changes go (none: not reported).
    pub status: Option<crate::status_writer::StatusWriter>,
}

/// Whether the consumer (or its stream) is gone, or its stream is another incarnation than
/// `incarnation`.
async fn recreated(consumer: &PullConsumer, stream: &Stream, incarnation: u64) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    if let Err(e) = consumer.get_info().await
        && matches!(e.kind(), K::NotFound | K::StreamNotFound)
    {
        return true;
    }
    match stream.get_info().await {
        Ok(info) => crate::nats::incarnation_of(&info) != incarnation,
        Err(_) => false,
    }
}

/// Runs the consumer until `shutdown`; the batch in hand is always finished first. Returns
/// [`RuntimeError::StreamRecreated`] when the stream was deleted or created again, so the
/// caller binds a consumer on the new stream.
pub async fn run<P: Projector>(
    consumer: PullConsumer,
    stream: &Stream,
    projector: &P,
    options: &LoopOptions,
    metrics: &ConsumerMetrics,
    health: &Health,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let consumer_name = consumer.cached_info().name.clone();
    'outer: while !shutdown.is_cancelled() {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(options.batch_size)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                if recreated(&consumer, stream, options.incarnation).await {
                    return Err(gone(stream, &consumer_name));
                }
                health.set_not_ready(format!("cannot pull from consumer {consumer_name}: {e}"));
                tracing::warn!(consumer = %consumer_name, error = %e, "cannot start pulling; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'outer,
                }
            }
        };
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'outer,
                m = messages.next() => m,
            };
            let first = match first {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(consumer = %consumer_name, error = %e, "pull stream error");
                    if recreated(&consumer, stream, options.incarnation).await {
                        return Err(gone(stream, &consumer_name));
                    }
                    continue;
                }
                None => continue 'outer,
            };
            let mut batch = vec![first];
            while batch.len() < options.batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => {
                        tracing::warn!(consumer = %consumer_name, error = %e, "pull stream error");
                        break;
                    }
                    _ => break,
                }
            }
            let verify = || recreated(&consumer, stream, options.incarnation);
            if process_batch(batch, projector, options, metrics, health, verify).await {
                return Err(gone(stream, &consumer_name));
            }
        }
    }
    tracing::info!(consumer = %consumer_name, "consumer stopped");
    Ok(())
}

/// Idle heartbeat of a pull request (two missed ones and it is renewed: a stream leader lost
/// with the request), and how long one lasts. (1 s heartbeats did not resume the pipeline any
/// sooner after a stream-leader kill: the new leader's election and catch-up dominate.)
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const PULL_EXPIRES: Duration = Duration::from_secs(30);

fn gone(stream: &Stream, consumer: &str) -> RuntimeError {
    RuntimeError::StreamRecreated {
        stream: stream.cached_info().config.name.clone(),
        consumer: consumer.to_owned(),
    }
}

/// Applies one batch; true when the stream turned out to be another incarnation (then
/// nothing of the batch is acknowledged).
async fn process_batch<P: Projector, V: Future<Output = bool>>(
    batch: Vec<Message>,
    projector: &P,
    options: &LoopOptions,
    metrics: &ConsumerMetrics,
    health: &Health,
    verify: impl FnOnce() -> V,
) -> bool {
    let mut decoded: Vec<(u64, Event)> = Vec::with_capacity(batch.len());
    let mut keep: Vec<Message> = Vec::with_capacity(batch.len());
    let mut pending = 0;
    let mut newest_published_ns: i128 = 0;
    for msg in batch {
        let Ok(info) = msg.info() else {
            metrics.terminate("no_info");
            tracing::error!(subject = %msg.subject, "message without JetStream metadata; terminating");
            let _ = msg.ack_with(AckKind::Term).await;
            continue;
        };
        let seq = info.stream_sequence;
        pending = info.pending;
        if info.delivered > 1 {
            metrics.redelivered.inc();
        }
        newest_published_ns = newest_published_ns.max(info.published.unix_timestamp_nanos());
        match crate::decode::decode_message(&msg) {
            Ok(event) => {
                decoded.push((seq, event));
                keep.push(msg);
            }
            Err(e) => {
                let reason = e.reason();
                metrics.terminate(reason);
                tracing::error!(seq, subject = %msg.subject, reason, error = %e, "poison event terminated");
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(seq, error = %e, "could not terminate poison event");
                }
            }
        }
    }
    metrics.pending.set(pending as i64);
    if decoded.is_empty() {
        return false;
    }
    metrics.in_flight.set(keep.len() as i64);
    let deliveries = coalesce(decoded, options.incarnation);
    metrics.batch_size.observe(deliveries.len() as f64);
    let started = Instant::now();
    let result = projector.apply(&deliveries).await;
    metrics
        .apply_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        // Events look stale when they are, and when the stream was created again behind the
        // consumer's back (sequences restart at 1): never acknowledge the second kind.
        Ok(report) if report.stale > 0 && verify().await => {
            tracing::warn!("the stream was created again: re-binding the consumer");
            metrics.in_flight.set(0);
            return true;
        }
        Ok(report) => {
            health.set_ready();
            metrics.applied_now();
            for d in &deliveries {
                let skipped = report.skipped_removals > 0 && d.event.route().is_none();
                if !skipped && !report.rejected.iter().any(|r| r.seq == d.seq) {
                    metrics
                        .applied
                        .get_or_create(&KindLabel {
                            kind: d.event.kind().as_str(),
                        })
                        .inc();
                }
            }
            metrics.stale.inc_by(report.stale);
            metrics.removals_skipped.inc_by(report.skipped_removals);
            if let Some(status) = &options.status {
                status.report(report_changes(&report, &deliveries));
            }
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            metrics
                .lag_seconds
                .set(((now_ns - newest_published_ns).max(0) as f64) / 1e9);
            for msg in keep {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                if let Some(r) = report.rejected.iter().find(|r| r.seq == seq) {
                    metrics.terminate("rejected");
                    tracing::error!(seq, subject = %msg.subject, reason = %r.error, "event rejected by the projection; terminated");
                    let _ = msg.ack_with(AckKind::Term).await;
                } else if let Err(e) = msg.ack().await {
                    // Not fatal: the message is redelivered and the fence skips it.
                    tracing::warn!(seq, error = %e, "ack failed");
                }
            }
        }
        Err(err) => {
            metrics.apply_failures.inc();
            metrics
                .apply_errors
                .get_or_create(&ReasonLabel { reason: err.reason })
                .inc();
            health.set_not_ready(format!("target: {err}"));
            tracing::warn!(error = %err, events = deliveries.len(), "apply failed; negative-acknowledging the batch");
            for msg in keep {
                let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                let delay = retry_delay(delivered, options.max_retry_delay);
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
    metrics.in_flight.set(0);
    false
}

/// Now as Unix time in seconds (the unit of Prometheus timestamps).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The redelivery delay after the `delivered`-th failed delivery: exponential from 100 ms,
/// with jitter, capped at `max`.
pub fn retry_delay(delivered: i64, max: Duration) -> Duration {
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let n = usize::try_from(delivered.clamp(1, 64) - 1).unwrap_or(0);
    backoff.nth(n).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let max = Duration::from_secs(5);
        assert!(retry_delay(1, max) < Duration::from_millis(500));
        assert!(retry_delay(40, max) <= max);
    }
}
