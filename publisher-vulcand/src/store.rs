//! etcd v3 I/O: paged prefix reads, fenced transactions, and refreshing records.

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};

use ksr_projection::RecordKey;
use ksr_projection::cache::Cache;
use ksr_projection::records::Loading;
use ksr_proto::{RoutePath, ServiceKey};

use crate::Error;
use crate::keys::KeyOp;
use crate::layout::Layout;
use crate::records::ServiceRecord;
use crate::target::{State, VulcandTarget};

/// The first page of a prefix read, in keys.
const PAGE: i64 = 2000;
/// Pages are sized to about this many bytes (etcd's replies are limited to 4 MiB).
const PAGE_BYTES: usize = 1 << 20;
/// The most keys one page asks for.
const MAX_PAGE: i64 = 20_000;

/// Every (key, value, mod revision) under `prefix`, read page by page at one revision.
///
/// etcd walks the whole remaining range to count it for every limited read, so the number of
/// pages is what makes a large read quadratic: pages grow to about [`PAGE_BYTES`] (from the
/// size of the last one), and a page etcd cannot send in one reply is asked for again at half
/// the size.
pub async fn read_prefix(
    kv: &mut KvClient,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>, u64)>, Error> {
    let mut out = Vec::new();
    read_prefix_each(kv, prefix, |key, value, rev| {
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            value.to_vec(),
            rev,
        ));
    })
    .await?;
    Ok(out)
}

/// Calls `each` with every (key, value, mod revision) under `prefix` in key order, read page
/// by page at one revision as [`read_prefix`] does, holding one page at a time.
pub async fn read_prefix_each(
    kv: &mut KvClient,
    prefix: &str,
    each: impl FnMut(&[u8], &[u8], u64),
) -> Result<(), Error> {
    read_prefix_at(kv, prefix, 0, each).await.map(|_| ())
}

/// [`read_prefix_each`] at etcd revision `at` (0: the current one); returns the revision it
/// read at, so that another prefix can be read as of the same moment. Fails once etcd has
/// compacted `at` away.
pub async fn read_prefix_at(
    kv: &mut KvClient,
    prefix: &str,
    at: u64,
    mut each: impl FnMut(&[u8], &[u8], u64),
) -> Result<u64, Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = i64::try_from(at).unwrap_or(i64::MAX);
    let mut page = PAGE;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = match kv.get(start.clone(), Some(opts)).await {
            Err(e) if page > 1 && too_large(&e) => {
                page /= 2;
                continue;
            }
            r => r?,
        };
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let mut bytes = 0;
        for kv in resp.kvs() {
            bytes += kv.key().len() + kv.value().len();
            each(kv.key(), kv.value(), rev(kv.mod_revision()));
        }
        if !resp.more() || resp.kvs().is_empty() {
            break;
        }
        let per_key = (bytes / resp.kvs().len()).max(1);
        page = i64::try_from(PAGE_BYTES / per_key)
            .unwrap_or(MAX_PAGE)
            .clamp(1, MAX_PAGE);
        let mut next = resp.kvs()[resp.kvs().len() - 1].key().to_vec();
        next.push(0);
        start = next;
    }
    Ok(rev(revision))
}

/// Whether etcd's reply was over the client's message size limit (the client refuses to
/// decode it: `OutOfRange`; a server-side limit: `ResourceExhausted`).
fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted))
}

fn rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Loads all our records (migrating those of older versions first).
pub async fn load_state(kv: &mut KvClient, layout: &Layout) -> Result<State, Error> {
    let mut loading = Loading::default();
    let fence = |f| service_record(layout, f);
    read_records(kv, layout, |record, key, rev, value| {
        loading.add(record, key, rev, value, fence);
    })
    .await?;
    Ok(loading.finish("vulcand"))
}

