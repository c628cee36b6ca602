//! TLS to etcd, verified both ways, against a real etcd that requires client certificates:
//! v3 mode and v2 mode (vulcand v0.8) with the same flags.

mod common;

use std::path::Path;

use clap::Parser;
use common::{WAIT, route_id};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, TlsOptions};
use ksr_test_support::events::added;
use ksr_test_support::tls::Pki;
use ksr_test_support::{EtcdOptions, EtcdServer, NatsServer, eventually};

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

struct Bench {
    nats: NatsServer,
    etcd: EtcdServer,
    pki: Pki,
    js: async_nats::jetstream::Context,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let pki = Pki::new("ksr test CA")?;
        let nats = NatsServer::start().await?;
        let etcd = EtcdServer::start_with(EtcdOptions {
            enable_v2: true,
            tls: Some(pki.server()),
        })
        .await?;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        ksr_runtime::nats::ensure_stream(
            &js,
            &ksr_runtime::nats::StreamSettings::routes("KSR_ROUTES"),
            true,
        )
        .await?;
        Ok(Self {
            nats,
            etcd,
            pki,
            js,
        })
    }

    fn publisher(&self, ca: &Path, extra: &[&str]) -> anyhow::Result<common::Replica> {
        let (url, endpoint) = (self.nats.url(), self.etcd.endpoint());
        let mut args = vec!["--nats-url", &url, "--etcd-endpoints", &endpoint];
        args.extend([
            "--etcd-ca",
            path(ca),
            "--etcd-cert",
            path(&self.pki.client_cert),
        ]);
        args.extend(["--etcd-key", path(&self.pki.client_key)]);
        args.extend(extra);
        common::spawn_publisher(&args)
    }
}

#[tokio::test]
async fn v3_mode_talks_tls_with_a_client_certificate() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&bench.pki.ca, &[])?;
    ksr_test_support::events::publish(&bench.js, &added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    let mut etcd = bench.etcd.client().await?;
    let frontend = format!(
        "vulcand/frontends/{}/frontend",
        route_id("web-shop.test.service.consul", "/.*")
    );
    eventually(WAIT, || async {
        let resp = etcd.clone().get(frontend.as_str(), None).await?;
        anyhow::ensure!(resp.kvs().len() == 1, "no frontend yet");
        Ok(())
    })
    .await?;
    // Without a client certificate etcd refuses the connection.
    let plain = Client::connect(
        [bench.etcd.endpoint()],
        Some(ConnectOptions::new().with_tls(
            TlsOptions::new().ca_certificate(Certificate::from_pem(std::fs::read(&bench.pki.ca)?)),
        )),
    )
    .await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c
            .get("vulcand/", Some(GetOptions::new().with_prefix()))
            .await
            .is_err(),
    };
    assert!(refused, "etcd served a client without a certificate");
    assert!(etcd.get("x", None).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn v2_mode_talks_tls_with_the_same_flags() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&bench.pki.ca, &["--etcd-api", "v2"])?;
    ksr_test_support::events::publish(&bench.js, &added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    let endpoint = bench.etcd.endpoint();
    let config = ksr_publisher_vulcand::config::Config::try_parse_from([
        "x",
        "--etcd-endpoints",
        &endpoint,
        "--etcd-ca",
        path(&bench.pki.ca),
        "--etcd-cert",
        path(&bench.pki.client_cert),
        "--etcd-key",
        path(&bench.pki.client_key),
    ])?;
    ksr_runtime::tls::install_crypto_provider();
    let v2 = ksr_publisher_vulcand::v2::V2Client::new(&config.target.etcd)?;
    eventually(WAIT, || async {
        let t = v2.tree("/vulcand").await?;
        anyhow::ensure!(t.len() == 3, "{t:#?}");
        Ok(())
    })
    .await
}
