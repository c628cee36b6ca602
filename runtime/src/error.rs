//! The one error type of the runtime crate.

/// Failures of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("JetStream consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
    /// The durable consumer (or its stream) was deleted, or the stream was created again:
    /// the publisher re-reads the stream and binds its consumer anew.
    #[error("stream {stream} was deleted or created again (consumer {consumer} is gone)")]
    StreamRecreated { stream: String, consumer: String },
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("telemetry: {0}")]
    Telemetry(String),
}
