//! The fault scenario: the whole pipeline as separate processes under a seeded workload and
//! seeded faults, checked at every instant by the [`recorder`](crate::recorder) and at the
//! end, key by key, against the [`model`](crate::model).
//!
//! Two fake apiservers (`east` in cluster-ip mode, `west` in endpoints mode, with readiness
//! flips), one watcher each, three replicas of each publisher, real nats-server, etcd and
//! Consul. The workload spans four namespaces with `host` and `path` annotations, a
//! hostname two namespaces collide on (`x` in `b-c` and `host: x-b` in `c`, in vulcand and in
//! Consul), Services of one namespace sharing a hostname and a path, and Services moving
//! between clusters. Each change bumps the Service's port (its version, which the recorder
//! uses to see that nothing goes back; per Service, so any run length fits in a port) and each new Service gets addresses never used before.
//! Faults are SIGKILLs of a process or server *while it holds work* (after readiness, when its
//! metrics show deliveries in flight or changes pending), overlapping faults, stalls
//! (SIGSTOP longer than the ack wait, then SIGCONT) and random replica kills. Used by
//! `tests/tests/faults.rs` (sized for CI) and `ksr-bench soak` (any size).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ksr_proto::ServiceKey;
use serde_json::{Value, json};

use crate::apiserver::{FakeApiServer, Resource};
use crate::model::{Ages, Service, Settings};
use crate::recorder::{Recorder, Registry};
use crate::{ConsulCluster, EtcdCluster, NatsCluster, Proc, eventually, free_ports, http};

/// The router address the Consul publishers register.
pub const ROUTER: &str = "127.0.0.9";
/// The publishers' ack wait: stalls last longer than this.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How long processes may take to be ready again after a fault.
const READY: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub changes: usize,
    pub faults: usize,
    /// Reconcile every 2 s. Without it reconciliation runs only at each publisher's start-up,
    /// and the run must show it never repaired anything: the incremental path alone is exact.
    pub reconcile: bool,
    /// Where the ksr binaries are.
    pub bin_dir: PathBuf,
    /// Where process logs go.
    pub log_dir: PathBuf,
    /// Three-node NATS (the stream at R3), etcd and Consul clusters (Consul behind a client
    /// agent), and the faults strike their leaders: the stream leader, another NATS node, a
    /// NATS node stalled past the ack wait, the etcd leader, the Consul leader. Otherwise one
    /// server of each and the single-server faults.
    pub clustered: bool,
}

/// What a run did and checked.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: usize,
    /// Each fault, in order, and whether it struck with work in flight.
    pub faults: Vec<String>,
    pub struck_busy: usize,
    pub etcd_revisions_checked: u64,
    pub consul_indexes_checked: u64,
    /// etcd revisions that changed vulcand keys without a record (reconciliation's repairs).
    pub unrecorded_writes: u64,
    /// Repairs the publishers counted (scraped before every kill and at the end).
    pub repairs: f64,
    pub routed_services: usize,
    pub vulcand_keys: usize,
    pub consul_entries: usize,
    pub dns_names_checked: usize,
    /// After each kill of the stream leader: how long until a change made after the kill was
    /// in etcd (the pipeline resumed).
    pub resumed_after_leader_kill: Vec<Duration>,
    /// Messages the publishers received again (every life of every replica).
    pub redeliveries: f64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} changes, {} faults ({} struck with work in flight) in {:.1} s",
            self.changes,
            self.faults.len(),
            self.struck_busy,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "invariants checked at {} etcd revisions and {} Consul indexes: none broken",
            self.etcd_revisions_checked, self.consul_indexes_checked
        )?;
        writeln!(
            f,
            "end state equals the model: {} routed Services, {} vulcand keys, {} Consul entries, fences and claim records; {} DNS names answered as modelled",
            self.routed_services, self.vulcand_keys, self.consul_entries, self.dns_names_checked
        )?;
        write!(
            f,
            "repairs: {} counted by the publishers, {} etcd revisions wrote vulcand keys without records",
            self.repairs, self.unrecorded_writes
        )?;
        for d in &self.resumed_after_leader_kill {
            write!(
                f,
                "\nstream leader killed: a change made after the kill was in etcd {} ms later",
                d.as_millis()
            )?;
        }
        write!(f, "\nredeliveries: {}", self.redeliveries)
    }
}

/// A process of ours that can be killed, stalled and started again with the same arguments.
struct Process {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    admin_port: u16,
    proc: Option<Proc>,
    /// Repairs and redeliveries counted by earlier lives of the process.
    repairs: f64,
    redeliveries: f64,
}

