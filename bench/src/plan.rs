//! `plan`: the publishers' planning and conflict bookkeeping alone, at several sizes.
//!
//! No servers: the CPU the engine spends per Service, so growth with the estate is visible
//! apart from the servers'. Per size it times, for both targets, what `ksrctl verify` and a
//! rebuild compute (`simulate`: the newest event of every Service applied to an empty
//! target), vulcand's expected keys and their comparison with a converged copy, the live
//! path (plan + settle batch after batch, as the consumer delivers them, from empty), and
//! single changes at full size that move Services between contested hostnames (the conflict
//! bookkeeping: owners leaving, waiting claims promoted).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ksr_projection::Delivery;
use ksr_projection::plan::{StateOf, plan, simulate};
use ksr_projection::records::State;
use ksr_proto::{Backend, Change, Event, RouteState, ServiceKey};
use ksr_publisher_consul::routers::Router;
use ksr_publisher_consul::target::ConsulTarget;
use ksr_publisher_vulcand::layout::Layout;
use ksr_publisher_vulcand::target::{VulcandTarget, projection_of};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Estate sizes (Services).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000,100000")]
    sizes: Vec<usize>,
    /// The share of Services (percent) that claim a hostname shared with up to three
    /// Services of other namespaces (one owns it, the others wait).
    #[arg(long, default_value_t = 10)]
    conflict_percent: usize,
    /// Events per planned batch on the live path (the consumer's batch).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Single changes timed at full size.
    #[arg(long, default_value_t = 5_000)]
    changes: usize,
}

/// Service `i`'s route: its own hostname, or a contested one.
fn route(i: usize, contested: Option<usize>) -> RouteState {
    let mut r = RouteState {
        label: format!("svc{i}-ns{}", i % 50),
        environment: "bench".into(),
        domain: "example.com".into(),
        path: ksr_proto::RoutePath::new("/.*").expect("a valid path"),
        ports: vec![],
        backends: vec![Backend {
            ip: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32)),
            port: 8080,
            ready: true,
        }],
        host_since: 0,
        route_since: 0,
        full_host: contested.map(|g| format!("shared{g}.example.com")),
        scheme: Default::default(),
        tls_skip_verify: false,
        consul_tags: Vec::new(),
        consul_meta: Default::default(),
    };
    r.normalize();
    r
}

/// Whether Service `i` starts on a contested hostname, and which.
fn contested(i: usize, percent: usize) -> Option<usize> {
    // Groups of four consecutive Services (four namespaces) in the first `percent` of every 100.
    (i % 100 < percent).then_some(i / 4)
}

fn delivery(i: usize, seq: u64, route: RouteState) -> Delivery {
    Delivery {
        seq,
        incarnation: 1,
        event: Event {
            key: ServiceKey::new(
                format!("c{}", i / 10_000),
                format!("ns{}", i % 50),
                format!("svc{i}"),
            ),
            change: Change::Added(route),
            resource_version: "1".into(),
            observed_unix_ms: 1_764_230_400_000,
            observer: "bench".into(),
            manager: None,
        },
    }
}

fn per(d: Duration, n: usize) -> String {
    format!(
        "{:.3} s ({:.2} µs per Service)",
        d.as_secs_f64(),
        d.as_secs_f64() * 1e6 / n.max(1) as f64
    )
}

/// Plans and settles `deliveries` batch after batch onto `state`, as the live consumer does.
fn live<T: ksr_projection::target::Target>(
    target: &T,
    state: &mut StateOf<T>,
    deliveries: &[Delivery],
    batch: usize,
) -> usize
where
    T::Meta: Clone,
    T::Data: Clone,
{
    let mut conflicts = 0;
    for chunk in deliveries.chunks(batch.max(1)) {
        let planned = plan(target, state, chunk);
        conflicts += planned
            .units
            .iter()
            .map(|u| u.conflicts.len())
            .sum::<usize>();
        state.settle(&planned.units, |_| 1);
    }
    conflicts
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "plan benchmark: the engine alone (no servers), {} % of Services on hostnames contested by up to four namespaces, live batches of {}",
        args.conflict_percent, args.batch
    );
    let vulcand = VulcandTarget {
        layout: Layout::new("vulcand", "ksr"),
    };
    let consul = ConsulTarget {
        owner: "ksr".into(),
        routers: vec![Router {
            node: "ksr".into(),
            address: "127.0.0.9".into(),
        }],
        router_port: 80,
    };
    for &n in &args.sizes {
        println!("\n== {n} Services");
        let deliveries: Vec<Delivery> = (0..n)
            .map(|i| {
                delivery(
                    i,
                    i as u64 + 1,
                    route(i, contested(i, args.conflict_percent)),
                )
            })
            .collect();

        let started = Instant::now();
        let (state, refused) = simulate(&vulcand, &deliveries);
        println!(
            "  vulcand simulate (verify, rebuild): {} — {} hostnames, {} refused",
            per(started.elapsed(), n),
            state.names().count(),
            refused.len()
        );
        let started = Instant::now();
        let expected: BTreeMap<String, String> = projection_of(&vulcand.layout, &state)
            .into_iter()
            .map(|(key, (_, value))| (key, value))
            .collect();
        println!(
            "  vulcand expected keys: {} — {} keys",
            per(started.elapsed(), n),
            expected.len()
        );
        let live_copy = expected.clone();
        let started = Instant::now();
        let drift = ksr_projection::drift::compare(&expected, &live_copy);
        println!(
            "  vulcand compare with a converged copy: {} — {} differences",
            per(started.elapsed(), n),
            drift.len()
        );
        let started = Instant::now();
        let (cstate, _) = simulate(&consul, &deliveries);
        println!(
            "  consul simulate (verify, rebuild): {} — {} names",
            per(started.elapsed(), n),
            cstate.names().count()
        );

        let mut vstate: StateOf<VulcandTarget> = State::default();
        let started = Instant::now();
        let conflicts = live(&vulcand, &mut vstate, &deliveries, args.batch);
        println!(
            "  vulcand live plan + settle from empty: {} — {conflicts} conflicts created",
            per(started.elapsed(), n)
        );
        let mut cstate: StateOf<ConsulTarget> = State::default();
        let started = Instant::now();
        live(&consul, &mut cstate, &deliveries, args.batch);
        println!(
            "  consul live plan + settle from empty: {}",
            per(started.elapsed(), n)
        );

        // Single changes at full size: Services hop between contested hostnames and back
        // (deterministic pseudo-random choice), each planned and settled alone.
        let mut seq = n as u64;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut samples = Vec::with_capacity(args.changes);
        let groups = (n / 4).max(1);
        for _ in 0..args.changes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % n;
            let to = ((x >> 32) as usize) % 3;
            let contested = match to {
                0 => None,
                _ => Some(((x >> 40) as usize) % groups),
            };
            seq += 1;
            let d = [delivery(i, seq, route(i, contested))];
            let started = Instant::now();
            let planned = plan(&vulcand, &vstate, &d);
            vstate.settle(&planned.units, |_| 1);
            samples.push(started.elapsed());
        }
        let total: Duration = samples.iter().sum();
        samples.sort();
        let at = |p: f64| crate::report::quantile(&samples, p).as_secs_f64() * 1e6;
        println!(
            "  vulcand single changes at full size (hostname moves, conflicts): {} changes, mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs",
            args.changes,
            total.as_secs_f64() * 1e6 / args.changes.max(1) as f64,
            at(0.5),
            at(0.99),
        );
    }
    Ok(())
}
