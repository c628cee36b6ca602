//! The Consul projector: applies batches through `/v1/txn` with KV fences.

use std::collections::BTreeMap;

use ksr_projection::apply::{Commit, Store, StoreError};
use ksr_projection::cache::Cache;
use ksr_projection::metrics::ProjectionMetrics;
use ksr_projection::records::Loading;
use ksr_projection::{RecordKey, Records};
use ksr_runtime::metrics::MetricsRegistry;

use crate::Error;
use crate::config::TargetArgs;
use crate::layout::Layout;
use crate::store::{ConsulClient, KvEntry, TxnOp, TxnOutcome};
use crate::target::{CatalogOp, ConsulRecord, ConsulTarget, State, Unit};

/// A full read of our records for reconciliation: per name the digest of the instance it
/// projects to (`None`: it projects to none).
pub type Survey = ksr_projection::survey::Survey<Option<u64>>;

/// Consul's limit on operations in one transaction.
pub const MAX_TXN_OPS: usize = 64;

/// The consul publisher's metrics (`ksr_consul_…`).
pub type ConsulMetrics = ProjectionMetrics;

/// Registers the consul publisher's metrics.
pub fn metrics(registry: &MetricsRegistry) -> ConsulMetrics {
    let m = ProjectionMetrics::default();
    registry.register(|r| m.register(r, "consul", "name"));
    m
}

/// Opens the Consul target `args` names through `client`: our records loaded from Consul
/// KV. The publisher and ksrctl both open it so.
pub async fn open(
    client: &ConsulClient,
    args: &TargetArgs,
    metrics: ConsulMetrics,
    records: Records,
) -> Result<ConsulProjector, Error> {
    let (client, layout, target) = (client.clone(), args.layout(), args.target()?);
    Ok(match records {
        Records::Load => ConsulProjector::new(client, layout, target, metrics).await?,
        Records::Skip => {
            ConsulProjector::with_state(client, layout, target, metrics, State::default())
        }
    })
}

/// Projects events into the Consul catalog.
#[derive(Debug)]
pub struct ConsulProjector {
    client: ConsulClient,
    layout: Layout,
    target: ConsulTarget,
    cache: Cache<ConsulTarget>,
}

impl ConsulProjector {
    /// Loads our records from Consul KV.
    pub async fn new(
        client: ConsulClient,
        layout: Layout,
        target: ConsulTarget,
        metrics: ConsulMetrics,
    ) -> Result<Self, Error> {
        let state = load_state(&client, &layout).await?;
        Ok(Self::with_state(client, layout, target, metrics, state))
    }

    /// Starts from `state` instead of the records in Consul KV.
    fn with_state(
        client: ConsulClient,
        layout: Layout,
        target: ConsulTarget,
        metrics: ConsulMetrics,
        state: State,
    ) -> Self {
        Self {
            client,
            layout,
            target,
            cache: Cache::new(state, metrics, "consul"),
        }
    }

    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The installation's node (the first router's).
    pub fn node(&self) -> &str {
        self.target.node()
    }

    pub fn metrics(&self) -> &ConsulMetrics {
        self.cache.metrics()
    }

    /// Reads every record from Consul, kept small: per name its revision and the digest of
    /// the instance it projects to (reconciliation starts from the truth, not the cache).
    pub async fn survey(&self) -> Result<Survey, Error> {
        let mut survey = Survey::default();
        let target = &self.target;
        read_records(&self.client, &self.layout, |record, entry| {
            let derive = |id: &str, r: &ConsulRecord| target.instance(id, r).map(|b| b.digest());
            let (key, rev) = (&entry.key, entry.modify_index);
            survey.add(record, key, rev, &entry.value, |f| f, derive);
        })
        .await?;
        Ok(survey.finish("consul"))
    }

    async fn commit_txn(&self, units: &[Unit]) -> Result<TxnOutcome, Error> {
        let ops = self.txn_ops(units);
        if ops.is_empty() {
            return Ok(TxnOutcome::Committed(BTreeMap::new()));
        }
        self.client.txn(&ops).await
    }

    fn txn_ops(&self, units: &[Unit]) -> Vec<TxnOp> {
        let mut ops = Vec::new();
        for u in units {
            for (key, rev) in &u.compares {
                let k = self.layout.record_key(key);
                let written = match key {
                    RecordKey::Service(s) => u
                        .services
                        .iter()
                        .find(|(x, _)| x == s)
                        .map(|(_, r)| serde_json::to_vec(r).map(Some)),
                    RecordKey::Name(id) => {
                        u.names.iter().find(|(x, _)| x == id).map(|(_, r)| match r {
                            Some(r) => serde_json::to_vec(r).map(Some),
                            None => Ok(None),
                        })
                    }
                };
                ops.push(match written {
                    Some(Ok(Some(value))) => TxnOp::KvCas {
                        key: k,
                        value,
                        index: *rev,
                    },
                    Some(Ok(None)) => TxnOp::KvDeleteCas {
                        key: k,
                        index: *rev,
                    },
                    _ => TxnOp::KvCheck {
                        key: k,
                        index: *rev,
                    },
                });
            }
            for op in &u.ops {
                for router in &self.target.routers {
                    ops.push(match op {
                        CatalogOp::Set(body) => TxnOp::ServiceSet {
                            node: router.node.clone(),
                            body: ConsulTarget::at(body, router),
                        },
                        CatalogOp::Delete { id, service } => TxnOp::ServiceDelete {
                            node: router.node.clone(),
                            id: id.clone(),
                            service: service.clone(),
                        },
                    });
                }
            }
        }
        ops
    }
}

