//! ksrctl: the operator's view of kube-service-router.
//!
//! `routes` shows what the edge serves right now: every vulcand route as vulcand reads it
//! from etcd (host, path, servers) and what Consul DNS answers for its host. `events`,
//! `state` and `diff` read the stream as history ([`history`]).

pub mod history;
pub mod routes;

/// The one error type of ksrctl's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{key}: {reason}")]
    BadKey { key: String, reason: String },
}
