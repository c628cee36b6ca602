//! The cached records a projector plans against, and what reports them.
//!
//! Every projector keeps the records it last read or wrote here: the engine plans against
//! them, settles what committed into them (counting and logging the conflicts a commit
//! creates), replaces what a lost race made stale, and quarantines what a fresh load found
//! unreadable. The gauges (`ksr_<publisher>_<noun>s…`, `…_corrupt_records`) and the `/readyz`
//! warning follow every change.

use std::sync::{Mutex, MutexGuard};

use crate::Policy;
use crate::delivery::ApplyReport;
use crate::metrics::ProjectionMetrics;
use crate::plan::{StateOf, UnitOf};
use crate::records::{NameRecord, RecordKey, ServiceRecord};
use crate::survey::Unreadable;
use crate::target::Target;

/// Where a `/readyz` warning goes (`Some`: set it, `None`: clear it).
pub type Warn = Box<dyn Fn(Option<String>) + Send + Sync>;

/// The cached records of one projector, with its metrics.
pub struct Cache<T: Target> {
    state: Mutex<StateOf<T>>,
    metrics: ProjectionMetrics,
    /// The `ksrctl rebuild` target that repairs unreadable records (`vulcand`, `consul`).
    target: &'static str,
    warn: Option<Warn>,
    policy: Policy,
}

impl<T: Target> std::fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<T: Target> Cache<T> {
    /// Holds `state` (as loaded) and sets the gauges from it.
    pub fn new(state: StateOf<T>, metrics: ProjectionMetrics, target: &'static str) -> Self {
        let cache = Self {
            state: Mutex::new(state),
            metrics,
            target,
            warn: None,
            policy: Policy::Sync,
        };
        cache.update_gauges();
        cache
    }

    /// Reports unreadable records through `warn` (a `/readyz` warning), starting with those
    /// of the state held now.
    pub fn set_warnings(&mut self, warn: impl Fn(Option<String>) + Send + Sync + 'static) {
        self.warn = Some(Box::new(warn));
        let corrupt = self.lock().corrupt.clone();
        self.report_corrupt(&corrupt);
    }

    /// Applies `policy` (`upsert-only`: never delete).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Whether removals are applied ([`Policy::UpsertOnly`]: never).
    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn lock(&self) -> MutexGuard<'_, StateOf<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &ProjectionMetrics {
        &self.metrics
    }

    /// Sets the gauges from the cached records' counts.
    pub fn update_gauges(&self) {
        self.metrics.observe(&self.lock());
    }

    /// Records committed units (`rev_of`: the revision the commit gave each record) in the
    /// cache and the report; the conflicts they create are counted and logged.
    pub fn settle(
        &self,
        units: &[UnitOf<T>],
        rev_of: impl Fn(&RecordKey) -> u64,
        report: &mut ApplyReport,
    ) {
        self.lock().settle(units, rev_of);
        for u in units {
            report.applied += u.seqs.len() as u64;
            for c in &u.conflicts {
                self.metrics.conflicts.inc_by(c.waiting.len() as u64);
                tracing::warn!(
                    publisher = self.target,
                    name = c.id,
                    owner = c.owner,
                    waiting = ?c.waiting,
                    "{}",
                    T::CONFLICT_RULE
                );
            }
        }
    }

    /// Replaces records with what the store holds now (after a lost race): `None` when absent;
    /// an unreadable one is held as absent at its revision, like a quarantined record.
    /// `fence` turns a fence as read into the form the planner expects.
    pub fn replace(
        &self,
        fresh: impl IntoIterator<Item = (RecordKey, Option<(u64, Vec<u8>)>)>,
        fence: impl Fn(ServiceRecord) -> ServiceRecord,
    ) where
        T::Meta: serde::de::DeserializeOwned,
        T::Data: serde::de::DeserializeOwned,
    {
        let mut state = self.lock();
        for (record, found) in fresh {
            state.replace(record, found, &fence);
        }
    }

    /// Name `id`'s record, if the cache holds it at revision `rev` (a repair that needs the
    /// whole record a [`Survey`](crate::survey::Survey) read takes it from here).
    pub fn name_at(&self, id: &str, rev: u64) -> Option<NameRecord<T::Meta, T::Data>>
    where
        T::Meta: Clone,
        T::Data: Clone,
    {
        match self.lock().name(id) {
            (r, Some(record)) if r == rev => Some(record.clone()),
            _ => None,
        }
    }

    /// Quarantines in the cache what a full read (a [`Survey`](crate::survey::Survey)) found unreadable, so the
    /// events of the Services concerned are applied again, and reports it.
    pub fn quarantine(&self, unreadable: &[Unreadable]) {
        let mut state = self.lock();
        for u in unreadable {
            state.quarantine(u.record.clone(), u.rev, u.key.clone(), u.why.clone());
        }
        drop(state);
        let corrupt: Vec<_> = unreadable
            .iter()
            .map(|u| (u.record.clone(), u.key.clone(), u.why.clone()))
            .collect();
        self.report_corrupt(&corrupt);
    }

    /// The gauge and the `/readyz` warning for the unreadable records of the last load.
    fn report_corrupt(&self, corrupt: &[(RecordKey, String, String)]) {
        let warning = self.metrics.report_corrupt(corrupt, self.target);
        if let Some(warn) = &self.warn {
            warn(warning);
        }
    }
}
