//! The Prometheus registry every process exposes on `/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// A registry shared by the process's components and the admin server.
#[derive(Debug, Clone)]
pub struct MetricsRegistry {
    inner: Arc<Mutex<Registry>>,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    /// A registry whose metric names all start with `ksr_`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Registry::with_prefix("ksr"))),
        }
    }

    /// Registers metrics (called once per component at start-up).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.inner.lock() {
            f(&mut r);
        }
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.inner.lock() {
            let _ = encode(&mut out, &r);
        }
        out
    }
}
