//! The records every projection keeps next to what it writes, as last read or written.
//!
//! A per-Service [`ServiceRecord`] (the fence: applied stream sequence and the name it claims)
//! and a per-name [`NameRecord`] (every Service claiming that name, and which group owns it),
//! each [`Versioned`] by the store's revision, held together in a [`State`].

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use ksr_proto::ServiceKey;

use crate::claims::Claims;
use crate::delivery::Delivery;
use crate::plan::Unit;

/// A record as last read or written: `rev` is its revision in the store, 0 when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub rev: u64,
    pub value: Option<T>,
}

impl<T> Default for Versioned<T> {
    fn default() -> Self {
        Self {
            rev: 0,
            value: None,
        }
    }
}

/// The fence of one Service: the stream sequence last applied and the name it claims.
/// A removed Service keeps its record (a tombstone) so an older replayed event cannot
/// resurrect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub seq: u64,
    pub claim: Option<String>,
    /// The incarnation of the stream `seq` counts in; 0 in records written before
    /// incarnations were kept (taken as the current one).
    #[serde(default)]
    pub incarnation: u64,
}

impl ServiceRecord {
    /// Whether `d` is not newer than this fence: an older stream incarnation, or the same
    /// one (a record without one counts as the same) at a sequence not above ours.
    pub fn covers(&self, d: &Delivery) -> bool {
        let ours = if self.incarnation == 0 {
            d.incarnation
        } else {
            self.incarnation
        };
        (ours, self.seq) >= (d.incarnation, d.seq)
    }

    /// Whether this is a tombstone (the fence of a removed Service) that protects nothing any
    /// more: no event of its Service at or below its sequence can be delivered again, because
    /// the stream is another incarnation, or its first remaining sequence is above ours
    /// (retention dropped everything older).
    pub fn collectable(&self, incarnation: u64, first_seq: u64) -> bool {
        let other_stream = self.incarnation != 0 && self.incarnation != incarnation;
        self.claim.is_none() && (other_stream || self.seq < first_seq)
    }
}

/// Everything about one projected name: who claims it, who owns it, who waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord<M, D> {
    /// What the name is (vulcand: host and path; Consul: environment and tag).
    #[serde(flatten)]
    pub meta: M,
    pub claims: Claims<D>,
    /// The owning group (derived, for operators).
    pub owner: Option<String>,
    /// Conflicting groups waiting for the name (derived, for operators).
    pub waiting: Vec<String>,
}

impl<M, D: Clone> NameRecord<M, D> {
    pub fn new(meta: M) -> Self {
        Self {
            meta,
            claims: Claims::default(),
            owner: None,
            waiting: Vec::new(),
        }
    }
}

/// Our records as last read or written.
/// Whether opening a projector reads our records from its store: a publisher and a rebuild
/// plan against them; a verification compares the target with the stream alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    Load,
    Skip,
}

#[derive(Debug, Clone)]
pub struct State<M, D> {
    pub services: HashMap<ServiceKey, Versioned<ServiceRecord>>,
    /// Records that could not be read at the last load (record, store key, why): held as
    /// absent with their revision, so the next write for them replaces them.
    pub corrupt: Vec<(RecordKey, String, String)>,
    /// Written only through [`State::set_name`], which keeps the counts below.
    names: HashMap<String, Versioned<NameRecord<M, D>>>,
    /// Names with a record, and those of them with waiting Services (for gauges, kept
    /// current on every write instead of recounted after every batch).
    named: usize,
    in_conflict: usize,
}

impl<M, D> Default for State<M, D> {
    fn default() -> Self {
        Self {
            services: HashMap::new(),
            corrupt: Vec::new(),
            names: HashMap::new(),
            named: 0,
            in_conflict: 0,
        }
    }
}

impl<M, D> State<M, D> {
    pub fn service(&self, key: &ServiceKey) -> (u64, Option<&ServiceRecord>) {
        self.services
            .get(key)
            .map(|v| (v.rev, v.value.as_ref()))
            .unwrap_or((0, None))
    }

    pub fn name(&self, id: &str) -> (u64, Option<&NameRecord<M, D>>) {
        self.names
            .get(id)
            .map(|v| (v.rev, v.value.as_ref()))
            .unwrap_or((0, None))
    }

