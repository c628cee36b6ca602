//! Wiring of the Consul publisher process: connect, check, consume, reconcile, shut down.

use async_nats::jetstream::stream::Stream;
use tokio_util::sync::CancellationToken;

use ksr_runtime::metrics::MetricsRegistry;
use ksr_runtime::retry::{until_ready, until_ready_or};
use ksr_runtime::{Health, admin, nats, serve};

use crate::Error;
use crate::config::Config;
use crate::layout::Layout;
use crate::projector::ConsulProjector;
use crate::reconcile;
use crate::store::ConsulClient;

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

    let client = ConsulClient::new(&config.consul)?;
    health.set_not_ready("connecting to NATS");
    let Some(nats_client) =
        nats::connect(&config.nats, "ksr-publisher-consul", &shutdown, &health).await?
    else {
        return Ok(());
    };
    let js = async_nats::jetstream::new(nats_client);
    let settings = nats::StreamSettings::routes(&config.nats.stream);
    health.set_not_ready(format!("waiting for stream {}", settings.name));

    let target = config.router.target(&config.owner)?;
    let health_url = config.router_health.template(target.routers.len())?;
    let layout = Layout::new(&config.owner);
    let metrics = crate::projector::metrics(&registry);
    health.set_not_ready(format!("connecting to Consul at {}", client.base_url()));
    let connected = until_ready_or(&shutdown, &health, "consul", Error::is_fatal, || {
        ConsulProjector::new(
            client.clone(),
            layout.clone(),
            target.clone(),
            metrics.clone(),
        )
    })
    .await;
    let projector = match connected {
        None => return Ok(()),
        Some(connected) => connected?,
    };
    let projector = projector
        .with_policy(config.consumer.policy)
        .with_health(health.clone());
    let environment = config.router.environment.clone();
    if until_ready(&shutdown, &health, "consul node", || {
        reconcile::ensure_node_and_router(&projector, &environment)
    })
    .await
    .is_none()
    {
        return Ok(());
    }
    // Router health: probed and written beside the projection, never in its way.
    let router_metrics = crate::router_health::RouterMetrics::new(&registry);
    let prober = match health_url {
        Some(url) => Some(tokio::spawn(crate::router_health::run(
            client.clone(),
            target.routers.clone(),
            config.router_health.clone(),
            url,
            router_metrics,
            shutdown.clone(),
        ))),
        None => {
            if let Err(e) = crate::router_health::clear(&client, &target.routers).await {
                tracing::warn!(error = %e, "cannot remove router health checks left from an earlier configuration");
            }
            None
        }
    };

    let durable = config
        .consumer
        .durable
        .clone()
        .unwrap_or_else(|| format!("ksr-consul-{}", config.owner));
    let publisher = serve::Publisher {
        name: "consul",
        durable,
        args: &config.consumer,
        projector: &projector,
        registry: &registry,
        health: &health,
        js: &js,
    };
    let projector = &projector;
    let env = environment.as_str();
    let reconcile = |stream: Stream, floor: u64| async move {
        reconcile::reconcile(projector, &stream, floor, env)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let get_stream = || nats::ensure_stream(&js, &settings, false);
    let result = serve::follow(publisher, get_stream, reconcile, &shutdown).await;
    shutdown.cancel();
    if let Some(prober) = prober
        && let Ok(Err(e)) = prober.await
    {
        tracing::warn!(error = %e, "router health probing stopped");
    }
    let _ = admin_task.await;
    result.map_err(Error::from)
}
