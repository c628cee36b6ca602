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
            .arg(format!("ksr-test-{}", self.port));
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
