//! A real Consul server agent on free loopback ports, optionally with ACLs (default deny).

use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::server_binary;
use crate::process::Proc;
use crate::{free_ports, http, wait_until};

/// The master ("bootstrap") token of a Consul started with ACLs.
pub const MASTER_TOKEN: &str = "2f1c4d7e-9a3b-4c5d-8e6f-0a1b2c3d4e5f";

/// How to start Consul.
#[derive(Debug, Clone, Default)]
pub struct ConsulOptions {
    /// ACLs enabled with `default_policy = "deny"` and [`MASTER_TOKEN`] as master token.
    pub acl: bool,
    /// HTTPS on a port of its own (beside plain HTTP, which the readiness check uses),
    /// requiring client certificates that chain to the CA.
    pub tls: Option<crate::tls::ServerTls>,
    /// A member of a [`ConsulCluster`] instead of a single self-elected server.
    pub member: Option<ConsulMember>,
}

/// How an agent joins a cluster.
#[derive(Debug, Clone)]
pub struct ConsulMember {
    pub node: String,
    /// A server (`-bootstrap-expect` servers elect a leader), or a client agent.
    pub server: bool,
    pub bootstrap_expect: usize,
    /// Serf LAN ports of the servers to join.
    pub join: Vec<u16>,
}

/// A running single-server Consul with a data dir; killed on drop.
#[derive(Debug)]
pub struct ConsulServer {
    dir: TempDir,
    http_port: u16,
    dns_port: u16,
    server_port: u16,
    serf_lan_port: u16,
    serf_wan_port: u16,
    https_port: u16,
    options: ConsulOptions,
    proc: Option<Proc>,
}

impl ConsulServer {
    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(crate::process::Proc::pid)
    }

    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    pub async fn start_with(options: ConsulOptions) -> anyhow::Result<Self> {
        let p = free_ports(6)?;
        let mut server = Self::agent(options, &p)?;
        server.spawn().await?;
        Ok(server)
    }

    /// An agent not started yet, on ports `p` (http, dns, server, serf LAN, serf WAN, https).
    fn agent(options: ConsulOptions, p: &[u16]) -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("ksr-consul-").tempdir()?,
            http_port: p[0],
            dns_port: p[1],
            server_port: p[2],
            serf_lan_port: p[3],
            serf_wan_port: p[4],
            https_port: p[5],
            options,
            proc: None,
        })
    }

    /// `http://127.0.0.1:<http port>`.
    /// The server's data directory (its size is the catalog's and KV's on disk).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `https://127.0.0.1:<https port>` (with [`ConsulOptions::tls`]).
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The UDP/TCP port Consul answers DNS on.
    pub fn dns_port(&self) -> u16 {
        self.dns_port
    }

    /// The agent's own node name (entries placed on it are subject to anti-entropy).
    pub fn node_name(&self) -> &str {
        self.options
            .member
            .as_ref()
            .map_or("ksr-test-agent", |m| m.node.as_str())
    }

    /// The master token when ACLs are on.
    pub fn master_token(&self) -> Option<&'static str> {
        self.options.acl.then_some(MASTER_TOKEN)
    }

    /// GET `path` as JSON (Null on 404), with the master token when ACLs are on.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut req = crate::http_client().get(format!("{}{path}", self.url()));
        if let Some(t) = self.master_token() {
            req = req.header("X-Consul-Token", t);
        }
        let resp = req.send().await?;
        if resp.status() == 404 {
            return Ok(serde_json::Value::Null);
        }
        Ok(resp.json().await?)
    }

    /// The KV records under `ksr/` (`kv:<key>`) and the instances of `node`
    /// (`svc:<id>`), for byte-level comparisons; `indexes: false` drops the ModifyIndexes
    /// (to compare two different Consuls).
    pub async fn contents(
        &self,
        node: &str,
        indexes: bool,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let mut out = std::collections::BTreeMap::new();
        if let Some(entries) = self
            .get_json("/v1/kv/ksr/?recurse=true&consistent")
            .await?
            .as_array()
        {
            for e in entries {
                // Values are the records (base64); their ModifyIndex lives outside them.
                out.insert(
                    format!("kv:{}", e["Key"].as_str().unwrap_or_default()),
                    e["Value"].to_string(),
                );
            }
        }
        let services = self
            .get_json(&format!("/v1/catalog/node/{node}?consistent"))
            .await?;
        if let Some(services) = services["Services"].as_object() {
            for (id, s) in services {
                let mut body = serde_json::json!({
                    "Service": s["Service"], "Tags": s["Tags"], "Address": s["Address"],
                    "Port": s["Port"], "Meta": s["Meta"],
                });
                if indexes {
                    body["ModifyIndex"] = s["ModifyIndex"].clone();
                }
                out.insert(format!("svc:{id}"), body.to_string());
            }
        }
        Ok(out)
    }

    /// Sends `signal` to the server process (`STOP` stalls it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.proc.as_ref().map_or(Ok(()), |p| p.signal(signal))
    }

    /// Kills Consul (as a crash would); data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts Consul again on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    fn hcl(&self) -> String {
        let https = match &self.options.tls {
            Some(_) => self.https_port.to_string(),
            None => "-1".into(),
        };
        let mut hcl = format!(
            "performance {{ raft_multiplier = 1 }} \
             disable_update_check = true \
             ports {{ grpc = -1 https = {https} }} \
             dns_config {{ allow_stale = false }} "
        );
        if let Some(tls) = &self.options.tls {
            hcl.push_str(&format!(
                "ca_file = {:?} cert_file = {:?} key_file = {:?} verify_incoming_https = true ",
                tls.ca, tls.cert, tls.key
            ));
        }
        if self.options.acl {
            hcl.push_str(&format!(
                "primary_datacenter = \"dc1\" \
                 acl {{ enabled = true default_policy = \"deny\" down_policy = \"extend-cache\" \
                 tokens {{ master = \"{MASTER_TOKEN}\" agent = \"{MASTER_TOKEN}\" }} }}"
            ));
        }
        hcl
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.launch()?;
        self.await_ready().await
    }

    /// Spawns the agent without waiting (a cluster's servers need each other to elect).
    fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(server_binary("consul")?);
        cmd.arg("agent");
        match &self.options.member {
            None => {
                cmd.arg("-server").arg("-bootstrap");
            }
            Some(m) => {
                if m.server {
                    cmd.arg("-server")
                        .arg("-bootstrap-expect")
                        .arg(m.bootstrap_expect.to_string());
                }
                for port in m.join.iter().filter(|p| **p != self.serf_lan_port) {
                    cmd.arg("-retry-join").arg(format!("127.0.0.1:{port}"));
                }
            }
        }
        cmd.arg("-node")
            .arg(self.node_name())
            .arg("-datacenter")
            .arg("dc1")
            .arg("-data-dir")
            .arg(self.dir.path().join("data"))
            .arg("-bind")
            .arg("127.0.0.1")
            .arg("-advertise")
            .arg("127.0.0.1")
            .arg("-client")
            .arg("127.0.0.1")
            .arg("-http-port")
            .arg(self.http_port.to_string())
            .arg("-dns-port")
            .arg(self.dns_port.to_string())
            .arg("-server-port")
            .arg(self.server_port.to_string())
            .arg("-serf-lan-port")
            .arg(self.serf_lan_port.to_string())
            .arg("-serf-wan-port")
            .arg(self.serf_wan_port.to_string())
            .arg("-disable-host-node-id")
            .arg("-log-level")
            .arg("warn")
            .arg("-hcl")
            .arg(self.hcl());
        self.proc = Some(Proc::spawn(
            "consul",
            cmd,
            &self.dir.path().join("consul.log"),
        )?);
        Ok(())
    }

    /// Waits until a leader is elected and the catalog lists this agent's node.
    async fn await_ready(&mut self) -> anyhow::Result<()> {
        let port = self.http_port;
        let node = self.node_name().to_owned();
        // Ready when a leader is elected and the catalog answers (the agent's own node is in it).
        let token = self
            .master_token()
            .map(|t| format!("?token={t}"))
            .unwrap_or_default();
        let nodes_path = format!("/v1/catalog/nodes{token}");
        let ready = wait_until(
            "consul leader and catalog",
            Duration::from_secs(60),
            || async {
                match http::get(port, "/v1/status/leader").await {
                    Some((200, body)) if body.trim().len() > 2 => {}
                    _ => return None,
                }
                match http::get(port, &nodes_path).await {
                    Some((200, body)) if body.contains(&format!("\"{node}\"")) => Some(()),
                    _ => None,
                }
            },
        )
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

    /// The server RPC port (how `/v1/status/leader` names a server).
    pub fn server_port(&self) -> u16 {
        self.server_port
    }
}

