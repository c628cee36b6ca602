//! `ksrctl`: parse the command line, run one command, stop cleanly on Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;

use ksrctl::Outcome;
use ksrctl::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Library warnings (a reconcile repairing drift) only with KSR_LOG set.
    let log = ksr_runtime::config::LogArgs {
        filter: std::env::var("KSR_LOG").unwrap_or_else(|_| "error".into()),
        format: ksr_runtime::config::LogFormat::Text,
    };
    if let Err(e) = ksr_runtime::process::init(&log, "ksrctl") {
        eprintln!("ksrctl: {e}");
        return ExitCode::from(2);
    }
    tokio::select! {
        result = ksrctl::commands::run(cli.command) => match result {
            Ok(Outcome::Clean) => ExitCode::SUCCESS,
            Ok(Outcome::Drift) => ExitCode::from(1),
            Err(e) => {
                eprintln!("ksrctl: {e}");
                ExitCode::from(2)
            }
        },
        // Dropping the command clears its progress bar; nothing half-written is left.
        _ = tokio::signal::ctrl_c() => {
            eprintln!("ksrctl: interrupted");
            ExitCode::from(130)
        }
        // `checkpoint --follow` runs as a Deployment: SIGTERM is its normal end.
        () = terminated() => ExitCode::SUCCESS,
    }
}

/// Resolves on SIGTERM (never, where it cannot be listened for).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
