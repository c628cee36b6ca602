//! Wiring of the Consul publisher process: connect, check, consume, reconcile, shut down.

use async_nats::jetstream::stream::Stream;
use tokio_util::sync::CancellationToken;

use ksr_projection::apply::Store;
use ksr_runtime::process::Process;
use ksr_runtime::retry::{until_ready, until_ready_or};
use ksr_runtime::{nats, serve};

use crate::Error;
use crate::config::Config;
use crate::reconcile;
use crate::store::ConsulClient;

/// Runs the publisher until `shutdown` is cancelled; the batch in hand is finished first.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let process = Process::start(&config.admin, shutdown).await?;
    let result = serve(&config, &process).await;
    process.finish(result).await
}

async fn serve(config: &Config, process: &Process) -> Result<(), Error> {
    let (health, shutdown) = (&process.health, &process.shutdown);
    let target = &config.target;
    // Configuration errors first, before anything is waited for.
    let routers = target.target()?.routers;
    let health_url = config.router_health.template(routers.len())?;
    let consul = ConsulClient::new(&target.consul)?;
    let Some(client) = process
        .connect_nats(&config.nats, "ksr-publisher-consul")
        .await?
    else {
        return Ok(());
    };
    let js = async_nats::jetstream::new(client);

    let metrics = crate::projector::metrics(&process.registry);
    health.set_not_ready(format!("connecting to Consul at {}", consul.base_url()));
    let connected = until_ready_or(shutdown, health, "consul", Error::is_fatal, || {
        crate::projector::open(
            &consul,
            target,
            metrics.clone(),
            ksr_projection::Records::Load,
        )
    })
    .await;
    let projector = match connected {
        None => return Ok(()),
        Some(connected) => connected?,
    };
    let projector = projector
        .with_policy(config.consumer.policy)
        .with_warnings({
            let health = health.clone();
            move |w| health.set_warning(w)
        });
    let environment = target.router.environment.as_str();
    if until_ready(shutdown, health, "consul node", || {
        reconcile::ensure_node_and_router(&projector, environment)
    })
    .await
    .is_none()
    {
        return Ok(());
    }
    // Router health: probed and written beside the projection, never in its way.
    let router_metrics = crate::router_health::RouterMetrics::new(&process.registry);
    let prober = match health_url {
        Some(url) => Some(tokio::spawn(crate::router_health::run(
            consul,
            routers,
            config.router_health.clone(),
            url,
            router_metrics,
            shutdown.clone(),
        ))),
        None => {
            if let Err(e) = crate::router_health::clear(&consul, &routers).await {
                tracing::warn!(error = %e, "cannot remove router health checks left from an earlier configuration");
            }
            None
        }
    };

    let publisher = serve::Publisher {
        name: "consul",
        owner: &target.owner,
        args: &config.consumer,
        projector: &projector,
        process,
        js: &js,
        stream: &nats::StreamSettings::routes(&config.nats.stream),
    };
    let projector = &projector;
    let reading = &publisher.reading();
    let reconcile = |stream: Stream, floor: u64| async move {
        reconcile::reconcile(projector, &stream, floor, reading, environment).await
    };
    let result = serve::follow(publisher, reconcile).await;
    shutdown.cancel();
    if let Some(prober) = prober
        && let Ok(Err(e)) = prober.await
    {
        tracing::warn!(error = %e, "router health probing stopped");
    }
    Ok(result?)
}