impl Process {
    fn new(
        bin_dir: &Path,
        log_dir: &Path,
        name: &str,
        binary: &str,
        mut args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let admin_port = free_ports(1)?[0];
        args.extend(["--admin-addr".into(), format!("127.0.0.1:{admin_port}")]);
        let mut p = Self {
            name: name.into(),
            binary: bin_dir.join(binary),
            args,
            log: log_dir.join(format!("{name}.log")),
            admin_port,
            proc: None,
            repairs: 0.0,
            redeliveries: 0.0,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args).env("KSR_LOG", "info");
        self.proc = Some(Proc::spawn(&self.name, cmd, &self.log)?);
        Ok(())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = http::get(self.admin_port, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        crate::replica::sample(&text, name)
    }

    async fn ready(&self) -> bool {
        matches!(http::get(self.admin_port, "/readyz").await, Some((200, _)))
    }

    /// Counts this life's repairs and redeliveries (a publisher of `kind`), then SIGKILLs it.
    async fn kill(&mut self, kind: Option<Kind>) {
        if let Some(kind) = kind {
            self.repairs += self.metric(kind.repairs()).await;
            self.redeliveries += self.metric(kind.redeliveries()).await;
        }
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.proc.as_ref().map_or(Ok(()), |p| p.signal(signal))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.proc.as_mut().map_or(Ok(()), Proc::check_alive)
    }
}

/// The publisher kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vulcand,
    Consul,
}

impl Kind {
    fn in_flight(self) -> &'static str {
        match self {
            Kind::Vulcand => "ksr_vulcand_deliveries_in_flight",
            Kind::Consul => "ksr_consul_deliveries_in_flight",
        }
    }

    fn repairs(self) -> &'static str {
        match self {
            Kind::Vulcand => "ksr_vulcand_reconcile_repairs_total",
            Kind::Consul => "ksr_consul_reconcile_repairs_total",
        }
    }

    fn redeliveries(self) -> &'static str {
        match self {
            Kind::Vulcand => "ksr_vulcand_redeliveries_total",
            Kind::Consul => "ksr_consul_redeliveries_total",
        }
    }
}

/// The faults, each struck once per cycle.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWatcher(usize),
    KillPublisher(Kind),
    KillNats,
    KillEtcd,
    KillConsul,
    PublisherAndEtcd,
    NatsAndWatcher,
    StallEtcd,
    StallPublisher(Kind),
    KillRandomReplicas,
    // Clustered servers.
    KillStreamLeader,
    KillNatsFollower,
    StallNatsNode,
    KillEtcdLeader,
    KillConsulLeader,
}

const CYCLE: [Fault; 12] = [
    Fault::KillWatcher(0),
    Fault::KillPublisher(Kind::Vulcand),
    Fault::KillNats,
    Fault::KillEtcd,
    Fault::KillPublisher(Kind::Consul),
    Fault::KillConsul,
    Fault::PublisherAndEtcd,
    Fault::NatsAndWatcher,
    Fault::StallEtcd,
    Fault::StallPublisher(Kind::Vulcand),
    Fault::KillWatcher(1),
    Fault::KillRandomReplicas,
];

/// The faults on clustered servers, in this order (not shuffled): the stream leader first,
/// then another node, then a stall; the etcd and Consul leaders between.
const CLUSTER_CYCLE: [Fault; 6] = [
    Fault::KillStreamLeader,
    Fault::KillEtcdLeader,
    Fault::KillNatsFollower,
    Fault::KillConsulLeader,
    Fault::StallNatsNode,
    Fault::KillStreamLeader,
];

/// A small xorshift generator: runs are reproducible from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m.max(1)
    }
}

/// A Service slot: where it lives and which annotations it may take.
struct Slot {
    namespace: &'static str,
    name: String,
    hosts: Vec<Option<&'static str>>,
    paths: Vec<Option<&'static str>>,
}

fn slots() -> Vec<Slot> {
    let mut out = Vec::new();
    for ns in ["shop", "b-c", "c", "team-a"] {
        for i in 0..6 {
            out.push(Slot {
                namespace: ns,
                name: format!("s{i}"),
                hosts: if ns == "shop" && i == 0 {
                    vec![None, Some("front")]
                } else {
                    vec![None]
                },
                paths: vec![None, None, Some("/v[0-9]+/.*")],
            });
        }
    }
    let slot = |namespace, name: &str, hosts, paths| Slot {
        namespace,
        name: name.into(),
        hosts,
        paths,
    };
    out.extend([
        // Services of one namespace on one hostname: different paths, and a contested one.
        slot("shop", "front1", vec![Some("front")], vec![None]),
        slot("shop", "front2", vec![Some("front")], vec![Some("/api/.*")]),
        slot(
            "shop",
            "front3",
            vec![Some("front")],
            vec![None, Some("/api/.*")],
        ),
        // `x` in `b-c` and `host: x-b` in `c` are both `x-b-c`: namespaces collide.
        slot("b-c", "x", vec![None], vec![None, Some("/admin.*")]),
        slot("c", "y", vec![Some("x-b")], vec![None, Some("/admin.*")]),
        // `host: s0` in team-a shares s0-team-a with the Service s0 there.
        slot("team-a", "z", vec![None, Some("s0")], vec![None]),
        // Last: the Service [`Workload::probe`] changes to see the pipeline resume.
        slot("shop", "probe", vec![None], vec![Some("/probe/.*")]),
    ]);
    out
}

