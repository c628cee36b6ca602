//! Where everything lives in etcd: vulcand's keys, our ids, and our own state prefix.
//!
//! ```text
//! <vulcand>/backends/<id>/backend            {"Type":"http"}
//! <vulcand>/backends/<id>/servers/<sid>      {"URL":"http://ip:port"}
//! <vulcand>/frontends/<id>/frontend          {"Type":"http","BackendId":"<id>","Route":"..."}
//! ksr/<owner>/vulcand/services/<cluster>/<namespace>/<name>   fence: applied seq + host id
//! ksr/<owner>/vulcand/hosts/<host id>                         claims, owner, waiting Services
//! ```
//!
//! Route ids are `<owner>.<hostname>.<16 hex digest of the path>`: readable in vulcand's API,
//! unique per host+path, and prefixed with the owner so reconciliation can tell our keys from
//! foreign ones (and from another installation's) by prefix alone. A host id is a route id
//! without the digest, `<owner>.<hostname>`: the records are per hostname, because a
//! hostname belongs to one namespace.

use std::net::SocketAddr;

use ksr_proto::ServiceKey;
use ksr_proto::subject::fnv1a;

/// The key layout of one installation.
#[derive(Debug, Clone)]
pub struct Layout {
    vulcand: String,
    owner: String,
    state: String,
}

impl Layout {
    /// `vulcand_prefix` as vulcand reads it (`vulcand` for v3, `/vulcand` for v2); `owner`
    /// names this installation.
    pub fn new(vulcand_prefix: &str, owner: &str) -> Self {
        Self {
            vulcand: vulcand_prefix.trim_end_matches('/').to_owned(),
            owner: owner.to_owned(),
            state: format!("ksr/{owner}/vulcand"),
        }
    }

    pub fn vulcand_prefix(&self) -> &str {
        &self.vulcand
    }

    /// The id of the record of `host`.
    pub fn host_id(&self, host: &str) -> String {
        format!("{}.{host}", self.owner)
    }

    /// The host id a route id belongs to.
    pub fn host_id_of<'a>(&self, route_id: &'a str) -> &'a str {
        route_id
            .rsplit_once('.')
            .map_or(route_id, |(host_id, _)| host_id)
    }

    /// The host id a fence written before host records names (a route id: the host id, a dot
    /// and 16 hex digits), None for anything else.
    pub fn host_of_legacy_claim<'a>(&self, claim: &'a str) -> Option<&'a str> {
        let (host, digest) = claim.rsplit_once('.')?;
        let ours = host.starts_with(&self.owner) && host[self.owner.len()..].starts_with('.');
        (ours && digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(host)
    }

    /// The id of the frontend and backend serving `host` + `path`.
    pub fn route_id(&self, host: &str, path: &str) -> String {
        format!("{}.{host}.{:016x}", self.owner, fnv1a(path.as_bytes()))
    }

    /// A server id: `<cluster>-<ip with . and : as ->-<port>`.
    pub fn server_id(cluster: &str, addr: &SocketAddr) -> String {
        let ip = addr.ip().to_string().replace(['.', ':'], "-");
        format!("{cluster}-{ip}-{}", addr.port())
    }

    pub fn backend_key(&self, id: &str) -> String {
        format!("{}/backends/{id}/backend", self.vulcand)
    }

    pub fn server_key(&self, id: &str, sid: &str) -> String {
        format!("{}/backends/{id}/servers/{sid}", self.vulcand)
    }

    pub fn frontend_key(&self, id: &str) -> String {
        format!("{}/frontends/{id}/frontend", self.vulcand)
    }

    /// Prefix of every backend key we own.
    pub fn owned_backends_prefix(&self) -> String {
        format!("{}/backends/{}.", self.vulcand, self.owner)
    }

    /// Prefix of every frontend key we own.
    pub fn owned_frontends_prefix(&self) -> String {
        format!("{}/frontends/{}.", self.vulcand, self.owner)
    }

    /// The id a vulcand key of ours belongs to.
    pub fn id_of_vulcand_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        let rest = key.strip_prefix(&self.vulcand)?.strip_prefix('/')?;
        let rest = rest
            .strip_prefix("backends/")
            .or_else(|| rest.strip_prefix("frontends/"))?;
        let id = rest.split('/').next()?;
        id.starts_with(&format!("{}.", self.owner)).then_some(id)
    }

    /// Everything of ours: `ksr/<owner>/vulcand/`.
    pub fn state_prefix(&self) -> String {
        format!("{}/", self.state)
    }

    pub fn services_prefix(&self) -> String {
        format!("{}/services/", self.state)
    }

    pub fn hosts_prefix(&self) -> String {
        format!("{}/hosts/", self.state)
    }

    pub fn host_record_key(&self, id: &str) -> String {
        format!("{}/hosts/{id}", self.state)
    }

    /// Where records of older versions (one per host + path) lived; migrated at start-up.
    pub fn legacy_routes_prefix(&self) -> String {
        format!("{}/routes/", self.state)
    }

    pub fn service_record_key(&self, key: &ServiceKey) -> String {
        format!(
            "{}/services/{}/{}/{}",
            self.state, key.cluster, key.namespace, key.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_vulcands_schema() {
        let l = Layout::new("vulcand", "ksr");
        let id = l.route_id("web-default.test.service.consul", "/.*");
        assert!(id.starts_with("ksr.web-default.test.service.consul."));
        assert_eq!(l.backend_key(&id), format!("vulcand/backends/{id}/backend"));
        assert_eq!(
            l.frontend_key(&id),
            format!("vulcand/frontends/{id}/frontend")
        );
        let addr: SocketAddr = "[fd00::9]:8080".parse().unwrap();
        assert_eq!(Layout::server_id("east", &addr), "east-fd00--9-8080");
        assert_eq!(
            l.id_of_vulcand_key(&l.server_key(&id, "s")),
            Some(id.as_str())
        );
        assert_eq!(
            l.id_of_vulcand_key("vulcand/backends/foreign/backend"),
            None
        );
        assert_ne!(id, l.route_id("web-default.test.service.consul", "/api"));
        assert_eq!(
            l.host_id_of(&id),
            l.host_id("web-default.test.service.consul")
        );
        assert_eq!(l.host_of_legacy_claim(&id), Some(l.host_id_of(&id)));
        assert_eq!(
            l.host_of_legacy_claim(&l.host_id("web-default.test.service.consul")),
            None
        );
    }

    #[test]
    fn a_v2_prefix_keeps_its_leading_slash() {
        let l = Layout::new("/vulcand/", "ksr");
        assert_eq!(l.backend_key("x"), "/vulcand/backends/x/backend");
    }
}
