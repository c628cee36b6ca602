//! The Consul catalog as it is and as name records project it, for verification.
//!
//! Each router's node must hold exactly the router's registration and one instance per owned
//! name, at that router's address.
//! Instances on other nodes are never ours to change, but one carrying a routed name's tag
//! makes Consul DNS answer with a second address, so it is reported as foreign drift.

use std::collections::{BTreeMap, BTreeSet};

use ksr_projection::Delivery;
use ksr_projection::apply::Store;
use ksr_projection::drift::{Drift, compare};

use crate::Error;
use crate::layout::Layout;
use crate::projector::ConsulProjector;
use crate::store::ServiceBody;
use crate::target::{ConsulTarget, State};

/// Drift of the catalog against the stream.
#[derive(Debug, Default)]
pub struct CatalogDrift {
    /// Entries of our nodes (keyed `<node>/<ID>`) a rebuild repairs.
    pub ours: Vec<Drift>,
    /// Instances on other nodes that answer for a routed name (keyed `<node>/<ID>`).
    pub foreign: Vec<Drift>,
    /// Events Consul can never register (seq, reason).
    pub refused: Vec<ksr_projection::Rejected>,
}

fn render(body: &ServiceBody) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// The instances `state` projects to on each router's node, with the router's own for
/// `environment`, keyed `<node>/<ID>`.
pub fn expected_instances(
    p: &ConsulProjector,
    state: &State,
    environment: &str,
) -> BTreeMap<String, ServiceBody> {
    let target = p.target();
    let names: Vec<(&String, ServiceBody)> = state
        .names()
        .filter_map(|(id, v)| Some((id, target.instance(id, v.value.as_ref()?)?)))
        .collect();
    let mut out = BTreeMap::new();
    for router in &target.routers {
        for (id, body) in &names {
            out.insert(
                format!("{}/{id}", router.node),
                ConsulTarget::at(body, router),
            );
        }
        let own = target.router(environment, router);
        out.insert(format!("{}/{}", router.node, own.id), own);
    }
    out
}

/// How the catalog differs from `latest` (the newest event of every Service) applied to an
/// empty Consul, each router registered for `environment`. Entries are keyed `<node>/<ID>`;
/// nodes of routers no longer configured count as ours (reconciliation deregisters them).
pub async fn drift(
    p: &ConsulProjector,
    latest: &[Delivery],
    environment: &str,
) -> Result<CatalogDrift, Error> {
    let target = p.target();
    let (state, refused) = ksr_projection::plan::simulate(target, latest);
    let expected = expected_instances(p, &state, environment);
    let mut nodes: BTreeSet<String> = target.routers.iter().map(|r| r.node.clone()).collect();
    nodes.extend(
        p.client()
            .nodes_with_meta(&[("ksr-owner", &target.owner), ("ksr-node", target.node())])
            .await?,
    );
    let mut actual: BTreeMap<String, String> = BTreeMap::new();
    for node in &nodes {
        p.client()
            .node_services_each(node, |b| {
                actual.insert(format!("{node}/{}", b.id), render(&b));
            })
            .await?;
    }
    let wanted: BTreeMap<String, String> = expected
        .iter()
        .map(|(id, b)| (id.clone(), render(b)))
        .collect();
    let ours = compare(&wanted, &actual);

    // (service, tag) pairs of routed names, then whoever else answers for them (other
    // routers registered for the environment are not ours to judge).
    let router_id = Layout::router_id(environment);
    let routed: BTreeSet<(&str, &str)> = expected
        .values()
        .filter(|b| b.id != router_id)
        .flat_map(|b| b.tags.iter().map(|t| (b.service.as_str(), t.as_str())))
        .collect();
    let services: BTreeSet<&str> = routed.iter().map(|(s, _)| *s).collect();
    let mut foreign = Vec::new();
    for service in services {
        for (node, body) in p.client().service_instances(service).await? {
            if !nodes.contains(&node)
                && body
                    .tags
                    .iter()
                    .any(|t| routed.contains(&(service, t.as_str())))
            {
                foreign.push(Drift::Extra {
                    key: format!("{node}/{}", body.id),
                    have: render(&body),
                });
            }
        }
    }
    Ok(CatalogDrift {
        ours,
        foreign,
        refused,
    })
}
