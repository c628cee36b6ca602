//! The one error type of the watcher.

/// Failures of the watcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("NATS: publish: {0}")]
    Publish(#[source] async_nats::jetstream::context::PublishError),
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

impl Error {
    /// Whether the event certainly was not stored, so retrying it is all it takes: no stream
    /// answered the publish (its leader being elected again, or the stream gone — which the
    /// stream check sees on its own). Any other failure may have been stored.
    pub fn certainly_not_stored(&self) -> bool {
        use async_nats::jetstream::context::PublishErrorKind;
        matches!(self, Error::Publish(e) if e.kind() == PublishErrorKind::StreamNotFound)
    }
}
