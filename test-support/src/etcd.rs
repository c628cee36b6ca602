//! A real etcd on free loopback ports.

use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::server_binary;
use crate::process::Proc;
use crate::{free_ports, http, wait_until};

/// How to start etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Also serve the v2 API (`--enable-v2`), as vulcand v0.8 needs.
    pub enable_v2: bool,
    /// Serve clients over TLS only, requiring a client certificate from this CA
    /// (`--client-cert-auth`); health is then read from a plain metrics port.
    pub tls: Option<crate::tls::ServerTls>,
}

/// A running etcd member with its own data dir (alone, or one of an [`EtcdCluster`]);
/// killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    dir: TempDir,
    name: String,
    /// `--initial-cluster` (this member alone when not part of a cluster).
    initial_cluster: Option<String>,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    options: EtcdOptions,
    proc: Option<Proc>,
}

impl EtcdServer {
    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(crate::process::Proc::pid)
    }

    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(EtcdOptions::default()).await
    }

    pub async fn start_with(options: EtcdOptions) -> anyhow::Result<Self> {
        let ports = free_ports(3)?;
        let mut server = Self::member(options, "ksr-test", None, [ports[0], ports[1], ports[2]])?;
        server.spawn().await?;
        Ok(server)
    }

    /// A member not started yet: client, peer and metrics `ports`.
    fn member(
        options: EtcdOptions,
        name: &str,
        initial_cluster: Option<String>,
        ports: [u16; 3],
    ) -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("ksr-etcd-").tempdir()?,
            name: name.to_owned(),
            initial_cluster,
            client_port: ports[0],
            peer_port: ports[1],
            metrics_port: ports[2],
            options,
            proc: None,
        })
    }

    /// Whether this member leads its cluster now (`etcd_server_is_leader` on its metrics).
    pub async fn is_leader(&self) -> bool {
        matches!(http::get(self.metrics_port, "/metrics").await,
                 Some((200, body)) if body.lines().any(|l| l == "etcd_server_is_leader 1"))
    }

    /// `127.0.0.1:<port>`, as etcd-client takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A v3 client; over TLS (with the server's own certificate, which may also act as a
    /// client) when the server requires it.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
        let options = match &self.options.tls {
            None => None,
            Some(tls) => Some(
                ConnectOptions::new().with_tls(
                    TlsOptions::new()
                        .ca_certificate(Certificate::from_pem(std::fs::read(&tls.ca)?))
                        .identity(Identity::from_pem(
                            std::fs::read(&tls.cert)?,
                            std::fs::read(&tls.key)?,
                        )),
                ),
            ),
        };
        Ok(etcd_client::Client::connect([self.endpoint()], options).await?)
    }

    /// Every key under `prefix` with its value (v3 API), for key-by-key comparisons.
    pub async fn contents(
        &self,
        prefix: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let mut client = self.client().await?;
        let resp = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// `http://127.0.0.1:<port>`, for the v2 HTTP API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// Sends `signal` to the server process (`STOP` stalls it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.proc.as_ref().map_or(Ok(()), |p| p.signal(signal))
    }

    /// Kills etcd (as a crash would); data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.launch()?;
        self.await_ready().await
    }

    /// Spawns the process without waiting (a cluster's members need each other to be ready).
    fn launch(&mut self) -> anyhow::Result<()> {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(server_binary("etcd")?);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(
                self.initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={peer}", self.name)),
            )
            .arg("--log-level")
            .arg("warn");
        if self.options.enable_v2 {
            cmd.arg("--enable-v2=true");
        }
        cmd.arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port));
        if let Some(tls) = &self.options.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        self.proc = Some(Proc::spawn("etcd", cmd, &self.dir.path().join("etcd.log"))?);
        Ok(())
    }

    /// Waits until the member reports itself healthy (it has a leader).
    async fn await_ready(&mut self) -> anyhow::Result<()> {
        let port = self.metrics_port;
        let ready = wait_until("etcd health", Duration::from_secs(30), || async {
            match http::get(port, "/health").await {
                Some((200, body)) if body.contains("\"true\"") => Some(()),
                _ => None,
            }
        })
        .await;
        if let Err(e) = ready {
            if let Some(proc) = &mut self.proc {
                proc.check_alive()?;
                anyhow::bail!("{e}; log:\n{}", proc.log_tail());
            }
            return Err(e);
        }
        Ok(())
    }
}

/// A three- (or `n`-) member etcd cluster on loopback; any member can be killed and started
/// again.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// One member alone.
    pub async fn single() -> anyhow::Result<Self> {
        Ok(Self {
            members: vec![EtcdServer::start().await?],
        })
    }

    /// Starts `n` members at once and waits until each is healthy.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let ports = free_ports(3 * n)?;
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[3 * i + 1]))
            .collect();
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let p = [ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]];
            let mut m = EtcdServer::member(
                EtcdOptions::default(),
                &format!("m{i}"),
                Some(initial.join(",")),
                p,
            )?;
            m.launch()?;
            members.push(m);
        }
        for m in &mut members {
            m.await_ready().await?;
        }
        Ok(Self { members })
    }

    /// Every member's endpoint, comma-separated (the form `--etcd-endpoints` takes).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdServer::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member that leads now, if one does.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.is_leader().await {
                return Some(i);
            }
        }
        None
    }
}