/// Calls `each` with every record of ours as read (record, its key, revision, bytes), a page
/// at a time, migrating those of older versions first; all of them as of one etcd revision,
/// which it returns.
pub async fn read_records(
    kv: &mut KvClient,
    layout: &Layout,
    mut each: impl FnMut(RecordKey, &str, u64, &[u8]),
) -> Result<u64, Error> {
    migrate_legacy(kv, layout).await?;
    let services_prefix = layout.services_prefix();
    let at = read_prefix_at(kv, &services_prefix, 0, |key, value, rev| {
        let key = String::from_utf8_lossy(key);
        let Some(service) = ServiceKey::from_path(&key[services_prefix.len()..]) else {
            tracing::warn!(%key, "ignoring a record key that does not name a Service");
            return;
        };
        each(RecordKey::Service(service), &key, rev, value);
    })
    .await?;
    let hosts_prefix = layout.hosts_prefix();
    read_prefix_at(kv, &hosts_prefix, at, |key, value, rev| {
        let key = String::from_utf8_lossy(key);
        let id = key[hosts_prefix.len()..].to_owned();
        each(RecordKey::Name(id), &key, rev, value);
    })
    .await
}

/// Turns the records of versions before hostnames were owned by one namespace (one record per
/// host + path) into host records: the claims of every route of a hostname join its record
/// (each claim's age on the route becomes its age on the hostname), and the old records go,
/// per hostname in one transaction guarded by compares, so replicas starting together
/// migrate once. Then each Service's fence is pointed at its host record. Route ids, and so
/// the vulcand keys, do not change; where two namespaces shared a hostname, the next
/// reconciliation applies the ownership rule. A crash half-way is harmless: the rest is
/// migrated at the next start, and a fence still naming a route id only means the planner
/// finds no record to leave.
async fn migrate_legacy(kv: &mut KvClient, layout: &Layout) -> Result<(), Error> {
    use std::collections::BTreeMap;

    use ksr_projection::plan::refresh_status;

    use crate::records::{HostMeta, HostRecord, PathClaim, legacy};
    use crate::target::VulcandTarget;

    for _ in 0..8 {
        let old = read_prefix(kv, &layout.legacy_routes_prefix()).await?;
        if old.is_empty() {
            return Ok(());
        }
        tracing::info!(
            records = old.len(),
            "migrating route records to host records"
        );
        let mut hosts: BTreeMap<String, (HostRecord, Vec<(String, u64)>)> = BTreeMap::new();
        for (key, value, rev) in old {
            let record: legacy::RouteRecord = match serde_json::from_slice(&value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(key, error = %e, "unreadable route record left in place");
                    continue;
                }
            };
            let path = match RoutePath::new(record.meta.path.as_str()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(key, error = %e, "route record with a path vulcand refuses left in place");
                    continue;
                }
            };
            let id = layout.host_id(&record.meta.host);
            let (host, guards) = hosts.entry(id).or_insert_with(|| {
                (
                    HostRecord::new(HostMeta {
                        host: record.meta.host.clone(),
                    }),
                    Vec::new(),
                )
            });
            for c in record.claims.iter() {
                let data = PathClaim {
                    path: path.clone(),
                    path_since: c.since,
                    backends: c.data.clone(),
                    // Legacy records predate https backends.
                    scheme: Default::default(),
                    tls_skip_verify: false,
                };
                host.claims.upsert(&c.key(), c.seq, c.since, data);
            }
            guards.push((key, rev));
        }
        let mut raced = false;
        for (id, (mut record, guards)) in hosts {
            refresh_status::<VulcandTarget>(&mut record);
            let mut w = Write::default();
            let key = layout.host_record_key(&id);
            w.compares.push((key.clone(), 0));
            for (old, rev) in &guards {
                w.compares.push((old.clone(), *rev));
                w.delete(old.clone());
            }
            w.put_json(key, &record);
            if commit(kv, w).await?.is_none() {
                raced = true;
            }
        }
        if !raced {
            break;
        }
    }
    // Fences naming a route id now name its host.
    let prefix = layout.services_prefix();
    for (key, value, rev) in read_prefix(kv, &prefix).await? {
        let Ok(fence) = serde_json::from_slice::<ServiceRecord>(&value) else {
            continue;
        };
        let fixed = service_record(layout, fence.clone());
        if fixed != fence {
            let mut w = Write::default();
            w.compares.push((key.clone(), rev));
            w.put_json(key, &fixed);
            commit(kv, w).await?;
        }
    }
    Ok(())
}

