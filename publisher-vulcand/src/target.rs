//! vulcand as a planning [`Target`]: which hostname an event claims, who owns it and each
//! path under it, and the key writes that follow.
//!
//! A hostname belongs to one namespace: the namespace whose claim on it is oldest (the
//! watcher stamps when each Service's continuous claim began, so the owner is a pure function
//! of the newest event of every Service). Services of other namespaces that project the same
//! hostname wait, whatever their path, and take over only when the owner's claims are gone.
//! Within the owning namespace each path is routed by the Service whose claim on
//! hostname + path is oldest; the clusters of one namespace/name fan in.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ksr_projection::Delivery;
use ksr_projection::status::Standing;
use ksr_projection::{Desired, DesiredOf, Target};
use ksr_proto::{RoutePath, ServiceKey};

use crate::keys::{KeyOp, Projection, diff, project};
use crate::layout::Layout;
use crate::records::{HostClaim, HostMeta, HostRecord, PathClaim};

/// Our records as last read or written.
pub type State = ksr_projection::plan::StateOf<VulcandTarget>;
/// One atomic piece of vulcand work.
pub type Unit = ksr_projection::plan::UnitOf<VulcandTarget>;

/// Plans vulcand routes: a Service claims its hostname (with its path); namespaces conflict
/// on hostnames, Services of the owning namespace on paths.
#[derive(Debug, Clone)]
pub struct VulcandTarget {
    pub layout: Layout,
}

impl Target for VulcandTarget {
    type Meta = HostMeta;
    type Data = PathClaim;
    type Group = String;
    type Op = KeyOp;

    const CONFLICT_RULE: &'static str = "hostname conflict: the owning namespace keeps the hostname (and the older claim each path); the others wait";

    fn desired(&self, d: &Delivery) -> Result<Option<DesiredOf<Self>>, ksr_proto::ProtoError> {
        let Some(route) = d.event.route() else {
            return Ok(None);
        };
        let host = route.hostname();
        // Defence in depth: events can come from older watchers, other tools or a replay.
        ksr_proto::route::route_expression(&host, &route.path)?;
        Ok(Some(Desired {
            id: self.layout.host_id(&host),
            meta: HostMeta { host },
            data: PathClaim {
                path: route.path.clone(),
                path_since: route.route_claimed_since(d.seq),
                backends: route
                    .ready_backends()
                    .map(|b| SocketAddr::new(b.ip, b.port))
                    .collect(),
                scheme: route.scheme,
                tls_skip_verify: route.tls_skip_verify,
            },
            since: route.host_claimed_since(d.seq),
        }))
    }

    fn group(key: &ServiceKey) -> String {
        key.namespace.clone()
    }

    fn group_label(key: &ServiceKey) -> String {
        key.namespace.clone()
    }

    fn status(record: &HostRecord) -> (Option<String>, Vec<String>) {
        let routed = routes(record);
        let owner = routed.owner.map(str::to_owned);
        let mut waiting: Vec<String> = routed
            .other_namespaces
            .iter()
            .map(|ns| ns.to_string())
            .collect();
        waiting.extend(
            routed
                .waiting_paths
                .iter()
                .map(|c| format!("{}/{} on {}", c.namespace, c.name, c.data.path)),
        );
        waiting.sort();
        waiting.dedup();
        (owner, waiting)
    }

    fn describe(record: &HostRecord) -> String {
        record.meta.host.clone()
    }

    /// The owning namespace's path owners serve; its other Services wait for the owner of
    /// their path; every other namespace waits for the owning one.
    fn standings(record: &HostRecord) -> Vec<(ServiceKey, u64, Standing)> {
        let host = &record.meta.host;
        let name = |path: &str| format!("{host} path {path}");
        let routed = routes(record);
        let (owners, others) = record.claims.split(Self::group);
        let owner_since = owners.iter().map(|c| c.since).min().unwrap_or(0);
        let mut out = Vec::new();
        for (path, claims) in &routed.paths {
            for c in claims {
                let s = Standing::Serving { name: name(path) };
                out.push((c.key(), c.seq, s));
            }
        }
        for c in &routed.waiting_paths {
            let holders = routed.paths.get(&c.data.path);
            let holder = holders.and_then(|h| h.first());
            let s = Standing::Waiting {
                name: name(&c.data.path),
                owner: holder.map_or_else(String::new, |h| format!("{}/{}", h.namespace, h.name)),
                owner_since: holders
                    .map(|h| h.iter().map(|c| c.data.path_since).min().unwrap_or(0))
                    .unwrap_or(0),
            };
            out.push((c.key(), c.seq, s));
        }
        for c in others {
            let s = Standing::Waiting {
                name: name(&c.data.path),
                owner: routed.owner.unwrap_or_default().to_owned(),
                owner_since,
            };
            out.push((c.key(), c.seq, s));
        }
        out
    }

    fn ops(&self, _id: &str, before: Option<&HostRecord>, after: &HostRecord) -> Vec<KeyOp> {
        let from = before.map(|r| project(&self.layout, r)).unwrap_or_default();
        diff(&from, &project(&self.layout, after))
    }
}

