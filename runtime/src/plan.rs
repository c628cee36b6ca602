//! Planning a batch against fenced records: the algorithm both projections share.
//!
//! Every projection keeps, next to what it writes, two kinds of records: a per-Service
//! [`ServiceRecord`] (the fence: applied stream sequence and the name it claims) and a
//! per-name [`NameRecord`] (every Service claiming that name, and which group owns it). Given
//! a snapshot of those records with their revisions, [`plan`] drops stale events, groups the
//! rest so that events touching the same name (the one they leave or the one they join) land
//! in the same [`Unit`], and for each unit computes the new records, the target writes (from
//! the [`Target`]) and the compares that guard them. Units never share a record, so they can
//! commit concurrently. Pure and synchronous.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use ksr_proto::ServiceKey;

use crate::claims::Claims;
use crate::consumer::{Delivery, Rejected};
use crate::status::{Change, Standing};

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

    /// Tombstones (fences of removed Services) that protect nothing any more: no event of
    /// their Service at or below their sequence can be delivered again, because the stream
    /// is another incarnation, or its first remaining sequence is above theirs (retention
    /// dropped everything older). With their revisions, for a guarded delete.
    pub fn collectable_tombstones(
        &self,
        incarnation: u64,
        first_seq: u64,
    ) -> Vec<(ServiceKey, u64)> {
        self.services
            .iter()
            .filter_map(|(key, v)| {
                let r = v.value.as_ref()?;
                let other_stream = r.incarnation != 0 && r.incarnation != incarnation;
                (r.claim.is_none() && (other_stream || r.seq < first_seq))
                    .then(|| (key.clone(), v.rev))
            })
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

    /// Quarantines in this (cached) state what `snapshot` (a fresh load) found unreadable.
    pub fn quarantine_from(&mut self, snapshot: &State<M, D>) {
        for (record, key, why) in &snapshot.corrupt {
            let rev = match record {
                RecordKey::Service(s) => snapshot.service(s).0,
                RecordKey::Name(id) => snapshot.name(id).0,
            };
            self.quarantine(record.clone(), rev, key.clone(), why.clone());
        }
    }
}

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
    type Meta: Clone + PartialEq + Debug;
    type Data: Clone + PartialEq + Debug;
    type Group: Ord + Clone;
    type Op: Clone + Debug;

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

/// A record a unit read and guards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Service(ServiceKey),
    Name(String),
}

/// A conflict a unit creates: the name's owner and the groups that newly wait for it.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub id: String,
    pub owner: String,
    pub waiting: Vec<String>,
}

/// One atomic piece of work.
#[derive(Debug, Clone)]
pub struct Unit<M, D, O> {
    /// Stream sequences applied by this unit.
    pub seqs: Vec<u64>,
    /// Records read, with the revision they must still have (0 = must be absent).
    pub compares: Vec<(RecordKey, u64)>,
    /// Target writes.
    pub ops: Vec<O>,
    pub services: Vec<(ServiceKey, ServiceRecord)>,
    /// New name records (None: delete the record).
    pub names: Vec<(String, Option<NameRecord<M, D>>)>,
    pub conflicts: Vec<Conflict>,
}

impl<M, D, O> Default for Unit<M, D, O> {
    fn default() -> Self {
        Self {
            seqs: Vec::new(),
            compares: Vec::new(),
            ops: Vec::new(),
            services: Vec::new(),
            names: Vec::new(),
            conflicts: Vec::new(),
        }
    }
}

/// The unit type of a target.
pub type UnitOf<T> = Unit<<T as Target>::Meta, <T as Target>::Data, <T as Target>::Op>;
/// The state type of a target.
pub type StateOf<T> = State<<T as Target>::Meta, <T as Target>::Data>;

/// The result of planning a batch.
#[derive(Debug)]
pub struct PlanOutput<M, D, O> {
    pub units: Vec<Unit<M, D, O>>,
    pub stale: Vec<u64>,
    pub rejected: Vec<Rejected>,
}

