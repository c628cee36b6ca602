//! Running a publisher once its target is connected: consume, reconcile, drain.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;
use tokio_util::sync::CancellationToken;

use ksr_projection::Projector;

use crate::config::{ConsumerArgs, default_durable};
use crate::consumer::{self, ConsumerMetrics, LoopOptions};
use crate::nats::StreamSettings;
use crate::process::Process;
use crate::retry::until_ok;
use crate::status_writer::{StatusTarget, StatusWriter};
use crate::{RuntimeError, nats, shutdown};

/// What a publisher brings to [`follow`].
#[derive(Debug)]
pub struct Publisher<'a, P> {
    /// Metric prefix and log name (`vulcand`, `consul`).
    pub name: &'static str,
    /// The installation (`--owner`): names the default durable consumer.
    pub owner: &'a str,
    pub args: &'a ConsumerArgs,
    pub projector: &'a P,
    pub process: &'a Process,
    /// The stream, and where the per-Service status goes ([`ksr_projection::status`]).
    pub js: &'a async_nats::jetstream::Context,
    pub stream: &'a StreamSettings,
}

impl<P> Publisher<'_, P> {
    /// The durable consumer all replicas of this publisher kind share.
    pub fn durable(&self) -> String {
        self.args
            .durable
            .clone()
            .unwrap_or_else(|| default_durable(self.name, self.owner))
    }

    /// How its reconciliation's stream pass reads the stream: pulled through the replay
    /// consumer of its durable ([`crate::config::replay_consumer`]).
    pub fn reading(&self) -> crate::stream_pass::Reading {
        crate::stream_pass::Reading::pulled_through(crate::config::replay_consumer(&self.durable()))
    }
}

