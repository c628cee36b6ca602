//! Syncing hostnames into etcd v2 after their v3 commit (vulcand v0.8 reads only v2): each
//! hostname's routes from its committed record, several hostnames at once, each in vulcand's
//! order, again from a newer record while another writer keeps changing it; marked as being
//! synced meanwhile, so reconciliation does not take a route in flight for drift; kept, when
//! the sync fails, for the next call.

use std::collections::BTreeMap;

use crate::Error;
use crate::projector::VulcandProjector;
use crate::records::HostRecord;
use crate::target::Unit;
use crate::v2::{V2Client, Written};

/// Route ids of one hostname.
pub(crate) type Routes = std::collections::BTreeSet<String>;

/// A hostname to sync to v2: the revision and record to write it from, and its routes.
pub(crate) type Host = (u64, Option<HostRecord>, Routes);

/// Hostnames to sync to v2.
pub(crate) type Hosts = BTreeMap<String, Host>;

/// How many hostnames are synced to v2 at once after a round of commits (each in vulcand's
/// order).
const V2_CONCURRENCY: usize = 64;

/// How many drifted hostnames reconciliation reads and syncs at a time.
const SYNC_CHUNK: usize = 1024;

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

impl VulcandProjector {
    /// Syncs every hostname whose record committed transactions changed (each with its
    /// commit's revision), all of them in one pass, with those whose sync failed before
    /// (`committed` may be empty: a failed batch's redelivery commits nothing new). When the
    /// sync fails, every hostname of it is kept for the next call.
    pub(crate) async fn sync_committed(
        &self,
        v2: &V2Client,
        committed: &[(Vec<Unit>, u64)],
    ) -> Result<(), Error> {
        // The unsynced hostnames are older than any commit; transactions in revision order.
        let mut hosts = std::mem::take(&mut *self.unsynced());
        let retried = hosts.len();
        let mut txns: Vec<&(Vec<Unit>, u64)> = committed.iter().collect();
        txns.sort_by_key(|(_, rev)| *rev);
        for (units, rev) in txns {
            for unit in units {
                self.add_committed(&mut hosts, unit, *rev);
            }
        }
        if hosts.is_empty() {
            return Ok(());
        }
        let failed = match self.sync_hosts(v2, hosts.clone()).await {
            Ok(_) => {
                if retried > 0 {
                    tracing::info!(hostnames = retried, "v2 sync caught up after a failure");
                }
                return Ok(());
            }
            Err(e) => e,
        };
        let mut unsynced = self.unsynced();
        for (id, host) in hosts {
            unsynced.entry(id).or_insert(host);
        }
        tracing::warn!(hostnames = unsynced.len(), error = %failed, "v2 sync failed; retried after the next commit");
        Err(failed)
    }

    /// Adds the hostnames a unit committed at `rev` changed to `hosts`: each with its newest
    /// record, and every route the unit touched (those it removed are no longer in the
    /// record, so they are named).
    fn add_committed(&self, hosts: &mut Hosts, unit: &Unit, rev: u64) {
        let layout = self.layout();
        for (id, record) in &unit.names {
            let entry = hosts.entry(id.clone()).or_default();
            entry.0 = if record.is_some() { rev } else { 0 };
            entry.1 = record.clone();
            entry.2.extend(
                unit.ops
                    .iter()
                    .filter_map(|op| layout.id_of_vulcand_key(op.key()))
                    .filter(|route| layout.host_id_of(route) == id)
                    .map(str::to_owned),
            );
        }
    }

    fn unsynced(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether hostname `id`'s v2 sync is under way.
    pub fn is_syncing(&self, id: &str) -> bool {
        self.syncing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// The records of hostnames `ids` as etcd holds them now, with their revisions (0 when
    /// absent), in the order given — read in as few transactions as etcd allows.
    async fn host_records(&self, ids: &[String]) -> Result<Vec<(u64, Option<HostRecord>)>, Error> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.layout().host_record_key(id))
            .collect();
        let found = crate::store::get_many(&mut self.kv.clone(), &keys, self.max_ops).await?;
        Ok(found
            .into_iter()
            .map(|f| {
                f.map_or_else(Default::default, |(rev, v)| {
                    (rev, serde_json::from_slice(&v).ok())
                })
            })
            .collect())
    }

    /// Syncs the routes reconciliation found drifted (route ids by hostname), each hostname
    /// from its record as etcd holds it now, many at once; a hostname whose sync is under way
    /// (its record committed, its v2 writes in flight) is left to that sync. Returns what had
    /// to be written, by hostname.
    pub(crate) async fn sync_drifted(
        &self,
        v2: &V2Client,
        drifted: BTreeMap<String, Routes>,
    ) -> Result<BTreeMap<String, Written>, Error> {
        let idle: Vec<(String, Routes)> = drifted
            .into_iter()
            .filter(|(host, _)| {
                let busy = self.is_syncing(host);
                if busy {
                    tracing::debug!(host, "reconcile leaves a hostname being synced to its sync");
                }
                !busy
            })
            .collect();
        let mut written = BTreeMap::new();
        for chunk in idle.chunks(SYNC_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let records = self.host_records(&ids).await?;
            let hosts: Hosts = chunk
                .iter()
                .cloned()
                .zip(records)
                .map(|((id, routes), (rev, record))| (id, (rev, record, routes)))
                .collect();
            written.extend(self.sync_hosts(v2, hosts).await?);
        }
        Ok(written)
    }

    /// Syncs hostnames to v2 in rounds: every hostname's routes from its record (several
    /// hostnames at once — their routes are disjoint — each in vulcand's order), then one
    /// read of all their records; those another writer changed meanwhile go again from the
    /// newer record. While this runs the hostnames are marked as being synced.
    async fn sync_hosts(
        &self,
        v2: &V2Client,
        mut hosts: Hosts,
    ) -> Result<BTreeMap<String, Written>, Error> {
        use futures::{StreamExt, TryStreamExt};
        let _syncing = Syncing::mark(self, hosts.keys().cloned().collect());
        let mut written = BTreeMap::<String, Written>::new();
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
                *written.entry(id.clone()).or_default() += w;
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
