//! The Consul catalog as it is and as name records project it, for verification.
//!
//! Our node must hold exactly the router's registration and one instance per owned name.
//! Instances on other nodes are never ours to change, but one carrying a routed name's tag
//! makes Consul DNS answer with a second address, so it is reported as foreign drift.

use std::collections::{BTreeMap, BTreeSet};

use ksr_runtime::consumer::Delivery;
use ksr_runtime::drift::{Drift, compare};

use crate::Error;
use crate::client::ServiceBody;
use crate::layout::Layout;
use crate::publisher::ConsulProjector;
use crate::target::State;

/// Drift of the catalog against the stream.
#[derive(Debug, Default)]
pub struct CatalogDrift {
    /// Entries of our node (keyed by instance ID) a rebuild repairs.
    pub ours: Vec<Drift>,
    /// Instances on other nodes that answer for a routed name (keyed `<node>/<ID>`).
    pub foreign: Vec<Drift>,
    /// Events Consul can never register (seq, reason).
    pub refused: Vec<ksr_runtime::consumer::Rejected>,
}

fn render(body: &ServiceBody) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// The instances `state` projects to on our node, with the router's for `environment`.
pub fn expected_instances(
    p: &ConsulProjector,
    state: &State,
    environment: &str,
) -> BTreeMap<String, ServiceBody> {
    let mut out: BTreeMap<String, ServiceBody> = state
        .names()
        .filter_map(|(id, v)| {
            let record = v.value.as_ref()?;
            Some((id.clone(), p.target().instance(id, record)?))
        })
        .collect();
    let router = p.target().router(environment);
    out.insert(router.id.clone(), router);
    out
}

/// How the catalog differs from `latest` (the newest event of every Service) applied to an
/// empty Consul, the router registered for `environment`.
pub async fn drift(
    p: &ConsulProjector,
    latest: &[Delivery],
    environment: &str,
) -> Result<CatalogDrift, Error> {
    let (state, refused) = ksr_runtime::plan::simulate(p.target(), latest);
    let expected = expected_instances(p, &state, environment);
    let actual: BTreeMap<String, String> = p
        .client()
        .node_services(p.node())
        .await?
        .into_iter()
        .map(|b| (b.id.clone(), render(&b)))
        .collect();
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
            if node != p.node()
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
