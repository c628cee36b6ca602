//! An in-memory [`Store`]: the projection core (`plan`, `apply`) run without servers, with
//! injected failed compares, transaction errors and lost caches, for property tests.
//!
//! One [`Backing`] is the target and its records (what etcd or Consul would hold, with
//! revisions); each [`MemStore`] is a replica over it with its own cache, so two replicas
//! really race: a cache that another replica made stale fails its compares, as in etcd.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use ksr_projection::apply::{Commit, Store, StoreError};
use ksr_projection::cache::Cache;
use ksr_projection::metrics::ProjectionMetrics;
use ksr_projection::plan::{StateOf, UnitOf};
use ksr_projection::{NameRecord, RecordKey, ServiceRecord, Target, Versioned};
use ksr_proto::ServiceKey;

/// How a target's writes change its key → value contents.
pub type Write<T> = fn(&mut BTreeMap<String, String>, &<T as Target>::Op);

/// Faults to inject, as probabilities in 1/1000 drawn from the backing's seeded generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Another writer rewrites one guarded record just before the commit (a lost race).
    pub steal_per_mille: u32,
    /// The commit fails without writing (a dropped connection, a crash before commit).
    pub error_per_mille: u32,
}

/// The target's contents and our records, with revisions.
#[derive(Debug)]
pub struct Backing<M, D> {
    pub rev: u64,
    pub contents: BTreeMap<String, String>,
    pub services: HashMap<ServiceKey, (u64, ServiceRecord)>,
    pub names: HashMap<String, (u64, NameRecord<M, D>)>,
    pub faults: Faults,
    rng: u64,
    /// Commits, lost races and errors so far.
    pub commits: u64,
    pub conflicts: u64,
    pub errors: u64,
}

impl<M, D> Backing<M, D> {
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            rev: 0,
            contents: BTreeMap::new(),
            services: HashMap::new(),
            names: HashMap::new(),
            faults,
            rng: seed | 1,
            commits: 0,
            conflicts: 0,
            errors: 0,
        }
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) < u64::from(per_mille)
    }

    fn rev_of(&self, key: &RecordKey) -> u64 {
        match key {
            RecordKey::Service(s) => self.services.get(s).map_or(0, |(r, _)| *r),
            RecordKey::Name(id) => self.names.get(id).map_or(0, |(r, _)| *r),
        }
    }
}

/// A stored record as the cache holds it.
fn versioned<R: Clone>(stored: Option<&(u64, R)>) -> Versioned<R> {
    stored.map_or_else(Versioned::default, |(rev, r)| Versioned {
        rev: *rev,
        value: Some(r.clone()),
    })
}

/// The injected error.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("injected transaction failure")]
    Injected,
    #[error("lost {0} races in a row")]
    Contention(u32),
}

/// One replica over a shared backing.
#[derive(Debug)]
pub struct MemStore<T: Target> {
    target: T,
    write: Write<T>,
    backing: Arc<Mutex<Backing<T::Meta, T::Data>>>,
    cache: Cache<T>,
    max_ops: usize,
}

