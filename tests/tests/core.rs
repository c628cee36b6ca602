//! The projection core without servers: random histories through `plan`/`apply` must end
//! exactly as the independent model says, whatever happens on the way.
//!
//! Each case generates a history as watchers publish it (fan-in across two clusters,
//! hostname collisions between namespaces, path conflicts within one, moves, removals,
//! readiness flips), then delivers it the way JetStream does to racing replicas over one
//! in-memory store (`ksr_test_support::memstore`): batches of new messages mixed with
//! redeliveries and replays of acknowledged ones, in any order; failed transactions (a
//! crash between plan and commit), records rewritten by another writer just before a
//! commit, replicas that lose their cache and reload, and transaction limits small enough
//! that units are written stepwise. At the end every vulcand key, catalog entry, fence and
//! claim record must equal the model's, both directions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ksr_projection::Target;
use ksr_projection::apply::apply_batch;
use ksr_projection::delivery::coalesce;
use ksr_proto::{Backend, Change, Event, RouteState, ServiceKey};
use ksr_publisher_consul::routers::Router;
use ksr_publisher_consul::store::ServiceBody;
use ksr_publisher_consul::target::{CatalogOp, ConsulTarget};
use ksr_publisher_vulcand::keys::KeyOp;
use ksr_publisher_vulcand::layout::Layout;
use ksr_publisher_vulcand::target::VulcandTarget;
use ksr_test_support::memstore::{Backing, Faults, MemStore, Write};
use ksr_test_support::model::{self, Ages, ConsulEntry, Settings};
use ksr_test_support::verify;
use proptest::prelude::*;

/// A small xorshift generator: cases are reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next(items.len() as u64) as usize]
    }
}

/// A history as watchers publish it: (stream sequence, event), sequences from 1.
fn history(rng: &mut Rng, n: usize) -> Vec<(u64, Event)> {
    // `x` in `b-c` and `host: x-b` in `c` collide on `x-b-c`; `host: web` in `a` shares a
    // hostname inside one namespace.
    let services = [
        ("a", "web", None),
        ("a", "api", Some("web")),
        ("a", "other", None),
        ("b-c", "x", None),
        ("c", "y", Some("x-b")),
        ("c", "x", None),
    ];
    let paths = ["/.*", "/api/.*", "/v[0-9]+"];
    let mut last: BTreeMap<ServiceKey, (u64, Option<RouteState>)> = BTreeMap::new();
    let mut out = Vec::new();
    while out.len() < n {
        let (ns, name, host) = *rng.pick(&services);
        let cluster = *rng.pick(&["east", "west"]);
        let key = ServiceKey::new(cluster, ns, name);
        let prev = last.get(&key).cloned();
        let live = prev.as_ref().is_some_and(|(_, r)| r.is_some());
        let change = if live && rng.next(5) == 0 {
            Change::Removed
        } else {
            let label = format!("{}-{ns}", host.unwrap_or(name));
            let path = if rng.next(3) == 0 {
                *rng.pick(&paths)
            } else {
                "/.*"
            };
            let mut r = ksr_test_support::events::route(&label, "test", path, &[]);
            let c = if cluster == "east" { 96 } else { 97 };
            r.backends = (0..rng.next(3))
                .map(|i| Backend {
                    ip: format!("10.{c}.{}.{}", out.len() % 250, i + 1)
                        .parse()
                        .expect("test data is well formed"),
                    port: 80 + rng.next(2) as u16,
                    ready: rng.next(4) != 0,
                })
                .collect();
            // Some Services speak https to their backends, some of those unverified.
            if rng.next(4) == 0 {
                r.scheme = ksr_proto::Scheme::Https;
                r.tls_skip_verify = rng.next(2) == 0;
            }
            // Some add Consul tags and metadata; Services sharing a name merge them.
            if rng.next(3) == 0 {
                r.consul_tags = vec![(*rng.pick(&["canary", "v2", "blue"])).to_owned()];
                r.consul_meta = [("team".to_owned(), format!("{cluster}-{}", rng.next(3)))].into();
            }
            r.normalize();
            let prev_route = prev.as_ref().and_then(|(s, r)| r.as_ref().map(|r| (r, *s)));
            r.continue_claims(prev_route);
            if live {
                Change::Updated(r)
            } else {
                Change::Added(r)
            }
        };
        let seq = out.len() as u64 + 1;
        let e = ksr_test_support::events::event(cluster, ns, name, change);
        last.insert(key, (seq, e.route().cloned()));
        out.push((seq, e));
    }
    out
}

