//! Reconciliation: repair drift between etcd and the stream, touching only our own keys.
//!
//! Two passes, run once the consumer has caught up with the stream (never before: a
//! half-applied stream would look like drift) and then periodically:
//! 1. stream pass — the newest event of every subject at or below the consumer's ack floor
//!    (events the consumer already acknowledged, so their projection must exist) goes through
//!    the normal fenced apply: a Service whose record is missing or behind is projected again,
//!    already applied events are skipped by their fence, and events still in flight are left
//!    to the consumer;
//! 2. key pass — the vulcand keys under our id prefix are compared with the projection of
//!    our route records: missing or altered keys are rewritten, keys of ours that no record
//!    wants are deleted. Each write is guarded by a compare on its route record, so a racing
//!    apply wins and the next pass looks again. Keys that do not carry our owner prefix are
//!    never read or written.

use std::collections::BTreeMap;

use async_nats::jetstream::stream::Stream;

use ksr_projection::apply::Store;
use ksr_runtime::replay;

use crate::Error;
use crate::keys::{KeyOp, sort_ops};
use crate::projector::{Sink, VulcandProjector};
use crate::store::{self, Write};
use crate::v2::V2Client;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Events of the stream that were not yet reflected and were applied.
    pub replayed: u64,
    /// vulcand keys rewritten.
    pub puts: u64,
    /// vulcand keys of ours deleted.
    pub deletes: u64,
    /// Tombstones that protected nothing any more, deleted.
    pub collected: u64,
}

/// Runs both passes; `ack_floor` is the consumer's acknowledged stream sequence.
pub async fn reconcile(
    projector: &VulcandProjector,
    stream: &Stream,
    ack_floor: u64,
) -> Result<ReconcileReport, Error> {
    let started = std::time::Instant::now();
    let mut phases = ksr_projection::metrics::PhaseTimer::start(projector.metrics());
    let mut report = ReconcileReport::default();
    // Records that became unreadable are quarantined before the stream pass, so the events
    // of the Services they concern are applied again and rewrite them.
    projector.cache().quarantine(&projector.snapshot().await?);
    phases.done("records");
    let deliveries = replay::acknowledged_latest(stream, ack_floor).await?;
    phases.done("replay");
    for chunk in deliveries.chunks(1000) {
        let r = projector.apply_batch(chunk).await?;
        report.replayed += r.applied;
    }
    phases.done("apply");
    // One read of our records serves the key pass and the tombstones (their deletes are
    // guarded by revision, so a record changed since is simply left).
    let state = projector.snapshot().await?;
    let (puts, deletes) = repair_keys(projector, &state).await?;
    report.puts = puts;
    report.deletes = deletes;
    phases.done("target");
    report.collected = collect_tombstones(projector, stream, &state).await?;
    phases.done("tombstones");
    if report.collected > 0 {
        tracing::info!(
            collected = report.collected,
            "reconcile collected tombstones that protect nothing"
        );
    }
    if report.replayed + report.puts + report.deletes > 0 {
        tracing::warn!(?report, "reconcile repaired drift");
    } else {
        tracing::debug!("reconcile found no drift");
    }
    let metrics = projector.metrics();
    metrics.repairs.inc_by(puts + deletes);
    metrics.reconcile_runs.inc();
    metrics
        .reconcile_seconds
        .set(started.elapsed().as_secs_f64());
    Ok(report)
}

/// Deletes the tombstones no event can outdate any more ([`State::collectable_tombstones`]),
/// each guarded by its revision, so records do not grow without bound (retired clusters,
/// recreated streams, retention).
///
/// [`State::collectable_tombstones`]: ksr_projection::State::collectable_tombstones
async fn collect_tombstones(
    projector: &VulcandProjector,
    stream: &Stream,
    state: &crate::target::State,
) -> Result<u64, Error> {
    let (incarnation, first_seq) = ksr_runtime::nats::incarnation_and_first_seq(stream).await?;
    let mut collected = 0;
    for (key, rev) in state.collectable_tombstones(incarnation, first_seq) {
        let record = projector.layout().service_record_key(&key);
        let mut w = Write {
            compares: vec![(record.clone(), rev)],
            ops: Vec::new(),
        };
        w.delete(record);
        if store::commit(&mut projector.kv(), w).await?.is_some() {
            collected += 1;
        }
    }
    Ok(collected)
}

