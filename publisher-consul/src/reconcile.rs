//! Reconciliation: repair drift between the Consul catalog and the stream, on our node only.
//!
//! Runs once the consumer has caught up (never mass-deregistering at start-up), then
//! periodically:
//! 1. our node is ensured (created if it was removed);
//! 2. stream pass — the newest event of every subject at or below the consumer's ack floor
//!    goes through the normal fenced apply (lost records are rebuilt; applied events skip);
//! 3. catalog pass — one listing of our node: the router's own entry is re-registered if
//!    missing, and the instances on it are compared with the projection of our name
//!    records: missing or altered ones are registered again, ones no record wants are
//!    deregistered, each guarded by a check on its name record so a racing apply wins.
//!    Other nodes, and other owners' instances of the same service names, are never touched.

use std::collections::BTreeMap;

use async_nats::jetstream::stream::Stream;

use ksr_runtime::replay;

use crate::Error;
use crate::client::{ServiceBody, TxnOp, TxnOutcome};
use crate::layout::Layout;
use crate::publisher::ConsulProjector;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub replayed: u64,
    pub registered: u64,
    pub deregistered: u64,
    /// Tombstones that protected nothing any more, deleted.
    pub collected: u64,
}

/// Creates our node if missing and (re-)registers the router for `environment`.
pub async fn ensure_node_and_router(p: &ConsulProjector, environment: &str) -> Result<(), Error> {
    ensure_node(p).await?;
    let current = p.client().node_services(p.node()).await?;
    ensure_router(p, environment, &current).await
}

/// Creates our node if missing (its metadata is never overwritten).
async fn ensure_node(p: &ConsulProjector) -> Result<(), Error> {
    let target = p.target();
    p.client()
        .ensure_node(p.node(), &target.router_address, &target.node_meta())
        .await
}

/// Registers the router for `environment` unless `current` (our node's instances) has it.
async fn ensure_router(
    p: &ConsulProjector,
    environment: &str,
    current: &[ServiceBody],
) -> Result<(), Error> {
    let target = p.target();
    let router = target.router(environment);
    if !current.contains(&router) {
        p.client()
            .register_service(p.node(), &target.router_address, &router)
            .await?;
    }
    Ok(())
}

/// Runs all passes; `ack_floor` is the consumer's acknowledged stream sequence.
pub async fn reconcile(
    p: &ConsulProjector,
    stream: &Stream,
    ack_floor: u64,
    environment: &str,
) -> Result<ReconcileReport, Error> {
    let mut report = ReconcileReport::default();
    ensure_node(p).await?;
    // Records that became unreadable are quarantined before the stream pass, so the events
    // of the Services they concern are applied again and rewrite them.
    p.quarantine(&p.snapshot().await?);

    let deliveries = replay::acknowledged_latest(stream, ack_floor).await?;
    for chunk in deliveries.chunks(1000) {
        report.replayed += p.apply_batch(chunk).await?.applied;
    }

    let state = p.snapshot().await?;
    let mut expected = BTreeMap::new();
    for (id, v) in state.names() {
        if let Some(record) = &v.value
            && let Some(body) = p.target().instance(id, record)
        {
            expected.insert(id.clone(), (body, v.rev));
        }
    }
    let router_id = Layout::router_id(environment);
    // One listing of our node (it is large: every routed name) serves both checks.
    let listing = p.client().node_services(p.node()).await?;
    ensure_router(p, environment, &listing).await?;
    let actual: BTreeMap<String, _> = listing.into_iter().map(|b| (b.id.clone(), b)).collect();
    for (id, (body, rev)) in &expected {
        if actual.get(id) != Some(body) {
            let ops = vec![
                TxnOp::KvCheck {
                    key: p.layout().name_record_key(id),
                    index: *rev,
                },
                TxnOp::ServiceSet {
                    node: p.node().to_owned(),
                    body: body.clone(),
                },
            ];
            if matches!(p.client().txn(&ops).await?, TxnOutcome::Committed(_)) {
                tracing::info!(id, "reconcile registered a missing or altered instance");
                report.registered += 1;
            }
        }
    }
    let upsert_only = p.policy() == ksr_runtime::config::Policy::UpsertOnly;
    for (id, body) in &actual {
        if expected.contains_key(id) || *id == router_id {
            continue;
        }
        if upsert_only {
            tracing::debug!(
                id,
                "orphan instance kept: --policy upsert-only never deletes"
            );
            continue;
        }
        let rev = state.name(id).0;
        let ops = vec![
            TxnOp::KvCheck {
                key: p.layout().name_record_key(id),
                index: rev,
            },
            TxnOp::ServiceDelete {
                node: p.node().to_owned(),
                id: id.clone(),
                service: body.service.clone(),
            },
        ];
        if matches!(p.client().txn(&ops).await?, TxnOutcome::Committed(_)) {
            tracing::info!(
                id,
                service = body.service,
                "reconcile deregistered an orphan instance of ours"
            );
            report.deregistered += 1;
        }
    }
    report.collected = collect_tombstones(p, stream).await?;
    if report.collected > 0 {
        tracing::info!(
            collected = report.collected,
            "reconcile collected tombstones that protect nothing"
        );
    }
    let m = p.metrics();
    m.repairs.inc_by(report.registered + report.deregistered);
    m.reconcile_runs.inc();
    if report.replayed + report.registered + report.deregistered > 0 {
        tracing::warn!(?report, "reconcile repaired drift");
    }
    Ok(report)
}

/// Deletes the tombstones no event can outdate any more
/// ([`ksr_runtime::plan::State::collectable_tombstones`]), each guarded by its index.
async fn collect_tombstones(p: &ConsulProjector, stream: &Stream) -> Result<u64, Error> {
    let (incarnation, first_seq) = ksr_runtime::nats::incarnation_and_first_seq(stream).await?;
    let state = p.snapshot().await?;
    let mut collected = 0;
    for (key, index) in state.collectable_tombstones(incarnation, first_seq) {
        let ops = vec![TxnOp::KvDeleteCas {
            key: p.layout().service_record_key(&key),
            index,
        }];
        if matches!(p.client().txn(&ops).await?, TxnOutcome::Committed(_)) {
            collected += 1;
        }
    }
    Ok(collected)
}
