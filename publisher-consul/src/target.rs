//! Consul as a planning [`Target`]: which name an event claims and the catalog writes it needs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use ksr_projection::Delivery;
use ksr_projection::{Desired, DesiredOf, NameRecord, Target};
use ksr_proto::ServiceKey;

use crate::layout::Layout;
use crate::routers::Router;
use crate::store::ServiceBody;

/// What a routed name is: `<label>.<environment>.service.consul`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameMeta {
    pub environment: String,
    pub label: String,
}

/// What one Service adds to the entry of its name (`consul-tags`, `consul-meta.<key>`); absent
/// (`null`, as in records of earlier releases) when it adds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// Every Service claiming one name.
pub type ConsulRecord = NameRecord<NameMeta, Option<Extras>>;
/// Our records as last read or written.
pub type State = ksr_projection::plan::StateOf<ConsulTarget>;
/// One atomic piece of Consul work.
pub type Unit = ksr_projection::plan::UnitOf<ConsulTarget>;

/// A catalog write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogOp {
    Set(ServiceBody),
    Delete { id: String, service: String },
}

/// The longest Meta value Consul accepts.
const MAX_META_VALUE: usize = 512;
/// The most tags and Service-given metadata pairs one entry carries, whatever the number of
/// Services behind it (Consul allows 64 metadata pairs; ksr writes five of its own).
pub const MAX_ENTRY_TAGS: usize = 32;
pub const MAX_ENTRY_META: usize = 32;

/// Plans Consul names: a Service claims `<label>.<environment>`; Services of one namespace
/// share a name (one instance per router, whatever the clusters and Services behind it);
/// namespaces conflict (`a` + `b-c` and `a-b` + `c` both make `a-b-c`) and the older claim
/// keeps it.
#[derive(Debug, Clone)]
pub struct ConsulTarget {
    pub owner: String,
    /// Every router, each on its own node (the first on the installation's node).
    pub routers: Vec<Router>,
    pub router_port: u16,
}

impl ConsulTarget {
    /// The installation's node: the first router's.
    pub fn node(&self) -> &str {
        self.routers.first().map_or("", |r| r.node.as_str())
    }

    /// `body` as registered on `router`'s node: at its address.
    pub fn at(body: &ServiceBody, router: &Router) -> ServiceBody {
        ServiceBody {
            address: router.address.clone(),
            ..body.clone()
        }
    }

    /// The catalog instance a name record projects to (None when nobody owns it), the same
    /// on every router's node but for its address (left empty here; see [`Self::at`]).
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
        // What the owners add: every tag (sorted, at most MAX_ENTRY_TAGS besides the name's
        // own), and each metadata key from the oldest claim that sets it (at most
        // MAX_ENTRY_META keys, the oldest claims' first).
        let mut oldest_first: Vec<_> = owners.iter().collect();
        oldest_first.sort_by_key(|c| (c.since, c.key()));
        let mut tags: BTreeSet<&str> = BTreeSet::new();
        let mut extra_meta: BTreeMap<String, String> = BTreeMap::new();
        for c in &oldest_first {
            let Some(extras) = &c.data else { continue };
            tags.extend(extras.tags.iter().map(String::as_str));
            for (k, v) in &extras.meta {
                if extra_meta.len() < MAX_ENTRY_META || extra_meta.contains_key(k) {
                    extra_meta.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        tags.remove(record.meta.label.as_str());
        let mut all_tags = vec![record.meta.label.clone()];
        all_tags.extend(tags.into_iter().take(MAX_ENTRY_TAGS).map(str::to_owned));
        let mut meta = extra_meta;
        meta.extend([
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
            tags: all_tags,
            address: String::new(),
            port: self.router_port,
            meta,
        })
    }
}

impl Target for ConsulTarget {
    type Meta = NameMeta;
    type Data = Option<Extras>;
    type Group = String;
    type Op = CatalogOp;

    fn desired(&self, d: &Delivery) -> Result<Option<DesiredOf<Self>>, ksr_proto::ProtoError> {
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
            data: (!route.consul_tags.is_empty() || !route.consul_meta.is_empty()).then(|| {
                Extras {
                    tags: route.consul_tags.clone(),
                    meta: route.consul_meta.clone(),
                }
            }),
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
    /// A router's own registration on its node: service `vulcan` tagged with the
    /// environment.
    pub fn router(&self, environment: &str, router: &Router) -> ServiceBody {
        ServiceBody {
            id: Layout::router_id(environment),
            service: "vulcan".to_owned(),
            tags: vec![environment.to_owned()],
            address: router.address.clone(),
            port: self.router_port,
            meta: BTreeMap::from([("ksr-owner".to_owned(), self.owner.clone())]),
        }
    }

    /// The metadata that marks a router's synthetic node as ours (and as an external node,
    /// so consul-esm style tooling leaves it alone); `ksr-node` names the installation's
    /// node, so a node of a router that was removed from `--router-address` is found again.
    pub fn node_meta(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ksr-owner".to_owned(), self.owner.clone()),
            ("ksr-node".to_owned(), self.node().to_owned()),
            ("external-node".to_owned(), "true".to_owned()),
            ("external-probe".to_owned(), "false".to_owned()),
        ])
    }
}