    /// Every name record (with its revision).
    pub fn names(&self) -> impl Iterator<Item = (&String, &Versioned<NameRecord<M, D>>)> {
        self.names.iter()
    }

    /// Sets a name record (a `None` value: absent), keeping the counts.
    pub fn set_name(&mut self, id: String, v: Versioned<NameRecord<M, D>>) {
        fn weight<M, D>(v: &Versioned<NameRecord<M, D>>) -> (usize, usize) {
            v.value
                .as_ref()
                .map_or((0, 0), |r| (1, usize::from(!r.waiting.is_empty())))
        }
        let (named, conflicted) = weight(&v);
        if let Some(old) = self.names.insert(id, v) {
            let (n, c) = weight(&old);
            self.named -= n;
            self.in_conflict -= c;
        }
        self.named += named;
        self.in_conflict += conflicted;
    }

    /// Records what committed units wrote, each record at the revision `rev_of` says the
    /// store gave it (etcd: the transaction's; Consul: each key's own index).
    pub fn settle<O>(&mut self, units: &[Unit<M, D, O>], rev_of: impl Fn(&RecordKey) -> u64)
    where
        M: Clone,
        D: Clone,
    {
        for u in units {
            for (key, record) in &u.services {
                let rev = rev_of(&RecordKey::Service(key.clone()));
                let value = Some(record.clone());
                self.services.insert(key.clone(), Versioned { rev, value });
            }
            for (id, record) in &u.names {
                let v = match record {
                    Some(r) => Versioned {
                        rev: rev_of(&RecordKey::Name(id.clone())),
                        value: Some(r.clone()),
                    },
                    None => Versioned::default(),
                };
                self.set_name(id.clone(), v);
            }
        }
    }

    /// (names with a record, names with waiting Services).
    pub fn counts(&self) -> (usize, usize) {
        (self.named, self.in_conflict)
    }

    /// Tombstones that protect nothing any more ([`ServiceRecord::collectable`]), with their
    /// revisions, for a guarded delete.
    pub fn collectable_tombstones(
        &self,
        incarnation: u64,
        first_seq: u64,
    ) -> Vec<(ServiceKey, u64)> {
        self.services
            .iter()
            .filter(|(_, v)| {
                v.value
                    .as_ref()
                    .is_some_and(|r| r.collectable(incarnation, first_seq))
            })
            .map(|(key, v)| (key.clone(), v.rev))
            .collect()
    }

    /// Quarantines a record that could not be read (at revision `rev`, stored at `store_key`):
    /// it is held as absent with its revision, so the next write for it replaces it. The
    /// fences of Services claiming an unreadable name record are forgotten as well (kept as
    /// absent with their revisions), so their newest events are applied again — by the
    /// consumer or the reconciliation's stream pass — and rebuild the name's claims.
    pub fn quarantine(&mut self, record: RecordKey, rev: u64, store_key: String, why: String) {
        match &record {
            RecordKey::Service(key) => {
                self.services
                    .insert(key.clone(), Versioned { rev, value: None });
            }
            RecordKey::Name(id) => {
                self.set_name(id.clone(), Versioned { rev, value: None });
                for fence in self.services.values_mut() {
                    if fence
                        .value
                        .as_ref()
                        .is_some_and(|r| r.claim.as_deref() == Some(id.as_str()))
                    {
                        fence.value = None;
                    }
                }
            }
        }
        self.corrupt.retain(|(r, _, _)| *r != record);
        self.corrupt.push((record, store_key, why));
    }

    /// Our records from a full read of the store (record, its key in the store, revision,
    /// bytes); see [`Loading`].
    pub fn from_raw(
        records: impl IntoIterator<Item = (RecordKey, String, u64, Vec<u8>)>,
        fence: impl Fn(ServiceRecord) -> ServiceRecord,
        repair: &str,
    ) -> Self
    where
        M: DeserializeOwned,
        D: DeserializeOwned,
    {
        let mut loading = Loading::default();
        for (record, key, rev, bytes) in records {
            loading.add(record, &key, rev, &bytes, &fence);
        }
        loading.finish(repair)
    }

