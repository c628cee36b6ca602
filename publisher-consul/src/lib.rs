//! publisher-consul: projects the route event stream into the Consul catalog, so that
//! `<name>-<namespace>.<environment>.service.consul` resolves to the edge router.
//!
//! Registrations live on a synthetic catalog node that this installation owns (never on an
//! agent's node, whose anti-entropy would delete them), marked with `NodeMeta` and created
//! with `SkipNodeUpdate` so node metadata is never wiped. Each routed name is one instance of
//! the Consul service named after the environment, tagged with `<name>-<namespace>`, at the
//! router's address. Writes go through `/v1/txn` (at most 64 operations) together with our
//! fences in Consul KV (check-and-set on their ModifyIndex), so replays, duplicates and racing
//! replicas never regress state, and unchanged registrations are never rewritten. With several
//! edge routers every name is one instance per router, each router on its own node, whose
//! node-level health check ([`router_health`]) takes a router that is down out of DNS.

pub mod app;
pub mod config;
pub mod drift;
mod error;
pub mod layout;
pub mod listing;
pub mod projector;
pub mod reconcile;
pub mod router_health;
pub mod routers;
pub mod store;
pub mod target;

pub use error::Error;
