//! A full read of our records kept small, for reconciliation: per name its revision and what
//! the publisher derives from its record, the tombstones and the unreadable records — never
//! the records themselves, which the cache already holds.
//!
//! Reconciliation starts from the store, not the cache (another writer, or a hand, may have
//! changed a record), and compares the target with it. Held as a second [`State`] that read
//! doubled a publisher's memory at 100,000 Services (+133 MiB); a survey is a revision and a
//! digest per name. A repair that needs a whole record takes it from the cache when the
//! cache holds the same revision, and re-reads it otherwise.
//!
//! [`State`]: crate::State

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use ksr_proto::ServiceKey;

use crate::records::{NameRecord, RecordKey, ServiceRecord};

/// A record that could not be read: held as absent at its revision (quarantined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub record: RecordKey,
    /// Its key in the store.
    pub key: String,
    pub rev: u64,
    pub why: String,
}

/// Our records as one full read found them, summarized; `W` is what the publisher derives
/// from a name record (a digest of what it projects to, or nothing).
#[derive(Debug)]
pub struct Survey<W> {
    /// Every name with a record: its revision and what was derived from it (`None`: the
    /// record is unreadable).
    names: HashMap<String, (u64, Option<W>)>,
    /// Fences of removed Services (tombstones), with their revisions.
    tombstones: Vec<(ServiceKey, u64, ServiceRecord)>,
    unreadable: Vec<Unreadable>,
}

impl<W> Default for Survey<W> {
    fn default() -> Self {
        Self {
            names: HashMap::new(),
            tombstones: Vec::new(),
            unreadable: Vec::new(),
        }
    }
}

impl<W> Survey<W> {
    /// Adds `record` as read at `key` (`rev`, `bytes`): a readable name record is handed to
    /// `derive`, whose answer is kept; `fence` turns a fence as read into the form the
    /// planner expects.
    #[allow(clippy::too_many_arguments)]
    pub fn add<M: DeserializeOwned, D: DeserializeOwned>(
        &mut self,
        record: RecordKey,
        key: &str,
        rev: u64,
        bytes: &[u8],
        fence: impl Fn(ServiceRecord) -> ServiceRecord,
        derive: impl FnOnce(&str, &NameRecord<M, D>) -> W,
    ) {
        let unreadable = |why: serde_json::Error| Unreadable {
            record: record.clone(),
            key: key.to_owned(),
            rev,
            why: format!("record {key} is corrupt: {why}"),
        };
        match &record {
            RecordKey::Service(service) => match serde_json::from_slice(bytes) {
                Ok(r) => {
                    let r = fence(r);
                    if r.claim.is_none() {
                        self.tombstones.push((service.clone(), rev, r));
                    }
                }
                Err(e) => self.unreadable.push(unreadable(e)),
            },
            RecordKey::Name(id) => match serde_json::from_slice::<NameRecord<M, D>>(bytes) {
                Ok(r) => {
                    let derived = derive(id, &r);
                    self.names.insert(id.clone(), (rev, Some(derived)));
                }
                Err(e) => {
                    self.unreadable.push(unreadable(e));
                    self.names.insert(id.clone(), (rev, None));
                }
            },
        }
    }

    /// Logs the unreadable records (`repair`: the `ksrctl rebuild` target that repairs them
    /// now); they are quarantined in the cache by [`crate::cache::Cache::quarantine`].
    pub fn finish(self, repair: &str) -> Self {
        for u in &self.unreadable {
            tracing::error!(key = u.key, error = %u.why, "unreadable record under our prefix quarantined; the next write for it replaces it (ksrctl rebuild {repair} repairs it now)");
        }
        self
    }

    /// Name `id`'s revision and what was derived from its record: `(0, None)` when it has no
    /// record, `(rev, None)` when it is unreadable.
    pub fn name(&self, id: &str) -> (u64, Option<&W>) {
        self.names
            .get(id)
            .map_or((0, None), |(rev, w)| (*rev, w.as_ref()))
    }

    /// Every name with a record: id, revision, what was derived (`None`: unreadable).
    pub fn names(&self) -> impl Iterator<Item = (&String, u64, Option<&W>)> {
        self.names
            .iter()
            .map(|(id, (rev, w))| (id, *rev, w.as_ref()))
    }

    pub fn unreadable(&self) -> &[Unreadable] {
        &self.unreadable
    }

    /// The tombstones that protect nothing any more
    /// ([`ServiceRecord::collectable`]), with their revisions, for a guarded delete.
    pub fn collectable_tombstones(
        &self,
        incarnation: u64,
        first_seq: u64,
    ) -> Vec<(ServiceKey, u64)> {
        self.tombstones
            .iter()
            .filter(|(_, _, r)| r.collectable(incarnation, first_seq))
            .map(|(key, rev, _)| (key.clone(), *rev))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Meta {
        host: String,
    }

    type Record = NameRecord<Meta, ()>;

    fn fence(seq: u64, claim: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&ServiceRecord {
            seq,
            claim: claim.map(str::to_owned),
            incarnation: 7,
        })
        .unwrap()
    }

    #[test]
    fn a_survey_keeps_revisions_derivations_tombstones_and_unreadable_records() {
        let mut s: Survey<usize> = Survey::default();
        let identity = |f| f;
        let derive = |id: &str, r: &Record| id.len() + r.meta.host.len();
        let record = serde_json::to_vec(&Record::new(Meta {
            host: "meta".into(),
        }))
        .unwrap();
        s.add(
            RecordKey::Name("a".into()),
            "k/a",
            5,
            &record,
            identity,
            derive,
        );
        s.add(
            RecordKey::Name("b".into()),
            "k/b",
            6,
            b"{",
            identity,
            derive,
        );
        let live = ServiceKey::new("east", "default", "live");
        let gone = ServiceKey::new("east", "default", "gone");
        s.add::<Meta, ()>(
            RecordKey::Service(live),
            "k/live",
            8,
            &fence(3, Some("a")),
            identity,
            derive,
        );
        s.add::<Meta, ()>(
            RecordKey::Service(gone.clone()),
            "k/gone",
            9,
            &fence(4, None),
            identity,
            derive,
        );
        s.add::<Meta, ()>(
            RecordKey::Service(ServiceKey::new("east", "x", "y")),
            "k/bad",
            10,
            b"no",
            identity,
            derive,
        );
        let s = s.finish("test");
        assert_eq!(s.name("a"), (5, Some(&5)));
        assert_eq!(s.name("b"), (6, None));
        assert_eq!(s.name("c"), (0, None));
        assert_eq!(s.names().count(), 2);
        let bad: Vec<_> = s
            .unreadable()
            .iter()
            .map(|u| (u.key.as_str(), u.rev))
            .collect();
        assert_eq!(bad, vec![("k/b", 6), ("k/bad", 10)]);
        // Only the tombstone, and only once the stream no longer holds its sequence.
        assert_eq!(s.collectable_tombstones(7, 4), vec![]);
        assert_eq!(s.collectable_tombstones(7, 5), vec![(gone.clone(), 9)]);
        assert_eq!(s.collectable_tombstones(8, 0), vec![(gone, 9)]);
    }
}
