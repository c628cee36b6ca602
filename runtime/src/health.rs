//! Liveness and readiness state shared between a process's tasks and its admin server.

use std::sync::Arc;
use std::sync::Mutex;

/// Readiness with the reason it is not ready, cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<Option<String>>>,
    /// Shown with a ready answer: something an operator should see that does not stop work.
    warning: Arc<Mutex<Option<String>>>,
    /// Shown with a ready answer: what the process follows (e.g. the stream incarnation).
    detail: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Starts not ready, with `reason`.
    pub fn new(reason: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(reason.to_owned()))),
            warning: Arc::new(Mutex::new(None)),
            detail: Arc::new(Mutex::new(None)),
        }
    }

    /// Sets what a ready answer says the process follows.
    pub fn set_detail(&self, detail: impl Into<String>) {
        if let Ok(mut g) = self.detail.lock() {
            *g = Some(detail.into());
        }
    }

    pub fn detail(&self) -> Option<String> {
        self.detail.lock().ok().and_then(|g| g.clone())
    }

    /// Sets (or with `None` clears) the warning shown while ready.
    pub fn set_warning(&self, warning: Option<String>) {
        if let Ok(mut g) = self.warning.lock() {
            *g = warning;
        }
    }

    pub fn warning(&self) -> Option<String> {
        self.warning.lock().ok().and_then(|g| g.clone())
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
