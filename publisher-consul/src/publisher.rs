//! The Consul projector: applies batches through `/v1/txn` with KV fences.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use ksr_runtime::consumer::{ApplyError, ApplyReport, Delivery, Projector};
use ksr_runtime::metrics::MetricsRegistry;
use ksr_runtime::plan::{RecordKey, Versioned, pack, plan};

use crate::Error;
use crate::client::{ConsulClient, TxnOp, TxnOutcome};
use crate::layout::Layout;
use crate::target::{CatalogOp, ConsulTarget, State, Unit};

/// Consul's limit on operations in one transaction.
pub const MAX_TXN_OPS: usize = 64;
const CONCURRENCY: usize = 4;
const MAX_ATTEMPTS: u32 = 32;

/// The Consul publisher's own metrics.
#[derive(Debug, Clone, Default)]
pub struct ConsulMetrics {
    pub conflicts: Counter,
    pub compare_retries: Counter,
    pub names: Gauge,
    pub names_in_conflict: Gauge,
    pub repairs: Counter,
    pub reconcile_runs: Counter,
}

impl ConsulMetrics {
    pub fn new(registry: &MetricsRegistry) -> Self {
        let m = Self::default();
        registry.register(|r| {
            let r = r.sub_registry_with_prefix("consul");
            r.register(
                "name_conflicts",
                "Services that claimed a name another namespace owns",
                m.conflicts.clone(),
            );
            r.register(
                "compare_retries",
                "Transactions re-planned because another writer changed a record",
                m.compare_retries.clone(),
            );
            r.register("names", "Names registered", m.names.clone());
            r.register(
                "names_in_conflict",
                "Names with Services waiting for them",
                m.names_in_conflict.clone(),
            );
            r.register(
                "reconcile_repairs",
                "Catalog entries rewritten or removed by reconciliation",
                m.repairs.clone(),
            );
            r.register(
                "reconcile_runs",
                "Completed reconciliation passes",
                m.reconcile_runs.clone(),
            );
        });
        m
    }
}

/// Projects events into the Consul catalog.
#[derive(Debug)]
pub struct ConsulProjector {
    client: ConsulClient,
    layout: Layout,
    node: String,
    target: ConsulTarget,
    state: Mutex<State>,
    metrics: ConsulMetrics,
}

type TxnResult = (Vec<Unit>, Result<TxnOutcome, Error>);

impl ConsulProjector {
    /// Loads our records from Consul KV.
    pub async fn new(
        client: ConsulClient,
        layout: Layout,
        node: String,
        target: ConsulTarget,
        metrics: ConsulMetrics,
    ) -> Result<Self, Error> {
        let state = load_state(&client, &layout).await?;
        let p = Self {
            client,
            layout,
            node,
            target,
            state: Mutex::new(state),
            metrics,
        };
        p.update_gauges();
        Ok(p)
    }

    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn target(&self) -> &ConsulTarget {
        &self.target
    }

    pub fn metrics(&self) -> &ConsulMetrics {
        &self.metrics
    }

