//! Reconciliation: repair drift between the Consul catalog and the stream, on our node only.
//!
//! Runs once the consumer has caught up (never mass-deregistering at start-up), then
//! periodically:
//! 1. every router's node is ensured (created if it was removed);
//! 2. stream pass — the newest event of every subject at or below the consumer's ack floor
//!    goes through the normal fenced apply (lost records are rebuilt; applied events skip);
//! 3. catalog pass — one listing of each router's node: the router's own entry is
//!    re-registered if missing, and the instances on it are compared with the projection of
//!    our name records: missing or altered ones are registered again, ones no record wants
//!    are deregistered, each guarded by a check on its name record so a racing apply wins;
//!    then the nodes of routers no longer configured (our `ksr-owner` and `ksr-node`
//!    metadata) are deregistered. Other nodes, and other owners' instances of the same
//!    service names, are never touched.
//!
//! Memory: the records are read as a [`Survey`] (a revision and a digest per name, beside
//! the cache that holds the records) and each node as a [`NodeListing`] (a digest per
//! instance), both as Consul's replies stream in; only a repair takes a whole record.

use async_nats::jetstream::stream::Stream;

use ksr_projection::apply::Store;
use ksr_runtime::stream_pass::{self, Reading};

use crate::Error;
use crate::layout::Layout;
use crate::listing::NodeListing;
use crate::projector::{ConsulProjector, Survey};
use crate::routers::Router;
use crate::store::{TxnOp, TxnOutcome};
use crate::target::ConsulTarget;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub replayed: u64,
    pub registered: u64,
    pub deregistered: u64,
    /// Tombstones that protected nothing any more, deleted.
    pub collected: u64,
}

/// Creates every router's node if missing and (re-)registers each router for
/// `environment`.
pub async fn ensure_node_and_router(p: &ConsulProjector, environment: &str) -> Result<(), Error> {
    ensure_nodes(p).await?;
    for router in &p.target().routers {
        let current = NodeListing::read(p.client(), &router.node, &router.address).await?;
        ensure_router(p, environment, router, &current).await?;
    }
    Ok(())
}

/// Creates every router's node if missing (their metadata is never overwritten).
async fn ensure_nodes(p: &ConsulProjector) -> Result<(), Error> {
    let target = p.target();
    for router in &target.routers {
        p.client()
            .ensure_node(&router.node, &router.address, &target.node_meta())
            .await?;
    }
    Ok(())
}

/// Registers `router` for `environment` unless `current` (its node as listed) has it.
async fn ensure_router(
    p: &ConsulProjector,
    environment: &str,
    router: &Router,
    current: &NodeListing,
) -> Result<(), Error> {
    let body = p.target().router(environment, router);
    if !current.matches(&body.id, body.digest()) {
        p.client()
            .register_service(&router.node, &router.address, &body)
            .await?;
    }
    Ok(())
}

/// Deregisters the nodes of routers no longer in `--router-address` (found by their
/// `ksr-owner` and `ksr-node` metadata), with everything on them.
async fn remove_departed_routers(p: &ConsulProjector) -> Result<u64, Error> {
    let target = p.target();
    let ours = p
        .client()
        .nodes_with_meta(&[("ksr-owner", &target.owner), ("ksr-node", target.node())])
        .await?;
    let mut removed = 0;
    for node in ours {
        if target.routers.iter().any(|r| r.node == node) {
            continue;
        }
        p.client().deregister_node(&node).await?;
        tracing::info!(
            node,
            "reconcile deregistered the node of a router no longer configured"
        );
        removed += 1;
    }
    Ok(removed)
}

