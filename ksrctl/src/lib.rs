//! ksrctl: the operator's view of kube-service-router.
//!
//! `routes` shows what the edge serves right now: every vulcand route as vulcand reads it
//! from etcd (host, path, servers) and what Consul DNS answers for its host. `events`,
//! `state` and `diff` read the stream as history ([`history`]); `verify` and `rebuild`
//! compare and repair a target against the stream's current state ([`verify`]); `status`
//! shows the stream and its consumers ([`status`]).

pub mod changes;
pub mod checkpointer;
pub mod checkpoints;
pub mod cli;
pub mod commands;
pub mod dns;
pub mod explain;
pub mod history;
pub mod natsauth;
pub mod read;
pub mod retire;
pub mod routes;
pub mod status;
pub mod targets;
pub mod verify;

/// How a command ended (besides failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Clean,
    /// `verify` found differences (exit status 1).
    Drift,
}

/// Maps a failed NATS call to [`Error::Nats`], `what` saying what was asked.
pub(crate) fn nats_err<E>(what: impl Into<String>) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |source| Error::Nats {
        what,
        source: Box::new(source),
    }
}

/// The one error type of ksrctl's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{key}: {reason}")]
    BadKey { key: String, reason: String },
    #[error("NATS: {what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Stream(#[from] ksr_runtime::RuntimeError),
    #[error("vulcand: {0}")]
    Vulcand(#[from] ksr_publisher_vulcand::Error),
    #[error("Consul: {0}")]
    Consul(#[from] ksr_publisher_consul::Error),
    #[error("checkpoints: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Usage(String),
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    #[error("output: {0}")]
    Json(#[from] serde_json::Error),
}
