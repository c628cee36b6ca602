//! The one error type of the Consul publisher.

use ksr_runtime::RuntimeError;
use ksr_runtime::tls::TlsFlags;

/// Failures of the Consul projection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Consul at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error(
        "Consul denied {what}: {message} (the token needs: node:write on the ksr node, service:write on the environment services and `vulcan`, key:write on the ksr/ KV prefix)"
    )]
    PermissionDenied { what: String, message: String },
    #[error("Consul rejected {what} as invalid (HTTP {status}): {message}")]
    Invalid {
        what: String,
        status: u16,
        message: String,
    },
    #[error("Consul failed {what} (HTTP {status}): {message}")]
    Server {
        what: String,
        status: u16,
        message: String,
    },
    #[error("Consul: {what}: {source}")]
    Listing {
        what: String,
        #[source]
        source: ksr_runtime::json_stream::StreamError<reqwest::Error>,
    },
    #[error("the Consul token file {} cannot be used: {source}", path.display())]
    TokenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
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

/// The TLS flags of Consul, named when its TLS fails.
pub const CONSUL_TLS: TlsFlags = TlsFlags {
    ca: "--consul-ca",
    cert: "--consul-cert",
};

impl Error {
    /// Whether retrying cannot help: a TLS misconfiguration. (A token file is retried: a
    /// rotation may replace it while it is read.)
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Runtime(RuntimeError::Tls { .. }))
    }

    /// Short, fixed reason for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Unreachable { .. } => "consul_unreachable",
            Error::PermissionDenied { .. } => "acl_denied",
            Error::Invalid { .. } => "invalid_request",
            Error::Server { .. } => "consul_error",
            Error::Listing { source, .. } => match source {
                ksr_runtime::json_stream::StreamError::Body(_) => "consul_unreachable",
                _ => "consul_error",
            },
            Error::TokenFile { .. } => "token_unreadable",
            Error::Contention { .. } => "contention",
            Error::Runtime(_) => "runtime",
            Error::Config(_) | Error::Flag(_) => "config",
        }
    }
}
