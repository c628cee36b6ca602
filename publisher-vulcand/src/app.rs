//! Wiring of the vulcand publisher process: connect, check, consume, reconcile, shut down.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio_util::sync::CancellationToken;

use ksr_projection::apply::Store;
use ksr_runtime::process::Process;
use ksr_runtime::retry::until_ready_or;
use ksr_runtime::tls::read_flag_file;
use ksr_runtime::{nats, serve};

use crate::Error;
use crate::config::{Config, EtcdApi, EtcdArgs};
use crate::projector::Sink;
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
    let process = Process::start(&config.admin, shutdown).await?;
    let result = serve(&config, &process).await;
    process.finish(result).await
}

async fn serve(config: &Config, process: &Process) -> Result<(), Error> {
    let (health, shutdown) = (&process.health, &process.shutdown);
    let Some(client) = process
        .connect_nats(&config.nats, "ksr-publisher-vulcand")
        .await?
    else {
        return Ok(());
    };
    let js = async_nats::jetstream::new(client);

    health.set_not_ready("connecting to etcd");
    let target = &config.target;
    let layout = target.layout();
    // Credentials that may not touch our prefixes and a misconfigured TLS are configuration
    // errors, not something to retry; an etcd that does not answer yet is.
    let v3 = target.vulcand.api == EtcdApi::V3;
    let connected = until_ready_or(shutdown, health, "etcd", Error::is_fatal, || async {
        let etcd = connect_etcd(&target.etcd).await?;
        crate::access::check(&mut etcd.kv_client(), &layout, v3)
            .await
            .map_err(|e| e.diagnosed(&target.etcd.endpoint_list().join(",")))?;
        Ok(etcd)
    })
    .await;
    let etcd = match connected {
        None => return Ok(()),
        Some(connected) => connected?,
    };
    let metrics = crate::projector::metrics(&process.registry);
    let opened = until_ready_or(shutdown, health, "etcd state", Error::is_fatal, || {
        crate::projector::open(
            &etcd,
            target,
            metrics.clone(),
            ksr_projection::Records::Load,
        )
    })
    .await;
    let projector = match opened {
        None => return Ok(()),
        Some(opened) => opened?,
    };
    if let Sink::V2(v2) = projector.sink() {
        let answered = until_ready_or(shutdown, health, "etcd v2", Error::is_fatal, || {
            v2.version()
        })
        .await;
        match answered {
            None => return Ok(()),
            Some(answered) => answered?,
        };
    }
    let projector = projector
        .with_policy(config.consumer.policy)
        .with_warnings({
            let health = health.clone();
            move |w| health.set_warning(w)
        });

    let publisher = serve::Publisher {
        name: "vulcand",
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
        reconcile::reconcile(projector, &stream, floor, reading).await
    };
    Ok(serve::follow(publisher, reconcile).await?)
}
