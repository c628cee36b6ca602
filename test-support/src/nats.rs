//! A real nats-server with JetStream on a free loopback port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::server_binary;
use crate::process::Proc;
use crate::{free_ports, http, wait_until};

/// How to start nats-server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Configuration file text (e.g. an `include` of an `authorization` block); the command
    /// line still sets the address, ports and JetStream.
    pub config: Option<String>,
}

/// A running nats-server (JetStream enabled, file storage in a temp dir); killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    dir: TempDir,
    port: u16,
    monitor_port: u16,
    options: NatsOptions,
    proc: Option<Proc>,
}

impl NatsServer {
    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(crate::process::Proc::pid)
    }

    /// Starts a server and waits until JetStream answers its health check.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(NatsOptions::default()).await
    }

    pub async fn start_with(options: NatsOptions) -> anyhow::Result<Self> {
        let ports = free_ports(2)?;
        let mut server = Self {
            dir: tempfile::Builder::new().prefix("ksr-nats-").tempdir()?,
            port: ports[0],
            monitor_port: ports[1],
            options,
            proc: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's name (`-n`), as JetStream names a stream's leader and replicas.
    pub fn name(&self) -> String {
        format!("ksr-test-{}", self.port)
    }

    /// Where JetStream keeps its data (survives [`stop`](Self::stop)).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Sends `signal` to the server process (`STOP` stalls it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.proc.as_ref().map_or(Ok(()), |p| p.signal(signal))
    }

    /// Kills the server (as a crash would); data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(server_binary("nats-server")?);
        cmd.arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-n")
            .arg(self.name());
        if let Some(config) = &self.options.config {
            let path = self.dir.path().join("nats.conf");
            std::fs::write(&path, config)?;
            cmd.arg("-c").arg(path);
        }
        let mut proc = Proc::spawn("nats-server", cmd, &self.dir.path().join("nats.log"))?;
        let monitor = self.monitor_port;
        let ready = wait_until(
            "nats-server JetStream health",
            Duration::from_secs(30),
            || async {
                match http::get(monitor, "/healthz?js-enabled-only=true").await {
                    Some((200, _)) => Some(()),
                    _ => None,
                }
            },
        )
        .await;
        if let Err(e) = ready {
            proc.check_alive()?;
            anyhow::bail!("{e}; log:\n{}", proc.log_tail());
        }
        self.proc = Some(proc);
        Ok(())
    }
}

/// Three (or `n`) nats-servers routed into one cluster (`ksr`), JetStream on each: streams
/// can be replicated, and any node can be killed, stalled and started again.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// One server, not clustered (the stream at R1).
    pub async fn single() -> anyhow::Result<Self> {
        Ok(Self {
            nodes: vec![NatsServer::start().await?],
        })
    }

    /// Starts `n` nodes, each routed to all the others, and waits until JetStream has a meta
    /// leader (a stream can be created).
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let cluster_ports = free_ports(n)?;
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for port in &cluster_ports {
            let config = format!(
                "cluster {{ name: ksr, listen: \"127.0.0.1:{port}\", routes: [{}] }}\n",
                routes.join(", ")
            );
            nodes.push(
                NatsServer::start_with(NatsOptions {
                    config: Some(config),
                })
                .await?,
            );
        }
        let cluster = Self { nodes };
        // Ready when JetStream can place a stream on every node (before that, an R3 stream
        // gets "no suitable peers for placement").
        let url = cluster.nodes[0].url();
        // Generous: a cold CI machine starts several clusters at once on two cores.
        let placed = wait_until(
            "an R3 stream placed on every node",
            Duration::from_secs(180),
            || async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(url.as_str())
                    .await
                    .ok()?;
                let js = async_nats::jetstream::new(client);
                let probe = async_nats::jetstream::stream::Config {
                    name: "KSR_TEST_CLUSTER_READY".into(),
                    subjects: vec!["ksr-test-cluster-ready".into()],
                    num_replicas: n,
                    ..Default::default()
                };
                js.get_or_create_stream(probe).await.ok()?;
                // Placed: that is readiness. The probe's removal is best effort (a slow
                // delete must not make a ready cluster look unready).
                let _ = js.delete_stream("KSR_TEST_CLUSTER_READY").await;
                Some(())
            },
        )
        .await;
        if let Err(e) = placed {
            let logs: Vec<String> = cluster.nodes.iter().map(NatsServer::log).collect();
            anyhow::bail!("{e}; logs:\n{}", logs.join("\n---\n"));
        }
        Ok(cluster)
    }

    /// Every node's URL, comma-separated (the form `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that leads `stream` now (as the cluster reports it, asked through any node
    /// that answers).
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.urls().split(',').collect::<Vec<_>>().as_slice())
            .await?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await?;
        let info = s.info().await?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .ok_or_else(|| anyhow::anyhow!("stream {stream} has no leader now"))?;
        self.nodes
            .iter()
            .position(|n| n.name() == leader)
            .ok_or_else(|| anyhow::anyhow!("leader {leader} is not a node of this cluster"))
    }
}
