//! The shutdown signal for a process's `main`: SIGTERM or Ctrl-C cancels a token.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on SIGTERM or SIGINT. Libraries take the token; only `main`s call
/// this.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        child.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `work`; on `shutdown` cancels `stop` (which `work` watches) and gives `work` at most
/// `drain` to finish what it has in hand. `None` when the drain timed out.
pub async fn drain<T>(
    work: impl Future<Output = T>,
    shutdown: &CancellationToken,
    stop: &CancellationToken,
    drain: Duration,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => Some(r),
        _ = shutdown.cancelled() => {
            stop.cancel();
            match tokio::time::timeout(drain, &mut work).await {
                Ok(r) => Some(r),
                Err(_) => {
                    tracing::warn!(?drain, "drain timed out; exiting with work in hand (it will be redelivered)");
                    None
                }
            }
        }
    }
}
