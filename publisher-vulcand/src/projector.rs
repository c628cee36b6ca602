//! The vulcand projector: applies batches to etcd with fenced, ordered transactions.

use std::sync::Mutex;

use etcd_client::KvClient;

use ksr_projection::RecordKey;
use ksr_projection::apply::{Commit, Store, StoreError};
use ksr_projection::cache::Cache;
use ksr_projection::metrics::ProjectionMetrics;
use ksr_runtime::metrics::MetricsRegistry;

use crate::Error;
use crate::config::{EtcdApi, TargetArgs};
use crate::keys::KeyOp;
use crate::layout::Layout;
use crate::records::HostRecord;
use crate::store::{self, Write};
use crate::target::{State, Unit, VulcandTarget};
use crate::v2::{V2Client, Written};

/// Route ids of one hostname.
type Routes = std::collections::BTreeSet<String>;

/// A hostname to sync to v2: the revision and record to write it from, and its routes.
type Host = (u64, Option<HostRecord>, Routes);

/// Hostnames to sync to v2.
type Hosts = std::collections::BTreeMap<String, Host>;

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
/// loaded, and the v2 sink when vulcand reads the v2 API. The publisher and ksrctl both open
/// it so.
pub async fn open(
    etcd: &etcd_client::Client,
    args: &TargetArgs,
    metrics: VulcandMetrics,
) -> Result<VulcandProjector, Error> {
    let max_ops = args.etcd.max_txn_ops as usize;
    let projector =
        VulcandProjector::new(etcd.kv_client(), args.layout(), max_ops, metrics).await?;
    Ok(match args.vulcand.api {
        EtcdApi::V2 => projector.with_sink(Sink::V2(V2Client::new(&args.etcd)?)),
        EtcdApi::V3 => projector,
    })
}

/// Projects events into vulcand's etcd keys.
pub struct VulcandProjector {
    policy: ksr_projection::Policy,
    kv: KvClient,
    sink: Sink,
    target: VulcandTarget,
    max_ops: usize,
    cache: Cache<VulcandTarget>,
    /// Hostnames whose v2 sync is under way (with the v2 sink), so reconciliation does not
    /// take a route being written for drift.
    syncing: Mutex<std::collections::HashMap<String, usize>>,
}

/// How many hostnames are synced to v2 at once after a commit (each in vulcand's order).
const V2_CONCURRENCY: usize = 32;

/// Marks hostnames as being synced to v2 until dropped.
struct Syncing<'a> {
    projector: &'a VulcandProjector,
    ids: Vec<String>,
}

