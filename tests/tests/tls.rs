//! TLS on every connection, verified both ways, against real servers that require client
//! certificates: nats-server (`verify: true`), etcd (`--client-cert-auth`) and Consul
//! (`verify_incoming_https`). Every process and ksrctl connects with verification on, and a
//! wrong CA or a missing client certificate stops it with an error naming the flag to fix.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ksr_test_support::tls::{Pki, ServerTls};
use ksr_test_support::{
    ConsulOptions, ConsulServer, EtcdOptions, EtcdServer, NatsOptions, NatsServer, Proc,
    eventually, workspace_binary,
};

const WAIT: Duration = Duration::from_secs(60);

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// nats-server's TLS block, verifying clients against the CA.
fn nats_tls(tls: &ServerTls) -> String {
    format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 5 }}",
        tls.cert, tls.key, tls.ca
    )
}

struct Servers {
    pki: Pki,
    nats: NatsServer,
    etcd: EtcdServer,
    consul: ConsulServer,
    dir: tempfile::TempDir,
}

impl Servers {
    async fn start() -> anyhow::Result<Self> {
        let pki = Pki::new("ksr test CA")?;
        let nats = NatsServer::start_with(NatsOptions {
            config: Some(nats_tls(&pki.server())),
        })
        .await?;
        let etcd = EtcdServer::start_with(EtcdOptions {
            enable_v2: true,
            tls: Some(pki.server()),
        })
        .await?;
        let consul = ConsulServer::start_with(ConsulOptions {
            tls: Some(pki.server()),
            ..Default::default()
        })
        .await?;
        Ok(Self {
            pki,
            nats,
            etcd,
            consul,
            dir: tempfile::tempdir()?,
        })
    }

    /// The NATS flags with the client certificate, verified against `ca`.
    fn nats_args(&self, ca: &Path) -> Vec<String> {
        vec![
            "--nats-url".into(),
            self.nats.url(),
            "--nats-ca".into(),
            path(ca),
            "--nats-cert".into(),
            path(&self.pki.client_cert),
            "--nats-key".into(),
            path(&self.pki.client_key),
        ]
    }

    /// The etcd flags with the client certificate, verified against `ca`; the first endpoint
    /// is dead (nothing listens there), so every client must fail over.
    fn etcd_args(&self, ca: &Path) -> anyhow::Result<Vec<String>> {
        let dead = ksr_test_support::free_ports(1)?[0];
        Ok(vec![
            "--etcd-endpoints".into(),
            format!("https://127.0.0.1:{dead},https://{}", self.etcd.endpoint()),
            "--etcd-ca".into(),
            path(ca),
            "--etcd-cert".into(),
            path(&self.pki.client_cert),
            "--etcd-key".into(),
            path(&self.pki.client_key),
        ])
    }

    fn consul_args(&self, ca: &Path) -> Vec<String> {
        vec![
            "--consul-address".into(),
            self.consul.https_url(),
            "--consul-ca".into(),
            path(ca),
            "--consul-cert".into(),
            path(&self.pki.client_cert),
            "--consul-key".into(),
            path(&self.pki.client_key),
        ]
    }

    fn spawn(&self, name: &str, binary: &str, args: Vec<String>) -> anyhow::Result<Proc> {
        let admin = ["--admin-addr".to_owned(), "127.0.0.1:0".to_owned()];
        Proc::spawn_workspace(self.dir.path(), name, binary, args.into_iter().chain(admin))
    }

    /// A watcher of cluster `east` reading one Service from a manifest directory.
    fn watcher(&self, nats: Vec<String>) -> anyhow::Result<Proc> {
        let manifests = self.dir.path().join("east");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("web.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  labels:\n    type: ingress\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n",
        )?;
        let mut args: Vec<String> = [
            "--cluster",
            "east",
            "--source",
            "files",
            "--manifests-poll",
            "50ms",
        ]
        .map(String::from)
        .into();
        args.extend(["--manifests".into(), path(&manifests)]);
        args.extend(nats);
        self.spawn("watcher", "ksr-watcher", args)
    }
}