/// The records an empty store holds once `latest` (the newest event per Service, sorted by
/// sequence) is applied: what a rebuild writes, computed without a store. Events the target
/// refuses come back with their reason.
pub fn simulate<T: Target>(target: &T, latest: &[Delivery]) -> (StateOf<T>, Vec<Rejected>) {
    let planned = plan(target, &State::default(), latest);
    let mut state = State::default();
    // Units never share a record, so applying them one after the other is the whole story.
    for unit in planned.units {
        for (key, record) in unit.services {
            state.services.insert(
                key,
                Versioned {
                    rev: 1,
                    value: Some(record),
                },
            );
        }
        for (id, record) in unit.names {
            let rev = u64::from(record.is_some());
            state.set_name(id, Versioned { rev, value: record });
        }
    }
    (state, planned.rejected)
}

/// The status changes committed units make: where every Service claiming a name they wrote
/// stands now, and the Services that claim nothing any more.
pub fn changes<T: Target>(units: &[UnitOf<T>]) -> Vec<Change> {
    let mut out = Vec::new();
    for u in units {
        for (key, record) in &u.services {
            if record.claim.is_none() {
                out.push((key.clone(), record.seq, None));
            }
        }
        for record in u.names.iter().filter_map(|(_, r)| r.as_ref()) {
            out.extend(claims_standing::<T>(record));
        }
    }
    out
}

/// Where every Service claiming a name in `state` stands.
pub fn standings<T: Target>(state: &StateOf<T>) -> Vec<Change> {
    state
        .names()
        .filter_map(|(_, v)| v.value.as_ref())
        .flat_map(claims_standing::<T>)
        .collect()
}

/// Where each Service claiming `record`'s name stands, as status changes.
fn claims_standing<T: Target>(
    record: &NameRecord<T::Meta, T::Data>,
) -> impl Iterator<Item = Change> + use<T> {
    T::standings(record)
        .into_iter()
        .map(|(key, seq, s)| (key, seq, Some(s)))
}

/// Recomputes a record's derived `owner` and `waiting`.
pub fn refresh_status<T: Target>(record: &mut NameRecord<T::Meta, T::Data>) {
    let (owner, waiting) = T::status(record);
    record.owner = owner;
    record.waiting = waiting;
}

/// An event newer than its Service's fence.
struct Active<'a, M, D> {
    delivery: &'a Delivery,
    old: Option<String>,
    want: Option<Desired<M, D>>,
}

