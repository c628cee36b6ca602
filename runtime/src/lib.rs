//! Shared process plumbing for every kube-service-router process.
//!
//! Telemetry, the admin server (`/livez`, `/readyz`, `/metrics`), shutdown signals, JetStream
//! stream checks, the batching projection consumer both publishers run, and the claim rules
//! (multi-cluster fan-in and conflicts) both projections share.

pub mod admin;
pub mod apply;
pub mod build_info;
pub mod claims;
pub mod config;
pub mod consumer;
pub mod decode;
pub mod dns;
pub mod drift;
mod error;
pub mod health;
pub mod metrics;
pub mod nats;
pub mod plan;
pub mod replay;
pub mod retry;
pub mod serve;
pub mod shutdown;
pub mod status;
pub mod status_writer;
pub mod telemetry;
pub mod tls;

pub use error::RuntimeError;
pub use health::Health;
