//! The vulcand projector: applies batches to etcd with fenced, ordered transactions.

use std::sync::Mutex;

use etcd_client::KvClient;

use ksr_projection::apply::{Commit, Store, StoreError};
use ksr_projection::cache::Cache;
use ksr_projection::metrics::ProjectionMetrics;
use ksr_projection::{RecordKey, Records};
use ksr_runtime::metrics::MetricsRegistry;

use crate::Error;
use crate::config::{EtcdApi, TargetArgs};
use crate::keys::KeyOp;
use crate::layout::Layout;
use crate::records::HostRecord;
use crate::store::{self, Write};
use crate::target::{State, Unit, VulcandTarget};
use crate::v2::V2Client;
use crate::wanted::Wanted;

/// A full read of our records for reconciliation (the keys each record projects to are
/// gathered into a [`Wanted`] as it is read).
pub type Survey = ksr_projection::survey::Survey<()>;

/// The vulcand publisher's metrics (`ksr_vulcand_…`).
pub type VulcandMetrics = ProjectionMetrics;

/// Registers the vulcand publisher's metrics.
pub fn metrics(registry: &MetricsRegistry) -> VulcandMetrics {
    let m = ProjectionMetrics::default();
    registry.register(|r| m.register(r, "vulcand", "host"));
    m
}

/// Where the vulcand keys are written.
#[derive(Debug, Clone)]
pub enum Sink {
    /// In the same etcd v3 transaction as our records.
    V3,
    /// Through the etcd v2 API, after our records commit (see [`crate::v2`]).
    V2(V2Client),
}

/// Opens the vulcand target `args` names through a connected etcd `client`: our records
/// loaded (unless `records` says to skip them), and the v2 sink when vulcand reads the v2
/// API. The publisher and ksrctl both open it so.
pub async fn open(
    etcd: &etcd_client::Client,
    args: &TargetArgs,
    metrics: VulcandMetrics,
    records: Records,
) -> Result<VulcandProjector, Error> {
    let max_ops = args.etcd.max_txn_ops as usize;
    let (kv, layout) = (etcd.kv_client(), args.layout());
    let projector = match records {
        Records::Load => VulcandProjector::new(kv, layout, max_ops, metrics).await?,
        Records::Skip => {
            VulcandProjector::with_state(kv, layout, max_ops, metrics, State::default())
        }
    };
    Ok(match args.vulcand.api {
        EtcdApi::V2 => projector.with_sink(Sink::V2(V2Client::new(&args.etcd)?)),
        EtcdApi::V3 => projector,
    })
}

/// Projects events into vulcand's etcd keys.
pub struct VulcandProjector {
    pub(crate) kv: KvClient,
    sink: Sink,
    target: VulcandTarget,
    pub(crate) max_ops: usize,
    cache: Cache<VulcandTarget>,
    /// Hostnames whose v2 sync is under way (with the v2 sink), so reconciliation does not
    /// take a route being written for drift.
    pub(crate) syncing: Mutex<std::collections::HashMap<String, usize>>,
    /// Hostnames committed in v3 whose v2 sync failed: synced again after the next commits
    /// (the failed batch's redelivery among them), not left to the next reconciliation.
    pub(crate) unsynced: Mutex<crate::v2sync::Hosts>,
}

impl std::fmt::Debug for VulcandProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulcandProjector")
            .field("target", &self.target)
            .field("max_ops", &self.max_ops)
            .finish_non_exhaustive()
    }
}

impl VulcandProjector {
    /// Loads our records from etcd.
    pub async fn new(
        kv: KvClient,
        layout: Layout,
        max_ops: usize,
        metrics: VulcandMetrics,
    ) -> Result<Self, Error> {
        let state = store::load_state(&mut kv.clone(), &layout).await?;
        Ok(Self::with_state(kv, layout, max_ops, metrics, state))
    }

    /// Starts from `state` instead of the records in etcd.
    fn with_state(
        kv: KvClient,
        layout: Layout,
        max_ops: usize,
        metrics: VulcandMetrics,
        state: State,
    ) -> Self {
        Self {
            kv,
            sink: Sink::V3,
            target: VulcandTarget { layout },
            max_ops: max_ops.max(8),
            cache: Cache::new(state, metrics, "vulcand"),
            syncing: Mutex::default(),
            unsynced: Mutex::default(),
        }
    }

