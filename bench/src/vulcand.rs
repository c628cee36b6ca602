//! publisher-vulcand: 10,000 Services × 3 addresses from an empty etcd, then churn latency
//! from publish to the key being visible in etcd (observed through an etcd watch: v3, or the
//! v2 API's long-polling watch in `--etcd-api v2` mode, the keyspace vulcand v0.8 reads), then
//! a restart (records loaded, a full reconciliation) with its memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use ksr_proto::Change;
use ksr_publisher_vulcand::config::EtcdApi;
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::events::{event, route};
use ksr_test_support::{EtcdOptions, EtcdServer, NatsServer, wait_until};

use crate::procs::Proc;
use crate::report::percentiles;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services in the initial projection.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Churn rate, changes per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Churn duration in seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// The etcd API the publisher writes vulcand's keys through.
    #[arg(long, value_enum, default_value_t = EtcdApi::V3)]
    etcd_api: EtcdApi,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let v2 = args.etcd_api == EtcdApi::V2;
    let etcd = EtcdServer::start_with(EtcdOptions {
        enable_v2: v2,
        ..Default::default()
    })
    .await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;

    println!(
        "publisher-vulcand benchmark (etcd {:?}): {} Services x 3 addresses, churn {}/s for {} s",
        args.etcd_api, args.services, args.rate, args.seconds
    );
    let events = (0..args.services).map(|i| {
        let ips = [1, 2, 3].map(|k| format!("10.{}.{}.{k}", i / 250 % 250, i % 250));
        let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let ns = format!("ns{}", i % 50);
        event(
            "east",
            &ns,
            &format!("svc{i}"),
            Change::Added(route(&format!("svc{i}-{ns}"), "test", "/.*", &ip_refs)),
        )
    });
    let took = crate::drive::publish_all(&js, events).await?;
    println!(
        "  published {} events in {:.2} s",
        args.services,
        took.as_secs_f64()
    );

    let admin_port = ksr_test_support::free_ports(1)?[0];
    let mut publisher_args = vec![
        "--nats-url".into(),
        nats.url(),
        "--etcd-endpoints".into(),
        etcd.endpoint(),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin_port}"),
        "--reconcile-interval".into(),
        "0".into(),
    ];
    if v2 {
        publisher_args.extend(["--etcd-api".into(), "v2".into()]);
    }
    let publisher = Proc::spawn("ksr-publisher-vulcand", &publisher_args)?;
    let t0 = Instant::now();
    crate::drive::caught_up(&js, "ksr-vulcand-ksr", args.services as u64).await?;
    if v2 {
        // Every route's frontend (written last) present in the v2 tree.
        wait_until("every frontend in v2", Duration::from_secs(300), || async {
            (v2_frontends(&etcd).await.ok()? >= args.services).then_some(())
        })
        .await?;
    }
    let initial = t0.elapsed();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let keys = if v2 {
        v2_frontends(&etcd).await? as i64
    } else {
        client
            .get(
                "vulcand/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await?
            .count()
    };
    let what = if v2 { "v2 frontends" } else { "vulcand keys" };
    let (rss, peak) = publisher.memory_mib();
    println!(
        "  initial projection: {} Services ({keys} {what}) in {:.2} s from process start = {:.0} Services/s",
        args.services,
        initial.as_secs_f64(),
        args.services as f64 / initial.as_secs_f64()
    );
    println!("  publisher RSS after initial projection: {rss:.1} MiB (peak {peak:.1} MiB)");

    // Steady state: after the start-up reconciliation pass.
    let reconcile =
        crate::drive::reconciled(admin_port, "vulcand", Duration::from_secs(60)).await?;
    println!(
        "  start-up reconciliation of {} Services took {reconcile}",
        args.services
    );

    // Churn: each change adds a server with a unique address; latency = publish → watch event.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let watcher = if v2 {
        tokio::spawn(watch_v2(etcd.url(), sent.clone(), seen.clone()))
    } else {
        let mut watch = client
            .watch(
                "vulcand/backends/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await?;
        let (sent2, seen2) = (sent.clone(), seen.clone());
        tokio::spawn(async move {
            while let Some(Ok(resp)) = watch.next().await {
                let now = Instant::now();
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        seen_key(&sent2, &seen2, &String::from_utf8_lossy(kv.key()), now);
                    }
                }
            }
        })
    };
    let total = args.rate * args.seconds;
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let layout = ksr_publisher_vulcand::layout::Layout::new("vulcand", "ksr");
    let churn_start = Instant::now();
    for n in 0..total {
        tick.tick().await;
        let i = (n as usize * 7919) % args.services;
        let ns = format!("ns{}", i % 50);
        let fresh = format!("10.251.{}.{}", n / 250 % 250, n % 250 + 1);
        let ips = [format!("10.{}.{}.1", i / 250 % 250, i % 250), fresh.clone()];
        let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let r = route(&format!("svc{i}-ns{}", i % 50), "test", "/.*", &ip_refs);
        let id = layout.route_id(&r.hostname(), "/.*");
        let key = format!(
            "{}vulcand/backends/{id}/servers/east-{}-80",
            if v2 { "/" } else { "" },
            fresh.replace('.', "-")
        );
        if let Ok(mut m) = sent.lock() {
            m.insert(key, Instant::now());
        }
        let e = event("east", &ns, &format!("svc{i}"), Change::Updated(r));
        let js = js.clone();
        tokio::spawn(async move { ksr_test_support::events::publish(&js, &e).await });
    }
    let sent_for = churn_start.elapsed();
    let _ = wait_until("churn to settle", Duration::from_secs(30), || async {
        sent.lock().ok().filter(|m| m.is_empty()).map(|_| ())
    })
    .await;
    watcher.abort();
    let mut samples = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let missing = sent.lock().map(|m| m.len()).unwrap_or(0);
    println!(
        "  churn: {total} changes in {:.1} s ({:.0}/s); publish-to-visible {}; {missing} not seen",
        sent_for.as_secs_f64(),
        total as f64 / sent_for.as_secs_f64(),
        percentiles(&mut samples)
    );
    let (rss, peak) = publisher.memory_mib();
    println!("  publisher RSS after churn: {rss:.1} MiB (peak {peak:.1} MiB)");
    crate::drive::restart(
        publisher,
        "ksr-publisher-vulcand",
        &publisher_args,
        admin_port,
        "vulcand",
    )
    .await?;
    drop(stream);
    Ok(())
}