/// How the run went, for the failure message.
#[derive(Debug, Default)]
struct Trace {
    batches: u64,
    failed: u64,
    reloads: u64,
    replays: u64,
}

/// Delivers `history` to `replicas` the way JetStream would, with the faults of the case.
async fn deliver<T>(rng: &mut Rng, history: &[(u64, Event)], replicas: &[MemStore<T>]) -> Trace
where
    T: Target + Sync,
    T::Meta: Send + Sync,
    T::Data: Send + Sync,
    T::Op: Send + Sync,
{
    let mut trace = Trace::default();
    let mut next = 0usize;
    let mut unacked: Vec<usize> = Vec::new();
    let mut acked: Vec<usize> = Vec::new();
    while next < history.len() || !unacked.is_empty() {
        trace.batches += 1;
        assert!(trace.batches < 100_000, "no progress: {trace:?}");
        let mut batch: Vec<usize> = Vec::new();
        for _ in 0..1 + rng.next(12) {
            if next < history.len() {
                batch.push(next);
                next += 1;
            }
        }
        unacked.retain(|i| {
            if rng.next(2) == 0 {
                batch.push(*i);
                false
            } else {
                true
            }
        });
        if !acked.is_empty() && rng.next(8) == 0 {
            // A replay or a redelivery of something already acknowledged.
            trace.replays += 1;
            batch.push(*rng.pick(&acked));
        }
        if batch.is_empty() {
            continue;
        }
        // Any order: the consumer coalesces to the newest event per Service.
        for i in (1..batch.len()).rev() {
            batch.swap(i, rng.next(i as u64 + 1) as usize);
        }
        let events: Vec<(u64, Event)> = batch.iter().map(|i| history[*i].clone()).collect();
        let deliveries = coalesce(events, 1);
        let replica = rng.pick(replicas);
        match apply_batch(replica, &deliveries).await {
            Ok(report) => {
                assert!(report.rejected.is_empty(), "{:?}", report.rejected);
                if rng.next(20) == 0 {
                    // Crashed after the commit, before the acknowledgement.
                    trace.reloads += 1;
                    replica.reload();
                    unacked.extend(batch);
                } else {
                    acked.extend(batch);
                }
            }
            Err(_) => {
                trace.failed += 1;
                unacked.extend(batch);
                if rng.next(3) == 0 {
                    trace.reloads += 1;
                    replica.reload();
                }
            }
        }
    }
    trace
}

fn write_vulcand(contents: &mut BTreeMap<String, String>, op: &KeyOp) {
    match op {
        KeyOp::Put { key, value, .. } => {
            contents.insert(key.clone(), value.clone());
        }
        KeyOp::Delete { key, .. } => {
            contents.remove(key);
        }
    }
}

/// The one router of the simulated Consul (the model's default address).
fn router() -> Router {
    Router {
        node: "ksr".into(),
        address: Settings::default().router_address,
    }
}

fn write_consul(contents: &mut BTreeMap<String, String>, op: &CatalogOp) {
    match op {
        CatalogOp::Set(body) => {
            let placed = ConsulTarget::at(body, &router());
            contents.insert(
                body.id.clone(),
                serde_json::to_string(&placed).expect("test data is well formed"),
            );
        }
        CatalogOp::Delete { id, .. } => {
            contents.remove(id);
        }
    }
}

/// Renders the backing's records under their store keys (`ksr/ksr/<target>/…`).
fn records<M: serde::Serialize, D: serde::Serialize>(
    b: &Backing<M, D>,
    target: &str,
    names: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, (_, r)) in &b.services {
        out.insert(
            format!(
                "ksr/ksr/{target}/services/{}/{}/{}",
                k.cluster, k.namespace, k.name
            ),
            serde_json::to_string(r).expect("test data is well formed"),
        );
    }
    for (id, (_, r)) in &b.names {
        out.insert(
            format!("ksr/ksr/{target}/{names}/{id}"),
            serde_json::to_string(r).expect("test data is well formed"),
        );
    }
    out
}

