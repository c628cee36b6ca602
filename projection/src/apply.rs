//! Applying a batch through the planner: the control flow every projection shares.
//!
//! Plan against the cached records, pack units into transactions, commit them concurrently,
//! settle what committed, re-read and re-plan what lost a race, apply alone what did not fit
//! (or what the target refused as invalid), and give up with a contention error only after
//! many rounds. What a transaction *is* belongs to the [`Store`].

use std::collections::HashSet;
use std::future::Future;

use futures::StreamExt;

use crate::Policy;
use crate::cache::Cache;
use crate::delivery::{ApplyError, ApplyReport, Delivery, Projector, Rejected};
use crate::pack::pack;
use crate::plan::{UnitOf, changes, plan};
use crate::records::{NameRecord, RecordKey};
use crate::target::Target;

/// How many transactions of one batch are in flight at once.
const CONCURRENCY: usize = 8;
/// How many rounds a batch is re-planned after lost races before it is retried later.
pub const MAX_ATTEMPTS: u32 = 32;

/// How a transaction went.
#[derive(Debug)]
pub enum Commit<C> {
    /// Committed; `C` is what the store needs to settle (a revision, new indexes).
    Committed(C),
    /// A guarded record changed since it was read: another writer was first.
    Conflict,
}

/// A committed transaction: its units, and what the store needs to settle them.
pub type Committed<S> = (Vec<UnitOf<<S as Store>::T>>, <S as Store>::Committed);

/// What a store's errors tell the engine.
pub trait StoreError: std::error::Error + Send + Sync + Sized + 'static {
    /// Short, fixed reason for metric labels (`ksr_<publisher>_apply_errors_total{reason}`).
    fn reason(&self) -> &'static str;
    /// Whether the target refused the request itself (its events are retried one by one,
    /// and one it refuses alone is rejected).
    fn is_invalid(&self) -> bool {
        false
    }
    /// The error for a batch that kept losing races.
    fn contention(attempts: u32) -> Self;
}

/// A projection target's storage: what a transaction *is*, and where the cached records are.
pub trait Store: Sync {
    type T: Target + Sync;
    type Committed: Send;
    type Error: StoreError;

