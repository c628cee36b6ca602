//! The projection engine: how an event stream becomes fenced, ordered writes to a target.
//!
//! Every target (vulcand's etcd keys, the Consul catalog) runs the same engine; what differs
//! lives in the target's publisher crate, one module per role, named alike in both:
//!
//! - `layout.rs`: where the target's entries and our records live (key and id formats).
//! - `target.rs`: a [`Target`] — the name an event claims, how claims group, and the writes
//!   ([`Target::Op`]) that turn one projection of a name into the next. Pure.
//! - `store.rs`: the I/O — the target's client, reading our records as they stream in
//!   (handed to [`records::Loading`] at start-up, to a [`survey::Survey`] when reconciling),
//!   and one guarded transaction.
//! - `projector.rs`: the projector — the target's [`apply::Store`] (what a transaction costs,
//!   how it commits, the revisions it gives, re-reading records after a lost race) holding a
//!   [`cache::Cache`] — and `open()`, which the daemon and `ksrctl` both call.
//! - `reconcile.rs` and `drift.rs`: repairing and reporting what the live target differs by.
//!
//! The engine owns the rest: [`records`] (the fence per Service and the claims per name),
//! [`claims`] (fan-in and the older-claim-wins rule), [`plan`] (a batch against the cached
//! records → independent [`plan::Unit`]s), [`pack`] (units into transactions within the
//! target's limits), [`apply`] (commit concurrently, settle, re-plan lost races, apply alone
//! what does not fit; every [`apply::Store`] is a [`Projector`]), [`cache`] (the cached
//! records, settled, refreshed and quarantined the same way for every target, with their
//! gauges), [`survey`] (a full read of the records kept small, for reconciliation), [`drift`] (what a live target differs by) and [`status`] (where each Service
//! stands). The consumer loop (`ksr_runtime::consumer`) drives a [`Projector`] with
//! [`Delivery`] batches.
//!
//! Adding a third target means writing those modules for it: a layout, a [`Target`], the
//! store's I/O and a projector implementing [`apply::Store`]; `publisher-consul` is the
//! smaller example, and `test-support`'s in-memory store the smallest.

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
pub mod survey;
pub mod target;

pub use delivery::{ApplyError, ApplyReport, Delivery, Projector, Rejected};
pub use policy::Policy;
pub use records::{NameRecord, RecordKey, Records, ServiceRecord, State, Versioned};
pub use target::{Desired, DesiredOf, Target};