type Sent = Arc<Mutex<HashMap<String, Instant>>>;
type Seen = Arc<Mutex<Vec<Duration>>>;

/// Records the latency of `key` if the churn is waiting for it.
fn seen_key(sent: &Sent, seen: &Seen, key: &str, now: Instant) {
    if let Some(t) = sent.lock().map(|mut m| m.remove(key)).ok().flatten()
        && let Ok(mut s) = seen.lock()
    {
        s.push(now - t);
    }
}

/// How many routes have a frontend in the v2 tree (a non-recursive listing).
async fn v2_frontends(etcd: &EtcdServer) -> anyhow::Result<usize> {
    let url = format!("{}/v2/keys/vulcand/frontends", etcd.url());
    let body: serde_json::Value = reqwest::get(url).await?.json().await?;
    Ok(body["node"]["nodes"].as_array().map_or(0, Vec::len))
}

/// Follows `/vulcand/backends` through the v2 API's long-polling watch (`waitIndex` keeps the
/// history, so nothing is missed between two polls).
async fn watch_v2(base: String, sent: Sent, seen: Seen) {
    let http = reqwest::Client::new();
    let url = format!("{base}/v2/keys/vulcand/backends");
    let mut index: Option<u64> = None;
    loop {
        let mut req = http
            .get(&url)
            .query(&[("wait", "true"), ("recursive", "true")]);
        if let Some(i) = index {
            req = req.query(&[("waitIndex", i.to_string())]);
        }
        let Ok(resp) = req.send().await else {
            continue;
        };
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        let now = Instant::now();
        if let Some(key) = body["node"]["key"].as_str() {
            seen_key(&sent, &seen, key, now);
        }
        if let Some(modified) = body["node"]["modifiedIndex"].as_u64() {
            index = Some(modified + 1);
        }
    }
}
