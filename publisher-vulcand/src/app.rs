//! Wiring of the vulcand publisher process: connect, check, consume, reconcile, shut down.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio_util::sync::CancellationToken;

use ksr_runtime::metrics::MetricsRegistry;
use ksr_runtime::retry::{until_ready, until_ready_or};
use ksr_runtime::tls::read_flag_file;
use ksr_runtime::{Health, admin, nats, serve};

use crate::Error;
use crate::config::{Config, EtcdApi, EtcdArgs};
use crate::layout::Layout;
use crate::projector::{Sink, VulcandProjector};
use crate::reconcile;
use crate::v2::V2Client;

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
        let pem = read_flag_file("--etcd-ca", ca)?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(
                read_flag_file("--etcd-cert", cert)?,
                read_flag_file("--etcd-key", key)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    // The client uses one endpoint at a time (see `failover`); start from each in turn until
    // one answers, so a dead first endpoint costs one refused connection, not the start-up.
    let endpoints = args.endpoint_list();
    let all = endpoints.join(",");
    let mut failures = Vec::new();
    for start in 0..endpoints.len() {
        let mut order = endpoints.clone();
        order.rotate_left(start);
        let attempt = async {
            let mut client = etcd_client::Client::connect_with_balanced_channel(
                order,
                Some(opts.clone()),
                crate::failover::FailoverChannel,
            )
            .await?;
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match attempt.await {
            Ok(client) => return Ok(client),
            Err(e) => failures.push(Error::from(e).diagnosed(&all)),
        }
    }
    // Every endpoint failed: a TLS misconfiguration is what to report, if there is one.
    let fatal = failures.iter().position(Error::is_fatal);
    let last = fatal.unwrap_or(failures.len().saturating_sub(1));
    Err(failures
        .into_iter()
        .nth(last)
        .unwrap_or_else(|| Error::Config("--etcd-endpoints: no endpoint given".into())))
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

    health.set_not_ready("connecting to NATS");
    let Some(client) =
        nats::connect(&config.nats, "ksr-publisher-vulcand", &shutdown, &health).await?
    else {
        return Ok(());
    };
    let js = async_nats::jetstream::new(client);
    let settings = nats::StreamSettings::routes(&config.nats.stream);
    health.set_not_ready(format!("waiting for stream {}", settings.name));

    health.set_not_ready("connecting to etcd");
    let layout = Layout::new(&config.prefix(), &config.owner);
    // Credentials that may not touch our prefixes and a misconfigured TLS are configuration
    // errors, not something to retry; an etcd that does not answer yet is.
    let v3 = config.vulcand.api == EtcdApi::V3;
    let connected = until_ready_or(&shutdown, &health, "etcd", Error::is_fatal, || async {
        let etcd = connect_etcd(&config.etcd).await?;
        crate::access::check(&mut etcd.kv_client(), &layout, v3)
            .await
            .map_err(|e| e.diagnosed(&config.etcd.endpoint_list().join(",")))?;
        Ok(etcd)
    })
    .await;
    let etcd = match connected {
        None => return Ok(()),
        Some(connected) => connected?,
    };
    let v2 = match config.vulcand.api {
        EtcdApi::V2 => {
            let v2 = V2Client::new(&config.etcd)?;
            match until_ready_or(&shutdown, &health, "etcd v2", Error::is_fatal, || {
                v2.version()
            })
            .await
            {
                None => return Ok(()),
                Some(answered) => answered?,
            };
            Some(v2)
        }
        EtcdApi::V3 => None,
    };
    let metrics = crate::projector::metrics(&registry);
    let max_ops = config.etcd.max_txn_ops as usize;
    let Some(projector) = until_ready(&shutdown, &health, "etcd state", || {
        VulcandProjector::new(etcd.kv_client(), layout.clone(), max_ops, metrics.clone())
    })
    .await
    else {
        return Ok(());
    };
    let projector = projector
        .with_policy(config.consumer.policy)
        .with_health(health.clone());
    let projector = match v2 {
        Some(v2) => projector.with_sink(Sink::V2(v2)),
        None => projector,
    };

    let durable = config
        .consumer
        .durable
        .clone()
        .unwrap_or_else(|| format!("ksr-vulcand-{}", config.owner));
    let publisher = serve::Publisher {
        name: "vulcand",
        durable,
        args: &config.consumer,
        projector: &projector,
        registry: &registry,
        health: &health,
        js: &js,
    };
    let projector = &projector;
    let reconcile = |stream: Stream, floor: u64| async move {
        reconcile::reconcile(projector, &stream, floor)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let get_stream = || nats::ensure_stream(&js, &settings, false);
    let result = serve::follow(publisher, get_stream, reconcile, &shutdown).await;
    let _ = admin_task.await;
    result.map_err(Error::from)
}
