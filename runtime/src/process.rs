//! The frame every daemon runs in: process-wide set-up once from `main`, then the metrics
//! registry, health and admin server (`/livez`, `/readyz`, `/metrics`) a daemon runs with
//! until its shutdown signal.

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{AdminArgs, LogArgs, NatsArgs};
use crate::health::Health;
use crate::metrics::MetricsRegistry;
use crate::{RuntimeError, admin, nats, telemetry, tls};

/// Sets up what is process-wide: logging (the first line names `binary`, its version and
/// commit) and rustls' crypto provider. Call once, from `main`, before anything else.
pub fn init(log: &LogArgs, binary: &str) -> Result<(), RuntimeError> {
    telemetry::init(log, binary)?;
    tls::install_crypto_provider();
    Ok(())
}

/// A running daemon's metrics, health and admin server, and the signal that stops it.
#[derive(Debug)]
pub struct Process {
    pub registry: MetricsRegistry,
    pub health: Health,
    /// Cancelled by the daemon's shutdown signal, and when the daemon ends (returned or
    /// dropped), so the admin server never outlives it.
    pub shutdown: CancellationToken,
    admin: JoinHandle<()>,
    _stop: DropGuard,
}

impl Process {
    /// Starts the admin server (not ready until the daemon says so); it stops at `shutdown`.
    pub async fn start(
        admin: &AdminArgs,
        shutdown: CancellationToken,
    ) -> Result<Self, RuntimeError> {
        let shutdown = shutdown.child_token();
        let registry = MetricsRegistry::new();
        let health = Health::new("starting");
        let (_, task) = admin::serve(
            admin.addr,
            health.clone(),
            registry.clone(),
            shutdown.clone(),
        )
        .await?;
        Ok(Self {
            registry,
            health,
            _stop: shutdown.clone().drop_guard(),
            shutdown,
            admin: task,
        })
    }

    /// Connects to NATS as `name`, retrying until it answers; `None` when shut down first.
    pub async fn connect_nats(
        &self,
        args: &NatsArgs,
        name: &str,
    ) -> Result<Option<async_nats::Client>, RuntimeError> {
        self.health.set_not_ready("connecting to NATS");
        nats::connect(args, name, &self.shutdown, &self.health).await
    }

    /// Ends the daemon with `result` once the admin server has stopped serving.
    pub async fn finish<T>(self, result: T) -> T {
        self.shutdown.cancel();
        let _ = self.admin.await;
        result
    }
}