/// A fence as read: one written before host records names a route id, which stands for its
/// hostname's record (also where a migration was interrupted before the fences).
pub(crate) fn service_record(layout: &Layout, mut fence: ServiceRecord) -> ServiceRecord {
    if let Some(host) = fence
        .claim
        .as_deref()
        .and_then(|c| layout.host_of_legacy_claim(c))
    {
        fence.claim = Some(host.to_owned());
    }
    fence
}

/// The etcd key of a record.
pub fn record_key(layout: &Layout, key: &RecordKey) -> String {
    match key {
        RecordKey::Service(s) => layout.service_record_key(s),
        RecordKey::Name(id) => layout.host_record_key(id),
    }
}

/// Reads `keys` (revision and value of each, `None` when absent), in as few transactions as
/// `max_ops` allows, in the order given.
pub async fn get_many(
    kv: &mut KvClient,
    keys: &[String],
    max_ops: usize,
) -> Result<Vec<Option<(u64, Vec<u8>)>>, Error> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(max_ops.max(1)) {
        let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let resp = kv.txn(Txn::new().and_then(ops)).await?;
        out.extend(resp.op_responses().into_iter().map(|r| {
            match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (rev(kv.mod_revision()), kv.value().to_vec())),
                _ => None,
            }
        }));
    }
    Ok(out)
}

/// Reads the given records again into `cache` ([`ksr_projection::apply::Store::reread`]).
pub async fn reread(
    kv: &mut KvClient,
    layout: &Layout,
    cache: &Cache<VulcandTarget>,
    keys: &[RecordKey],
    max_ops: usize,
) -> Result<(), Error> {
    let paths: Vec<String> = keys.iter().map(|k| record_key(layout, k)).collect();
    let fresh = get_many(kv, &paths, max_ops).await?;
    cache.replace(keys.iter().cloned().zip(fresh), |fence| {
        service_record(layout, fence)
    });
    Ok(())
}

/// A transaction: compares on record revisions, then the writes in order.
#[derive(Debug, Default)]
pub struct Write {
    pub compares: Vec<(String, u64)>,
    pub ops: Vec<TxnOp>,
}

impl Write {
    pub fn key_op(&mut self, op: &KeyOp) {
        self.ops.push(match op {
            KeyOp::Put { key, value, .. } => TxnOp::put(key.as_str(), value.as_str(), None),
            KeyOp::Delete { key, .. } => TxnOp::delete(key.as_str(), None),
        });
    }

    pub fn put_json(&mut self, key: String, value: &impl serde::Serialize) {
        let json = serde_json::to_vec(value).unwrap_or_default();
        self.ops.push(TxnOp::put(key, json, None));
    }

    pub fn delete(&mut self, key: String) {
        self.ops.push(TxnOp::delete(key, None));
    }
}

/// Commits `write`; `Ok(Some(revision))` when the compares held, `Ok(None)` when they did not.
pub async fn commit(kv: &mut KvClient, write: Write) -> Result<Option<u64>, Error> {
    let compares: Vec<Compare> = write
        .compares
        .iter()
        .map(|(key, r)| {
            if *r == 0 {
                Compare::version(key.as_str(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    i64::try_from(*r).unwrap_or(i64::MAX),
                )
            }
        })
        .collect();
    let resp = kv
        .txn(Txn::new().when(compares).and_then(write.ops))
        .await?;
    if resp.succeeded() {
        Ok(Some(resp.header().map(|h| rev(h.revision())).unwrap_or(0)))
    } else {
        Ok(None)
    }
}
