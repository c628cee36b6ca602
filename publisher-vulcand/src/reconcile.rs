//! Reconciliation: repair drift between etcd and the stream, touching only our own keys.
//!
//! Two passes, run once the consumer has caught up with the stream (never before: a
//! half-applied stream would look like drift) and then periodically:
//! 1. stream pass — the newest event of every subject at or below the consumer's ack floor
//!    (events the consumer already acknowledged, so their projection must exist) goes through
//!    the normal fenced apply, a chunk at a time: a Service whose record is missing or behind
//!    is projected again, already applied events are skipped by their fence, and events still
//!    in flight are left to the consumer;
//! 2. key pass — the vulcand keys under our id prefix are read route by route and compared
//!    with the projection of our host records, kept as hashes ([`crate::wanted`]): in a route
//!    that differs, missing or altered keys are rewritten and keys of ours that no record
//!    wants are deleted. Each write is guarded by a compare on its host record, so a racing
//!    apply wins and the next pass looks again (on v2, the route is synced from its record).
//!    Keys that do not carry our owner prefix are never read or written.
//!
//! Memory: our records read as a [`Survey`] (a revision per hostname, beside the cache that
//! holds the records) with the keys they project to as hashes, a chunk of the stream, and
//! the keys of routes that differ; only a repair takes a whole record.

use std::collections::BTreeMap;

use async_nats::jetstream::stream::Stream;

use ksr_projection::apply::Store;
use ksr_runtime::stream_pass::{self, Reading};

use crate::Error;
use crate::keys::{KeyOp, sort_ops};
use crate::projector::{Sink, Survey, VulcandProjector};
use crate::store::{self, Write};
use crate::v2::V2Client;
use crate::wanted::{ByRoute, Dir, Found, Wanted};

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

/// Runs both passes; `ack_floor` is the consumer's acknowledged stream sequence, `reading` how
/// the stream pass reads the stream back (a publisher pulls through its replay consumer).
pub async fn reconcile(
    projector: &VulcandProjector,
    stream: &Stream,
    ack_floor: u64,
    reading: &Reading,
) -> Result<ReconcileReport, Error> {
    let started = std::time::Instant::now();
    let mut phases = ksr_projection::metrics::PhaseTimer::start(projector.metrics());
    let mut report = ReconcileReport::default();
    // Records that became unreadable are quarantined before the stream pass, so the events
    // of the Services they concern are applied again and rewrite them.
    let (mut survey, mut wanted) = projector.survey().await?;
    projector.cache().quarantine(survey.unreadable());
    phases.done("records");
    let passed = stream_pass::reapply_acknowledged(projector, stream, ack_floor, reading).await?;
    projector.metrics().stream_pass(passed.pulled);
    report.replayed = passed.applied;
    // One read of our records serves the key pass and the tombstones (their deletes are
    // guarded by revision, so a record changed since is simply left); read again only when
    // the stream pass wrote some.
    if report.replayed > 0 {
        (survey, wanted) = projector.survey().await?;
    }
    phases.done("stream");
    let (puts, deletes) = repair_keys(projector, &survey, wanted).await?;
    report.puts = puts;
    report.deletes = deletes;
    phases.done("target");
    report.collected = collect_tombstones(projector, stream, &survey).await?;
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

/// Deletes the tombstones no event can outdate any more
/// ([`ksr_projection::ServiceRecord::collectable`]), each guarded by its revision, so records
/// do not grow without bound (retired clusters, recreated streams, retention).
async fn collect_tombstones(
    projector: &VulcandProjector,
    stream: &Stream,
    survey: &Survey,
) -> Result<u64, Error> {
    let (incarnation, first_seq) = ksr_runtime::nats::incarnation_and_first_seq(stream).await?;
    let mut collected = 0;
    for (key, rev) in survey.collectable_tombstones(incarnation, first_seq) {
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

/// The key pass: vulcand's keys of ours are read route by route ([`Wanted`]) and every route
/// that differs from its record's projection is repaired — on v3 with writes guarded by its
/// host record, on v2 by syncing it ([`repair_v2`]).
async fn repair_keys(
    projector: &VulcandProjector,
    survey: &Survey,
    mut wanted: Wanted,
) -> Result<(u64, u64), Error> {
    let layout = projector.layout();
    let upsert_only = projector.policy() == ksr_projection::Policy::UpsertOnly;
    if let Sink::V2(v2) = projector.sink() {
        for dir in Dir::BOTH {
            let path = format!("{}/{}", layout.vulcand_prefix(), dir.name());
            v2.children(&path, |child| {
                if let Some(id) = layout.id_of_vulcand_key(&child.key) {
                    let found = Found {
                        leaves: child.leaves,
                        empty_dir: child.empty_dir,
                    };
                    wanted.check(layout, id, dir, found, false);
                }
            })
            .await?;
        }
        let (drifted, _) = wanted.finish(survey.names().map(|(id, _, _)| id.as_str()));
        return repair_v2(projector, v2, drifted).await;
    }
    let mut kv = projector.kv();
    // As of the revision the records were read at: a route another replica writes or
    // removes meanwhile (its record and keys in one transaction) is then seen neither way,
    // instead of as keys no record wants (a removal counted as a repair; measured: the
    // faults scenario's fresh replicas "deleted" keys a running one had already removed).
    let at = wanted.revision();
    for (dir, prefix) in [
        (Dir::Backends, layout.owned_backends_prefix()),
        (Dir::Frontends, layout.owned_frontends_prefix()),
    ] {
        let mut routes = ByRoute::default();
        store::read_prefix_at(&mut kv, &prefix, at, |key, value, _| {
            let key = String::from_utf8_lossy(key).into_owned();
            let Some(id) = layout.id_of_vulcand_key(&key).map(str::to_owned) else {
                return;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            if let Some((id, found)) = routes.push(&id, key, value) {
                wanted.check(layout, &id, dir, found, true);
            }
        })
        .await?;
        if let Some((id, found)) = routes.take() {
            wanted.check(layout, &id, dir, found, true);
        }
    }
    let (drifted, actual) = wanted.finish(survey.names().map(|(id, _, _)| id.as_str()));
    // The directories of the drifted hostnames' routes not found as wanted, as their records
    // project them (a directory found as wanted needs no write, and its keys were not kept).
    let mut expected = crate::keys::Projection::new();
    for host in drifted.keys() {
        if let Some(record) =
            ksr_projection::apply::name_at(projector, host, survey.name(host).0).await?
        {
            expected.extend(crate::keys::project(layout, &record).into_iter().filter(
                |(key, (class, _))| {
                    layout
                        .id_of_vulcand_key(key)
                        .is_some_and(|id| !wanted.ok(id, Dir::of(*class)))
                },
            ));
        }
    }
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
    if !upsert_only {
        for key in actual.keys().filter(|key| !expected.contains_key(*key)) {
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
        let guard = (layout.host_record_key(host), survey.name(host).0);
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

/// The v2 repair: every drifted route (route ids by hostname) is synced from its record as
/// etcd holds it then, counting what had to be written — a hostname whose sync is under way
/// (its record committed, its v2 writes in flight) is left to that sync, so only settled
/// routes count as drift.
async fn repair_v2(
    projector: &VulcandProjector,
    v2: &V2Client,
    drifted: BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Result<(u64, u64), Error> {
    let mut written = crate::v2::Written::default();
    for (host, repaired) in projector.sync_drifted(v2, drifted).await? {
        if repaired != crate::v2::Written::default() {
            tracing::info!(host, ?repaired, "reconcile synced v2 routes that drifted");
        }
        written += repaired;
    }
    Ok((written.puts, written.deletes))
}
