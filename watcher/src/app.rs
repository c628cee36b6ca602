//! Wiring of the watcher process: stream check, source, runner, admin server.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use ksr_runtime::nats;
use ksr_runtime::process::Process;
use ksr_runtime::retry::until_ready;

use crate::Error;
use crate::config::{Config, SourceKind};
use crate::guard::RemovalGuard;
use crate::inventory::Inventory;
use crate::metrics::WatcherMetrics;
use crate::normalize::{AddressMode, Normalizer};
use crate::notify::Notifier;
use crate::publish::{EventWriter, Identity};
use crate::runner::{Confirmation, Runner, RunnerConfig};
use crate::source;

/// Runs the watcher until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let process = Process::start(&config.admin, shutdown).await?;
    let result = watch(config, &process).await;
    process.finish(result).await
}

async fn watch(config: Config, process: &Process) -> Result<(), Error> {
    let (health, shutdown) = (process.health.clone(), process.shutdown.clone());
    let metrics = WatcherMetrics::new(&process.registry);
    let name = format!("ksr-watcher-{}", config.cluster);
    let Some(client) = process.connect_nats(&config.nats, &name).await? else {
        return Ok(());
    };
    let confirmations = listen_for_confirmations(client.clone(), &config.cluster).await?;
    answer_pings(client.clone(), &config.cluster, &config.observer).await?;
    let js = async_nats::jetstream::new(client);
    let mut settings = if config.cluster_stream {
        nats::StreamSettings::cluster(&config.nats.stream, &config.cluster)
    } else {
        nats::StreamSettings::routes(&config.nats.stream)
    };
    settings.max_age = config.stream_max_age;
    settings.replicas = usize::from(config.stream_replicas.replicas);
    let Some(stream) = until_ready(&shutdown, &health, "stream", || {
        nats::ensure_stream(&js, &settings, config.create_stream)
    })
    .await
    else {
        return Ok(());
    };

    let watch_slices = config.address_mode == AddressMode::Endpoints;
    let mut notifier = Notifier::default();
    // The publishers' status is only told to Service owners through Kubernetes Events.
    let mut statuses = tokio::sync::mpsc::channel(1).1;
    let (events, cluster_id) = match config.source {
        SourceKind::Files => {
            let dir = config.manifests.clone().ok_or_else(|| {
                Error::Config("--manifests is required with --source files".into())
            })?;
            let id = source::files::identity(&dir);
            (
                source::files::source(dir, config.manifests_poll).boxed(),
                id,
            )
        }
        SourceKind::Kubernetes => {
            let Some(client) = until_ready(&shutdown, &health, "kubernetes", || {
                source::kube::client(&config.kube)
            })
            .await
            else {
                return Ok(());
            };
            let Some(id) = until_ready(&shutdown, &health, "cluster identity", || {
                source::kube::cluster_identity(&client)
            })
            .await
            else {
                return Ok(());
            };
            notifier = Notifier::start(
                client.clone(),
                format!("ksr-watcher-{}", config.cluster),
                metrics.clone(),
                shutdown.clone(),
            );
            statuses = crate::status::follow(
                js.clone(),
                ksr_projection::status::bucket(&config.nats.stream),
                config.cluster.clone(),
                shutdown.clone(),
            );
            let events =
                source::kube::source(client, &config.kube, config.selector.as_str(), watch_slices);
            (events.boxed(), id)
        }
    };
    let runner = Runner::new(
        RunnerConfig {
            cluster: config.cluster.clone(),
            selector: config.selector.clone(),
            window: config.coalesce_window,
            adopt: config.adopt_cluster,
            guard: RemovalGuard {
                max: config.max_removals,
                percent: config.max_removal_percent,
                allow: config.allow_mass_removal,
            },
        },
        Inventory::new(
            watch_slices,
            config.namespaces.clone(),
            config.exclude_namespaces.clone(),
        ),
        Normalizer {
            environment: config.environment.clone(),
            domain: config.domain.clone(),
            mode: config.address_mode,
            node_addresses: config.node_addresses.clone(),
            allowed_host_domains: config.allowed_host_domains.clone(),
            max_event_bytes: config.max_event_bytes as usize,
        },
        EventWriter::new(
            js,
            stream,
            settings,
            config.create_stream,
            Identity {
                cluster: config.cluster.clone(),
                cluster_id: cluster_id.clone(),
                observer: config.observer.clone(),
            },
            metrics.clone(),
        ),
        metrics,
        health,
    )
    .with_notifier(notifier);
    tracing::info!(cluster = config.cluster, cluster_id, source = ?config.source, selector = config.selector.as_str(), "watching");
    runner.run(events, confirmations, statuses, shutdown).await
}

/// Answers `ksrctl confirm-removals` (core NATS request/reply on
/// `ksr.control.<cluster>.confirm-removals`): hands each request to the runner and replies
/// with how many held removals it releases.
async fn listen_for_confirmations(
    client: async_nats::Client,
    cluster: &str,
) -> Result<tokio::sync::mpsc::Receiver<Confirmation>, Error> {
    let mut requests = client
        .subscribe(ksr_proto::subject::confirm_removals_subject(cluster))
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            if tx.send(reply_tx).await.is_err() {
                break;
            }
            let released = reply_rx.await.unwrap_or(0);
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, released.to_string().into()).await;
            }
        }
    });
    Ok(rx)
}

/// Answers `ksr.control.<cluster>.ping` with the observer's name while this watcher runs, so
/// `ksrctl retire-cluster` can tell that the cluster is not retired yet.
async fn answer_pings(
    client: async_nats::Client,
    cluster: &str,
    observer: &str,
) -> Result<(), Error> {
    let mut pings = client
        .subscribe(ksr_proto::subject::watcher_ping_subject(cluster))
        .await?;
    let answer = observer.to_owned();
    tokio::spawn(async move {
        while let Some(msg) = pings.next().await {
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, answer.clone().into()).await;
            }
        }
    });
    Ok(())
}
