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

use ksr_proto::ServiceKey;

use crate::delivery::{Delivery, Rejected};
use crate::records::{NameRecord, RecordKey, ServiceRecord, State, Versioned};
use crate::status::Change;
use crate::target::{Desired, Target};

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

/// Where every Service claiming a name in `state` stands, handed to `each`.
pub fn standings<T: Target>(state: &StateOf<T>, each: &mut dyn FnMut(Change)) {
    state
        .names()
        .filter_map(|(_, v)| v.value.as_ref())
        .flat_map(claims_standing::<T>)
        .for_each(each);
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