    /// Replaces one record with what the store holds now (`None`: absent); an unreadable one
    /// is held as absent at its revision (see [`State::quarantine`]).
    pub fn replace(
        &mut self,
        record: RecordKey,
        found: Option<(u64, Vec<u8>)>,
        fence: impl Fn(ServiceRecord) -> ServiceRecord,
    ) where
        M: DeserializeOwned,
        D: DeserializeOwned,
    {
        let Some((rev, bytes)) = found else {
            match record {
                RecordKey::Service(key) => {
                    self.services.insert(key, Versioned::default());
                }
                RecordKey::Name(id) => self.set_name(id, Versioned::default()),
            }
            return;
        };
        if self.insert_raw(&record, rev, &bytes, fence).is_err() {
            match record {
                RecordKey::Service(key) => {
                    self.services.insert(key, Versioned { rev, value: None });
                }
                RecordKey::Name(id) => self.set_name(id, Versioned { rev, value: None }),
            }
        }
    }

    /// Parses and holds one record read at `rev`.
    fn insert_raw(
        &mut self,
        record: &RecordKey,
        rev: u64,
        bytes: &[u8],
        fence: impl Fn(ServiceRecord) -> ServiceRecord,
    ) -> Result<(), serde_json::Error>
    where
        M: DeserializeOwned,
        D: DeserializeOwned,
    {
        match record {
            RecordKey::Service(key) => {
                let value = Some(fence(serde_json::from_slice(bytes)?));
                self.services.insert(key.clone(), Versioned { rev, value });
            }
            RecordKey::Name(id) => {
                let value = Some(serde_json::from_slice(bytes)?);
                self.set_name(id.clone(), Versioned { rev, value });
            }
        }
        Ok(())
    }
}

/// Our records from a full read of the store, added one at a time as the read hands them over
/// (so the read's bytes are never all held). An unreadable record (a hand edit, a partial
/// restore, another program's format) stops nothing: it is logged and quarantined once every
/// record is loaded, so the next write for it replaces it.
#[derive(Debug)]
pub struct Loading<M, D> {
    state: State<M, D>,
    unreadable: Vec<(RecordKey, String, u64, serde_json::Error)>,
}

impl<M, D> Default for Loading<M, D> {
    fn default() -> Self {
        Self {
            state: State::default(),
            unreadable: Vec::new(),
        }
    }
}

impl<M: DeserializeOwned, D: DeserializeOwned> Loading<M, D> {
    /// Adds `record` as read at `key` (`rev`, `bytes`); `fence` turns a fence as read into
    /// the form the planner expects.
    pub fn add(
        &mut self,
        record: RecordKey,
        key: &str,
        rev: u64,
        bytes: &[u8],
        fence: impl Fn(ServiceRecord) -> ServiceRecord,
    ) {
        if let Err(e) = self.state.insert_raw(&record, rev, bytes, fence) {
            self.unreadable.push((record, key.to_owned(), rev, e));
        }
    }

    /// The records, the unreadable ones quarantined (`repair`: the `ksrctl rebuild` target
    /// that repairs them now).
    pub fn finish(self, repair: &str) -> State<M, D> {
        let mut state = self.state;
        for (record, key, rev, error) in self.unreadable {
            let why = format!("record {key} is corrupt: {error}");
            tracing::error!(key, error = %why, "unreadable record under our prefix quarantined; the next write for it replaces it (ksrctl rebuild {repair} repairs it now)");
            state.quarantine(record, rev, key, why);
        }
        state
    }
}