/// Who routes what under one hostname.
#[derive(Debug, Default)]
pub struct Routed<'a> {
    /// The namespace that owns the hostname.
    pub owner: Option<&'a str>,
    /// The owning claims of every path: one Service (all its clusters) per path.
    pub paths: BTreeMap<&'a RoutePath, Vec<&'a HostClaim>>,
    /// Other namespaces claiming the hostname: they wait for it.
    pub other_namespaces: Vec<&'a str>,
    /// Services of the owning namespace waiting for a path another Service of it owns.
    pub waiting_paths: Vec<&'a HostClaim>,
}

/// Applies the ownership rules to a host record.
pub fn routes(record: &HostRecord) -> Routed<'_> {
    let mut out = Routed::default();
    let (owners, others) = record.claims.split(VulcandTarget::group);
    out.owner = owners.first().map(|c| c.namespace.as_str());
    out.other_namespaces = others.iter().map(|c| c.namespace.as_str()).collect();
    out.other_namespaces.dedup();
    let mut by_path: BTreeMap<&RoutePath, Vec<&HostClaim>> = BTreeMap::new();
    for c in owners {
        by_path.entry(&c.data.path).or_default().push(c);
    }
    for (path, claims) in by_path {
        // The Service whose claim on the path is oldest (its oldest cluster counts).
        let mut age: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &claims {
            let a = age.entry(c.name.as_str()).or_insert(u64::MAX);
            *a = (*a).min(c.data.path_since);
        }
        let winner = age
            .iter()
            .map(|(name, since)| (*since, *name))
            .min()
            .map(|(_, n)| n);
        let (mine, waiting): (Vec<_>, Vec<_>) = claims
            .into_iter()
            .partition(|c| Some(c.name.as_str()) == winner);
        out.waiting_paths.extend(waiting);
        out.paths.insert(path, mine);
    }
    out
}

/// Every hostname's projection, for reconciliation.
pub fn projection_of(layout: &Layout, state: &State) -> Projection {
    let mut all = Projection::new();
    for (_, v) in state.names() {
        if let Some(record) = &v.value {
            all.extend(project(layout, record));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(claims: &[(&str, &str, &str, u64, u64)]) -> HostRecord {
        let mut r = HostRecord::new(HostMeta {
            host: "x-b-c.test.service.consul".into(),
        });
        for (i, (cluster, ns, name, since, path_since)) in claims.iter().enumerate() {
            let path = if *path_since >= 100 {
                "/admin.*"
            } else {
                "/.*"
            };
            r.claims.upsert(
                &ServiceKey::new(*cluster, *ns, *name),
                i as u64 + 1,
                *since,
                PathClaim {
                    path: path.parse().expect("a valid path"),
                    path_since: *path_since,
                    backends: vec![format!("10.0.0.{}:80", i + 1).parse().unwrap()],
                    scheme: Default::default(),
                    tls_skip_verify: false,
                },
            );
        }
        r
    }

    #[test]
    fn the_first_namespace_owns_every_path_of_the_hostname() {
        // `x` in namespace `b-c` and `host: x-b` in namespace `c` both make `x-b-c`; the
        // younger namespace cannot add a path nobody else contests.
        let r = record(&[
            ("east", "b-c", "x", 5, 5),
            ("east", "c", "intruder", 9, 109),
        ]);
        let routed = routes(&r);
        assert_eq!(routed.owner, Some("b-c"));
        assert_eq!(
            routed.paths.keys().copied().collect::<Vec<_>>(),
            vec!["/.*"]
        );
        assert_eq!(routed.other_namespaces, vec!["c"]);
        assert_eq!(
            VulcandTarget::status(&r),
            (Some("b-c".into()), vec!["c".into()])
        );
        let standings = VulcandTarget::standings(&r);
        assert_eq!(
            standings[1],
            (
                ServiceKey::new("east", "c", "intruder"),
                2,
                Standing::Waiting {
                    name: "x-b-c.test.service.consul path /admin.*".into(),
                    owner: "b-c".into(),
                    owner_since: 5
                }
            )
        );
    }

    #[test]
    fn within_the_owner_paths_go_to_the_oldest_claim_and_clusters_fan_in() {
        let r = record(&[
            ("east", "a", "web", 1, 1),
            ("west", "a", "web", 3, 3),
            ("east", "a", "api", 2, 102),
            ("east", "a", "other", 4, 4),
        ]);
        let routed = routes(&r);
        assert_eq!(routed.owner, Some("a"));
        let root: Vec<_> = routed.paths[&RoutePath::default_path()]
            .iter()
            .map(|c| c.key())
            .collect();
        assert_eq!(
            root,
            vec![
                ServiceKey::new("east", "a", "web"),
                ServiceKey::new("west", "a", "web")
            ]
        );
        assert_eq!(
            routed.paths[&"/admin.*".parse::<RoutePath>().unwrap()].len(),
            1
        );
        assert_eq!(
            VulcandTarget::status(&r).1,
            vec!["a/other on /.*".to_owned()]
        );
        let other = VulcandTarget::standings(&r)
            .into_iter()
            .find(|(k, _, _)| k.name == "other")
            .unwrap();
        assert_eq!(
            other.2,
            Standing::Waiting {
                name: "x-b-c.test.service.consul path /.*".into(),
                owner: "a/web".into(),
                owner_since: 1
            }
        );
        let serving = VulcandTarget::standings(&r)
            .into_iter()
            .filter(|(_, _, s)| matches!(s, Standing::Serving { .. }))
            .count();
        assert_eq!(serving, 3, "web in two clusters and api");
    }
}