/// Plans `batch` (newest event per Service, sorted by sequence) against `state`.
pub fn plan<T: Target>(
    target: &T,
    state: &StateOf<T>,
    batch: &[Delivery],
) -> PlanOutput<T::Meta, T::Data, T::Op> {
    let mut out = PlanOutput {
        units: Vec::new(),
        stale: Vec::new(),
        rejected: Vec::new(),
    };
    let mut active: Vec<Active<'_, T::Meta, T::Data>> = Vec::new();
    for d in batch {
        let (_, current) = state.service(&d.event.key);
        if current.is_some_and(|r| r.covers(d)) {
            out.stale.push(d.seq);
            continue;
        }
        match target.desired(d) {
            Ok(want) => active.push(Active {
                delivery: d,
                old: current.and_then(|r| r.claim.clone()),
                want,
            }),
            Err(e) => out.rejected.push(Rejected::new(d.seq, e)),
        }
    }

    for members in group_by_shared_names(&active) {
        let mut unit = Unit::default();
        let mut working: BTreeMap<String, NameRecord<T::Meta, T::Data>> = BTreeMap::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for &i in &members {
            let Active {
                delivery: d,
                old,
                want,
            } = &active[i];
            let key = &d.event.key;
            if let Some(old) = old
                && want.as_ref().map(|w| &w.id) != Some(old)
            {
                touched.insert(old.clone());
                if let Some(record) = working.get_mut(old) {
                    record.claims.remove(key);
                } else if let Some(record) = state.name(old).1 {
                    let mut record = record.clone();
                    record.claims.remove(key);
                    working.insert(old.clone(), record);
                }
            }
            if let Some(w) = want {
                touched.insert(w.id.clone());
                working
                    .entry(w.id.clone())
                    .or_insert_with(|| {
                        state
                            .name(&w.id)
                            .1
                            .cloned()
                            .unwrap_or_else(|| NameRecord::new(w.meta.clone()))
                    })
                    .claims
                    .upsert(key, d.seq, w.since, w.data.clone());
            }
            let (rev, _) = state.service(key);
            unit.compares.push((RecordKey::Service(key.clone()), rev));
            unit.services.push((
                key.clone(),
                ServiceRecord {
                    seq: d.seq,
                    claim: want.as_ref().map(|w| w.id.clone()),
                    incarnation: d.incarnation,
                },
            ));
            unit.seqs.push(d.seq);
        }
        for id in touched {
            let (rev, before) = state.name(&id);
            unit.compares.push((RecordKey::Name(id.clone()), rev));
            let Some(mut after) = working.remove(&id) else {
                continue;
            };
            refresh_status::<T>(&mut after);
            unit.ops.extend(target.ops(&id, before, &after));
            let before_waiting: &[String] = before.map(|r| r.waiting.as_slice()).unwrap_or(&[]);
            let newly: Vec<String> = after
                .waiting
                .iter()
                .filter(|w| !before_waiting.contains(w))
                .cloned()
                .collect();
            if !newly.is_empty() {
                unit.conflicts.push(Conflict {
                    id: id.clone(),
                    owner: after.owner.clone().unwrap_or_default(),
                    waiting: newly,
                });
            }
            if after.claims.is_empty() {
                if before.is_some() {
                    unit.names.push((id, None));
                }
            } else if before != Some(&after) {
                unit.names.push((id, Some(after)));
            }
        }
        out.units.push(unit);
    }
    out
}

/// Groups events (indices) that share a name they leave or join (union-find).
fn group_by_shared_names<M, D>(active: &[Active<'_, M, D>]) -> Vec<Vec<usize>> {
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..active.len()).collect();
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    for (i, a) in active.iter().enumerate() {
        let ids = a
            .old
            .iter()
            .map(String::as_str)
            .chain(a.want.iter().map(|w| w.id.as_str()));
        for id in ids {
            match first_with.get(id) {
                Some(&j) => {
                    let (x, y) = (find(&mut parent, i), find(&mut parent, j));
                    parent[x] = y;
                }
                None => {
                    first_with.insert(id, i);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..active.len() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(i);
    }
    groups.into_values().collect()
}

/// Units packed into transactions.
#[derive(Debug)]
pub struct Packed<M, D, O> {
    /// Each inner list commits as one transaction.
    pub txns: Vec<Vec<Unit<M, D, O>>>,
    /// Units too large for one transaction on their own.
    pub oversized: Vec<Unit<M, D, O>>,
}

/// Packs units into transactions whose summed cost stays within `max` on both measures
/// (`cost` returns (writes, compares)).
pub fn pack<M, D, O>(
    units: Vec<Unit<M, D, O>>,
    max: usize,
    cost: impl Fn(&Unit<M, D, O>) -> (usize, usize),
) -> Packed<M, D, O> {
    let mut packed = Packed {
        txns: Vec::new(),
        oversized: Vec::new(),
    };
    let (mut writes, mut cmps) = (0, 0);
    for unit in units {
        let (w, c) = cost(&unit);
        if w > max || c > max {
            packed.oversized.push(unit);
            continue;
        }
        match packed.txns.last_mut() {
            Some(txn) if writes + w <= max && cmps + c <= max => {
                writes += w;
                cmps += c;
                txn.push(unit);
            }
            _ => {
                writes = w;
                cmps = c;
                packed.txns.push(vec![unit]);
            }
        }
    }
    packed
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
}