/// One Service as the test applied it.
#[derive(Debug, Clone)]
struct Spec {
    host: Option<&'static str>,
    path: Option<&'static str>,
    cluster_ip: IpAddr,
    endpoints: Vec<(IpAddr, bool)>,
    version: u16,
}

/// The clusters and what the test made of them.
struct Workload {
    rng: Rng,
    slots: Vec<Slot>,
    apis: Vec<(&'static str, FakeApiServer)>,
    specs: BTreeMap<ServiceKey, Spec>,
    registry: Registry,
    next_ip: u32,
    versions: std::collections::HashMap<ServiceKey, u16>,
    changes: usize,
}

impl Workload {
    fn fresh_ip(&mut self) -> IpAddr {
        self.next_ip += 1;
        let n = self.next_ip;
        IpAddr::from([10, 100 + (n >> 16) as u8, (n >> 8) as u8, n as u8])
    }

    fn register(&self, ip: IpAddr, key: &ServiceKey) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip, key.clone());
    }

    /// Changes the `probe` Service of `shop` in `east` (cluster-ip mode) now; returns the
    /// address its vulcand server will have.
    fn probe(&mut self) -> std::net::SocketAddr {
        let slot = self.slots.len() - 1;
        let key = ServiceKey::new(self.apis[0].0, "shop", "probe");
        self.changes += 1;
        self.upsert(0, slot, key.clone());
        let spec = &self.specs[&key];
        std::net::SocketAddr::new(spec.cluster_ip, spec.version)
    }

    /// Applies one random change.
    fn step(&mut self) {
        self.changes += 1;
        // (Not the last slot: the probe changes only when the test says.)
        let slot = self.rng.next(self.slots.len() as u64 - 1) as usize;
        let c = self.rng.next(2) as usize;
        let (ns, name) = (self.slots[slot].namespace, self.slots[slot].name.clone());
        let key = ServiceKey::new(self.apis[c].0, ns, &name);
        let exists = self.specs.contains_key(&key);
        let roll = self.rng.next(100);
        if exists && roll < 15 {
            self.delete(c, &key);
            return;
        }
        if exists && roll < 20 {
            // Moves to the other cluster.
            self.delete(c, &key);
            let other = ServiceKey::new(self.apis[1 - c].0, ns, &name);
            if !self.specs.contains_key(&other) {
                self.upsert(1 - c, slot, other);
            }
            return;
        }
        self.upsert(c, slot, key);
    }

    fn delete(&mut self, c: usize, key: &ServiceKey) {
        self.specs.remove(key);
        let api = &self.apis[c].1;
        api.delete(Resource::Services, &key.namespace, &key.name);
        api.delete(
            Resource::EndpointSlices,
            &key.namespace,
            &format!("{}-1", key.name),
        );
    }

    fn upsert(&mut self, c: usize, slot: usize, key: ServiceKey) {
        // Each Service's version (its port) only grows, across deletions too.
        let v = self.versions.entry(key.clone()).or_insert(1023);
        *v = v
            .checked_add(1)
            .expect("fewer than 64,000 changes of one Service");
        let version = *v;
        let s = &self.slots[slot];
        let host = s.hosts[self.rng.next(s.hosts.len() as u64) as usize];
        let path = s.paths[self.rng.next(s.paths.len() as u64) as usize];
        let spec = match self.specs.get(&key).cloned() {
            Some(mut spec) => {
                spec.host = host;
                spec.path = path;
                spec.version = version;
                for e in &mut spec.endpoints {
                    if self.rng.next(4) == 0 {
                        e.1 = !e.1;
                    }
                }
                spec
            }
            None => {
                let cluster_ip = self.fresh_ip();
                let endpoints: Vec<(IpAddr, bool)> = (0..1 + self.rng.next(2))
                    .map(|_| (self.fresh_ip(), self.rng.next(5) != 0))
                    .collect();
                self.register(cluster_ip, &key);
                for (ip, _) in &endpoints {
                    self.register(*ip, &key);
                }
                Spec {
                    host,
                    path,
                    cluster_ip,
                    endpoints,
                    version,
                }
            }
        };
        let mut annotations = serde_json::Map::new();
        if let Some(h) = spec.host {
            annotations.insert("host".into(), json!(h));
        }
        if let Some(p) = spec.path {
            annotations.insert("path".into(), json!(p));
        }
        let api = &self.apis[c].1;
        api.apply(
            Resource::Services,
            json!({"metadata": {"name": key.name, "namespace": key.namespace, "labels": {"type": "ingress"},
                                "annotations": Value::Object(annotations)},
                   "spec": {"clusterIP": spec.cluster_ip.to_string(),
                            "ports": [{"name": "http", "port": version, "targetPort": version}]}}),
        );
        if self.apis[c].0 == "west" {
            let eps: Vec<Value> = spec
                .endpoints
                .iter()
                .map(|(ip, ready)| json!({"addresses": [ip.to_string()], "conditions": {"ready": ready}}))
                .collect();
            api.apply(
                Resource::EndpointSlices,
                json!({"metadata": {"name": format!("{}-1", key.name), "namespace": key.namespace,
                                    "labels": {"kubernetes.io/service-name": key.name}},
                       "addressType": "IPv4", "endpoints": eps,
                       "ports": [{"name": "http", "port": version}]}),
            );
        }
        self.specs.insert(key, spec);
    }

    /// The model's input: every Service as the contract normalizes it (hostname
    /// `<host|name>-<namespace>.test.service.consul`, path `/.*` by default, the clusterIP
    /// or the ready endpoints at the Service's version port), with ages from the stream.
    /// None while the stream does not end with what the test applied.
    fn modelled(&self, ages: &Ages) -> Option<Vec<Service>> {
        let mut out = Vec::new();
        for (key, spec) in &self.specs {
            let label = format!("{}-{}", spec.host.unwrap_or(&key.name), key.namespace);
            let hostname = format!("{label}.test.service.consul");
            let path = spec.path.unwrap_or("/.*").to_owned();
            let (host_since, route_since) = ages.since(key, &hostname, &path)?;
            let servers = if key.cluster == "west" {
                spec.endpoints
                    .iter()
                    .filter(|(_, ready)| *ready)
                    .map(|(ip, _)| std::net::SocketAddr::new(*ip, spec.version))
                    .collect()
            } else {
                vec![std::net::SocketAddr::new(spec.cluster_ip, spec.version)]
            };
            out.push(Service {
                key: key.clone(),
                hostname,
                consul: Some((label, "test".into())),
                path,
                servers,
                // The scenario's Services carry no scheme annotation (ports.rs covers them).
                scheme: "http",
                skip_verify: false,
                consul_tags: Vec::new(),
                consul_meta: Default::default(),
                host_since,
                route_since,
            });
        }
        Some(out)
    }
}

