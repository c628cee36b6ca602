//! The one error type of the runtime crate.

/// Failures of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    /// The server refused our credentials: retrying cannot help, the flag must change.
    #[error("NATS at {url} refused our credentials (check {flag}): {source}")]
    Credentials {
        url: String,
        flag: &'static str,
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
    /// A file a flag names (a CA, a certificate, a key, an NKey seed) cannot be read.
    #[error("{flag} {}: {source}", path.display())]
    File {
        flag: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// TLS is misconfigured: retrying cannot help, the flag must change.
    #[error("TLS to {server} failed, {problem} (check {flag}): {source}")]
    Tls {
        server: String,
        flag: &'static str,
        problem: &'static str,
        source: rustls::Error,
    },
    /// `--log` is not a valid filter.
    #[error("--log {filter:?}: {source}")]
    LogFilter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// Logging was set up twice in one process.
    #[error("telemetry: {0}")]
    Telemetry(#[source] Box<dyn std::error::Error + Send + Sync>),
}
