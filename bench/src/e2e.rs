//! `e2e`: the whole pipeline at estate size — one fake apiserver and one `ksr-watcher` per
//! cluster → NATS JetStream → `ksr-publisher-vulcand` (etcd v3) and `ksr-publisher-consul` —
//! at several sizes in one run, each from empty servers, so growth is visible.
//!
//! Per size it prints: start of the processes → every route's frontend in etcd, and → every
//! name registered in Consul (then checked through Consul DNS); the RSS of every process; the
//! stream, etcd and Consul sizes; each publisher's start-up reconciliation (duration, what it
//! reads, what it had to write: zero on a converged target); and, at full size, change →
//! visible latency at `--rate` new Services per second (created in the apiservers, timed until
//! etcd's watch shows the frontend and until Consul DNS answers, every 10th name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use etcd_client::GetOptions;
use futures::StreamExt;
use serde_json::json;

use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::replica::sample;
use ksr_test_support::{ConsulServer, EtcdServer, NatsServer, dns, free_ports, http};

use crate::procs::Proc;
use crate::report::percentiles;

const ROUTER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 9);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Estate sizes (Services in all clusters together), each run from empty servers.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000,100000")]
    sizes: Vec<usize>,
    /// Services per cluster: 100,000 Services are 10 clusters, each its own fake apiserver
    /// and watcher process.
    #[arg(long, default_value_t = 10_000)]
    per_cluster: usize,
    /// Churn once the estate is up: new Services per second …
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// … for this many seconds (0: no churn).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Run the churn at every size, not only the largest.
    #[arg(long)]
    churn_every_size: bool,
    /// The watchers' --coalesce-window (their default: 50ms; a Service's first change in a
    /// window is published at once, later ones within it wait for its end).
    #[arg(long, default_value = "50ms")]
    coalesce_window: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "end-to-end benchmark: fake apiservers ({} Services each) → watchers (--coalesce-window {}) → NATS → publisher-vulcand (etcd v3) + publisher-consul; one Service = one route with one address (its ClusterIP)",
        args.per_cluster, args.coalesce_window
    );
    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    for &size in &args.sizes {
        let churn = args.seconds > 0 && (args.churn_every_size || size == largest);
        one_size(size, &args, churn).await?;
    }
    Ok(())
}

/// The Service `i` of cluster `c`: distinct names across clusters (an estate of distinct
/// Services, not one Service in many clusters).
fn service(c: usize, i: usize, name: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": format!("ns{}", i % 50), "labels": {"type": "ingress"}},
        "spec": {"clusterIP": format!("10.{}.{}.{}", 100 + c, i / 250 % 250, i % 250 + 1),
                 "ports": [{"name": "http", "port": 80}]}
    })
}

struct Admin {
    port: u16,
}

