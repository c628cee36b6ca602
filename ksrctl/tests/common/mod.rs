//! ksrctl's test bench: real nats-server, etcd and Consul, the real publishers (their
//! `app::run`), and the `ksrctl` binary run as an operator runs it.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::{ConsulServer, EtcdServer, NatsServer, Replica};

/// What a `ksrctl` run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `ksrctl` binary with `args` and waits for it.
pub async fn ksrctl(args: &[&str]) -> anyhow::Result<Run> {
    let out = tokio::process::Command::new(ksr_test_support::workspace_binary("ksrctl")?)
        .args(args)
        .env_remove("KSR_LOG")
        .output()
        .await?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Publishes an undecodable message on `ksr.routes.east.default.junk`.
pub async fn publish_junk(js: &jetstream::Context) -> anyhow::Result<u64> {
    ksr_test_support::events::publish_raw(
        js,
        "ksr.routes.east.default.junk",
        "added",
        "east",
        b"junk".to_vec(),
    )
    .await
}

/// A long-running `ksrctl` (`--follow`), read line by line.
pub struct Running {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    pub fn spawn(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(ksr_test_support::workspace_binary("ksrctl")?)
            .args(args)
            .env_remove("KSR_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Self { child, lines })
    }

    /// The next line it prints (30 s at most).
    pub async fn line(&mut self) -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no line within 30 s"))??
            .ok_or_else(|| anyhow::anyhow!("ksrctl ended"))
    }

    /// Sends `signal` (`INT`, `TERM`) and returns the exit code.
    pub async fn stop(mut self, signal: &str) -> anyhow::Result<Option<i32>> {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(status.code())
    }
}

pub struct Stream {
    pub nats: NatsServer,
    pub js: jetstream::Context,
}

impl Stream {
    pub async fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
        Ok(Self { nats, js })
    }
}

/// A vulcand publisher writing into `etcd`.
pub fn vulcand_publisher(
    nats: &NatsServer,
    etcd: &EtcdServer,
) -> Replica<ksr_publisher_vulcand::Error> {
    let admin = ksr_test_support::free_ports(1).expect("a free port")[0];
    let config = ksr_publisher_vulcand::config::Config::try_parse_from([
        "ksr-publisher-vulcand".to_owned(),
        "--nats-url".into(),
        nats.url(),
        "--etcd-endpoints".into(),
        etcd.endpoint(),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
    ])
    .expect("test config parses");
    Replica::spawn(admin, |stop| ksr_publisher_vulcand::app::run(config, stop))
}

/// A Consul publisher registering into `consul` (router 127.0.0.1, environment `test`).
pub fn consul_publisher(
    nats: &NatsServer,
    consul: &ConsulServer,
) -> Replica<ksr_publisher_consul::Error> {
    let admin = ksr_test_support::free_ports(1).expect("a free port")[0];
    let config = ksr_publisher_consul::config::Config::try_parse_from([
        "ksr-publisher-consul".to_owned(),
        "--nats-url".into(),
        nats.url(),
        "--consul-address".into(),
        consul.url(),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
    ])
    .expect("test config parses");
    Replica::spawn(admin, |stop| ksr_publisher_consul::app::run(config, stop))
}

/// Registers `body` in Consul's catalog by hand (as an operator or another tool would).
pub async fn register(consul: &ConsulServer, body: serde_json::Value) -> anyhow::Result<()> {
    let resp = ksr_test_support::http_client()
        .put(format!("{}/v1/catalog/register", consul.url()))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "register: {}", resp.status());
    Ok(())
}
