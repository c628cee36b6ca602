//! Opening the projection targets as the publishers do, for verify and rebuild.

use async_nats::jetstream::stream::Stream;

use ksr_publisher_consul::projector::ConsulProjector;
use ksr_publisher_vulcand::projector::{Sink, VulcandProjector};
use ksr_runtime::metrics::MetricsRegistry;

use crate::Error;
use crate::cli::{ConsulTargetArgs, VulcandTargetArgs};

/// The vulcand projector of installation `--owner` (our records loaded from etcd).
pub async fn vulcand(args: &VulcandTargetArgs) -> Result<VulcandProjector, Error> {
    let etcd = ksr_publisher_vulcand::app::connect_etcd(&args.etcd).await?;
    let prefix = args.vulcand.prefix();
    let layout = ksr_publisher_vulcand::layout::Layout::new(&prefix, &args.owner);
    let metrics = ksr_publisher_vulcand::projector::metrics(&MetricsRegistry::new());
    let projector = VulcandProjector::new(
        etcd.kv_client(),
        layout,
        args.etcd.max_txn_ops as usize,
        metrics,
    )
    .await?;
    Ok(
        if args.vulcand.api == ksr_publisher_vulcand::config::EtcdApi::V2 {
            projector.with_sink(Sink::V2(ksr_publisher_vulcand::v2::V2Client::new(
                &args.etcd,
            )?))
        } else {
            projector
        },
    )
}

/// The Consul projector of installation `--owner` (our records loaded from Consul KV).
pub async fn consul(args: &ConsulTargetArgs) -> Result<ConsulProjector, Error> {
    let client = ksr_publisher_consul::store::ConsulClient::new(&args.consul)?;
    let target = args.router.target(&args.owner)?;
    Ok(ConsulProjector::new(
        client,
        ksr_publisher_consul::layout::Layout::new(&args.owner),
        target,
        ksr_publisher_consul::projector::metrics(&MetricsRegistry::new()),
    )
    .await?)
}

/// Events durable consumer `durable` has not yet applied (pending + unacknowledged), if
/// it exists.
pub async fn lag(stream: &Stream, durable: &str) -> Option<u64> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}