/// Runs all passes; `ack_floor` is the consumer's acknowledged stream sequence, `reading` how
/// the stream pass reads the stream back (a publisher pulls through its replay consumer).
pub async fn reconcile(
    p: &ConsulProjector,
    stream: &Stream,
    ack_floor: u64,
    reading: &Reading,
    environment: &str,
) -> Result<ReconcileReport, Error> {
    let started = std::time::Instant::now();
    let mut phases = ksr_projection::metrics::PhaseTimer::start(p.metrics());
    let mut report = ReconcileReport::default();
    ensure_nodes(p).await?;
    // Records that became unreadable are quarantined before the stream pass, so the events
    // of the Services they concern are applied again and rewrite them.
    let mut survey = p.survey().await?;
    p.cache().quarantine(survey.unreadable());
    phases.done("records");

    let passed = stream_pass::reapply_acknowledged(p, stream, ack_floor, reading).await?;
    p.metrics().stream_pass(passed.pulled);
    report.replayed = passed.applied;
    // The records read before serve the passes below unless the stream pass wrote some.
    if report.replayed > 0 {
        survey = p.survey().await?;
    }
    phases.done("stream");

    for router in &p.target().routers {
        catalog_pass(p, &survey, router, environment, &mut report).await?;
    }
    if p.policy() != ksr_projection::Policy::UpsertOnly {
        report.deregistered += remove_departed_routers(p).await?;
    }
    phases.done("target");
    // The records read for the catalog pass serve the tombstones too (their deletes are
    // guarded by index, so a record changed since is simply left).
    report.collected = collect_tombstones(p, stream, &survey).await?;
    phases.done("tombstones");
    if report.collected > 0 {
        tracing::info!(
            collected = report.collected,
            "reconcile collected tombstones that protect nothing"
        );
    }
    let m = p.metrics();
    m.repairs.inc_by(report.registered + report.deregistered);
    m.reconcile_runs.inc();
    m.reconcile_seconds.set(started.elapsed().as_secs_f64());
    if report.replayed + report.registered + report.deregistered > 0 {
        tracing::warn!(?report, "reconcile repaired drift");
    }
    Ok(report)
}

/// The catalog pass on one router's node: one listing (it is large: every routed name)
/// serves the router's own entry and the comparison with the name records.
async fn catalog_pass(
    p: &ConsulProjector,
    survey: &Survey,
    router: &Router,
    environment: &str,
    report: &mut ReconcileReport,
) -> Result<(), Error> {
    let router_id = Layout::router_id(environment);
    let node = router.node.as_str();
    let actual = NodeListing::read(p.client(), node, &router.address).await?;
    ensure_router(p, environment, router, &actual).await?;
    for (id, rev, derived) in survey.names() {
        let Some(Some(digest)) = derived else {
            continue;
        };
        if actual.matches(id, *digest) {
            continue;
        }
        // The instance itself, from the record as the survey read it (a record changed
        // since was written by an apply, together with its instance).
        let Some(record) = ksr_projection::apply::name_at(p, id, rev).await? else {
            continue;
        };
        let Some(body) = p.target().instance(id, &record) else {
            continue;
        };
        let ops = vec![
            TxnOp::KvCheck {
                key: p.layout().name_record_key(id),
                index: rev,
            },
            TxnOp::ServiceSet {
                node: node.to_owned(),
                body: ConsulTarget::at(&body, router),
            },
        ];
        if matches!(p.client().txn(&ops).await?, TxnOutcome::Committed(_)) {
            tracing::info!(
                id,
                node,
                "reconcile registered a missing or altered instance"
            );
            report.registered += 1;
        }
    }
    let upsert_only = p.policy() == ksr_projection::Policy::UpsertOnly;
    for (id, listed) in actual.iter() {
        let (rev, derived) = survey.name(id);
        // Wanted by its record; or its record is unreadable (quarantined: its entries are
        // left alone until the record is rewritten, never deleted).
        let unreadable = rev != 0 && derived.is_none();
        if *id == router_id || matches!(derived, Some(Some(_))) || unreadable {
            continue;
        }
        if upsert_only {
            tracing::debug!(
                id,
                "orphan instance kept: --policy upsert-only never deletes"
            );
            continue;
        }
        // Only while the instance is still there: one that another replica registered and
        // removed again since the listing (its record with it) is no drift to count.
        let ops = vec![
            TxnOp::KvCheck {
                key: p.layout().name_record_key(id),
                index: rev,
            },
            TxnOp::ServiceCheck {
                node: node.to_owned(),
                id: id.clone(),
            },
            TxnOp::ServiceDelete {
                node: node.to_owned(),
                id: id.clone(),
                service: listed.service.clone(),
            },
        ];
        if matches!(p.client().txn(&ops).await?, TxnOutcome::Committed(_)) {
            tracing::info!(
                id,
                node,
                service = listed.service,
                "reconcile deregistered an orphan instance of ours"
            );
            report.deregistered += 1;
        }
    }
    Ok(())
}

/// Deletes the tombstones no event can outdate any more
/// ([`ksr_projection::ServiceRecord::collectable`]), each guarded by its index.
async fn collect_tombstones(
    p: &ConsulProjector,
    stream: &Stream,
    survey: &Survey,
) -> Result<u64, Error> {
    let (incarnation, first_seq) = ksr_runtime::nats::incarnation_and_first_seq(stream).await?;
    let mut collected = 0;
    for (key, index) in survey.collectable_tombstones(incarnation, first_seq) {
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
