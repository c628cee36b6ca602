//! The Prometheus registry every process exposes on `/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `ksr_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

impl BuildLabels {
    /// This build: the workspace version, and the commit a release build was made from
    /// (`KSR_GIT_COMMIT` at build time; `unknown` otherwise).
    fn current() -> Self {
        Self {
            version: crate::build_info::VERSION,
            commit: crate::build_info::COMMIT,
        }
    }
}

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
    /// A registry whose metric names all start with `ksr_`, holding `ksr_build_info`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ksr");
        let info: Family<BuildLabels, Gauge> = Family::default();
        info.get_or_create(&BuildLabels::current()).set(1);
        registry.register(
            "build_info",
            "The running build: version and source commit (always 1)",
            info,
        );
        Self {
            inner: Arc::new(Mutex::new(registry)),
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