    /// Writes the vulcand keys through `sink` instead of etcd v3.
    pub fn with_sink(mut self, sink: Sink) -> Self {
        self.sink = sink;
        self
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    pub fn layout(&self) -> &Layout {
        &self.target.layout
    }

    pub fn kv(&self) -> KvClient {
        self.kv.clone()
    }

    pub fn metrics(&self) -> &VulcandMetrics {
        self.cache.metrics()
    }

    /// Reads every record from etcd, kept small: per hostname its revision, and the keys its
    /// record projects to as hashes ([`Wanted`]) — reconciliation starts from the truth, not
    /// the cache. The live cache is left alone: it may already be newer than this read.
    pub async fn survey(&self) -> Result<(Survey, Wanted), Error> {
        let layout = self.layout();
        let mut survey = Survey::default();
        let mut wanted = Wanted::new(self.policy() == ksr_projection::Policy::UpsertOnly);
        let fence = |f| store::service_record(layout, f);
        let at = store::read_records(&mut self.kv.clone(), layout, |record, key, rev, value| {
            let want = |_: &str, r: &HostRecord| wanted.want(layout, r);
            survey.add(record, key, rev, value, fence, want);
        })
        .await?;
        wanted.read_at(at);
        let survey = survey.finish("vulcand");
        wanted.leave_unreadable(survey.unreadable());
        Ok((survey, wanted))
    }

    /// Writes a unit larger than one transaction: its vulcand writes in chunks (in order),
    /// each guarded by the unit's compares, then the last chunk with the records. If another
    /// writer interferes between chunks the compares fail and the unit is re-planned; keys
    /// written by earlier chunks that the new plan does not want are removed by
    /// reconciliation.
    async fn commit_stepwise(&self, unit: &Unit) -> Result<Option<u64>, Error> {
        let records = unit.services.len() + unit.names.len();
        let room_last = self.max_ops.saturating_sub(records).max(1);
        let split = unit.ops.len().saturating_sub(room_last);
        for chunk in unit.ops[..split].chunks(self.max_ops) {
            let mut w = Write {
                compares: self.compares_of(std::slice::from_ref(unit)),
                ops: Vec::new(),
            };
            chunk.iter().for_each(|op| w.key_op(op));
            if store::commit(&mut self.kv.clone(), w).await?.is_none() {
                return Ok(None);
            }
        }
        let mut last = unit.clone();
        last.ops = unit.ops[split..].to_vec();
        store::commit(
            &mut self.kv.clone(),
            self.write_for(std::slice::from_ref(&last)),
        )
        .await
    }

    fn compares_of(&self, units: &[Unit]) -> Vec<(String, u64)> {
        units
            .iter()
            .flat_map(|u| u.compares.iter())
            .map(|(k, rev)| (store::record_key(self.layout(), k), *rev))
            .collect()
    }

    fn write_for(&self, units: &[Unit]) -> Write {
        let mut w = Write {
            compares: self.compares_of(units),
            ops: Vec::new(),
        };
        if matches!(self.sink, Sink::V3) {
            let mut ops: Vec<&KeyOp> = units.iter().flat_map(|u| &u.ops).collect();
            ops.sort_by_key(|o| o.order());
            for op in ops {
                w.key_op(op);
            }
        }
        let layout = self.layout();
        for u in units {
            for (key, record) in &u.services {
                w.put_json(layout.service_record_key(key), record);
            }
            for (id, record) in &u.names {
                match record {
                    Some(r) => w.put_json(layout.host_record_key(id), r),
                    None => w.delete(layout.host_record_key(id)),
                }
            }
        }
        w
    }
}

impl Store for VulcandProjector {
    type T = VulcandTarget;
    type Committed = u64;
    type Error = Error;

    fn target(&self) -> &VulcandTarget {
        &self.target
    }

    fn cache(&self) -> &Cache<VulcandTarget> {
        &self.cache
    }

    fn cache_mut(&mut self) -> &mut Cache<VulcandTarget> {
        &mut self.cache
    }

    fn max_ops(&self) -> usize {
        self.max_ops
    }

    /// Transaction size of a unit: (writes, compares), both limited by etcd's max-txn-ops.
    fn cost(&self, unit: &Unit) -> (usize, usize) {
        let key_ops = if matches!(self.sink, Sink::V3) {
            unit.ops.len()
        } else {
            0
        };
        (
            key_ops + unit.services.len() + unit.names.len(),
            unit.compares.len(),
        )
    }

    async fn commit(&self, units: &[Unit]) -> Result<Commit<u64>, Error> {
        let committed = store::commit(&mut self.kv.clone(), self.write_for(units)).await?;
        Ok(committed.map_or(Commit::Conflict, Commit::Committed))
    }

    async fn commit_oversized(&self, unit: &Unit) -> Result<Commit<u64>, Error> {
        Ok(self
            .commit_stepwise(unit)
            .await?
            .map_or(Commit::Conflict, Commit::Committed))
    }

    /// One etcd transaction: every record it wrote has its revision.
    fn revision(&self, rev: &u64, _key: &RecordKey) -> u64 {
        *rev
    }

    /// With the v2 sink: syncs every hostname whose record the round's transactions changed,
    /// and those whose sync failed before.
    async fn after_commit(&self, committed: &[(Vec<Unit>, u64)]) -> Result<(), Error> {
        let Sink::V2(v2) = &self.sink else {
            return Ok(());
        };
        self.sync_committed(v2, committed).await
    }

    async fn reread(&self, records: &[RecordKey]) -> Result<(), Error> {
        store::reread(
            &mut self.kv.clone(),
            self.layout(),
            &self.cache,
            records,
            self.max_ops,
        )
        .await
    }
}

impl StoreError for Error {
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }

    fn contention(attempts: u32) -> Self {
        Error::Contention { attempts }
    }
}
