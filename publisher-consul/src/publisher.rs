//! The Consul projector: applies batches through `/v1/txn` with KV fences.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ksr_runtime::apply::{self, Commit, Store};
use ksr_runtime::consumer::{ApplyError, ApplyReport, Delivery, Projector};
use ksr_runtime::metrics::{MetricsRegistry, ProjectionMetrics};
use ksr_runtime::plan::{RecordKey, Versioned};

use crate::Error;
use crate::client::{ConsulClient, TxnOp, TxnOutcome};
use crate::layout::Layout;
use crate::target::{CatalogOp, ConsulTarget, State, Unit};

/// Consul's limit on operations in one transaction.
pub const MAX_TXN_OPS: usize = 64;

/// The consul publisher's metrics (`ksr_consul_…`).
pub type ConsulMetrics = ProjectionMetrics;

/// Registers the consul publisher's metrics.
pub fn metrics(registry: &MetricsRegistry) -> ConsulMetrics {
    ProjectionMetrics::new(registry, "consul", "name")
}

/// Projects events into the Consul catalog.
#[derive(Debug)]
pub struct ConsulProjector {
    policy: ksr_runtime::config::Policy,
    health: ksr_runtime::Health,
    client: ConsulClient,
    layout: Layout,
    target: ConsulTarget,
    state: Mutex<State>,
    metrics: ConsulMetrics,
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
        let p = Self {
            client,
            layout,
            target,
            state: Mutex::new(state),
            metrics,
            policy: ksr_runtime::config::Policy::Sync,
            health: ksr_runtime::Health::default(),
        };
        p.update_gauges();
        Ok(p)
    }

    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// Reports through `health` (unreadable records become a warning in `/readyz`).
    pub fn with_health(self, health: ksr_runtime::Health) -> Self {
        let p = Self { health, ..self };
        let corrupt = p.lock().corrupt.clone();
        p.warn_corrupt(&corrupt);
        p
    }

    /// Quarantines in the cache what a fresh load found unreadable, so the events of the
    /// Services concerned are applied again, and reports it.
    pub fn quarantine(&self, snapshot: &State) {
        self.lock().quarantine_from(snapshot);
        self.warn_corrupt(&snapshot.corrupt);
    }

    /// Gauge and `/readyz` warning for the unreadable records of the last load.
    fn warn_corrupt(&self, corrupt: &[(ksr_runtime::plan::RecordKey, String, String)]) {
        self.metrics.report_corrupt(&self.health, corrupt, "consul");
    }

    /// Applies `policy` (`upsert-only`: never delete).
    pub fn with_policy(mut self, policy: ksr_runtime::config::Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> ksr_runtime::config::Policy {
        self.policy
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The installation's node (the first router's).
    pub fn node(&self) -> &str {
        self.target.node()
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
        self.metrics.observe(&self.lock());
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

    /// Applies a coalesced batch.
    pub async fn apply_batch(&self, batch: &[Delivery]) -> Result<ApplyReport, Error> {
        apply::apply_batch(self, batch).await
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

    fn settle(&self, units: &[Unit], indexes: &BTreeMap<String, u64>, report: &mut ApplyReport) {
        self.lock().settle(units, |k| {
            indexes
                .get(&self.layout.record_key(k))
                .copied()
                .unwrap_or(0)
        });
        for u in units {
            report.applied += u.seqs.len() as u64;
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
                                // Unreadable: held as absent at its revision (quarantine).
                                value: parse(&k, &e.value).ok(),
                            },
                            None => Versioned::default(),
                        };
                        s.services.insert(svc.clone(), v);
                    }
                    RecordKey::Name(id) => {
                        let v = match entry {
                            Some(e) => Versioned {
                                rev: e.modify_index,
                                // Unreadable: held as absent at its revision (quarantine).
                                value: parse(&k, &e.value).ok(),
                            },
                            None => Versioned::default(),
                        };
                        s.set_name(id.clone(), v);
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
    // Quarantined once every fence is loaded (names sort before services).
    let mut unreadable = Vec::new();
    for entry in client.kv_tree(&layout.state_prefix()).await? {
        match layout.parse_record_key(&entry.key) {
            Some(RecordKey::Service(key)) => match parse(&entry.key, &entry.value) {
                Ok(record) => {
                    let value = Some(record);
                    let rev = entry.modify_index;
                    state.services.insert(key, Versioned { rev, value });
                }
                Err(e) => unreadable.push((RecordKey::Service(key), entry, e)),
            },
            Some(RecordKey::Name(id)) => match parse(&entry.key, &entry.value) {
                Ok(record) => {
                    let value = Some(record);
                    let rev = entry.modify_index;
                    state.set_name(id, Versioned { rev, value });
                }
                Err(e) => unreadable.push((RecordKey::Name(id), entry, e)),
            },
            None => tracing::warn!(key = entry.key, "ignoring an unknown key under our prefix"),
        }
    }
    for (record, entry, error) in unreadable {
        tracing::error!(key = entry.key, error = %error, "unreadable record under our prefix quarantined; the next write for it replaces it (ksrctl rebuild consul repairs it now)");
        state.quarantine(record, entry.modify_index, entry.key, error.to_string());
    }
    Ok(state)
}

impl Store for ConsulProjector {
    type T = ConsulTarget;
    type Committed = BTreeMap<String, u64>;
    type Error = Error;

    fn target(&self) -> &ConsulTarget {
        &self.target
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.lock()
    }

    fn max_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn cost(&self, unit: &Unit) -> (usize, usize) {
        ConsulProjector::cost(self, unit)
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

    fn settle(&self, units: &[Unit], indexes: &BTreeMap<String, u64>, report: &mut ApplyReport) {
        ConsulProjector::settle(self, units, indexes, report);
    }

    async fn after_commit(
        &self,
        _units: &[Unit],
        _indexes: &BTreeMap<String, u64>,
    ) -> Result<(), Error> {
        Ok(())
    }

    async fn refresh(&self, units: &[Unit]) -> Result<(), Error> {
        ConsulProjector::refresh(self, units).await
    }

    fn conflicted(&self) {
        self.metrics.compare_retries.inc();
    }

    fn update_gauges(&self) {
        ConsulProjector::update_gauges(self);
    }

    fn is_invalid(&self, error: &Error) -> bool {
        matches!(error, Error::Invalid { .. })
    }

    fn contention(&self, attempts: u32) -> Error {
        Error::Contention { attempts }
    }

    fn policy(&self) -> ksr_runtime::config::Policy {
        self.policy
    }
}

impl Projector for ConsulProjector {
    async fn apply(&self, batch: &[Delivery]) -> Result<ApplyReport, ApplyError> {
        self.apply_batch(batch).await.map_err(|e| ApplyError {
            reason: e.reason(),
            message: e.to_string(),
        })
    }

    fn standings(&self) -> Vec<ksr_runtime::status::Change> {
        ksr_runtime::plan::standings::<ConsulTarget>(&ksr_runtime::apply::Store::state(self))
    }
}