/// Everything running.
struct System {
    nats: NatsCluster,
    etcd: EtcdCluster,
    consul: ConsulCluster,
    watchers: Vec<Process>,
    vulcand: Vec<Process>,
    consuls: Vec<Process>,
}

impl System {
    fn publishers(&mut self, kind: Kind) -> &mut Vec<Process> {
        match kind {
            Kind::Vulcand => &mut self.vulcand,
            Kind::Consul => &mut self.consuls,
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self
            .watchers
            .iter_mut()
            .chain(&mut self.vulcand)
            .chain(&mut self.consuls)
        {
            p.check_alive()?;
        }
        Ok(())
    }
}

/// Changes per burst, and how often a burst comes (~330 changes/s).
const BURST: usize = 20;
const BURST_EVERY: Duration = Duration::from_millis(60);

/// Applies changes in bursts (the load) while polling `done` every millisecond, until it
/// says so (true) or `timeout` passes (false).
async fn load_until<F, Fut>(w: &mut Workload, timeout: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut next_burst = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    loop {
        if done().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if now >= next_burst {
            for _ in 0..BURST {
                w.step();
            }
            next_burst = now + BURST_EVERY;
        }
        pace.tick().await;
    }
}

/// Load for `d`.
async fn load_for(w: &mut Workload, d: Duration) {
    load_until(w, d, || async { false }).await;
}

/// The member `find` says leads its cluster (waiting while one is being elected).
async fn leader<F, Fut>(cluster: &str, find: F) -> anyhow::Result<usize>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<usize>>,
{
    eventually(READY, || async {
        find()
            .await
            .ok_or_else(|| anyhow::anyhow!("the {cluster} cluster has no leader"))
    })
    .await
}

/// The NATS node leading the route stream (waiting while it is being elected).
async fn stream_leader(sys: &System) -> anyhow::Result<usize> {
    eventually(READY, || {
        sys.nats.stream_leader(ksr_proto::subject::DEFAULT_STREAM)
    })
    .await
}

/// Whether some member of `endpoints` holds a vulcand server `{"URL":"http://<addr>"}`.
async fn in_etcd(endpoints: &str, addr: &std::net::SocketAddr) -> bool {
    let want = format!("http://{addr}");
    for endpoint in endpoints.split(',') {
        let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else {
            continue;
        };
        let options = etcd_client::GetOptions::new().with_prefix();
        if let Ok(resp) = client.get("vulcand/backends/", Some(options)).await {
            return resp
                .kvs()
                .iter()
                .any(|kv| String::from_utf8_lossy(kv.value()).contains(&want));
        }
    }
    false
}

/// Whether any of `procs` reports `metric` above zero.
async fn busy(procs: &[&Process], metric: &str) -> bool {
    for p in procs {
        if p.metric(metric).await > 0.0 {
            return true;
        }
    }
    false
}

async fn all_ready(procs: &[&Process]) -> bool {
    for p in procs {
        if !p.ready().await {
            return false;
        }
    }
    true
}

/// Runs the scenario; fails with the recorder's findings or the model's differences.
pub async fn run(s: &Scenario) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut out = Outcome::default();
    let mut rng = Rng::new(s.seed);
    let (nats, etcd, consul) = if s.clustered {
        let (n, e, c) = tokio::join!(
            NatsCluster::start(3),
            EtcdCluster::start(3),
            ConsulCluster::start(3)
        );
        (n?, e?, c?)
    } else {
        (
            NatsCluster::single().await?,
            EtcdCluster::single().await?,
            ConsulCluster::single().await?,
        )
    };
    let registry = Registry::default();
    let recorder = Recorder::start(
        etcd.endpoints(),
        Some((consul.agent.http_port(), ROUTER.into(), 80)),
        registry.clone(),
    );
    let apis = vec![
        ("east", FakeApiServer::start().await?),
        ("west", FakeApiServer::start().await?),
    ];
    let interval = if s.reconcile { "2s" } else { "0s" };
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--nats-url",
            &nats.urls(),
            "--max-retry-delay",
            "300ms",
            "--ack-wait",
            "2s",
            "--reconcile-interval",
            interval,
            "--batch-size",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut watchers = Vec::new();
    for (cluster, api) in &apis {
        let mode = if *cluster == "west" {
            "endpoints"
        } else {
            "cluster-ip"
        };
        watchers.push(Process::new(
            &s.bin_dir,
            &s.log_dir,
            &format!("watcher-{cluster}"),
            "ksr-watcher",
            vec![
                "--cluster".into(),
                (*cluster).into(),
                "--nats-url".into(),
                nats.urls(),
                "--stream-replicas".into(),
                nats.nodes.len().to_string(),
                "--kube-url".into(),
                api.url().into(),
                "--address-mode".into(),
                mode.into(),
                // Kills here are real downtime with real deletions: not the mass removal the
                // guard exists for (it has its own tests).
                "--allow-mass-removal".into(),
            ],
        )?);
    }
    let mut vulcand = Vec::new();
    let mut consuls = Vec::new();
    for i in 0..3 {
        vulcand.push(Process::new(
            &s.bin_dir,
            &s.log_dir,
            &format!("vulcand-{i}"),
            "ksr-publisher-vulcand",
            common(&["--etcd-endpoints", &etcd.endpoints()]),
        )?);
        consuls.push(Process::new(
            &s.bin_dir,
            &s.log_dir,
            &format!("consul-{i}"),
            "ksr-publisher-consul",
            common(&[
                "--consul-address",
                &consul.agent.url(),
                "--router-address",
                ROUTER,
            ]),
        )?);
    }
    let mut sys = System {
        nats,
        etcd,
        consul,
        watchers,
        vulcand,
        consuls,
    };
    let mut w = Workload {
        rng: Rng::new(s.seed ^ 0x5bd1_e995),
        slots: slots(),
        apis,
        specs: BTreeMap::new(),
        registry,
        next_ip: 0,
        versions: Default::default(),
        changes: 0,
    };
    // Start-up: every process ready before the first fault.
    let procs = sys.all();
    anyhow::ensure!(
        load_until(&mut w, READY, || all_ready(&procs)).await,
        "the processes did not become ready"
    );
    let per_fault = (s.changes / (s.faults + 1)).max(1);
    let mut cycle: Vec<Fault> = if s.clustered {
        CLUSTER_CYCLE.to_vec()
    } else {
        CYCLE.to_vec()
    };
    for i in (1..cycle.len()).rev().filter(|_| !s.clustered) {
        cycle.swap(i, rng.next(i as u64 + 1) as usize);
    }
    for n in 0..s.faults {
        // Steady load between faults.
        let target = w.changes + per_fault;
        while w.changes < target {
            load_for(&mut w, BURST_EVERY).await;
        }
        let fault = cycle[n % cycle.len()];
        let (what, busy_now) = strike(&mut sys, &mut w, &mut rng, fault, &mut out).await?;
        out.struck_busy += usize::from(busy_now);
        out.faults.push(format!(
            "{what}{}",
            if busy_now {
                " (work in flight)"
            } else {
                " (idle)"
            }
        ));
        sys.check_alive()?;
    }
    while w.changes < s.changes {
        load_for(&mut w, BURST_EVERY).await;
    }
    out.changes = w.changes;

