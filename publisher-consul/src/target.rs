//! Consul as a planning [`Target`]: which name an event claims and the catalog writes it needs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use ksr_proto::ServiceKey;
use ksr_runtime::consumer::Delivery;
use ksr_runtime::plan::{Desired, DesiredOf, NameRecord, Target};

use crate::client::ServiceBody;
use crate::layout::Layout;

/// What a routed name is: `<label>.<environment>.service.consul`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameMeta {
    pub environment: String,
    pub label: String,
}

/// Every Service claiming one name.
pub type ConsulRecord = NameRecord<NameMeta, ()>;
/// Our records as last read or written.
pub type State = ksr_runtime::plan::StateOf<ConsulTarget>;
/// One atomic piece of Consul work.
pub type Unit = ksr_runtime::plan::UnitOf<ConsulTarget>;

/// A catalog write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogOp {
    Set(ServiceBody),
    Delete { id: String, service: String },
}

/// The longest Meta value Consul accepts.
const MAX_META_VALUE: usize = 512;

/// Plans Consul names: a Service claims `<label>.<environment>`; Services of one namespace
/// share a name (one instance, whatever the clusters and Services behind it); namespaces
/// conflict (`a` + `b-c` and `a-b` + `c` both make `a-b-c`) and the older claim keeps it.
#[derive(Debug, Clone)]
pub struct ConsulTarget {
    pub owner: String,
    pub router_address: String,
    pub router_port: u16,
}

impl ConsulTarget {
    /// The catalog instance a name record projects to (None when nobody owns it).
    pub fn instance(&self, id: &str, record: &ConsulRecord) -> Option<ServiceBody> {
        let (owners, _) = record.claims.split(Self::group);
        let first = owners.first()?;
        let join = |items: BTreeSet<&str>| {
            let mut s = items.into_iter().collect::<Vec<_>>().join(",");
            if s.len() > MAX_META_VALUE {
                s.truncate(MAX_META_VALUE - 3);
                s.push_str("...");
            }
            s
        };
        let since = owners.iter().map(|c| c.since).min().unwrap_or(0);
        let meta = BTreeMap::from([
            ("ksr-owner".to_owned(), self.owner.clone()),
            ("ksr-namespace".to_owned(), first.namespace.clone()),
            (
                "ksr-services".to_owned(),
                join(owners.iter().map(|c| c.name.as_str()).collect()),
            ),
            (
                "ksr-clusters".to_owned(),
                join(owners.iter().map(|c| c.cluster.as_str()).collect()),
            ),
            ("ksr-since".to_owned(), since.to_string()),
        ]);
        Some(ServiceBody {
            id: id.to_owned(),
            service: record.meta.environment.clone(),
            tags: vec![record.meta.label.clone()],
            address: self.router_address.clone(),
            port: self.router_port,
            meta,
        })
    }
}

impl Target for ConsulTarget {
    type Meta = NameMeta;
    type Data = ();
    type Group = String;
    type Op = CatalogOp;

    fn desired(&self, d: &Delivery) -> Result<Option<DesiredOf<Self>>, String> {
        // A full hostname outside the Consul domain is routed by vulcand only.
        let Some(route) = d.event.route() else {
            return Ok(None);
        };
        let Some((label, environment)) = route.consul_name() else {
            return Ok(None);
        };
        // Both parts are validated DNS labels (the codec checks every event).
        Ok(Some(Desired {
            id: Layout::name_id(label, environment),
            meta: NameMeta {
                environment: environment.to_owned(),
                label: label.to_owned(),
            },
            data: (),
            since: route.host_claimed_since(d.seq),
        }))
    }

    fn group(key: &ServiceKey) -> String {
        key.namespace.clone()
    }

    fn group_label(key: &ServiceKey) -> String {
        key.namespace.clone()
    }

    fn describe(record: &ConsulRecord) -> String {
        format!(
            "{}.{}.service.consul",
            record.meta.label, record.meta.environment
        )
    }

    fn ops(&self, id: &str, before: Option<&ConsulRecord>, after: &ConsulRecord) -> Vec<CatalogOp> {
        let from = before.and_then(|r| self.instance(id, r));
        let to = self.instance(id, after);
        match (from, to) {
            (a, b) if a == b => Vec::new(),
            (_, Some(body)) => vec![CatalogOp::Set(body)],
            (Some(old), None) => vec![CatalogOp::Delete {
                id: old.id,
                service: old.service,
            }],
            (None, None) => Vec::new(),
        }
    }
}

impl ConsulTarget {
    /// The router's own registration: service `vulcan` tagged with the environment.
    pub fn router(&self, environment: &str) -> ServiceBody {
        ServiceBody {
            id: Layout::router_id(environment),
            service: "vulcan".to_owned(),
            tags: vec![environment.to_owned()],
            address: self.router_address.clone(),
            port: self.router_port,
            meta: BTreeMap::from([("ksr-owner".to_owned(), self.owner.clone())]),
        }
    }

    /// The metadata that marks our synthetic node as ours (and as an external node, so
    /// consul-esm style tooling leaves it alone).
    pub fn node_meta(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ksr-owner".to_owned(), self.owner.clone()),
            ("external-node".to_owned(), "true".to_owned()),
            ("external-probe".to_owned(), "false".to_owned()),
        ])
    }
}
