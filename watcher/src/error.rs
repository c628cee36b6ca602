//! The one error type of the watcher.

/// Failures of the watcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("source: {0}")]
    Source(String),
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Runtime(#[from] ksr_runtime::RuntimeError),
    #[error("NATS subscription: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}
