//! publisher-vulcand: projects the route event stream into vulcand's etcd keys.
//!
//! A durable JetStream consumer shared by every replica feeds batches to
//! [`projector::VulcandProjector`], which writes, in one etcd transaction per group of
//! Services, the vulcand keys (backend → servers → frontend; deletes in reverse) together
//! with our fences (`ksr/<owner>/vulcand/...`): each Service's applied stream sequence and
//! each route's claims. Every write is guarded by compares on the records it read, so
//! replays, duplicates, redeliveries and racing replicas never regress state.

pub mod access;
pub mod app;
pub mod config;
pub mod drift;
mod error;
pub mod failover;
pub mod keys;
pub mod layout;
pub mod projector;
pub mod reconcile;
pub mod records;
pub mod store;
pub mod target;
pub mod v2;
pub mod v2sync;
pub mod v2tree;
pub mod wanted;

pub use error::Error;
