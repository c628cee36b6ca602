//! Planning a batch: which events are stale, and for the rest the exact fenced writes.
//!
//! Pure and synchronous: it reads a snapshot of our records (with their etcd revisions) and
//! returns units of work. Events that touch the same route (through the route they leave or
//! the one they join) land in the same unit, so units never share a key and can commit
//! concurrently; each unit's writes are guarded by compares on every record it read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use ksr_proto::ServiceKey;
use ksr_runtime::consumer::Delivery;

use crate::layout::Layout;
use crate::projection::{KeyOp, Projection, diff, project, sort_ops};
use crate::records::{RouteRecord, ServiceRecord};

/// A record as read from etcd: `rev` is its mod revision, 0 when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub rev: i64,
    pub value: Option<T>,
}

impl<T> Default for Versioned<T> {
    fn default() -> Self {
        Self {
            rev: 0,
            value: None,
        }
    }
}

/// Our records as last read or written.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub services: HashMap<ServiceKey, Versioned<ServiceRecord>>,
    pub routes: HashMap<String, Versioned<RouteRecord>>,
}

impl State {
    fn service(&self, key: &ServiceKey) -> (i64, Option<&ServiceRecord>) {
        self.services
            .get(key)
            .map(|v| (v.rev, v.value.as_ref()))
            .unwrap_or((0, None))
    }

    fn route(&self, id: &str) -> (i64, Option<&RouteRecord>) {
        self.routes
            .get(id)
            .map(|v| (v.rev, v.value.as_ref()))
            .unwrap_or((0, None))
    }

    /// Every route's projection, for reconciliation.
    pub fn projection(&self, layout: &Layout) -> Projection {
        let mut all = Projection::new();
        for (id, v) in &self.routes {
            if let Some(record) = &v.value
                && let Ok(p) = project(layout, id, record)
            {
                all.extend(p);
            }
        }
        all
    }
}

/// One atomic piece of work.
#[derive(Debug, Clone, Default)]
pub struct Unit {
    /// Stream sequences applied by this unit.
    pub seqs: Vec<u64>,
    /// (etcd key, expected mod revision; 0 = must be absent).
    pub compares: Vec<(String, i64)>,
    /// vulcand writes, in vulcand's safe order.
    pub key_ops: Vec<KeyOp>,
    pub services: Vec<(ServiceKey, ServiceRecord)>,
    /// New route records (None: delete the record).
    pub routes: Vec<(String, Option<RouteRecord>)>,
    /// (host, path, owner, newly waiting Services) for every conflict this unit creates.
    pub conflicts: Vec<(String, String, String, Vec<String>)>,
}

impl Unit {
    /// Write operations in the unit's transaction.
    pub fn op_count(&self) -> usize {
        self.key_ops.len() + self.services.len() + self.routes.len()
    }
}

/// The result of planning a batch.
#[derive(Debug, Default)]
pub struct PlanOutput {
    pub units: Vec<Unit>,
    pub stale: Vec<u64>,
    pub rejected: Vec<(u64, String)>,
}

/// The route an event asks for.
#[derive(Debug, Clone)]
struct Desired {
    id: String,
    host: String,
    path: String,
    backends: Vec<SocketAddr>,
    /// When the Service's continuous claim on this host + path began.
    since: u64,
}

/// An event that is newer than its Service's fence.
struct Active<'a> {
    delivery: &'a Delivery,
    /// The route the Service claims now.
    old: Option<String>,
    want: Option<Desired>,
}

/// The route an event asks for, or the reason it is rejected (it could never be written).
fn desired(layout: &Layout, d: &Delivery) -> Result<Option<Desired>, String> {
    let Some(route) = d.event.route() else {
        return Ok(None);
    };
    let host = route.hostname();
    ksr_proto::route::route_expression(&host, &route.path).map_err(|e| e.to_string())?;
    let backends = route
        .ready_backends()
        .map(|b| SocketAddr::new(b.ip, b.port))
        .collect();
    Ok(Some(Desired {
        id: layout.route_id(&host, &route.path),
        host,
        path: route.path.clone(),
        backends,
        since: route.route_claimed_since(d.seq),
    }))
}