/// Three (or `n`) Consul servers electing a leader among themselves, and one client agent
/// joined to them: the agent is what clients talk to, as on a real node, so any server can
/// be killed under them.
#[derive(Debug)]
pub struct ConsulCluster {
    pub servers: Vec<ConsulServer>,
    pub agent: ConsulServer,
}

impl ConsulCluster {
    /// One self-elected server that is also the agent clients talk to (no other servers).
    pub async fn single() -> anyhow::Result<Self> {
        Ok(Self {
            servers: Vec::new(),
            agent: ConsulServer::start().await?,
        })
    }

    /// Starts `n` servers and the client agent at once, and waits until all are in the
    /// catalog under an elected leader.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let ports = free_ports(6 * (n + 1))?;
        let join: Vec<u16> = (0..n).map(|i| ports[6 * i + 3]).collect();
        let mut agents = Vec::with_capacity(n + 1);
        for i in 0..=n {
            let member = ConsulMember {
                node: if i < n {
                    format!("ksr-server-{i}")
                } else {
                    "ksr-test-agent".into()
                },
                server: i < n,
                bootstrap_expect: n,
                join: join.clone(),
            };
            let mut a = ConsulServer::agent(
                ConsulOptions {
                    member: Some(member),
                    ..ConsulOptions::default()
                },
                &ports[6 * i..6 * i + 6],
            )?;
            a.launch()?;
            agents.push(a);
        }
        for a in &mut agents {
            a.await_ready().await?;
        }
        let agent = agents.pop().ok_or_else(|| anyhow::anyhow!("no agent"))?;
        Ok(Self {
            servers: agents,
            agent,
        })
    }

    /// The server that leads now, if one does (asked through the client agent).
    pub async fn leader(&self) -> Option<usize> {
        let (200, body) = http::get(self.agent.http_port(), "/v1/status/leader").await? else {
            return None;
        };
        let addr: String = serde_json::from_str(&body).ok()?;
        self.servers
            .iter()
            .position(|s| addr.ends_with(&format!(":{}", s.server_port())))
    }
}