async fn repair_keys(
    projector: &VulcandProjector,
    state: &crate::target::State,
) -> Result<(u64, u64), Error> {
    let layout = projector.layout();
    let expected = crate::target::projection_of(layout, state);
    if let Sink::V2(v2) = projector.sink() {
        return repair_v2(projector, v2, expected).await;
    }
    let mut kv = projector.kv();
    let actual = crate::drift::live_keys(projector).await?;
    // Per route id: the writes that repair it.
    let mut by_id: BTreeMap<String, Vec<KeyOp>> = BTreeMap::new();
    for (key, (class, value)) in &expected {
        if actual.get(key) != Some(value) {
            let id = layout.id_of_vulcand_key(key).unwrap_or_default().to_owned();
            by_id.entry(id).or_default().push(KeyOp::Put {
                key: key.clone(),
                class: *class,
                value: value.clone(),
            });
        }
    }
    let upsert_only = projector.policy() == ksr_projection::Policy::UpsertOnly;
    // Keys of a hostname whose record is still unreadable are left alone, not deleted.
    let unreadable: std::collections::HashSet<&str> = state
        .corrupt
        .iter()
        .filter_map(|(r, _, _)| match r {
            ksr_projection::RecordKey::Name(id) => Some(id.as_str()),
            ksr_projection::RecordKey::Service(_) => None,
        })
        .collect();
    for key in actual.keys() {
        let host_unreadable = layout
            .id_of_vulcand_key(key)
            .is_some_and(|id| unreadable.contains(layout.host_id_of(id)));
        if !expected.contains_key(key) && !upsert_only && !host_unreadable {
            let id = layout.id_of_vulcand_key(key).unwrap_or_default().to_owned();
            by_id.entry(id).or_default().push(KeyOp::Delete {
                key: key.clone(),
                class: crate::v2::class_of(key),
            });
        }
    }
    let (mut puts, mut deletes) = (0, 0);
    for (id, mut ops) in by_id {
        sort_ops(&mut ops);
        let host = layout.host_id_of(&id);
        let guard = (layout.host_record_key(host), state.name(host).0);
        for chunk in ops.chunks(128) {
            let mut w = Write {
                compares: vec![guard.clone()],
                ops: Vec::new(),
            };
            chunk.iter().for_each(|op| w.key_op(op));
            match store::commit(&mut kv, w).await? {
                Some(_) => {
                    for op in chunk {
                        tracing::info!(
                            key = op.key(),
                            action = if matches!(op, KeyOp::Put { .. }) {
                                "put"
                            } else {
                                "delete"
                            },
                            "reconcile repaired a vulcand key"
                        );
                        match op {
                            KeyOp::Put { .. } => puts += 1,
                            KeyOp::Delete { .. } => deletes += 1,
                        }
                    }
                }
                None => {
                    tracing::debug!(
                        id,
                        "route changed during reconcile; the next pass will look again"
                    );
                    break;
                }
            }
        }
    }
    Ok((puts, deletes))
}

/// The v2 key pass: every route id of ours whose v2 keys differ from its record is synced.
async fn repair_v2(
    projector: &VulcandProjector,
    v2: &V2Client,
    expected: crate::keys::Projection,
) -> Result<(u64, u64), Error> {
    let layout = projector.layout();
    let mut actual: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (key, value) in crate::drift::live_keys(projector).await? {
        if let Some(id) = layout.id_of_vulcand_key(&key) {
            actual.entry(id.to_owned()).or_default().insert(key, value);
        }
    }
    let mut wanted: BTreeMap<String, crate::keys::Projection> = BTreeMap::new();
    for (key, v) in expected {
        if let Some(id) = layout.id_of_vulcand_key(&key) {
            wanted.entry(id.to_owned()).or_default().insert(key, v);
        }
    }
    let ids: std::collections::BTreeSet<String> =
        actual.keys().chain(wanted.keys()).cloned().collect();
    // Route ids that look drifted, by hostname (one sync per host record).
    let mut drifted: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let upsert_only = projector.policy() == ksr_projection::Policy::UpsertOnly;
    for id in ids {
        let want = wanted.remove(&id).unwrap_or_default();
        let have = actual.remove(&id).unwrap_or_default();
        let changed_puts = want.iter().any(|(k, (_, v))| have.get(k) != Some(v));
        let changed_deletes = have.keys().any(|k| !want.contains_key(k));
        // upsert-only: a route whose only drift is keys to delete is left alone.
        if !changed_puts && (!changed_deletes || upsert_only) {
            continue;
        }
        drifted
            .entry(layout.host_id_of(&id).to_owned())
            .or_default()
            .insert(id);
    }
    // A route is only drifted if it still is once nothing is writing it: a hostname whose
    // sync is under way (its record committed, its v2 writes in flight) is left to that sync,
    // and the others are synced from their current record, counting what had to be written.
    let mut written = crate::v2::Written::default();
    for (host, routes) in drifted {
        if projector.is_syncing(&host) {
            tracing::debug!(host, "reconcile leaves a hostname being synced to its sync");
            continue;
        }
        let (rev, record) = projector.host_record(&host).await?;
        let repaired = projector
            .sync_v2(v2, &host, record, rev, routes.clone())
            .await?;
        if repaired != crate::v2::Written::default() {
            tracing::info!(
                host,
                ?routes,
                ?repaired,
                "reconcile synced v2 routes that drifted"
            );
        }
        written += repaired;
    }
    Ok((written.puts, written.deletes))
}