/// Plans `batch` (newest event per Service, sorted by sequence) against `state`.
pub fn plan(layout: &Layout, state: &State, batch: &[Delivery]) -> PlanOutput {
    let mut out = PlanOutput::default();
    let mut active: Vec<Active<'_>> = Vec::new();
    for d in batch {
        let (_, current) = state.service(&d.event.key);
        if current.is_some_and(|r| r.seq >= d.seq) {
            out.stale.push(d.seq);
            continue;
        }
        match desired(layout, d) {
            Ok(want) => active.push(Active {
                delivery: d,
                old: current.and_then(|r| r.route.clone()),
                want,
            }),
            Err(reason) => out.rejected.push((d.seq, reason)),
        }
    }

    // Union-find over events sharing a route id.
    let mut parent: Vec<usize> = (0..active.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_with_id: HashMap<&str, usize> = HashMap::new();
    for (i, a) in active.iter().enumerate() {
        for id in a
            .old
            .iter()
            .map(String::as_str)
            .chain(a.want.iter().map(|w| w.id.as_str()))
        {
            match first_with_id.get(id) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
                None => {
                    first_with_id.insert(id, i);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..active.len() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(i);
    }

    for members in groups.into_values() {
        let mut unit = Unit::default();
        let mut working: BTreeMap<String, RouteRecord> = BTreeMap::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for &i in &members {
            let Active {
                delivery: d,
                old,
                want,
            } = &active[i];
            let key = &d.event.key;
            if let Some(old) = old
                && want.as_ref().map(|w| &w.id) != Some(old)
            {
                touched.insert(old.clone());
                working
                    .entry(old.clone())
                    .or_insert_with(|| {
                        state
                            .route(old)
                            .1
                            .cloned()
                            .unwrap_or_else(|| RouteRecord::new("", ""))
                    })
                    .claims
                    .remove(key);
            }
            if let Some(w) = want {
                touched.insert(w.id.clone());
                working
                    .entry(w.id.clone())
                    .or_insert_with(|| {
                        state
                            .route(&w.id)
                            .1
                            .cloned()
                            .unwrap_or_else(|| RouteRecord::new(&w.host, &w.path))
                    })
                    .claims
                    .upsert(key, d.seq, w.since, w.backends.clone());
            }
            let (rev, _) = state.service(key);
            unit.compares.push((layout.service_record_key(key), rev));
            unit.services.push((
                key.clone(),
                ServiceRecord {
                    seq: d.seq,
                    route: want.as_ref().map(|w| w.id.clone()),
                },
            ));
            unit.seqs.push(d.seq);
        }
        for id in touched {
            let (rev, before) = state.route(&id);
            let Some(mut after) = working.remove(&id) else {
                continue;
            };
            after.refresh_status();
            let from = before
                .map(|r| project(layout, &id, r).unwrap_or_default())
                .unwrap_or_default();
            let to = project(layout, &id, &after).unwrap_or_default();
            unit.key_ops.extend(diff(&from, &to));
            unit.compares.push((layout.route_record_key(&id), rev));
            let before_waiting: Vec<String> = before.map(|r| r.waiting.clone()).unwrap_or_default();
            let newly: Vec<String> = after
                .waiting
                .iter()
                .filter(|w| !before_waiting.contains(w))
                .cloned()
                .collect();
            if !newly.is_empty() {
                unit.conflicts.push((
                    after.host.clone(),
                    after.path.clone(),
                    after.owner.clone().unwrap_or_default(),
                    newly,
                ));
            }
            if after.claims.is_empty() {
                if before.is_some() {
                    unit.routes.push((id, None));
                }
            } else if before != Some(&after) {
                unit.routes.push((id, Some(after)));
            }
        }
        sort_ops(&mut unit.key_ops);
        out.units.push(unit);
    }
    out
}

/// Packs units into transactions of at most `max_ops` writes and `max_ops` compares.
/// Units that do not fit alone are returned separately.
pub fn pack(units: Vec<Unit>, max_ops: usize) -> (Vec<Vec<Unit>>, Vec<Unit>) {
    let mut txns: Vec<Vec<Unit>> = Vec::new();
    let mut oversized = Vec::new();
    let (mut ops, mut cmps) = (0, 0);
    for unit in units {
        let (o, c) = (unit.op_count(), unit.compares.len());
        if o > max_ops || c > max_ops {
            oversized.push(unit);
            continue;
        }
        match txns.last_mut() {
            Some(txn) if ops + o <= max_ops && cmps + c <= max_ops => {
                ops += o;
                cmps += c;
                txn.push(unit);
            }
            _ => {
                ops = o;
                cmps = c;
                txns.push(vec![unit]);
            }
        }
    }
    (txns, oversized)
}
