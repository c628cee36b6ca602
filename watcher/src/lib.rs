//! ksr-watcher: turns a cluster's labelled Services into the route event stream.
//!
//! Sources (the Kubernetes API through kube-runtime watchers, or a manifest directory) feed an
//! [`inventory::Inventory`]; the [`runner::Runner`] normalizes each Service
//! ([`normalize`]) and publishes only real changes ([`publish`]) with per-subject optimistic
//! concurrency, so two replicas of one cluster's watcher produce the same stream as one.

pub mod app;
pub mod coalesce;
pub mod config;
mod error;
pub mod guard;
pub mod inventory;
pub mod metrics;
pub mod normalize;
pub mod notify;
pub mod publish;
pub mod runner;
pub mod source;
pub mod status;

pub use error::Error;
