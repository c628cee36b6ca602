//! Wiring of the vulcand publisher process: connect, check, consume, reconcile, shut down.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio_util::sync::CancellationToken;

use ksr_runtime::consumer::{self, ConsumerMetrics, LoopOptions};
use ksr_runtime::metrics::MetricsRegistry;
use ksr_runtime::retry::until_ok;
use ksr_runtime::{Health, admin, nats, shutdown};

use crate::Error;
use crate::config::{Config, EtcdArgs};
use crate::layout::Layout;
use crate::publisher::{VulcandMetrics, VulcandProjector};
use crate::reconcile;

/// Connects to etcd with the configured TLS and credentials.
pub async fn connect_etcd(args: &EtcdArgs) -> Result<etcd_client::Client, Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        opts = opts.with_user(user, password);
    }
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca)
            .map_err(|e| Error::Config(format!("--etcd-ca {}: {e}", ca.display())))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let c = std::fs::read(cert)
                .map_err(|e| Error::Config(format!("--etcd-cert {}: {e}", cert.display())))?;
            let k = std::fs::read(key)
                .map_err(|e| Error::Config(format!("--etcd-key {}: {e}", key.display())))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        opts = opts.with_tls(tls);
    }
    Ok(etcd_client::Client::connect(args.endpoint_list(), Some(opts)).await?)
}

/// Runs the publisher until `shutdown` is cancelled; the batch in hand is finished first.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let registry = MetricsRegistry::new();
    let health = Health::new("starting");
    let (_, admin_task) = admin::serve(
        config.admin.addr,
        health.clone(),
        registry.clone(),
        shutdown.clone(),
    )
    .await?;

    let client = nats::connect(&config.nats, "ksr-publisher-vulcand").await?;
    let js = async_nats::jetstream::new(client);
    let settings = nats::StreamSettings::routes(&config.nats.stream);
    health.set_not_ready(format!("waiting for stream {}", settings.name));
    let Some(stream) = until_ok(&shutdown, "stream", || {
        nats::ensure_stream(&js, &settings, false)
    })
    .await
    else {
        return Ok(());
    };

    health.set_not_ready("connecting to etcd");
    let Some(etcd) = until_ok(&shutdown, "etcd", || connect_etcd(&config.etcd)).await else {
        return Ok(());
    };
    let layout = Layout::new(&config.vulcand_prefix, &config.owner);
    let metrics = VulcandMetrics::new(&registry);
    let max_ops = config.etcd.max_txn_ops as usize;
    let Some(projector) = until_ok(&shutdown, "etcd state", || {
        VulcandProjector::new(etcd.kv_client(), layout.clone(), max_ops, metrics.clone())
    })
    .await
    else {
        return Ok(());
    };

    let durable = config
        .consumer
        .durable
        .clone()
        .unwrap_or_else(|| format!("ksr-vulcand-{}", config.owner));
    let Some(consumer) = until_ok(&shutdown, "consumer", || {
        nats::durable_consumer(&stream, &durable, &config.consumer)
    })
    .await
    else {
        return Ok(());
    };
    tracing::info!(
        durable,
        prefix = layout.vulcand_prefix(),
        owner = layout.owner(),
        "consuming"
    );
    health.set_ready();

    let consumer_metrics = ConsumerMetrics::new(&registry, "vulcand");
    let options = LoopOptions {
        batch_size: config.consumer.batch_size as usize,
        max_retry_delay: config.consumer.max_retry_delay,
    };
    let stop = CancellationToken::new();
    let work = async {
        let consuming = async {
            let r = consumer::run(
                consumer.clone(),
                &projector,
                &options,
                &consumer_metrics,
                &health,
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        };
        let reconciling = reconcile_loop(
            &projector,
            &stream,
            consumer.clone(),
            config.consumer.reconcile_interval,
            stop.clone(),
        );
        tokio::join!(consuming, reconciling).0
    };
    let result = shutdown::drain(work, &shutdown, &stop, config.consumer.drain_timeout).await;
    let _ = admin_task.await;
    result.unwrap_or(Ok(())).map_err(Error::from)
}

/// Reconciles once the consumer has caught up, then every `interval`.
async fn reconcile_loop(
    projector: &VulcandProjector,
    stream: &async_nats::jetstream::stream::Stream,
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let wait = if first {
            Duration::from_millis(200)
        } else {
            interval
        };
        if !first && interval.is_zero() {
            stop.cancelled().await;
            return;
        }
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
        match reconcile::reconcile(projector, stream, ack_floor).await {
            Ok(_) => first = false,
            Err(e) => tracing::warn!(error = %e, "reconcile failed; will retry"),
        }
    }
}
