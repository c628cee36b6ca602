//! A process's `app::run` running in the test, with its admin endpoints at hand.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, http};

/// A running process (its library `run`), stopped on drop.
#[derive(Debug)]
pub struct Replica<E> {
    pub admin_port: u16,
    pub stop: CancellationToken,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: std::error::Error + Send + Sync + 'static> Replica<E> {
    /// Spawns `run(stop)`; `admin_port` is where its admin server listens.
    pub fn spawn<F>(admin_port: u16, run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        Self {
            admin_port,
            stop,
            task: Some(task),
        }
    }

    /// Stops the process and waits for it to finish (it drains what it has in hand).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    /// Waits for the process to end on its own (without asking it to stop); its result.
    pub async fn join(mut self) -> anyhow::Result<Result<(), E>> {
        let task = self
            .task
            .take()
            .ok_or_else(|| anyhow::anyhow!("already joined"))?;
        Ok(task.await?)
    }

    /// `/readyz`: (status, body).
    pub async fn readyz(&self) -> Option<(u16, String)> {
        http::get(self.admin_port, "/readyz").await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) -> anyhow::Result<()> {
        eventually(Duration::from_secs(30), || async {
            let (status, body) = self
                .readyz()
                .await
                .ok_or_else(|| anyhow::anyhow!("no answer"))?;
            anyhow::ensure!(status == 200, "{body}");
            Ok(())
        })
        .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http::get(self.admin_port, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// The value of one unlabelled sample (`name value`), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name)
    }
}

/// The value of one sample (`name value`, labels included in `name`) in a Prometheus text,
/// 0 when absent.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl<E> Drop for Replica<E> {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
