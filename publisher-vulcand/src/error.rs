//! The one error type of the vulcand publisher.

/// Failures of the vulcand projection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(
        "etcd refuses these credentials on {prefix}: {message} (grant the --etcd-user's role readwrite on the vulcand prefix and on ksr/<owner>/; README, Security)"
    )]
    PermissionDenied { prefix: String, message: String },
    #[error("etcd v2 API at {url}: {message}")]
    EtcdV2 { url: String, message: String },
    #[error("record {key} is corrupt: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error("writes kept conflicting with another writer after {attempts} attempts")]
    Contention { attempts: u32 },
    #[error(transparent)]
    Runtime(#[from] ksr_runtime::RuntimeError),
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Short, fixed reason for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Etcd(e) if crate::access::is_permission_denied(e) => "permission_denied",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Etcd(_) => "etcd",
            Error::EtcdV2 { .. } => "etcd_v2",
            Error::CorruptRecord { .. } => "corrupt_record",
            Error::Contention { .. } => "contention",
            Error::Runtime(_) => "runtime",
            Error::Config(_) => "config",
        }
    }
}