impl<T: Target + Sync> MemStore<T>
where
    T::Meta: Send + Sync,
    T::Data: Send + Sync,
{
    /// A replica that loads its cache from `backing` (as a starting process does).
    pub fn new(
        target: T,
        write: Write<T>,
        backing: Arc<Mutex<Backing<T::Meta, T::Data>>>,
        max_ops: usize,
    ) -> Self {
        let s = Self {
            target,
            write,
            backing,
            cache: Cache::new(
                StateOf::<T>::default(),
                ProjectionMetrics::default(),
                "memory",
            ),
            max_ops,
        };
        s.reload();
        s
    }

    fn backing(&self) -> MutexGuard<'_, Backing<T::Meta, T::Data>> {
        self.backing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the cache and reads every record again (a restarted replica).
    pub fn reload(&self) {
        let b = self.backing();
        let mut state = StateOf::<T>::default();
        for (k, stored) in &b.services {
            state.services.insert(k.clone(), versioned(Some(stored)));
        }
        for (id, stored) in &b.names {
            state.set_name(id.clone(), versioned(Some(stored)));
        }
        drop(b);
        *self.cache.lock() = state;
    }

    /// Commits `ops` and the units' records if every compare holds.
    fn commit_now(
        &self,
        units: &[UnitOf<T>],
        ops: &[T::Op],
        records: bool,
        inject: bool,
    ) -> Result<Commit<u64>, MemError> {
        let mut b = self.backing();
        let faults = if inject { b.faults } else { Faults::default() };
        if b.roll(faults.error_per_mille) {
            b.errors += 1;
            return Err(MemError::Injected);
        }
        let compares: Vec<&(RecordKey, u64)> = units.iter().flat_map(|u| &u.compares).collect();
        if !compares.is_empty() && b.roll(faults.steal_per_mille) {
            // Another writer rewrote the first guarded record (same value, new revision).
            b.rev += 1;
            let rev = b.rev;
            match &compares[0].0 {
                RecordKey::Service(s) => {
                    if let Some(e) = b.services.get_mut(s) {
                        e.0 = rev;
                    }
                }
                RecordKey::Name(id) => {
                    if let Some(e) = b.names.get_mut(id) {
                        e.0 = rev;
                    }
                }
            }
        }
        if compares.iter().any(|(k, rev)| b.rev_of(k) != *rev) {
            b.conflicts += 1;
            return Ok(Commit::Conflict);
        }
        b.rev += 1;
        b.commits += 1;
        let rev = b.rev;
        for op in ops {
            (self.write)(&mut b.contents, op);
        }
        if records {
            for u in units {
                for (k, r) in &u.services {
                    b.services.insert(k.clone(), (rev, r.clone()));
                }
                for (id, r) in &u.names {
                    match r {
                        Some(r) => {
                            b.names.insert(id.clone(), (rev, r.clone()));
                        }
                        None => {
                            b.names.remove(id);
                        }
                    }
                }
            }
        }
        Ok(Commit::Committed(rev))
    }
}

impl<T> Store for MemStore<T>
where
    T: Target + Sync,
    T::Meta: Send + Sync,
    T::Data: Send + Sync,
    T::Op: Send + Sync,
{
    type T = T;
    type Committed = u64;
    type Error = MemError;

    fn target(&self) -> &T {
        &self.target
    }

    fn cache(&self) -> &Cache<T> {
        &self.cache
    }

    fn cache_mut(&mut self) -> &mut Cache<T> {
        &mut self.cache
    }

    fn max_ops(&self) -> usize {
        self.max_ops
    }

    fn cost(&self, unit: &UnitOf<T>) -> (usize, usize) {
        (
            unit.ops.len() + unit.services.len() + unit.names.len(),
            unit.compares.len(),
        )
    }

    async fn commit(&self, units: &[UnitOf<T>]) -> Result<Commit<u64>, MemError> {
        let ops: Vec<T::Op> = units.iter().flat_map(|u| u.ops.iter().cloned()).collect();
        self.commit_now(units, &ops, true, true)
    }

    async fn commit_oversized(&self, unit: &UnitOf<T>) -> Result<Commit<u64>, MemError> {
        // As the etcd store does: the writes in ordered chunks, each guarded by the unit's
        // compares, the records with the last one.
        let units = std::slice::from_ref(unit);
        let room = self
            .max_ops
            .saturating_sub(unit.services.len() + unit.names.len())
            .max(1);
        let split = unit.ops.len().saturating_sub(room);
        // Faults strike before the first chunk only: a unit interrupted between chunks
        // leaves keys behind that only reconciliation removes (see the README), which is
        // not what this store tests.
        let mut first = true;
        for chunk in unit.ops[..split].chunks(self.max_ops.max(1)) {
            if let Commit::Conflict = self.commit_now(units, chunk, false, first)? {
                return Ok(Commit::Conflict);
            }
            first = false;
        }
        self.commit_now(units, &unit.ops[split..], true, first)
    }

    fn revision(&self, rev: &u64, _key: &RecordKey) -> u64 {
        *rev
    }

    async fn reread(&self, records: &[RecordKey]) -> Result<(), MemError> {
        let b = self.backing();
        let mut s = self.cache.lock();
        for k in records {
            match k {
                RecordKey::Service(key) => {
                    s.services
                        .insert(key.clone(), versioned(b.services.get(key)));
                }
                RecordKey::Name(id) => s.set_name(id.clone(), versioned(b.names.get(id))),
            }
        }
        Ok(())
    }
}

impl StoreError for MemError {
    fn reason(&self) -> &'static str {
        match self {
            MemError::Injected => "injected",
            MemError::Contention(_) => "contention",
        }
    }

    fn contention(attempts: u32) -> Self {
        MemError::Contention(attempts)
    }
}
