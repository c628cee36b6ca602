//! What a projection target contributes to planning: the name an event asks for, how claims
//! group, and the writes that turn one projection of a name into the next.

use std::fmt::Debug;

use ksr_proto::ServiceKey;

use crate::delivery::Delivery;
use crate::records::NameRecord;
use crate::status::Standing;

/// The name an event asks for.
#[derive(Debug, Clone)]
pub struct Desired<M, D> {
    pub id: String,
    pub meta: M,
    pub data: D,
    /// Stream sequence at which the Service's continuous claim on the name began.
    pub since: u64,
}

/// The desired-name type of a target.
pub type DesiredOf<T> = Desired<<T as Target>::Meta, <T as Target>::Data>;

/// What a projection target contributes to planning.
pub trait Target {
    type Meta: Clone + PartialEq + Debug + Send + Sync;
    type Data: Clone + PartialEq + Debug + Send + Sync;
    type Group: Ord + Clone;
    type Op: Clone + Debug + Send + Sync;

    /// How a conflict is resolved, as logged when a commit creates one.
    const CONFLICT_RULE: &'static str =
        "name conflict: the older claim keeps the name; the others wait";

    /// The name the event claims, or the reason it can never be written.
    fn desired(&self, d: &Delivery) -> Result<Option<DesiredOf<Self>>, ksr_proto::ProtoError>;
    /// Claims of one group share a name (fan-in); different groups conflict.
    fn group(key: &ServiceKey) -> Self::Group;
    /// How a group is shown in `owner` / `waiting`.
    fn group_label(key: &ServiceKey) -> String;
    /// The owner and the waiting claims of a record, as shown to operators (and counted as
    /// conflicts when new): by default the owning group and every other group.
    fn status(record: &NameRecord<Self::Meta, Self::Data>) -> (Option<String>, Vec<String>) {
        let (owners, waiting) = record.claims.split(Self::group);
        let owner = owners.first().map(|c| Self::group_label(&c.key()));
        let mut w: Vec<String> = waiting
            .iter()
            .map(|c| Self::group_label(&c.key()))
            .collect();
        w.sort();
        w.dedup();
        (owner, w)
    }
    /// How a record's name reads to a Service's owner (a hostname, a DNS name).
    fn describe(record: &NameRecord<Self::Meta, Self::Data>) -> String;
    /// Where each claim of a record stands, with the sequence of the event that set it: by
    /// default the owning group serves it and every other group waits for that group.
    fn standings(record: &NameRecord<Self::Meta, Self::Data>) -> Vec<(ServiceKey, u64, Standing)> {
        let (owners, waiting) = record.claims.split(Self::group);
        let name = Self::describe(record);
        let owner = owners
            .first()
            .map(|c| Self::group_label(&c.key()))
            .unwrap_or_default();
        let owner_since = owners.iter().map(|c| c.since).min().unwrap_or(0);
        let serving = owners.iter().map(|c| {
            let s = Standing::Serving { name: name.clone() };
            (c.key(), c.seq, s)
        });
        let waits = waiting.iter().map(|c| {
            let s = Standing::Waiting {
                name: name.clone(),
                owner: owner.clone(),
                owner_since,
            };
            (c.key(), c.seq, s)
        });
        serving.chain(waits).collect()
    }
    /// The target writes that turn the projection of `before` into that of `after`.
    fn ops(
        &self,
        id: &str,
        before: Option<&NameRecord<Self::Meta, Self::Data>>,
        after: &NameRecord<Self::Meta, Self::Data>,
    ) -> Vec<Self::Op>;
}
