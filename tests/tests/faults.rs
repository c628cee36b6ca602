//! End to end under faults: every process and server of the pipeline killed, stalled and
//! raced while it holds work, checked at every etcd revision and Consul index by the
//! recorder, and at the end, key by key, against the independent model
//! (`ksr_test_support::scenario`), on single servers and on three-node clusters.
//! `bash scripts/soak.sh` runs the same scenario at any size.

use ksr_test_support::scenario::{self, Scenario};

/// The seed of a run: `KSR_TEST_SEED` reproduces one.
fn seed(default: u64) -> u64 {
    std::env::var("KSR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn scenario(
    seed: u64,
    reconcile: bool,
    clustered: bool,
    logs: &std::path::Path,
) -> anyhow::Result<Scenario> {
    let bin_dir = ksr_test_support::workspace_binary("ksr-watcher")?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    Ok(Scenario {
        seed,
        changes: 1500,
        faults: 12,
        reconcile,
        bin_dir,
        log_dir: logs.to_path_buf(),
        clustered,
    })
}

/// Runs the scenario, keeping the logs when it fails, and prints what it checked.
async fn run(
    default_seed: u64,
    reconcile: bool,
    clustered: bool,
) -> anyhow::Result<scenario::Outcome> {
    let logs = tempfile::tempdir()?;
    let mut s = scenario(seed(default_seed), reconcile, clustered, logs.path())?;
    if clustered {
        // The size: 2,000 changes while the stream leader, another node, and the etcd
        // and Consul leaders are killed and a NATS node is stalled.
        s.changes = 2000;
        s.faults = 6;
    }
    let outcome = scenario::run(&s).await.map_err(|e| {
        let kept = logs.keep();
        anyhow::anyhow!("seed {} (logs kept in {}): {e:#}", s.seed, kept.display())
    })?;
    println!("seed {}: {outcome}\n{:#?}", s.seed, outcome.faults);
    Ok(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_under_load_ends_as_the_model_says_and_breaks_no_invariant()
-> anyhow::Result<()> {
    let outcome = run(1, true, false).await?;
    assert_eq!(outcome.faults.len(), 12);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconciliation_the_incremental_path_alone_is_exact_under_faults()
-> anyhow::Result<()> {
    let outcome = run(2, false, false).await?;
    assert_eq!(outcome.repairs, 0.0);
    assert_eq!(outcome.unrecorded_writes, 0);
    Ok(())
}

/// High availability: three-node NATS with the stream at R3, three etcd members, three Consul
/// servers behind a client agent. The stream leader is killed (twice), then another NATS node,
/// a NATS node is stalled past the ack wait, the etcd and the Consul leaders are killed — all
/// under load, every process given every server address. etcd and Consul end as the model
/// says, nothing went back at any revision or index, and every process is ready again
/// without a restart of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_servers_lose_their_leaders_under_load_and_the_projections_stay_exact()
-> anyhow::Result<()> {
    let outcome = run(3, true, true).await?;
    assert_eq!(outcome.faults.len(), 6);
    assert_eq!(outcome.resumed_after_leader_kill.len(), 2);
    Ok(())
}