    /// Reads every record from Consul (reconciliation starts from the truth, not the cache).
    pub async fn snapshot(&self) -> Result<State, Error> {
        load_state(&self.client, &self.layout).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_gauges(&self) {
        let s = self.lock();
        let (mut names, mut conflicted) = (0, 0);
        for r in s.names.values().filter_map(|v| v.value.as_ref()) {
            names += 1;
            if !r.waiting.is_empty() {
                conflicted += 1;
            }
        }
        self.metrics.names.set(names);
        self.metrics.names_in_conflict.set(conflicted);
    }

    /// Consul counts every operation, the fence checks included.
    fn cost(unit: &Unit) -> (usize, usize) {
        let checks_only = unit
            .compares
            .iter()
            .filter(|(k, _)| match k {
                RecordKey::Service(s) => !unit.services.iter().any(|(x, _)| x == s),
                RecordKey::Name(id) => !unit.names.iter().any(|(x, _)| x == id),
            })
            .count();
        (
            unit.ops.len() + unit.services.len() + unit.names.len() + checks_only,
            0,
        )
    }

    /// Applies a coalesced batch.
    pub async fn apply_batch(&self, batch: &[Delivery]) -> Result<ApplyReport, Error> {
        let mut pending: Vec<Delivery> = batch.to_vec();
        let mut report = ApplyReport::default();
        for _attempt in 0..MAX_ATTEMPTS {
            let planned = plan(&self.target, &self.lock(), &pending);
            report.stale += planned.stale.len() as u64;
            report.rejected.extend(planned.rejected);
            let packed = pack(planned.units, MAX_TXN_OPS, Self::cost);
            let results: Vec<TxnResult> = futures::stream::iter(packed.txns)
                .map(|units| async {
                    let result = self.commit(&units).await;
                    (units, result)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let mut retry: HashSet<u64> = HashSet::new();
            // Units too large for one transaction (many Services on one name in one batch)
            // and transactions Consul refuses as invalid are retried one event at a time.
            let mut alone: Vec<u64> = packed.oversized.into_iter().flat_map(|u| u.seqs).collect();
            let mut failure = None;
            for (units, result) in results {
                let seqs = units.iter().flat_map(|u| u.seqs.iter().copied());
                match result {
                    Ok(TxnOutcome::Committed(indexes)) => {
                        self.settle(&units, &indexes, &mut report)
                    }
                    Ok(TxnOutcome::Conflict(why)) => {
                        tracing::debug!(why, "transaction conflicted; re-reading its records");
                        self.metrics.compare_retries.inc();
                        retry.extend(seqs);
                        self.refresh(&units).await?;
                    }
                    Err(Error::Invalid { .. }) => alone.extend(seqs),
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                self.update_gauges();
                return Err(e);
            }
            alone.sort_unstable();
            for seq in alone {
                if let Some(d) = pending.iter().find(|d| d.seq == seq) {
                    self.apply_alone(d, &mut report).await?;
                }
            }
            self.update_gauges();
            if retry.is_empty() {
                return Ok(report);
            }
            pending.retain(|d| retry.contains(&d.seq));
        }
        Err(Error::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Applies one event in its own transaction (it always fits); an event Consul refuses as
    /// invalid is rejected (terminated), never retried forever.
    async fn apply_alone(&self, d: &Delivery, report: &mut ApplyReport) -> Result<(), Error> {
        for _attempt in 0..MAX_ATTEMPTS {
            let planned = plan(&self.target, &self.lock(), std::slice::from_ref(d));
            report.stale += planned.stale.len() as u64;
            report.rejected.extend(planned.rejected);
            let Some(unit) = planned.units.into_iter().next() else {
                return Ok(());
            };
            let units = [unit];
            match self.commit(&units).await {
                Ok(TxnOutcome::Committed(indexes)) => {
                    self.settle(&units, &indexes, report);
                    return Ok(());
                }
                Ok(TxnOutcome::Conflict(_)) => {
                    self.metrics.compare_retries.inc();
                    self.refresh(&units).await?;
                }
                Err(e @ Error::Invalid { .. }) => {
                    report.rejected.push((d.seq, e.to_string()));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn commit(&self, units: &[Unit]) -> Result<TxnOutcome, Error> {
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
                ops.push(match op {
                    CatalogOp::Set(body) => TxnOp::ServiceSet {
                        node: self.node.clone(),
                        body: body.clone(),
                    },
                    CatalogOp::Delete { id, service } => TxnOp::ServiceDelete {
                        node: self.node.clone(),
                        id: id.clone(),
                        service: service.clone(),
                    },
                });
            }
        }
        ops
    }

    fn settle(&self, units: &[Unit], indexes: &BTreeMap<String, u64>, report: &mut ApplyReport) {
        let mut s = self.lock();
        for u in units {
            report.applied += u.seqs.len() as u64;
            for (key, record) in &u.services {
                let rev = indexes
                    .get(&self.layout.service_record_key(key))
                    .copied()
                    .unwrap_or(0);
                s.services.insert(
                    key.clone(),
                    Versioned {
                        rev,
                        value: Some(record.clone()),
                    },
                );
            }
            for (id, record) in &u.names {
                let v = match record {
                    Some(r) => Versioned {
                        rev: indexes
                            .get(&self.layout.name_record_key(id))
                            .copied()
                            .unwrap_or(0),
                        value: Some(r.clone()),
                    },
                    None => Versioned::default(),
                };
                s.names.insert(id.clone(), v);
            }
            for c in &u.conflicts {
                self.metrics.conflicts.inc_by(c.waiting.len() as u64);
                tracing::warn!(name = c.id, owner = c.owner, waiting = ?c.waiting, "name conflict: the older claim keeps the name; the others wait");
            }
        }
    }

    async fn refresh(&self, units: &[Unit]) -> Result<(), Error> {
        for u in units {
            for (key, _) in &u.compares {
                let k = self.layout.record_key(key);
                let entry = self.client.kv_get(&k).await?;
                let mut s = self.lock();
                match key {
                    RecordKey::Service(svc) => {
                        let v = match entry {
                            Some(e) => Versioned {
                                rev: e.modify_index,
                                value: Some(parse(&k, &e.value)?),
                            },
                            None => Versioned::default(),
                        };
                        s.services.insert(svc.clone(), v);
                    }
                    RecordKey::Name(id) => {
                        let v = match entry {
                            Some(e) => Versioned {
                                rev: e.modify_index,
                                value: Some(parse(&k, &e.value)?),
                            },
                            None => Versioned::default(),
                        };
                        s.names.insert(id.clone(), v);
                    }
                }
            }
        }
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|e| Error::CorruptRecord {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Loads all our records from KV.
pub async fn load_state(client: &ConsulClient, layout: &Layout) -> Result<State, Error> {
    let mut state = State::default();
    for entry in client.kv_tree(&layout.state_prefix()).await? {
        match layout.parse_record_key(&entry.key) {
            Some(RecordKey::Service(key)) => {
                let value = Some(parse(&entry.key, &entry.value)?);
                state.services.insert(
                    key,
                    Versioned {
                        rev: entry.modify_index,
                        value,
                    },
                );
            }
            Some(RecordKey::Name(id)) => {
                let value = Some(parse(&entry.key, &entry.value)?);
                state.names.insert(
                    id,
                    Versioned {
                        rev: entry.modify_index,
                        value,
                    },
                );
            }
            None => tracing::warn!(key = entry.key, "ignoring an unknown key under our prefix"),
        }
    }
    Ok(state)
}

impl Projector for ConsulProjector {
    async fn apply(&self, batch: &[Delivery]) -> Result<ApplyReport, ApplyError> {
        self.apply_batch(batch).await.map_err(|e| ApplyError {
            reason: e.reason(),
            message: e.to_string(),
        })
    }
}
