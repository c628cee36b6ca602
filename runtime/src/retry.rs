//! Retrying start-up dependencies (NATS stream, etcd, Consul) until they answer or shutdown.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// Delays for advisory background work that keeps failing (status writes, status watches):
/// doubling from `min` up to `max`, with jitter, starting over after a success — so a
/// struggling server is not kept busy by what routing does not need.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: Option<<ExponentialBuilder as backon::BackoffBuilder>::Backoff>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            builder: ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times(),
            delays: None,
        }
    }

    /// The wait after one more failure in a row.
    pub fn next_delay(&mut self) -> Duration {
        use backon::BackoffBuilder;
        let builder = self.builder;
        let delays = self.delays.get_or_insert_with(|| builder.build());
        delays.next().unwrap_or(Duration::from_secs(1))
    }

    /// A success: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.delays = None;
    }
}

/// Retries `f` with exponential backoff (200 ms up to 10 s, forever) until it succeeds, or
/// returns `None` once `shutdown` is cancelled. Each failure is logged with `what`.
pub async fn until_ok<T, E, F, Fut>(shutdown: &CancellationToken, what: &str, f: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ok_or(shutdown, what, |_| false, f)
        .await
        .and_then(Result::ok)
}

/// [`until_ok`] for failures that may be permanent: those `fatal` picks out (a misconfigured
/// TLS, refused credentials) end the wait as `Some(Err(_))` instead of being retried.
pub async fn until_ok_or<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    fatal: impl Fn(&E) -> bool,
    f: F,
) -> Option<Result<T, E>>
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
        .when(|e| !fatal(e))
        .notify(|e, d| tracing::warn!(what, error = %e, retry_in = ?d, "not available yet"));
    tokio::select! {
        _ = shutdown.cancelled() => None,
        r = retry => Some(r),
    }
}

/// [`until_ok`], also reporting each failure as the not-ready reason of `health`, so
/// `/readyz` says what the process is waiting for (an unreachable server, a denied token).
pub async fn until_ready<T, E, F, Fut>(
    shutdown: &CancellationToken,
    health: &crate::Health,
    what: &str,
    f: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ready_or(shutdown, health, what, |_| false, f)
        .await
        .and_then(Result::ok)
}

/// [`until_ok_or`] reporting each failure as the not-ready reason of `health`.
pub async fn until_ready_or<T, E, F, Fut>(
    shutdown: &CancellationToken,
    health: &crate::Health,
    what: &str,
    fatal: impl Fn(&E) -> bool,
    mut f: F,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ok_or(shutdown, what, fatal, || {
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;

    /// On paused time: the clock advances only through the backoff's own sleeps.
    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_from_200ms_and_stop_at_shutdown() {
        let shutdown = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let got = until_ok(&shutdown, "test", || async {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            if n < 5 { Err("down") } else { Ok(n) }
        })
        .await;
        assert_eq!(got, Some(5));
        // 200 + 400 + 800 + 1600 + 3200 ms of backoff, nothing else (the timer wheel rounds
        // each sleep up to the next millisecond).
        let ms = started.elapsed().as_millis();
        assert!((6200..6210).contains(&ms), "{ms} ms");

        // Delays are capped at 10 s; shutdown ends the wait at once.
        let never = until_ok(&shutdown, "test", || async { Err::<(), _>("down") });
        let stop = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            shutdown.cancel();
        };
        let started = Instant::now();
        let (got, ()) = tokio::join!(never, stop);
        assert_eq!(got, None);
        assert_eq!(started.elapsed().as_secs(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_failure_ends_the_wait_at_once() {
        let shutdown = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let got: Option<Result<u32, &str>> = until_ok_or(
            &shutdown,
            "test",
            |e| *e == "bad CA",
            || async {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                if n < 2 { Err("down") } else { Err("bad CA") }
            },
        )
        .await;
        assert_eq!(got, Some(Err("bad CA")));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn advisory_backoff_grows_to_its_cap_and_starts_over_after_a_success() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert!(first >= min && first <= 2 * min, "{first:?}");
        let later: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= 2 * max), "{later:?}");
        assert!(later.last().is_some_and(|d| *d >= max), "{later:?}");
        b.reset();
        assert!(b.next_delay() <= 2 * min);
    }
}