impl<'a> Syncing<'a> {
    fn mark(projector: &'a VulcandProjector, ids: Vec<String>) -> Self {
        let mut syncing = projector.syncing.lock().unwrap_or_else(|p| p.into_inner());
        for id in &ids {
            *syncing.entry(id.clone()).or_default() += 1;
        }
        drop(syncing);
        Self { projector, ids }
    }
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        let mut syncing = self
            .projector
            .syncing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            if let Some(n) = syncing.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    syncing.remove(id);
                }
            }
        }
    }
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
        Ok(Self {
            kv,
            sink: Sink::V3,
            target: VulcandTarget { layout },
            max_ops: max_ops.max(8),
            cache: Cache::new(state, metrics, "vulcand"),
            policy: ksr_projection::Policy::Sync,
            syncing: Mutex::default(),
        })
    }

    /// Writes the vulcand keys through `sink` instead of etcd v3.
    pub fn with_sink(mut self, sink: Sink) -> Self {
        self.sink = sink;
        self
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Reports through `health` (unreadable records become a warning in `/readyz`).
    pub fn with_health(mut self, health: ksr_runtime::Health) -> Self {
        self.cache = self.cache.with_warnings(move |w| health.set_warning(w));
        self
    }

    /// Applies `policy` (`upsert-only`: never delete).
    pub fn with_policy(mut self, policy: ksr_projection::Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> ksr_projection::Policy {
        self.policy
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

    /// Reads every record from etcd (reconciliation starts from the truth, not the cache).
    /// The live cache is left alone: it may already be newer than this snapshot.
    pub async fn snapshot(&self) -> Result<State, Error> {
        store::load_state(&mut self.kv.clone(), self.layout()).await
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

    /// Whether hostname `id`'s v2 sync is under way.
    pub fn is_syncing(&self, id: &str) -> bool {
        self.syncing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Hostname `id`'s record as etcd holds it now, with its revision (0 when absent).
    pub async fn host_record(&self, id: &str) -> Result<(u64, Option<HostRecord>), Error> {
        let ids = [id.to_owned()];
        Ok(self
            .host_records(&ids)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// The records of hostnames `ids` as etcd holds them now, with their revisions (0 when
    /// absent), in the order given — read in as few transactions as etcd allows.
    async fn host_records(&self, ids: &[String]) -> Result<Vec<(u64, Option<HostRecord>)>, Error> {
        use etcd_client::{Txn, TxnOp, TxnOpResponse};
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.max_ops) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|id| TxnOp::get(self.layout().host_record_key(id), None))
                .collect();
            let resp = self.kv.clone().txn(Txn::new().and_then(ops)).await?;
            for r in resp.op_responses() {
                let found = match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                        (
                            u64::try_from(kv.mod_revision()).unwrap_or(0),
                            serde_json::from_slice::<HostRecord>(kv.value()).ok(),
                        )
                    }),
                    _ => None,
                };
                out.push(found.unwrap_or_default());
            }
        }
        Ok(out)
    }

    /// Writes hostname `id`'s routes to v2 from `record` (committed at `rev`), again from the
    /// newer record while another writer keeps changing it. `routes` names route ids that
    /// must be synced even when the record no longer projects them. Returns the v2 keys
    /// written and deleted.
    pub async fn sync_v2(
        &self,
        v2: &V2Client,
        id: &str,
        record: Option<HostRecord>,
        rev: u64,
        routes: Routes,
    ) -> Result<Written, Error> {
        let mut hosts = Hosts::new();
        hosts.insert(id.to_owned(), (rev, record, routes));
        self.sync_hosts(v2, hosts).await
    }

    /// Syncs hostnames to v2 in rounds: every hostname's routes from its record (several
    /// hostnames at once — their routes are disjoint — each in vulcand's order), then one
    /// read of all their records; those another writer changed meanwhile go again from the
    /// newer record. While this runs the hostnames are marked as being synced.
    async fn sync_hosts(&self, v2: &V2Client, mut hosts: Hosts) -> Result<Written, Error> {
        use futures::{StreamExt, TryStreamExt};
        let _syncing = Syncing::mark(self, hosts.keys().cloned().collect());
        let mut written = Written::default();
        for _ in 0..8 {
            let round: Vec<(String, Host, Written)> =
                futures::stream::iter(std::mem::take(&mut hosts))
                    .map(|(id, (rev, record, mut routes))| async move {
                        let w = self.write_v2(v2, record.as_ref(), &mut routes).await?;
                        Ok::<_, Error>((id, (rev, record, routes), w))
                    })
                    .buffer_unordered(V2_CONCURRENCY)
                    .try_collect()
                    .await?;
            for (id, host, w) in round {
                written += w;
                hosts.insert(id, host);
            }
            let ids: Vec<String> = hosts.keys().cloned().collect();
            let fresh = self.host_records(&ids).await?;
            for (id, (fresh_rev, fresh_record)) in ids.into_iter().zip(fresh) {
                let settled = hosts.get(&id).is_some_and(|(rev, ..)| *rev == fresh_rev);
                if settled {
                    hosts.remove(&id);
                } else if let Some(host) = hosts.get_mut(&id) {
                    host.0 = fresh_rev;
                    host.1 = fresh_record;
                }
            }
            if hosts.is_empty() {
                break;
            }
        }
        Ok(written)
    }

    /// One hostname's routes written to v2 from `record`; `routes` gains the routes it
    /// projects (so a later round also clears those a newer record drops).
    async fn write_v2(
        &self,
        v2: &V2Client,
        record: Option<&HostRecord>,
        routes: &mut Routes,
    ) -> Result<Written, Error> {
        let layout = self.layout();
        let want = match record {
            Some(r) => crate::keys::project(layout, r),
            None => Default::default(),
        };
        let mut by_route: std::collections::BTreeMap<String, crate::keys::Projection> = routes
            .iter()
            .map(|r| (r.clone(), Default::default()))
            .collect();
        for (key, v) in want {
            if let Some(route) = layout.id_of_vulcand_key(&key) {
                routes.insert(route.to_owned());
                by_route.entry(route.to_owned()).or_default().insert(key, v);
            }
        }
        let mut written = Written::default();
        for (route, want) in &by_route {
            written += v2.sync_route(layout.vulcand_prefix(), route, want).await?;
        }
        Ok(written)
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

    /// With the v2 sink: syncs every hostname whose record the units changed.
    async fn after_commit(&self, units: &[Unit], rev: &u64) -> Result<(), Error> {
        let Sink::V2(v2) = &self.sink else {
            return Ok(());
        };
        let layout = self.layout();
        // Per hostname: the newest record of the batch and every route any unit touched.
        let mut hosts = Hosts::new();
        for u in units {
            for (id, record) in &u.names {
                let entry = hosts.entry(id.clone()).or_default();
                entry.0 = if record.is_some() { *rev } else { 0 };
                entry.1 = record.clone();
                // Routes the unit removed are no longer in the record: name them.
                entry.2.extend(
                    u.ops
                        .iter()
                        .filter_map(|op| layout.id_of_vulcand_key(op.key()))
                        .filter(|route| layout.host_id_of(route) == id)
                        .map(str::to_owned),
                );
            }
        }
        self.sync_hosts(v2, hosts).await.map(|_| ())
    }

    async fn refresh(&self, units: &[Unit]) -> Result<(), Error> {
        let keys: Vec<RecordKey> = units
            .iter()
            .flat_map(|u| u.compares.iter().map(|(k, _)| k.clone()))
            .collect();
        store::refresh(
            &mut self.kv.clone(),
            self.layout(),
            &self.cache,
            &keys,
            self.max_ops,
        )
        .await
    }
    fn policy(&self) -> ksr_projection::Policy {
        self.policy
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