    // The end state, as the model says.
    let settings = Settings {
        router_address: ROUTER.into(),
        ..Settings::default()
    };
    let js = async_nats::jetstream::new(async_nats::connect(sys.nats.nodes[0].url()).await?);
    let (routed, etcd_keys, consul_entries) = eventually(Duration::from_secs(120), || async {
        let events = crate::events::stream_events(&js).await?;
        let ages = Ages::from_stream(&events);
        let services = w.modelled(&ages).ok_or_else(|| {
            anyhow::anyhow!("the stream does not end with the clusters' state yet")
        })?;
        let etcd_all = sys.etcd.members[0].contents("").await?;
        let consul_all = sys.consul.agent.contents("ksr", false).await?;
        let diff = crate::verify::vulcand(&settings, &services, &ages, &etcd_all)
            + &crate::verify::consul(&settings, &["test"], &services, &ages, &consul_all);
        anyhow::ensure!(diff.is_empty(), "{diff}");
        Ok((
            services.len(),
            etcd_all
                .keys()
                .filter(|k| k.starts_with("vulcand/"))
                .count(),
            consul_all.keys().filter(|k| k.starts_with("svc:")).count(),
        ))
    })
    .await?;
    out.routed_services = routed;
    out.vulcand_keys = etcd_keys;
    out.consul_entries = consul_entries;