    fn target(&self) -> &Self::T;
    /// The cached records.
    fn cache(&self) -> &Cache<Self::T>;
    /// The cached records, to configure them.
    fn cache_mut(&mut self) -> &mut Cache<Self::T>;
    /// The transaction limit, applied to both measures of [`Store::cost`].
    fn max_ops(&self) -> usize;
    /// (writes, compares) of a unit's transaction.
    fn cost(&self, unit: &UnitOf<Self::T>) -> (usize, usize);
    /// Commits units as one transaction.
    fn commit(
        &self,
        units: &[UnitOf<Self::T>],
    ) -> impl Future<Output = Result<Commit<Self::Committed>, Self::Error>> + Send;
    /// Commits one unit that exceeds the limit on its own.
    fn commit_oversized(
        &self,
        unit: &UnitOf<Self::T>,
    ) -> impl Future<Output = Result<Commit<Self::Committed>, Self::Error>> + Send;
    /// The revision a committed transaction gave record `key`.
    fn revision(&self, committed: &Self::Committed, key: &RecordKey) -> u64;
    /// Work that follows commits (e.g. writing a second keyspace): called once per round with
    /// every transaction of the round that committed (after all of them were settled, so the
    /// store can overlap that work across transactions), and also when none did, so work an
    /// earlier call failed to finish can be retried — a failed batch is redelivered, and its
    /// events then commit nothing new. None by default.
    fn after_commit(
        &self,
        _committed: &[Committed<Self>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        std::future::ready(Ok(()))
    }
    /// Reads `records` again into the cache ([`cache::Cache::replace`]): after a lost race,
    /// the records the units guarded; for a repair, a record the cache holds at another
    /// revision than a reconciliation read ([`name_at`]).
    ///
    /// [`cache::Cache::replace`]: crate::cache::Cache::replace
    fn reread(&self, records: &[RecordKey])
    -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Whether removals are applied ([`Policy::UpsertOnly`]: never).
    fn policy(&self) -> Policy {
        self.cache().policy()
    }
    /// Applies `policy` (`upsert-only`: never delete).
    fn with_policy(mut self, policy: Policy) -> Self
    where
        Self: Sized,
    {
        self.cache_mut().set_policy(policy);
        self
    }
    /// Reports unreadable records through `warn` (a `/readyz` warning).
    fn with_warnings(mut self, warn: impl Fn(Option<String>) + Send + Sync + 'static) -> Self
    where
        Self: Sized,
    {
        self.cache_mut().set_warnings(warn);
        self
    }
    /// Applies a coalesced batch ([`apply_batch`]).
    fn apply_batch(
        &self,
        batch: &[Delivery],
    ) -> impl Future<Output = Result<ApplyReport, Self::Error>> + Send
    where
        Self: Sized,
    {
        apply_batch(self, batch)
    }
}

/// Every store is a [`Projector`] the consumer loop can drive.
impl<S: Store + Send> Projector for S {
    async fn apply(&self, batch: &[Delivery]) -> Result<ApplyReport, ApplyError> {
        apply_batch(self, batch).await.map_err(|e| ApplyError {
            reason: e.reason(),
            source: Box::new(e),
        })
    }

    fn standings(&self, each: &mut dyn FnMut(crate::status::Change)) {
        crate::plan::standings::<S::T>(&self.cache().lock(), each);
    }
}

/// The records `units` guarded (to read again after a lost race).
fn guarded<M, D, O>(units: &[crate::plan::Unit<M, D, O>]) -> Vec<RecordKey> {
    units
        .iter()
        .flat_map(|u| u.compares.iter().map(|(k, _)| k.clone()))
        .collect()
}

/// Name `id`'s record as a reconciliation read it at revision `rev` (a
/// [`Survey`](crate::survey::Survey)): from the cache when it holds that revision, else read
/// again into the cache; `None` when it has none or has changed since (an apply wrote it,
/// and its projection with it).
pub async fn name_at<S: Store>(
    store: &S,
    id: &str,
    rev: u64,
) -> Result<Option<NameRecord<<S::T as Target>::Meta, <S::T as Target>::Data>>, S::Error>
where
    <S::T as Target>::Meta: Clone,
    <S::T as Target>::Data: Clone,
{
    if rev == 0 {
        return Ok(None);
    }
    if let Some(record) = store.cache().name_at(id, rev) {
        return Ok(Some(record));
    }
    store.reread(&[RecordKey::Name(id.to_owned())]).await?;
    Ok(store.cache().name_at(id, rev))
}

/// The cached records settled with what a commit wrote.
fn settle<S: Store>(
    store: &S,
    units: &[UnitOf<S::T>],
    committed: &S::Committed,
    report: &mut ApplyReport,
) {
    store
        .cache()
        .settle(units, |k| store.revision(committed, k), report);
}

fn seqs<M, D, O>(units: &[crate::plan::Unit<M, D, O>]) -> impl Iterator<Item = u64> + '_ {
    units.iter().flat_map(|u| u.seqs.iter().copied())
}

/// Applies a coalesced batch (newest event per Service, sorted by sequence).
pub async fn apply_batch<S: Store>(store: &S, batch: &[Delivery]) -> Result<ApplyReport, S::Error> {
    let mut report = ApplyReport::default();
    let mut pending: Vec<Delivery> = batch.to_vec();
    if store.policy() == Policy::UpsertOnly {
        let before = pending.len();
        pending.retain(|d| d.event.route().is_some());
        report.skipped_removals = (before - pending.len()) as u64;
    }
    for _attempt in 0..MAX_ATTEMPTS {
        let planned = plan(store.target(), &store.cache().lock(), &pending);
        report.stale += planned.stale.len() as u64;
        report.rejected.extend(planned.rejected);
        let packed = pack(planned.units, store.max_ops(), |u| store.cost(u));
        let results: Vec<_> = futures::stream::iter(packed.txns)
            .map(|units| async {
                let result = store.commit(&units).await;
                (units, result)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut retry: HashSet<u64> = HashSet::new();
        let mut alone: Vec<u64> = packed
            .oversized
            .iter()
            .flat_map(|u| u.seqs.iter().copied())
            .collect();
        let mut failure = None;
        let mut committed = Vec::new();
        for (units, result) in results {
            match result {
                Ok(Commit::Committed(c)) => {
                    settle(store, &units, &c, &mut report);
                    report.changes.extend(changes::<S::T>(&units));
                    committed.push((units, c));
                }
                Ok(Commit::Conflict) => {
                    store.cache().metrics().compare_retries.inc();
                    retry.extend(seqs(&units));
                    store.reread(&guarded(&units)).await?;
                }
                Err(e) if e.is_invalid() => alone.extend(seqs(&units)),
                Err(e) => failure = Some(e),
            }
        }
        // Also when nothing committed: work an earlier commit left undone is retried.
        if let Err(e) = store.after_commit(&committed).await {
            failure = Some(e);
        }
        if let Some(e) = failure {
            store.cache().update_gauges();
            return Err(e);
        }
        alone.sort_unstable();
        for seq in alone {
            if let Some(d) = pending.iter().find(|d| d.seq == seq) {
                apply_alone(store, d, &mut report).await?;
            }
        }
        store.cache().update_gauges();
        if retry.is_empty() {
            return Ok(report);
        }
        pending.retain(|d| retry.contains(&d.seq));
    }
    Err(S::Error::contention(MAX_ATTEMPTS))
}

/// Applies one event in a transaction of its own (or, when even that exceeds the limit,
/// through [`Store::commit_oversized`]); an event the target refuses as invalid is rejected.
pub async fn apply_alone<S: Store>(
    store: &S,
    d: &Delivery,
    report: &mut ApplyReport,
) -> Result<(), S::Error> {
    for _attempt in 0..MAX_ATTEMPTS {
        let planned = plan(
            store.target(),
            &store.cache().lock(),
            std::slice::from_ref(d),
        );
        report.stale += planned.stale.len() as u64;
        report.rejected.extend(planned.rejected);
        let Some(unit) = planned.units.into_iter().next() else {
            return Ok(());
        };
        let (writes, compares) = store.cost(&unit);
        let units = [unit];
        let result = if writes > store.max_ops() || compares > store.max_ops() {
            store.commit_oversized(&units[0]).await
        } else {
            store.commit(&units).await
        };
        match result {
            Ok(Commit::Committed(c)) => {
                settle(store, &units, &c, report);
                report.changes.extend(changes::<S::T>(&units));
                return store.after_commit(&[(units.into(), c)]).await;
            }
            Ok(Commit::Conflict) => {
                store.cache().metrics().compare_retries.inc();
                store.reread(&guarded(&units)).await?;
            }
            Err(e) if e.is_invalid() => {
                report.rejected.push(Rejected::new(d.seq, e));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Err(S::Error::contention(MAX_ATTEMPTS))
}
