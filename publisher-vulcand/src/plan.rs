//! vulcand as a planning [`Target`]: which route an event claims and the key writes it needs.

use std::net::SocketAddr;

use ksr_proto::ServiceKey;
use ksr_runtime::consumer::Delivery;
use ksr_runtime::plan::{Desired, DesiredOf, Target};

use crate::layout::Layout;
use crate::projection::{KeyOp, Projection, diff, project};
use crate::records::{RouteMeta, RouteRecord};

/// Our records as last read or written.
pub type State = ksr_runtime::plan::StateOf<VulcandTarget>;
/// One atomic piece of vulcand work.
pub type Unit = ksr_runtime::plan::UnitOf<VulcandTarget>;

/// Plans vulcand routes: a Service claims `<hostname> + <path>`; the clusters of one
/// namespace/name fan in; different Services on one route conflict.
#[derive(Debug, Clone)]
pub struct VulcandTarget {
    pub layout: Layout,
}

impl Target for VulcandTarget {
    type Meta = RouteMeta;
    type Data = Vec<SocketAddr>;
    type Group = (String, String);
    type Op = KeyOp;

    fn desired(&self, d: &Delivery) -> Result<Option<DesiredOf<Self>>, String> {
        let Some(route) = d.event.route() else {
            return Ok(None);
        };
        let host = route.hostname();
        ksr_proto::route::route_expression(&host, &route.path).map_err(|e| e.to_string())?;
        Ok(Some(Desired {
            id: self.layout.route_id(&host, &route.path),
            meta: RouteMeta {
                host,
                path: route.path.clone(),
            },
            data: route
                .ready_backends()
                .map(|b| SocketAddr::new(b.ip, b.port))
                .collect(),
            since: route.route_claimed_since(d.seq),
        }))
    }

    fn group(key: &ServiceKey) -> (String, String) {
        (key.namespace.clone(), key.name.clone())
    }

    fn group_label(key: &ServiceKey) -> String {
        format!("{}/{}", key.namespace, key.name)
    }

    fn ops(&self, id: &str, before: Option<&RouteRecord>, after: &RouteRecord) -> Vec<KeyOp> {
        let from = before
            .map(|r| project(&self.layout, id, r).unwrap_or_default())
            .unwrap_or_default();
        let to = project(&self.layout, id, after).unwrap_or_default();
        diff(&from, &to)
    }
}

/// Every route's projection, for reconciliation.
pub fn projection_of(layout: &Layout, state: &State) -> Projection {
    let mut all = Projection::new();
    for (id, v) in state.names() {
        if let Some(record) = &v.value
            && let Ok(p) = project(layout, id, record)
        {
            all.extend(p);
        }
    }
    all
}

/// The owning claims of a route record, and the waiting ones.
pub fn split(
    record: &RouteRecord,
) -> (
    Vec<&crate::records::RouteClaim>,
    Vec<&crate::records::RouteClaim>,
) {
    record.claims.split(VulcandTarget::group)
}
