//! Opening the projection targets as the publishers do, for verify and rebuild.

use async_nats::jetstream::stream::Stream;

use ksr_projection::Records;
use ksr_publisher_consul::projector::ConsulProjector;
use ksr_publisher_vulcand::projector::VulcandProjector;
use ksr_runtime::metrics::MetricsRegistry;

use crate::Error;
use crate::cli::{ConsulTargetArgs, VulcandTargetArgs};

/// The vulcand projector of installation `--owner`, opened as the publisher opens it (our
/// records loaded from etcd with [`Records::Load`]: what a rebuild plans against; a
/// verification compares the keys with the stream alone and skips them).
pub async fn vulcand(
    args: &VulcandTargetArgs,
    records: Records,
) -> Result<VulcandProjector, Error> {
    let etcd = ksr_publisher_vulcand::app::connect_etcd(&args.target.etcd).await?;
    let metrics = ksr_publisher_vulcand::projector::metrics(&MetricsRegistry::new());
    Ok(ksr_publisher_vulcand::projector::open(&etcd, &args.target, metrics, records).await?)
}

/// The Consul projector of installation `--owner`, opened as the publisher opens it (our
/// records loaded from Consul KV with [`Records::Load`]).
pub async fn consul(args: &ConsulTargetArgs, records: Records) -> Result<ConsulProjector, Error> {
    let client = ksr_publisher_consul::store::ConsulClient::new(&args.target.consul)?;
    let metrics = ksr_publisher_consul::projector::metrics(&MetricsRegistry::new());
    Ok(ksr_publisher_consul::projector::open(&client, &args.target, metrics, records).await?)
}

/// Events durable consumer `durable` has not yet applied (pending + unacknowledged), if
/// it exists.
pub async fn lag(stream: &Stream, durable: &str) -> Option<u64> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}
