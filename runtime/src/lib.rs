//! Shared process plumbing for every kube-service-router process.
//!
//! Telemetry, the admin server (`/livez`, `/readyz`, `/metrics`), shutdown signals, retries,
//! TLS, JetStream stream checks, and the batching consumer loop that drives a projection
//! (`ksr_projection`, the engine itself) from the stream.

pub mod admin;
pub mod build_info;
pub mod config;
pub mod consumer;
pub mod decode;
mod error;
pub mod health;
pub mod json_stream;
pub mod metrics;
pub mod nats;
pub mod process;
pub mod replay;
pub mod retry;
pub mod serve;
pub mod shutdown;
pub mod status_writer;
pub mod stream_pass;
pub mod telemetry;
pub mod tls;

pub use error::RuntimeError;
pub use health::Health;
