//! Liveness and readiness state shared between a process's tasks and its admin server.

use std::sync::Arc;
use std::sync::Mutex;

/// Readiness with the reason it is not ready, cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Starts not ready, with `reason`.
    pub fn new(reason: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(reason.to_owned()))),
        }
    }

    pub fn set_ready(&self) {
        if let Ok(mut g) = self.inner.lock() {
            *g = None;
        }
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        if let Ok(mut g) = self.inner.lock() {
            *g = Some(reason.into());
        }
    }

    /// `Ok` when ready, else the reason.
    pub fn status(&self) -> Result<(), String> {
        match self.inner.lock() {
            Ok(g) => match &*g {
                None => Ok(()),
                Some(reason) => Err(reason.clone()),
            },
            Err(_) => Err("health state poisoned".into()),
        }
    }
}