/// Loads all our records from KV, each as the reply streams in.
pub async fn load_state(client: &ConsulClient, layout: &Layout) -> Result<State, Error> {
    let mut loading = Loading::default();
    read_records(client, layout, |record, entry| {
        loading.add(record, &entry.key, entry.modify_index, &entry.value, |f| f);
    })
    .await?;
    Ok(loading.finish("consul"))
}

/// Calls `each` with every record of ours as read (the record, its KV entry), as the reply
/// streams in.
async fn read_records(
    client: &ConsulClient,
    layout: &Layout,
    mut each: impl FnMut(RecordKey, KvEntry),
) -> Result<(), Error> {
    client
        .kv_tree_each(&layout.state_prefix(), |entry| {
            match layout.parse_record_key(&entry.key) {
                Some(record) => each(record, entry),
                None => tracing::warn!(key = entry.key, "ignoring an unknown key under our prefix"),
            }
        })
        .await
}

impl Store for ConsulProjector {
    type T = ConsulTarget;
    type Committed = BTreeMap<String, u64>;
    type Error = Error;

    fn target(&self) -> &ConsulTarget {
        &self.target
    }

    fn cache(&self) -> &Cache<ConsulTarget> {
        &self.cache
    }

    fn cache_mut(&mut self) -> &mut Cache<ConsulTarget> {
        &mut self.cache
    }

    fn max_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    /// Consul counts every operation, the fence checks included; each catalog write is one
    /// operation per router.
    fn cost(&self, unit: &Unit) -> (usize, usize) {
        let checks_only = unit
            .compares
            .iter()
            .filter(|(k, _)| match k {
                RecordKey::Service(s) => !unit.services.iter().any(|(x, _)| x == s),
                RecordKey::Name(id) => !unit.names.iter().any(|(x, _)| x == id),
            })
            .count();
        (
            unit.ops.len() * self.target.routers.len()
                + unit.services.len()
                + unit.names.len()
                + checks_only,
            0,
        )
    }

    async fn commit(&self, units: &[Unit]) -> Result<Commit<BTreeMap<String, u64>>, Error> {
        Ok(match self.commit_txn(units).await? {
            TxnOutcome::Committed(indexes) => Commit::Committed(indexes),
            TxnOutcome::Conflict(why) => {
                tracing::debug!(why, "transaction conflicted; re-reading its records");
                Commit::Conflict
            }
        })
    }

    /// A single event's unit always fits one transaction (≤ 4 operations and one catalog
    /// write per router: at most 8 routers).
    async fn commit_oversized(&self, unit: &Unit) -> Result<Commit<BTreeMap<String, u64>>, Error> {
        self.commit(std::slice::from_ref(unit)).await
    }

    /// Each KV write of a transaction has its own ModifyIndex.
    fn revision(&self, indexes: &BTreeMap<String, u64>, key: &RecordKey) -> u64 {
        indexes
            .get(&self.layout.record_key(key))
            .copied()
            .unwrap_or(0)
    }

    async fn reread(&self, records: &[RecordKey]) -> Result<(), Error> {
        for key in records {
            let entry = self.client.kv_get(&self.layout.record_key(key)).await?;
            let found = entry.map(|e| (e.modify_index, e.value));
            self.cache.replace([(key.clone(), found)], |fence| fence);
        }
        Ok(())
    }
}

impl StoreError for Error {
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }

    fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid { .. })
    }

    fn contention(attempts: u32) -> Self {
        Error::Contention { attempts }
    }
}
