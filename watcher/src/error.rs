//! The one error type of the watcher.

/// Failures of the watcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NATS: reading the stream's newest event of {subject}: {source}")]
    LastEvent {
        subject: String,
        #[source]
        source: async_nats::jetstream::stream::LastRawMessageError,
    },
    #[error("NATS: {key}: kept conflicting with another writer")]
    Contention { key: ksr_proto::ServiceKey },
    #[error("NATS: {key}: no answer within {after:?}")]
    Stalled {
        key: ksr_proto::ServiceKey,
        after: std::time::Duration,
    },
    #[error("NATS: publish: {0}")]
    Publish(#[source] async_nats::jetstream::context::PublishError),
    #[error("Kubernetes: {what}: {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Kubernetes: no configuration (KUBECONFIG, ~/.kube/config or the in-cluster service account): {0}"
    )]
    KubeConfig(#[source] kube::config::InferConfigError),
    #[error("Kubernetes: namespace kube-system has no UID (it names the cluster)")]
    NoClusterUid,
    #[error("the source ended")]
    SourceEnded,
    #[error("invalid event: {0}")]
    Invalid(#[source] ksr_proto::ProtoError),
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
