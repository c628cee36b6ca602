//! `ksr-bench`: measures the processes as they run in production and prints figures.
//!
//! Each benchmark starts real servers on loopback (the test-support guards), spawns the
//! release binary under test as a child process, drives it, and prints throughput, latency
//! percentiles and the child's resident memory. No assertions: figures only.

mod consul;
mod drive;
mod e2e;
mod etcdv2;
mod plan;
mod procs;
mod replay;
mod report;
mod soak;
mod vulcand;
mod watcher;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ksr-bench",
    about = "kube-service-router benchmarks (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// publisher-vulcand: initial projection of N Services, then churn latency.
    Vulcand(vulcand::Args),
    /// etcd's v2 API alone: key writes per second (the floor under v2 mode).
    EtcdV2(etcdv2::Args),
    /// publisher-consul: initial projection of N Services, then publish-to-DNS latency.
    Consul(consul::Args),
    /// watcher: N Services listed from an apiserver and published.
    Watcher(watcher::Args),
    /// ksrctl: `state --at` replaying 1,000,000 events.
    Replay(replay::Args),
    /// The whole pipeline under seeded changes and faults, checked against the model.
    Soak(soak::Args),
    /// The engine alone: planning and conflict bookkeeping per Service at several sizes.
    Plan(plan::Args),
    /// The whole pipeline at estate size (apiservers → watchers → NATS → both publishers),
    /// at several sizes in one run.
    E2e(e2e::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ksr_runtime::tls::install_crypto_provider();
    match Cli::parse().bench {
        Bench::Vulcand(args) => vulcand::run(args).await,
        Bench::Consul(args) => consul::run(args).await,
        Bench::EtcdV2(args) => etcdv2::run(args).await,
        Bench::Watcher(args) => watcher::run(args).await,
        Bench::Replay(args) => replay::run(args).await,
        Bench::Soak(args) => soak::run(args).await,
        Bench::E2e(args) => e2e::run(args).await,
        Bench::Plan(args) => plan::run(args).await,
    }
}