    // What DNS answers: every modelled name resolves to the router.
    let mut names: Vec<String> = w
        .specs
        .iter()
        .map(|(k, s)| {
            format!(
                "{}-{}.test.service.consul",
                s.host.unwrap_or(&k.name),
                k.namespace
            )
        })
        .collect();
    names.sort();
    names.dedup();
    for name in &names {
        eventually(Duration::from_secs(10), || async {
            let a = crate::dns::query_a(sys.consul.agent.dns_port(), name).await?;
            anyhow::ensure!(
                a.addrs == vec![ROUTER.parse::<std::net::Ipv4Addr>()?],
                "{name}: {a:?}"
            );
            Ok(())
        })
        .await?;
    }
    let gone = "never-routed-shop.test.service.consul";
    let a = crate::dns::query_a(sys.consul.agent.dns_port(), gone).await?;
    anyhow::ensure!(a.rcode == crate::dns::NXDOMAIN, "{gone}: {a:?}");
    out.dns_names_checked = names.len() + 1;
    // Every watcher sees every copy of the stream current again.
    let copies = sys.nats.nodes.len() as f64;
    for watcher in &sys.watchers {
        eventually(Duration::from_secs(60), || async {
            let current = watcher.metric("ksr_watcher_stream_replicas_current").await;
            let desired = watcher.metric("ksr_watcher_stream_replicas_desired").await;
            anyhow::ensure!(
                (current, desired) == (copies, copies),
                "{}: {current} of {desired} stream copies current",
                watcher.name
            );
            Ok(())
        })
        .await?;
    }