/// vulcand's order at the end: every frontend's backend and every server's backend exist.
fn vulcand_order(contents: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in contents {
        let backend = if k.ends_with("/frontend") {
            let f: serde_json::Value = serde_json::from_str(v).map_err(|e| e.to_string())?;
            format!(
                "vulcand/backends/{}/backend",
                f["BackendId"].as_str().unwrap_or_default()
            )
        } else if let Some((dir, _)) = k.split_once("/servers/") {
            format!("{dir}/backend")
        } else {
            continue;
        };
        if !contents.contains_key(&backend) {
            return Err(format!("{k} without {backend}"));
        }
    }
    Ok(())
}

fn run_case(seed: u64, events: usize, replicas: usize, max_ops: usize, faults: Faults) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("test data is well formed");
    let mut rng = Rng(seed | 1);
    let history = history(&mut rng, events);
    let ages = Ages::from_stream(&history);
    let services = model::services_from_stream(&history);
    let settings = Settings::default();

    let vulcand = Arc::new(Mutex::new(Backing::new(seed ^ 0x5a5a, faults)));
    let target = VulcandTarget {
        layout: Layout::new("vulcand", "ksr"),
    };
    let stores: Vec<MemStore<VulcandTarget>> = (0..replicas)
        .map(|_| {
            MemStore::new(
                target.clone(),
                write_vulcand as Write<VulcandTarget>,
                vulcand.clone(),
                max_ops,
            )
        })
        .collect();
    let trace = rt.block_on(deliver(&mut rng, &history, &stores));
    let b = vulcand.lock().expect("not poisoned");
    let mut etcd = b.contents.clone();
    vulcand_order(&etcd).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    etcd.extend(records(&b, "vulcand", "hosts"));
    let diff = verify::vulcand(&settings, &services, &ages, &etcd);
    assert!(
        diff.is_empty(),
        "seed {seed}, {events} events, {replicas} replicas, max ops {max_ops}, {trace:?} ({} commits, {} lost races):\n{diff}",
        b.commits,
        b.conflicts
    );
    drop(b);

    let consul = Arc::new(Mutex::new(Backing::new(seed ^ 0xa5a5, faults)));
    let target = ConsulTarget {
        owner: "ksr".into(),
        routers: vec![router()],
        router_port: settings.router_port,
    };
    let stores: Vec<MemStore<ConsulTarget>> = (0..replicas)
        .map(|_| {
            MemStore::new(
                target.clone(),
                write_consul as Write<ConsulTarget>,
                consul.clone(),
                max_ops,
            )
        })
        .collect();
    let trace = rt.block_on(deliver(&mut rng, &history, &stores));
    let b = consul.lock().expect("not poisoned");
    let catalog: BTreeMap<String, ConsulEntry> = b
        .contents
        .iter()
        .map(|(id, body)| {
            let s: ServiceBody = serde_json::from_str(body).expect("test data is well formed");
            let entry = ConsulEntry {
                service: s.service,
                tags: s.tags,
                address: s.address,
                port: s.port,
                meta: s.meta,
            };
            (id.clone(), entry)
        })
        .collect();
    let kv = records(&b, "consul", "names");
    let diff = verify::consul_entries(&settings, &[], &services, &ages, &catalog, &kv);
    assert!(
        diff.is_empty(),
        "seed {seed}, {events} events, {replicas} replicas, max ops {max_ops}, {trace:?}:\n{diff}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_under_faults_end_as_the_model_says(
        seed in any::<u64>(),
        events in 1usize..240,
        replicas in 1usize..4,
        max_ops in prop::sample::select(vec![3usize, 6, 16, 128]),
        steal in prop::sample::select(vec![0u32, 50, 200]),
        error in prop::sample::select(vec![0u32, 50, 200]),
    ) {
        run_case(seed, events, replicas, max_ops, Faults { steal_per_mille: steal, error_per_mille: error });
    }
}

#[test]
fn a_long_history_with_every_fault_at_once_ends_as_the_model_says() {
    for seed in 1..=8u64 {
        run_case(
            seed * 0x9e37_79b9,
            1500,
            3,
            6,
            Faults {
                steal_per_mille: 100,
                error_per_mille: 100,
            },
        );
    }
}