/// Creates the durable consumer and runs the consumer loop and the reconciliation loop until
/// `shutdown`, then drains for at most `--drain-timeout`. Returns
/// [`RuntimeError::StreamRecreated`] when the stream was deleted or created again: the caller
/// gets the stream anew and calls this again ([`follow`]).
///
/// `reconcile(ack_floor)` runs once the consumer has delivered everything pending (never
/// before: a half-applied stream would look like drift), then every `--reconcile-interval`;
/// `ack_floor` is the consumer's acknowledged stream sequence, the newest event whose
/// projection must already exist.
pub async fn consume<P, R, Fut, T, E>(
    p: &Publisher<'_, P>,
    stream: &Stream,
    metrics: &ConsumerMetrics,
    status: Option<StatusWriter>,
    reconcile: R,
) -> Result<(), RuntimeError>
where
    P: Projector,
    R: Fn(u64) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error,
{
    let shutdown = &p.process.shutdown;
    let durable = p.durable();
    let Some(consumer) = until_ok(shutdown, "consumer", || {
        nats::durable_consumer(stream, &durable, p.args)
    })
    .await
    else {
        return Ok(());
    };
    tracing::info!(publisher = p.name, durable, "consuming");
    p.process.health.set_ready();
    let options = LoopOptions {
        batch_size: p.args.batch_size as usize,
        max_retry_delay: p.args.max_retry_delay,
        incarnation: nats::incarnation(stream),
        status,
    };
    let stop = CancellationToken::new();
    let work = async {
        let consuming = async {
            let r = consumer::run(
                consumer.clone(),
                stream,
                p.projector,
                &options,
                metrics,
                &p.process.health,
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        };
        let reconciled = || async {
            if let Some(status) = &options.status {
                status.report_all(|each| p.projector.standings(each)).await;
            }
        };
        let reconciling = reconcile_loop(
            consumer.clone(),
            p.args.reconcile_interval,
            &reconcile,
            reconciled,
            metrics,
            stop.clone(),
        );
        tokio::join!(consuming, reconciling).0
    };
    shutdown::drain(work, shutdown, &stop, p.args.drain_timeout)
        .await
        .unwrap_or(Ok(()))
}

async fn reconcile_loop<R, Fut, T, E, D, DFut>(
    mut consumer: PullConsumer,
    interval: Duration,
    reconcile: &R,
    reconciled: D,
    metrics: &ConsumerMetrics,
    stop: CancellationToken,
) where
    R: Fn(u64) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error,
    D: Fn() -> DFut,
    DFut: Future<Output = ()>,
{
    let mut first = true;
    loop {
        if !first && interval.is_zero() {
            stop.cancelled().await;
            return;
        }
        let wait = if first {
            Duration::from_millis(200)
        } else {
            interval
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let ack_floor = match consumer.info().await {
            Ok(info) if info.num_pending == 0 => info.ack_floor.stream_sequence,
            Ok(info) => {
                tracing::debug!(
                    pending = info.num_pending,
                    "reconcile waits for the consumer to catch up"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconcile cannot read consumer info");
                continue;
            }
        };
        // Abandoned on shutdown: a pass cut short leaves no more than a crash would (each
        // etcd or Consul write of it is one guarded transaction), and the next start
        // reconciles again.
        let passed = tokio::select! {
            _ = stop.cancelled() => return,
            passed = reconcile(ack_floor) => passed,
        };
        match passed {
            Ok(_) => {
                metrics.reconciled(true);
                first = false;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = reconciled() => {}
                }
            }
            Err(e) => {
                metrics.reconciled(false);
                tracing::warn!(error = %e, "reconcile failed; will retry");
            }
        }
    }
}

/// Runs [`consume`] against the stream `get_stream` returns, again each time the stream is
/// deleted or created again (a lost NATS volume, `nats stream rm`, a restore): the durable
/// consumer is created anew on the new stream and its events — newer by incarnation, whatever
/// their sequences — are applied. Nothing is deleted because the new stream is still short:
/// only the events it carries change anything.
///
/// `reconcile(stream, ack_floor)` is a reconciliation pass against the stream followed.
pub async fn follow<P, R, RFut, T, E>(p: Publisher<'_, P>, reconcile: R) -> Result<(), RuntimeError>
where
    P: Projector,
    R: Fn(Stream, u64) -> RFut,
    RFut: Future<Output = Result<T, E>>,
    E: std::error::Error,
{
    let (health, shutdown) = (&p.process.health, &p.process.shutdown);
    health.set_not_ready(format!("waiting for stream {}", p.stream.name));
    // Registered once: the consumer is bound anew after a stream is created again.
    let metrics = ConsumerMetrics::new(&p.process.registry, p.name);
    let mut status: Option<StatusWriter> = None;
    let get_stream = || nats::ensure_stream(p.js, p.stream, false);
    loop {
        let Some(stream) = crate::retry::until_ready(shutdown, health, "stream", &get_stream).await
        else {
            return Ok(());
        };
        let (name, incarnation) = (
            &stream.cached_info().config.name,
            nats::incarnation(&stream),
        );
        tracing::info!(stream = name, incarnation, "following the stream");
        health.set_detail(format!(
            "following stream {name}, incarnation {incarnation} (its creation time)"
        ));
        let writer = status.get_or_insert_with(|| {
            let to = StatusTarget {
                target: p.name,
                publisher: p.durable(),
                bucket: ksr_projection::status::bucket(name),
                replicas: stream.cached_info().config.num_replicas,
            };
            StatusWriter::start(p.js.clone(), to, &p.process.registry, shutdown.clone())
        });
        let writer = Some(writer.clone());
        let pass = |floor| reconcile(stream.clone(), floor);
        match consume(&p, &stream, &metrics, writer, pass).await {
            Err(RuntimeError::StreamRecreated { stream, consumer }) => {
                health.set_not_ready(format!(
                    "stream {stream} was deleted or created again; binding {consumer} anew"
                ));
                tracing::warn!(
                    stream,
                    consumer,
                    "the stream was deleted or created again; following the new one"
                );
            }
            other => return other,
        }
    }
}