impl Admin {
    async fn metrics(&self) -> String {
        http::get(self.port, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

async fn one_size(size: usize, args: &Args, churn: bool) -> anyhow::Result<()> {
    let clusters = size.div_ceil(args.per_cluster.max(1)).max(1);
    println!("\n== {size} Services in {clusters} clusters");
    let nats = NatsServer::start().await?;
    let etcd = EtcdServer::start().await?;
    let consul = ConsulServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let mut stream = ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
    let mut apis = Vec::with_capacity(clusters);
    for c in 0..clusters {
        let api = FakeApiServer::start().await?;
        let n = (size - c * args.per_cluster).min(args.per_cluster);
        for i in 0..n {
            api.apply(Resource::Services, service(c, i, &format!("c{c}-svc{i}")));
        }
        apis.push(api);
    }
    let ports = free_ports(2 + clusters)?;
    let (vulcand_admin, consul_admin) = (Admin { port: ports[0] }, Admin { port: ports[1] });
    let t0 = Instant::now();
    let vulcand = spawn_vulcand(&nats, &etcd, &vulcand_admin)?;
    let consul_pub = spawn_consul(&nats, &consul, &consul_admin)?;
    let mut watchers = Vec::with_capacity(clusters);
    for (c, api) in apis.iter().enumerate() {
        watchers.push(Proc::spawn(
            "ksr-watcher",
            &[
                "--cluster".into(),
                format!("c{c}"),
                "--nats-url".into(),
                nats.url(),
                "--kube-url".into(),
                api.url().to_owned(),
                "--admin-addr".into(),
                format!("127.0.0.1:{}", ports[2 + c]),
                "--coalesce-window".into(),
                args.coalesce_window.clone(),
            ],
        )?);
    }

    // Where the CPU goes during the initial projection.
    let servers: Vec<(&str, String)> = [
        ("nats-server", nats.pid()),
        ("etcd", etcd.pid()),
        ("consul", consul.pid()),
    ]
    .into_iter()
    .map(|(n, p)| (n, p.map_or_else(String::new, |p| p.to_string())))
    .collect();
    let cpu_now = |watchers: &[Proc], vulcand: &Proc, consul_pub: &Proc| -> Vec<(String, f64)> {
        let mut v = vec![
            (
                "watchers".to_owned(),
                watchers.iter().map(Proc::cpu_seconds).sum::<f64>(),
            ),
            ("publisher-vulcand".to_owned(), vulcand.cpu_seconds()),
            ("publisher-consul".to_owned(), consul_pub.cpu_seconds()),
        ];
        v.extend(
            servers
                .iter()
                .map(|(n, p)| ((*n).to_owned(), crate::procs::cpu_seconds(p))),
        );
        v.push((
            "bench (fake apiservers, polling)".to_owned(),
            crate::procs::cpu_seconds("self"),
        ));
        v
    };
    let cpu_start = cpu_now(&watchers, &vulcand, &consul_pub);

    // Start → all routable in etcd, all registered in Consul.
    let mut client = etcd.client().await?;
    let deadline = t0 + Duration::from_secs(1800);
    let (mut etcd_done, mut consul_done) = (None, None);
    let mut watcher_peak = vec![0f64; clusters];
    let (mut vulcand_peak, mut consul_peak) = (0f64, 0f64);
    while (etcd_done.is_none() || consul_done.is_none()) && Instant::now() < deadline {
        if etcd_done.is_none() {
            let n = client
                .get(
                    "vulcand/frontends/",
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?
                .count();
            if n >= size as i64 {
                etcd_done = Some(t0.elapsed());
            }
        }
        if consul_done.is_none()
            && sample(&consul_admin.metrics().await, "ksr_consul_names") >= size as f64
        {
            consul_done = Some(t0.elapsed());
        }
        for (w, peak) in watchers.iter().zip(&mut watcher_peak) {
            *peak = peak.max(w.memory_mib().0);
        }
        vulcand_peak = vulcand_peak.max(vulcand.memory_mib().0);
        consul_peak = consul_peak.max(consul_pub.memory_mib().0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = t0.elapsed();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_end = cpu_now(&watchers, &vulcand, &consul_pub);
    let used: Vec<String> = cpu_start
        .iter()
        .zip(&cpu_end)
        .map(|((name, a), (_, b))| format!("{name} {:.1}", b - a))
        .collect();
    println!(
        "  CPU seconds while projecting ({:.1} s wall × {cores} cores = {:.1} CPU s): {}",
        wall.as_secs_f64(),
        cores as f64 * wall.as_secs_f64(),
        used.join(", ")
    );
    let secs = |d: Option<Duration>| {
        d.map_or("not reached".to_owned(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    println!(
        "  start → every route in etcd: {}; → every name in Consul: {}",
        secs(etcd_done),
        secs(consul_done)
    );
    let answer = dns::query_a(consul.dns_port(), "c0-svc7-ns7.test.service.consul").await?;
    let catalog = reqwest::Client::new()
        .get(format!("{}/v1/catalog/service/test", consul.url()))
        .timeout(Duration::from_secs(300))
        .send()
        .await?
        .text()
        .await?;
    println!(
        "  Consul: {} catalog instances; DNS c0-svc7-ns7.test.service.consul → {:?}",
        catalog.matches("\"ServiceID\"").count(),
        answer.addrs
    );
    let total = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "  RSS peak: watchers {:.0} MiB each at most ({:.0} MiB together, {:.1} MiB per 1,000 Services), publisher-vulcand {:.0} MiB, publisher-consul {:.0} MiB",
        watcher_peak.iter().copied().fold(0.0, f64::max),
        total(&watcher_peak),
        total(&watcher_peak) / (size as f64 / 1000.0),
        vulcand_peak,
        consul_peak
    );

    let (etcd_keys, etcd_bytes) = prefix_size(&mut client, "ksr/ksr/").await?;
    let (vkeys, vbytes) = prefix_size(&mut client, "vulcand/").await?;
    let (_, consul_kv) = http::get(consul.http_port(), "/v1/kv/ksr/?recurse=true")
        .await
        .unwrap_or_default();
    let (_, node) = http::get(consul.http_port(), "/v1/catalog/node/ksr")
        .await
        .unwrap_or_default();
    println!(
        "  a reconciliation reads: etcd {etcd_keys} records ({:.1} MiB) + {vkeys} vulcand keys ({:.1} MiB); Consul KV {:.1} MiB + node listing {:.1} MiB; and the stream's newest event per Service",
        mib(etcd_bytes),
        mib(vbytes),
        mib(consul_kv.len() as u64),
        mib(node.len() as u64)
    );
    let info = stream.info().await?;
    let status = client.status().await?;
    println!(
        "  sizes: stream {} messages, {:.1} MiB; etcd db {:.1} MiB (in use {:.1} MiB); Consul data dir {:.1} MiB",
        info.state.messages,
        mib(info.state.bytes),
        mib(u64::try_from(status.db_size()).unwrap_or(0)),
        mib(u64::try_from(status.raft_used_db_size()).unwrap_or(0)),
        mib(dir_size(consul.data_dir()))
    );

    if churn {
        churn_at_size(args, &apis, &mut client, consul.dns_port()).await?;
        let m = vulcand_admin.metrics().await;
        println!(
            "  after churn: RSS watchers {:.0} MiB at most, publisher-vulcand {:.0} MiB, publisher-consul {:.0} MiB; reconcile repairs vulcand {} consul {}",
            watchers
                .iter()
                .map(|w| w.memory_mib().0)
                .fold(0.0, f64::max),
            vulcand.memory_mib().0,
            consul_pub.memory_mib().0,
            sample(&m, "ksr_vulcand_reconcile_repairs_total"),
            sample(
                &consul_admin.metrics().await,
                "ksr_consul_reconcile_repairs_total"
            ),
        );
    }

    // A full reconciliation of the converged estate: each publisher restarted (its start-up
    // reconciliation runs once it has caught up), timed, and its repairs counted.
    drop(vulcand);
    drop(consul_pub);
    let restarted = Instant::now();
    let vulcand = spawn_vulcand(&nats, &etcd, &vulcand_admin)?;
    let consul_pub = spawn_consul(&nats, &consul, &consul_admin)?;
    for (name, admin, process) in [
        ("vulcand", &vulcand_admin, &vulcand),
        ("consul", &consul_admin, &consul_pub),
    ] {
        let runs = format!("ksr_{name}_reconcile_runs_total");
        let until = Instant::now() + Duration::from_secs(900);
        let mut m = admin.metrics().await;
        while sample(&m, &runs) < 1.0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            m = admin.metrics().await;
        }
        let phases: Vec<String> = ["records", "stream", "target", "tombstones"]
            .iter()
            .map(|p| {
                let v = sample(
                    &m,
                    &format!("ksr_{name}_reconcile_phase_seconds{{phase=\"{p}\"}}"),
                );
                format!("{p} {v:.2}")
            })
            .collect();
        let (rss, peak) = process.memory_mib();
        println!(
            "  full reconciliation after a restart, publisher-{name}: {:.2} s ({}; restart → done {:.2} s), {} repairs; RSS {rss:.0} MiB (peak {peak:.0} MiB)",
            sample(&m, &format!("ksr_{name}_reconcile_duration_seconds")),
            phases.join(", "),
            restarted.elapsed().as_secs_f64(),
            sample(&m, &format!("ksr_{name}_reconcile_repairs_total")),
        );
    }

    // The audit at full size: ksrctl verify of each target against the stream.
    for (target, flags) in [
        (
            "vulcand",
            vec!["--etcd-endpoints".to_owned(), etcd.endpoint()],
        ),
        (
            "consul",
            vec![
                "--consul-address".to_owned(),
                consul.url(),
                "--router-address".to_owned(),
                ROUTER.to_string(),
            ],
        ),
    ] {
        let started = Instant::now();
        // Its phases (stream read, planning, target read) as debug lines on standard error.
        let run = Proc::spawn_logging(
            "ksrctl",
            &[
                "verify".into(),
                target.into(),
                "--nats-url".into(),
                nats.url(),
                "-o".into(),
                "json".into(),
            ]
            .into_iter()
            .chain(flags)
            .collect::<Vec<String>>(),
            std::process::Stdio::null(),
            "warn,ksrctl=debug,ksr_publisher_vulcand::drift=debug",
        )?;
        let status = tokio::task::spawn_blocking(move || {
            let mut run = run;
            run.child.wait()
        })
        .await??;
        println!(
            "  ksrctl verify {target}: {:.2} s, exit {} (0: no drift)",
            started.elapsed().as_secs_f64(),
            status.code().unwrap_or(-1)
        );
    }
    drop(watchers);
    Ok(())
}

fn spawn_vulcand(nats: &NatsServer, etcd: &EtcdServer, admin: &Admin) -> anyhow::Result<Proc> {
    Proc::spawn(
        "ksr-publisher-vulcand",
        &[
            "--nats-url".into(),
            nats.url(),
            "--etcd-endpoints".into(),
            etcd.endpoint(),
            "--admin-addr".into(),
            format!("127.0.0.1:{}", admin.port),
        ],
    )
}

fn spawn_consul(nats: &NatsServer, consul: &ConsulServer, admin: &Admin) -> anyhow::Result<Proc> {
    Proc::spawn(
        "ksr-publisher-consul",
        &[
            "--nats-url".into(),
            nats.url(),
            "--consul-address".into(),
            consul.url(),
            "--router-address".into(),
            ROUTER.to_string(),
            "--admin-addr".into(),
            format!("127.0.0.1:{}", admin.port),
        ],
    )
}

/// New Services at `args.rate`/s spread over the clusters; latency from the apiserver write to
/// the frontend in etcd's watch, and (every 10th name) to the first Consul DNS answer.
async fn churn_at_size(
    args: &Args,
    apis: &[FakeApiServer],
    client: &mut etcd_client::Client,
    dns_port: u16,
) -> anyhow::Result<()> {
    type Sent = Arc<Mutex<HashMap<String, Instant>>>;
    let sent: Sent = Arc::default();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut watch = client
        .watch(
            "vulcand/frontends/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await?;
    let (sent2, seen2) = (sent.clone(), seen.clone());
    let follower = tokio::spawn(async move {
        while let Some(Ok(resp)) = watch.next().await {
            let now = Instant::now();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                // vulcand/frontends/ksr.<hostname>.<hash>/frontend
                let key = String::from_utf8_lossy(kv.key());
                let Some(host) = key
                    .strip_prefix("vulcand/frontends/ksr.")
                    .and_then(|r| r.strip_suffix("/frontend"))
                    .and_then(|r| r.rsplit_once('.'))
                    .map(|(h, _)| h.to_owned())
                else {
                    continue;
                };
                if let Some(t) = sent2.lock().ok().and_then(|mut m| m.remove(&host))
                    && let Ok(mut s) = seen2.lock()
                {
                    s.push(now - t);
                }
            }
        }
    });
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut dns_tasks = Vec::new();
    let probes = Arc::new(tokio::sync::Semaphore::new(2));
    let mut dns_skipped = 0;
    let started = Instant::now();
    for n in 0..total as usize {
        tick.tick().await;
        let c = n % apis.len();
        let name = format!("new{n}");
        let host = format!("{name}-churn.test.service.consul");
        let mut svc = service(c, 200_000 + n, &name);
        svc["metadata"]["namespace"] = json!("churn");
        let t = Instant::now();
        if let Ok(mut m) = sent.lock() {
            m.insert(host.clone(), t);
        }
        apis[c].apply(Resource::Services, svc);
        // Every 10th name is probed through Consul DNS, at most two at a time (skipped when
        // both probes are busy): each lookup of a tag scans every instance of the service, so
        // unbounded probing would load Consul more than the publisher does.
        if n % 10 == 0 {
            match probes.clone().try_acquire_owned() {
                Ok(permit) => dns_tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    while t.elapsed() < Duration::from_secs(60) {
                        if let Ok(a) = dns::query_a(dns_port, &host).await
                            && a.addrs == vec![ROUTER]
                        {
                            return Some(t.elapsed());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    None
                })),
                Err(_) => dns_skipped += 1,
            }
        }
    }
    let sent_for = started.elapsed();
    let until = Instant::now() + Duration::from_secs(60);
    while sent.lock().map(|m| !m.is_empty()).unwrap_or(false) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follower.abort();
    let mut dns_samples = Vec::new();
    let mut dns_missing = 0;
    for t in dns_tasks {
        match t.await.ok().flatten() {
            Some(d) => dns_samples.push(d),
            None => dns_missing += 1,
        }
    }
    let mut etcd_samples = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let etcd_missing = sent.lock().map(|m| m.len()).unwrap_or(0);
    println!(
        "  churn: {total} new Services in {:.1} s ({:.0}/s) across {} apiservers",
        sent_for.as_secs_f64(),
        total as f64 / sent_for.as_secs_f64(),
        apis.len()
    );
    println!(
        "    apiserver → frontend in etcd: {}; {etcd_missing} not seen",
        percentiles(&mut etcd_samples)
    );
    println!(
        "    apiserver → Consul DNS answer (every 10th, ≤ 2 probes at once): {}; {dns_missing} never answered, {dns_skipped} not probed (both probes busy)",
        percentiles(&mut dns_samples)
    );
    Ok(())
}

/// Keys and bytes (keys and values) under `prefix`, read in pages (a reply is at most 4 MiB).
async fn prefix_size(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> anyhow::Result<(usize, u64)> {
    let end = {
        let mut e = prefix.as_bytes().to_vec();
        if let Some(last) = e.last_mut() {
            *last += 1;
        }
        e
    };
    let (mut keys, mut bytes) = (0usize, 0u64);
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let resp = client
            .get(
                from.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_limit(2000)),
            )
            .await?;
        for kv in resp.kvs() {
            keys += 1;
            bytes += (kv.key().len() + kv.value().len()) as u64;
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((keys, bytes))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
