//! The one error type of the vulcand publisher.

use ksr_runtime::RuntimeError;
use ksr_runtime::tls::{TlsFlags, misconfigured};

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
    #[error("etcd v2 API at {url}: {source}")]
    EtcdV2Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("etcd v2 API: no endpoint of {urls} answered; the last: {source}")]
    EtcdV2Unreachable {
        urls: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("etcd v2 API: reading {dir}: {source}")]
    EtcdV2Listing {
        dir: String,
        #[source]
        source: crate::v2tree::StreamError,
    },
    #[error("writes kept conflicting with another writer after {attempts} attempts")]
    Contention { attempts: u32 },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("configuration: {0}")]
    Config(String),
    /// A flag's value cannot be used.
    #[error("configuration: {0}")]
    Flag(#[from] ksr_runtime::config::FlagError),
}

/// The TLS flags of etcd, named when its TLS fails.
pub const ETCD_TLS: TlsFlags = TlsFlags {
    ca: "--etcd-ca",
    cert: "--etcd-cert",
};

impl Error {
    /// Whether retrying cannot help: refused credentials or a TLS misconfiguration.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::PermissionDenied { .. }
                | Error::Runtime(RuntimeError::Tls { .. } | RuntimeError::File { .. })
        )
    }

    /// `self`, or the TLS misconfiguration underneath it (naming `--etcd-ca`/`--etcd-cert`).
    /// etcd-client's error does not expose its cause, so its variants are opened here.
    pub fn diagnosed(self, endpoints: &str) -> Self {
        let tls = match &self {
            Error::Etcd(etcd_client::Error::TransportError(e)) => {
                misconfigured(e, endpoints, ETCD_TLS)
            }
            Error::Etcd(etcd_client::Error::GRpcStatus(s)) => misconfigured(s, endpoints, ETCD_TLS),
            other => misconfigured(other, endpoints, ETCD_TLS),
        };
        tls.map_or(self, Error::Runtime)
    }

    /// Short, fixed reason for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Etcd(e) if crate::access::is_permission_denied(e) => "permission_denied",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Etcd(_) => "etcd",
            Error::EtcdV2 { .. }
            | Error::EtcdV2Request { .. }
            | Error::EtcdV2Unreachable { .. }
            | Error::EtcdV2Listing { .. } => "etcd_v2",
            Error::Contention { .. } => "contention",
            Error::Runtime(_) => "runtime",
            Error::Config(_) | Error::Flag(_) => "config",
        }
    }
}