/// A record a unit read and guards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Service(ServiceKey),
    Name(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(waiting: bool) -> Versioned<NameRecord<(), ()>> {
        let mut r = NameRecord::new(());
        if waiting {
            r.waiting.push("other".into());
        }
        Versioned {
            rev: 1,
            value: Some(r),
        }
    }

    #[test]
    fn only_tombstones_that_protect_nothing_are_collectable() {
        let mut s: State<(), ()> = State::default();
        let put = |s: &mut State<(), ()>, name: &str, seq, claim: Option<&str>, inc| {
            s.services.insert(
                ServiceKey::new("east", "default", name),
                Versioned {
                    rev: seq,
                    value: Some(ServiceRecord {
                        seq,
                        claim: claim.map(str::to_owned),
                        incarnation: inc,
                    }),
                },
            );
        };
        put(&mut s, "live", 5, Some("host"), 7);
        put(&mut s, "old-stream", 90, None, 3);
        put(&mut s, "purged", 4, None, 7);
        put(&mut s, "kept", 40, None, 7);
        put(&mut s, "legacy", 4, None, 0);
        let mut got: Vec<String> = s
            .collectable_tombstones(7, 10)
            .into_iter()
            .map(|(k, _)| k.name)
            .collect();
        got.sort();
        assert_eq!(got, vec!["legacy", "old-stream", "purged"]);
    }

    #[test]
    fn name_counts_follow_every_write() {
        let mut s: State<(), ()> = State::default();
        s.set_name("a".into(), record(false));
        s.set_name("b".into(), record(true));
        assert_eq!(s.counts(), (2, 1));
        s.set_name("b".into(), record(false));
        assert_eq!(s.counts(), (2, 0));
        s.set_name("a".into(), Versioned::default());
        assert_eq!(s.counts(), (1, 0));
        s.set_name("z".into(), Versioned::default());
        assert_eq!(s.counts(), (1, 0));
    }

    type Meta = std::collections::BTreeMap<String, String>;

    fn json<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("test records serialize")
    }

    #[test]
    fn unreadable_records_are_quarantined_once_everything_is_loaded() {
        let web = ServiceKey::new("east", "shop", "web");
        let fence = ServiceRecord {
            seq: 5,
            claim: Some("web-shop".into()),
            incarnation: 7,
        };
        let other = NameRecord::<Meta, u64>::new(Meta::new());
        // The unreadable name comes first, before the fence that claims it.
        let raw = vec![
            (
                RecordKey::Name("web-shop".into()),
                "names/web-shop".into(),
                3,
                b"{oops".to_vec(),
            ),
            (
                RecordKey::Service(web.clone()),
                "services/east/shop/web".into(),
                4,
                json(&fence),
            ),
            (
                RecordKey::Name("other".into()),
                "names/other".into(),
                6,
                json(&other),
            ),
        ];
        let s: State<Meta, u64> = State::from_raw(raw, |f| f, "test");
        // Held as absent at its revision, and so is every fence claiming it: the events of
        // its Services are applied again and replace it.
        assert_eq!(s.name("web-shop"), (3, None));
        assert_eq!(s.service(&web), (4, None));
        assert_eq!(s.name("other"), (6, Some(&other)));
        assert_eq!(s.corrupt.len(), 1);
        assert_eq!(s.corrupt[0].1, "names/web-shop");
        assert!(
            s.corrupt[0].2.contains("names/web-shop"),
            "{}",
            s.corrupt[0].2
        );
    }

    #[test]
    fn a_fresh_read_replaces_a_record_and_an_unreadable_one_reads_as_absent() {
        let mut s: State<Meta, u64> = State::default();
        let a = RecordKey::Name("a".into());
        let record = NameRecord::<Meta, u64>::new(Meta::new());
        s.replace(a.clone(), Some((2, json(&record))), |f| f);
        assert_eq!(s.name("a"), (2, Some(&record)));
        s.replace(a.clone(), Some((3, b"garbage".to_vec())), |f| f);
        assert_eq!(s.name("a"), (3, None));
        s.replace(a, None, |f| f);
        assert_eq!(s.name("a"), (0, None));
        // A fence goes through `fence` (vulcand rewrites fences of older releases).
        let web = ServiceKey::new("east", "shop", "web");
        let fence = ServiceRecord {
            seq: 1,
            claim: Some("old".into()),
            incarnation: 0,
        };
        let renamed = |mut f: ServiceRecord| {
            f.claim = Some("new".into());
            f
        };
        s.replace(
            RecordKey::Service(web.clone()),
            Some((9, json(&fence))),
            renamed,
        );
        let (rev, got) = s.service(&web);
        assert_eq!(
            (rev, got.and_then(|f| f.claim.as_deref())),
            (9, Some("new"))
        );
    }
}
