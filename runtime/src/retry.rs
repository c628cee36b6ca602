//! Retrying start-up dependencies (NATS stream, etcd, Consul) until they answer or shutdown.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// Retries `f` with exponential backoff (200 ms up to 10 s, forever) until it succeeds, or
/// returns `None` once `shutdown` is cancelled. Each failure is logged with `what`.
pub async fn until_ok<T, E, F, Fut>(shutdown: &CancellationToken, what: &str, f: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let retry = f
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        )
        .notify(|e, d| tracing::warn!(what, error = %e, retry_in = ?d, "not available yet"));
    tokio::select! {
        _ = shutdown.cancelled() => None,
        r = retry => r.ok(),
    }
}

/// [`until_ok`], also reporting each failure as the not-ready reason of `health`, so
/// `/readyz` says what the process is waiting for (an unreachable server, a denied token).
pub async fn until_ready<T, E, F, Fut>(
    shutdown: &CancellationToken,
    health: &crate::Health,
    what: &str,
    mut f: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ok(shutdown, what, || {
        let fut = f();
        async move {
            let r = fut.await;
            if let Err(e) = &r {
                health.set_not_ready(format!("{what}: {e}"));
            }
            r
        }
    })
    .await
}
