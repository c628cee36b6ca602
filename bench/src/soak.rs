//! `soak`: the fault scenario of the end-to-end tests at any size, printing what it checked.

use ksr_test_support::scenario::{self, Scenario};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Changes to make (at least; load continues while faults wait for work in flight).
    #[arg(long, default_value_t = 20_000)]
    changes: usize,
    /// Faults to strike, spread evenly over the changes.
    #[arg(long, default_value_t = 40)]
    faults: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Reconcile only at each publisher's start-up and prove it never repaired anything.
    #[arg(long)]
    no_reconcile: bool,
    /// Three-node NATS (stream at R3), etcd and Consul clusters; the faults kill their leaders.
    #[arg(long)]
    clustered: bool,
    /// Where the processes' logs go (default: a temporary directory, kept on failure).
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let tmp = tempfile::tempdir()?;
    let log_dir = args
        .logs
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&log_dir)?;
    let s = Scenario {
        seed: args.seed,
        changes: args.changes,
        faults: args.faults,
        reconcile: !args.no_reconcile,
        bin_dir,
        log_dir: log_dir.clone(),
        clustered: args.clustered,
    };
    println!(
        "soak: seed {}, {} changes, {} faults{}, reconciliation {}",
        s.seed,
        s.changes,
        s.faults,
        if s.clustered {
            " on clustered servers"
        } else {
            ""
        },
        if s.reconcile {
            "every 2 s"
        } else {
            "at start-up only"
        }
    );
    match scenario::run(&s).await {
        Ok(outcome) => {
            println!("{outcome}");
            for f in &outcome.faults {
                println!("  {f}");
            }
            Ok(())
        }
        Err(e) => {
            let kept = tmp.keep();
            anyhow::bail!(
                "seed {}: {e:#}\n(logs in {})",
                s.seed,
                if args.logs.is_some() { log_dir } else { kept }.display()
            )
        }
    }
}
