//! End to end under faults: 2,000 changes in two clusters while every process and server is
//! killed and restarted in turn; etcd and Consul must end exactly matching the clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::{ConsulServer, EtcdServer, NatsServer, Proc, eventually, workspace_binary};
use serde_json::json;

const ROUTER: &str = "127.0.0.9";

/// A process that can be killed and started again with the same arguments.
struct Restartable {
    name: String,
    binary: String,
    args: Vec<String>,
    log_dir: std::path::PathBuf,
    proc: Option<Proc>,
}

impl Restartable {
    fn new(
        log_dir: &std::path::Path,
        name: &str,
        binary: &str,
        args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut r = Self {
            name: name.into(),
            binary: binary.into(),
            args,
            log_dir: log_dir.to_owned(),
            proc: None,
        };
        r.start()?;
        Ok(r)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(workspace_binary(&self.binary)?);
        cmd.args(&self.args).env("KSR_LOG", "info");
        self.proc = Some(Proc::spawn(
            &self.name,
            cmd,
            &self.log_dir.join(format!("{}.log", self.name)),
        )?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// What the clusters say: host → sorted server URLs.
fn expected(clusters: &BTreeMap<(String, String), String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((_, name), ip) in clusters {
        out.entry(format!("{name}-default.test.service.consul"))
            .or_default()
            .push(format!(r#"{{"URL":"http://{ip}:80"}}"#));
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// What etcd says: host → sorted server URLs (only routes with a frontend).
async fn etcd_routes(etcd: &EtcdServer) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut hosts: BTreeMap<String, String> = BTreeMap::new();
    let mut servers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in etcd.contents("vulcand/").await? {
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            ["vulcand", "frontends", id, "frontend"] => {
                let host = value
                    .split("Host(`")
                    .nth(1)
                    .and_then(|r| r.split('`').next())
                    .unwrap_or_default();
                hosts.insert((*id).to_owned(), host.to_owned());
            }
            ["vulcand", "backends", id, "servers", _] => {
                servers.entry((*id).to_owned()).or_default().push(value)
            }
            _ => {}
        }
    }
    Ok(hosts
        .into_iter()
        .map(|(id, host)| {
            let mut s = servers.remove(&id).unwrap_or_default();
            s.sort();
            (host, s)
        })
        .collect())
}

/// The names registered on our node in Consul.
async fn consul_names(consul: &ConsulServer) -> anyhow::Result<BTreeSet<String>> {
    let (_, body) = ksr_test_support::http::get(consul.http_port(), "/v1/catalog/service/test")
        .await
        .ok_or_else(|| anyhow::anyhow!("consul does not answer"))?;
    let list: serde_json::Value = serde_json::from_str(&body)?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Node"] == "ksr")
        .filter_map(|s| {
            s["ServiceTags"][0]
                .as_str()
                .map(|t| format!("{t}.test.service.consul"))
        })
        .collect())
}

#[tokio::test]
async fn killing_and_restarting_every_process_during_2000_changes_loses_nothing()
-> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let mut etcd = EtcdServer::start().await?;
    let mut consul = ConsulServer::start().await?;
    let apis = [
        ("east", FakeApiServer::start().await?),
        ("west", FakeApiServer::start().await?),
    ];
    let logs = tempfile::tempdir()?;
    let fast = [
        "--max-retry-delay".to_owned(),
        "300ms".to_owned(),
        "--reconcile-interval".to_owned(),
        "2s".to_owned(),
    ];
    let mut watchers = Vec::new();
    for (cluster, api) in &apis {
        watchers.push(Restartable::new(
            logs.path(),
            &format!("watcher-{cluster}"),
            "ksr-watcher",
            vec![
                "--cluster".into(),
                (*cluster).into(),
                "--nats-url".into(),
                nats.url(),
                "--kube-url".into(),
                api.url().into(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
                // Kills here are real downtime with real deletions (up to half of a 40-name
                // cluster in one step): not the mass removal the guard exists for, which has
                // its own tests (watcher/tests/kubernetes.rs).
                "--allow-mass-removal".into(),
            ],
        )?);
    }
    let mut vulcand_args = vec![
        "--nats-url".into(),
        nats.url(),
        "--etcd-endpoints".into(),
        etcd.endpoint(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
    ];
    vulcand_args.extend(fast.iter().cloned());
    let mut vulcand = Restartable::new(
        logs.path(),
        "vulcand",
        "ksr-publisher-vulcand",
        vulcand_args,
    )?;
    let mut consul_args = vec![
        "--nats-url".into(),
        nats.url(),
        "--consul-address".into(),
        consul.url(),
        "--router-address".into(),
        ROUTER.into(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
    ];
    consul_args.extend(fast.iter().cloned());
    let mut consul_pub =
        Restartable::new(logs.path(), "consul", "ksr-publisher-consul", consul_args)?;

    // 2,000 changes over 40 Services per cluster; after every 250, one fault.
    let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    for n in 0..2000u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (cluster, api) = &apis[(rng % 2) as usize];
        let name = format!("s{}", (rng >> 8) % 40);
        let key = ((*cluster).to_owned(), name.clone());
        if (rng >> 16).is_multiple_of(5) {
            api.delete(Resource::Services, "default", &name);
            state.remove(&key);
        } else {
            let ip = format!(
                "10.{}.{}.{}",
                if *cluster == "east" { 96 } else { 97 },
                (n / 250) % 250,
                n % 250 + 1
            );
            api.apply(Resource::Services, json!({"metadata": {"name": name, "namespace": "default", "labels": {"type": "ingress"}},
                                                 "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}));
            state.insert(key, ip);
        }
        if n % 250 == 249 {
            match n / 250 {
                0 => {
                    watchers[0].kill();
                    tokio::task::yield_now().await;
                    watchers[0].start()?;
                }
                1 => {
                    vulcand.kill();
                    vulcand.start()?;
                }
                2 => {
                    consul_pub.kill();
                    consul_pub.start()?;
                }
                3 => nats.restart().await?,
                4 => etcd.restart().await?,
                5 => consul.restart().await?,
                6 => {
                    watchers[1].kill();
                    watchers[1].start()?;
                }
                _ => {
                    vulcand.kill();
                    consul_pub.kill();
                    vulcand.start()?;
                    consul_pub.start()?;
                }
            }
        }
        if n.is_multiple_of(50) {
            tokio::task::yield_now().await;
        }
    }

    let want = expected(&state);
    let want_names: BTreeSet<String> = want.keys().cloned().collect();
    eventually(Duration::from_secs(120), || async {
        let routes = etcd_routes(&etcd).await?;
        anyhow::ensure!(
            routes == want,
            "etcd routes differ:\n got {routes:?}\nwant {want:?}"
        );
        let names = consul_names(&consul).await?;
        anyhow::ensure!(
            names == want_names,
            "consul names differ:\n got {names:?}\nwant {want_names:?}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}