    // Repairs and redeliveries counted by every life of every publisher.
    for kind in [Kind::Vulcand, Kind::Consul] {
        for p in sys.publishers(kind).iter() {
            out.repairs += p.repairs + p.metric(kind.repairs()).await;
            out.redeliveries += p.redeliveries + p.metric(kind.redeliveries()).await;
        }
    }
    let mut client = sys.etcd.members[0].client().await?;
    let rev = client
        .get("ksr-recorder-end", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let report = recorder.finish(u64::try_from(rev).unwrap_or(0)).await;
    out.etcd_revisions_checked = report.revisions;
    out.consul_indexes_checked = report.indexes;
    out.unrecorded_writes = report.unrecorded_writes;
    anyhow::ensure!(
        report.findings.is_empty(),
        "invariants broken during the run:\n{}",
        report.findings.join("\n")
    );
    if !s.reconcile {
        // The incremental path alone was exact: nothing was ever repaired, and a fresh
        // reconciliation finds nothing to repair either.
        anyhow::ensure!(
            out.repairs == 0.0 && out.unrecorded_writes == 0,
            "reconciliation repaired what the incremental path left wrong: {} repairs counted, {} revisions wrote vulcand keys without records",
            out.repairs,
            out.unrecorded_writes
        );
        for kind in [Kind::Vulcand, Kind::Consul] {
            let p = &sys.publishers(kind)[0];
            let runs = match kind {
                Kind::Vulcand => "ksr_vulcand_reconcile_runs_total",
                Kind::Consul => "ksr_consul_reconcile_runs_total",
            };
            let mut fresh = Process::new(
                &s.bin_dir,
                &s.log_dir,
                &format!("{}-final", p.name),
                p.binary
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default(),
                p.args[..p.args.len() - 2].to_vec(),
            )?;
            eventually(Duration::from_secs(60), || async {
                anyhow::ensure!(fresh.metric(runs).await >= 1.0, "no reconciliation yet");
                Ok(())
            })
            .await?;
            let repairs = fresh.metric(kind.repairs()).await;
            anyhow::ensure!(
                repairs == 0.0,
                "a fresh reconciliation repaired {repairs} entries"
            );
            fresh.kill(None).await;
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// A server: the node or member of its cluster (0 when single).
#[derive(Debug, Clone, Copy)]
enum Server {
    Nats(usize),
    Etcd(usize),
    Consul(usize),
}

impl System {
    fn all(&self) -> Vec<&Process> {
        self.watchers
            .iter()
            .chain(&self.vulcand)
            .chain(&self.consuls)
            .collect()
    }

    /// The processes whose metric shows that `fault` strikes with work in flight.
    fn watched(&self, fault: Fault, replica: usize) -> (Vec<&Process>, &'static str) {
        const PENDING: &str = "ksr_watcher_pending_services";
        match fault {
            Fault::KillWatcher(c) => (vec![&self.watchers[c]], PENDING),
            Fault::NatsAndWatcher => (vec![&self.watchers[replica % 2]], PENDING),
            Fault::KillPublisher(kind) | Fault::StallPublisher(kind) => {
                let p = match kind {
                    Kind::Vulcand => &self.vulcand[replica],
                    Kind::Consul => &self.consuls[replica],
                };
                (vec![p], kind.in_flight())
            }
            Fault::PublisherAndEtcd => (vec![&self.vulcand[replica]], Kind::Vulcand.in_flight()),
            Fault::KillConsul => (self.consuls.iter().collect(), Kind::Consul.in_flight()),
            Fault::KillNats
            | Fault::KillEtcd
            | Fault::StallEtcd
            | Fault::KillRandomReplicas
            | Fault::KillStreamLeader
            | Fault::KillNatsFollower
            | Fault::StallNatsNode
            | Fault::KillEtcdLeader => (self.vulcand.iter().collect(), Kind::Vulcand.in_flight()),
            Fault::KillConsulLeader => (self.consuls.iter().collect(), Kind::Consul.in_flight()),
        }
    }

    fn stop(&mut self, server: Server) {
        match server {
            Server::Nats(i) => self.nats.nodes[i].stop(),
            Server::Etcd(i) => self.etcd.members[i].stop(),
            Server::Consul(i) => self.consul_server(i).stop(),
        }
    }

    async fn restart(&mut self, server: Server) -> anyhow::Result<()> {
        match server {
            Server::Nats(i) => self.nats.nodes[i].restart().await,
            Server::Etcd(i) => self.etcd.members[i].restart().await,
            Server::Consul(i) => self.consul_server(i).restart().await,
        }
    }

    /// Consul server `i`: the single agent when not clustered.
    fn consul_server(&mut self, i: usize) -> &mut crate::ConsulServer {
        if self.consul.servers.is_empty() {
            &mut self.consul.agent
        } else {
            &mut self.consul.servers[i]
        }
    }

    /// SIGKILLs `server` and the processes in `procs` at once, keeps the load on for a
    /// moment, and starts them all again.
    async fn crash(
        &mut self,
        w: &mut Workload,
        server: Option<Server>,
        procs: &[(ProcGroup, usize)],
    ) -> anyhow::Result<()> {
        for (group, i) in procs {
            let (p, repairs) = self.process(*group, *i);
            p.kill(repairs).await;
        }
        if let Some(server) = server {
            self.stop(server);
        }
        load_for(w, Duration::from_millis(300)).await;
        if let Some(server) = server {
            self.restart(server).await?;
        }
        for (group, i) in procs {
            self.process(*group, *i).0.start()?;
        }
        Ok(())
    }

    fn process(&mut self, group: ProcGroup, i: usize) -> (&mut Process, Option<Kind>) {
        match group {
            ProcGroup::Watcher => (&mut self.watchers[i], None),
            ProcGroup::Publisher(kind) => (&mut self.publishers(kind)[i], Some(kind)),
        }
    }
}

/// Which of our processes.
#[derive(Debug, Clone, Copy)]
enum ProcGroup {
    Watcher,
    Publisher(Kind),
}

/// Strikes one fault under load; returns its description and whether it struck while the
/// processes concerned had work in flight.
async fn strike(
    sys: &mut System,
    w: &mut Workload,
    rng: &mut Rng,
    fault: Fault,
    out: &mut Outcome,
) -> anyhow::Result<(String, bool)> {
    // Wait (under load, up to 5 s) until the processes concerned hold work.
    const PATIENCE: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let replica = rng.next(3) as usize;
    let (watched, metric) = sys.watched(fault, replica);
    let busy_now = load_until(w, PATIENCE, || async { busy(&watched, metric).await }).await;
    let stall = ACK_WAIT + Duration::from_secs(1);
    let cluster = |c: usize| ["east", "west"][c];
    let what = match fault {
        Fault::KillWatcher(c) => {
            sys.crash(w, None, &[(ProcGroup::Watcher, c)]).await?;
            format!("SIGKILL watcher-{}", cluster(c))
        }
        Fault::KillPublisher(kind) => {
            sys.crash(w, None, &[(ProcGroup::Publisher(kind), replica)])
                .await?;
            format!("SIGKILL {}", sys.publishers(kind)[replica].name)
        }
        Fault::KillNats => {
            sys.crash(w, Some(Server::Nats(0)), &[]).await?;
            "SIGKILL nats-server".into()
        }
        Fault::KillEtcd => {
            sys.crash(w, Some(Server::Etcd(0)), &[]).await?;
            "SIGKILL etcd".into()
        }
        Fault::KillConsul => {
            sys.crash(w, Some(Server::Consul(0)), &[]).await?;
            "SIGKILL Consul".into()
        }
        Fault::PublisherAndEtcd => {
            let p = (ProcGroup::Publisher(Kind::Vulcand), replica);
            sys.crash(w, Some(Server::Etcd(0)), &[p]).await?;
            format!("SIGKILL vulcand-{replica} and etcd at once")
        }
        Fault::NatsAndWatcher => {
            let c = replica % 2;
            sys.crash(w, Some(Server::Nats(0)), &[(ProcGroup::Watcher, c)])
                .await?;
            format!("SIGKILL nats-server and watcher-{} at once", cluster(c))
        }
        Fault::StallEtcd => {
            sys.etcd.members[0].signal("STOP")?;
            load_for(w, stall).await;
            sys.etcd.members[0].signal("CONT")?;
            "SIGSTOP etcd for longer than the ack wait, then SIGCONT".into()
        }
        Fault::StallPublisher(kind) => {
            let p = &sys.publishers(kind)[replica];
            p.signal("STOP")?;
            load_for(w, stall).await;
            p.signal("CONT")?;
            format!(
                "SIGSTOP {} for longer than the ack wait, then SIGCONT",
                p.name
            )
        }
        Fault::KillRandomReplicas => {
            let mut victims = Vec::new();
            for _ in 0..2 {
                let kind = if rng.next(2) == 0 {
                    Kind::Vulcand
                } else {
                    Kind::Consul
                };
                victims.push((ProcGroup::Publisher(kind), rng.next(3) as usize));
            }
            sys.crash(w, None, &victims).await?;
            let names: Vec<String> = victims
                .iter()
                .map(|(g, i)| sys.process(*g, *i).0.name.clone())
                .collect();
            format!("SIGKILL {} at random", names.join(" and "))
        }
        Fault::KillStreamLeader => {
            let leader = stream_leader(sys).await?;
            sys.stop(Server::Nats(leader));
            let killed = Instant::now();
            // The pipeline resumed when a change made after the kill is in etcd.
            let probe = w.probe();
            let etcd = sys.etcd.endpoints();
            let resumed = load_until(w, READY, || in_etcd(&etcd, &probe)).await;
            anyhow::ensure!(
                resumed,
                "nothing applied after the stream leader was killed"
            );
            out.resumed_after_leader_kill.push(killed.elapsed());
            sys.restart(Server::Nats(leader)).await?;
            format!("SIGKILL the stream leader (nats node {leader})")
        }
        Fault::KillNatsFollower => {
            let leader = stream_leader(sys).await?;
            let node = (leader + 1 + rng.next(2) as usize) % sys.nats.nodes.len();
            sys.crash(w, Some(Server::Nats(node)), &[]).await?;
            format!("SIGKILL nats node {node}, not the stream leader")
        }
        Fault::StallNatsNode => {
            let node = rng.next(sys.nats.nodes.len() as u64) as usize;
            sys.nats.nodes[node].signal("STOP")?;
            load_for(w, stall).await;
            sys.nats.nodes[node].signal("CONT")?;
            format!("SIGSTOP nats node {node} for longer than the ack wait, then SIGCONT")
        }
        Fault::KillEtcdLeader => {
            let leader = leader("etcd", || sys.etcd.leader()).await?;
            sys.crash(w, Some(Server::Etcd(leader)), &[]).await?;
            format!("SIGKILL the etcd leader (member {leader})")
        }
        Fault::KillConsulLeader => {
            let leader = leader("Consul", || sys.consul.leader()).await?;
            sys.crash(w, Some(Server::Consul(leader)), &[]).await?;
            format!("SIGKILL the Consul leader (server {leader})")
        }
    };
    // Everything ready again before the next fault (under load).
    let procs = sys.all();
    anyhow::ensure!(
        load_until(w, READY, || all_ready(&procs)).await,
        "the processes did not become ready after: {what}"
    );
    let what = format!(
        "{what}, all ready again {:.1} s later",
        started.elapsed().as_secs_f64()
    );
    Ok((what, busy_now))
}
