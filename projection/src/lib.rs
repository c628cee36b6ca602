//! The projection engine: how an event stream becomes fenced, ordered writes to a target.
//!
//! Every target (vulcand's etcd keys, the Consul catalog) runs the same engine; only three
//! things differ, and each publisher crate has one module per role:
//!
//! - `layout.rs`: where the target's entries and our records live (key and id formats).
//! - `target.rs`: a [`Target`] — the name an event claims, how claims group, and the
//!   writes ([`Target::Op`]) that turn one projection of a name into the next. Pure.
//! - `store.rs`: the I/O — reading our records into a [`State`], committing units as one
//!   transaction guarded by their compares ([`apply::Store`]).
//!
//! The engine owns the rest: [`records`] (the fence per Service and the claims per name),
//! [`claims`] (fan-in and the older-claim-wins rule), [`plan`] (a batch against the cached
//! records → independent [`plan::Unit`]s), [`pack`] (units into transactions within the
//! target's limits), [`apply`] (commit concurrently, settle, re-plan lost races, apply alone
//! what does not fit), [`cache`] (the cached records every projector settles into), [`drift`]
//! (what a live target differs by) and [`status`] (where each Service stands). The consumer
//! loop (`ksr_runtime::consumer`) drives a [`Projector`] with [`Delivery`] batches.
//!
//! Adding a third target means writing a layout, a [`Target`] and an [`apply::Store`], then a
//! projector that pairs them with a [`cache::Cache`] — see `publisher-consul` for the smallest
//! one.

pub mod apply;
pub mod cache;
pub mod claims;
pub mod delivery;
pub mod drift;
pub mod metrics;
pub mod pack;
pub mod plan;
pub mod policy;
pub mod records;
pub mod status;
pub mod target;

pub use delivery::{ApplyError, ApplyReport, Delivery, Projector, Rejected};
pub use policy::Policy;
pub use records::{NameRecord, RecordKey, ServiceRecord, State, Versioned};
pub use target::{Desired, DesiredOf, Target};