/// Runs `binary` to its end (it must stop on its own within the deadline).
async fn run_to_end(binary: &str, args: Vec<String>) -> anyhow::Result<Output> {
    let log = tempfile::NamedTempFile::new()?;
    let mut child = tokio::process::Command::new(workspace_binary(binary)?)
        .args(args)
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("KSR_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen()?)
        .kill_on_drop(true)
        .spawn()?;
    let status = tokio::time::timeout(WAIT, child.wait()).await;
    let stderr = std::fs::read(log.path())?;
    match status {
        Ok(status) => Ok(Output {
            status: status?,
            stdout: Vec::new(),
            stderr,
        }),
        Err(_) => anyhow::bail!(
            "{binary} kept running instead of stopping:\n{}",
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// `binary` stops with a non-zero status and an error naming `flag`.
async fn refused(binary: &str, args: Vec<String>, flag: &str) -> anyhow::Result<()> {
    let out = run_to_end(binary, args).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(!out.status.success(), "{binary} succeeded: {out:?}");
    anyhow::ensure!(
        stderr.contains(flag) && stderr.contains("TLS"),
        "{binary}'s error does not name {flag}:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn the_whole_pipeline_runs_over_verified_tls_with_client_certificates() -> anyhow::Result<()>
{
    let servers = Servers::start().await?;
    let ca = &servers.pki.ca;
    let mut procs = vec![servers.watcher(servers.nats_args(ca))?];
    for (name, api) in [("publisher-vulcand", "v3"), ("publisher-vulcand-v2", "v2")] {
        let mut args = servers.nats_args(ca);
        args.extend(servers.etcd_args(ca)?);
        // Two installations (owners) on one etcd: v3 keys and the v2 tree side by side.
        args.extend([
            "--etcd-api".into(),
            api.into(),
            "--owner".into(),
            api.into(),
        ]);
        procs.push(servers.spawn(name, "ksr-publisher-vulcand", args)?);
    }
    let mut args = servers.nats_args(ca);
    args.extend(servers.consul_args(ca));
    procs.push(servers.spawn("publisher-consul", "ksr-publisher-consul", args)?);

    // The v2 tree read with the same flags.
    let mut argv = vec!["ksr-publisher-vulcand".to_owned()];
    argv.extend(servers.etcd_args(ca)?);
    let config = <ksr_publisher_vulcand::config::Config as clap::Parser>::try_parse_from(argv)?;
    ksr_runtime::tls::install_crypto_provider();
    let v2 = ksr_publisher_vulcand::v2::V2Client::new(&config.target.etcd)?;

    let procs = std::sync::Mutex::new(procs);
    let routed = eventually(WAIT, || async {
        for p in procs.lock().expect("not poisoned").iter_mut() {
            p.check_alive()?;
        }
        let keys = servers.etcd.contents("vulcand/").await?;
        let servers_v3 = keys.keys().filter(|k| k.contains("/servers/")).count();
        anyhow::ensure!(servers_v3 == 1, "vulcand keys in etcd v3: {keys:?}");
        let tree = v2.tree("/vulcand").await?;
        anyhow::ensure!(tree.len() == 3, "vulcand keys in etcd v2: {tree:#?}");
        let catalog = servers.consul.contents("ksr", false).await?;
        anyhow::ensure!(catalog.contains_key("svc:web-default.test"), "{catalog:?}");
        Ok(())
    })
    .await;
    if let Err(e) = routed {
        let logs: Vec<String> = procs
            .lock()
            .expect("not poisoned")
            .iter()
            .map(Proc::log_tail)
            .collect();
        anyhow::bail!("{e:#}\n{}", logs.join("\n"));
    }

    // ksrctl reads the stream over the same verified TLS, with the same flags.
    let mut args = vec!["events".to_owned()];
    args.extend(servers.nats_args(ca));
    let out = Command::new(workspace_binary("ksrctl")?)
        .args(&args)
        .output()?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(stdout.contains("web"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_ca_or_a_missing_client_certificate_stops_each_client_naming_the_flag()
-> anyhow::Result<()> {
    let servers = Servers::start().await?;
    let ca = &servers.pki.ca;
    let other = Pki::new("someone else's CA")?;
    let wrong = &other.ca;

    // NATS: the server is not trusted (every process and ksrctl), or it refuses us.
    refused(
        "ksr-watcher",
        watcher_args(&servers, servers.nats_args(wrong))?,
        "--nats-ca",
    )
    .await?;
    let mut args = servers.nats_args(wrong);
    args.extend(servers.etcd_args(ca)?);
    refused("ksr-publisher-vulcand", args, "--nats-ca").await?;
    let mut args = servers.nats_args(wrong);
    args.extend(servers.consul_args(ca));
    refused("ksr-publisher-consul", args, "--nats-ca").await?;
    let mut args = vec!["events".to_owned()];
    args.extend(servers.nats_args(wrong));
    let out = Command::new(workspace_binary("ksrctl")?)
        .args(&args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        !out.status.success() && stderr.contains("--nats-ca"),
        "ksrctl: {out:?}"
    );
    let without_cert = vec![
        "--nats-url".into(),
        servers.nats.url(),
        "--nats-ca".into(),
        path(ca),
    ];
    refused(
        "ksr-watcher",
        watcher_args(&servers, without_cert)?,
        "--nats-cert",
    )
    .await?;

    // etcd, v3 and v2 mode (a dead first endpoint, then the live one).
    for api in ["v3", "v2"] {
        let mut args = servers.nats_args(ca);
        args.extend(servers.etcd_args(wrong)?);
        args.extend(["--etcd-api".into(), api.into()]);
        refused("ksr-publisher-vulcand", args, "--etcd-ca").await?;
    }

    // Consul over HTTPS.
    let mut args = servers.nats_args(ca);
    args.extend(servers.consul_args(wrong));
    refused("ksr-publisher-consul", args, "--consul-ca").await?;
    Ok(())
}

/// A watcher's arguments (reading an empty manifest directory) with `nats`.
fn watcher_args(servers: &Servers, nats: Vec<String>) -> anyhow::Result<Vec<String>> {
    let manifests = servers.dir.path().join("empty");
    std::fs::create_dir_all(&manifests)?;
    let mut args: Vec<String> = ["--cluster", "east", "--source", "files", "--manifests"]
        .map(String::from)
        .into();
    args.push(path(&manifests));
    args.extend(nats);
    Ok(args)
}
