//! The kube-service-router event contract: schema, naming rules and the versioned wire codec.
//!
//! Every process depends on this crate and nothing else about the wire format: the watcher
//! builds [`Event`]s and encodes them, the publishers and `ksrctl` decode them. The payload is
//! bincode 2.0.1 inside a small versioned envelope ([`codec`]); bincode never leaks out of here.

pub mod checkpoint;
pub mod codec;
mod error;
pub mod goregexp;
pub mod model;
pub mod names;
pub mod route;
pub mod selector;
pub mod subject;
mod v1;
mod v2;

pub use codec::{decode, encode};
pub use error::ProtoError;
pub use model::{Backend, Change, Event, EventKind, RouteState, Scheme, ServiceKey, ServicePort};
pub use route::RoutePath;
