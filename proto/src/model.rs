//! The event model: one Service key, and the complete desired route state for it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ProtoError;
use crate::names;
use crate::route::RoutePath;

/// Identifies one Service in one cluster; the unit of ordering and fencing.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
pub struct ServiceKey {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(
        cluster: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Checks every part against the naming rules of [`names`].
    pub fn validate(&self) -> Result<(), ProtoError> {
        names::validate_cluster(&self.cluster)?;
        names::validate_namespace(&self.namespace)?;
        names::validate_service_name(&self.name)
    }

    /// The key a store path names: `<cluster>/<namespace>/<name>` (as [`fmt::Display`]
    /// writes it), each part valid; `None` otherwise.
    pub fn from_path(path: &str) -> Option<Self> {
        let mut parts = path.split('/');
        let key = Self::new(parts.next()?, parts.next()?, parts.next()?);
        (parts.next().is_none() && key.validate().is_ok()).then_some(key)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.cluster, self.namespace, self.name)
    }
}

/// One port the Service exposes.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
pub struct ServicePort {
    /// The port's name in the Service spec (empty when unnamed).
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// One address traffic for the route is sent to.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// Only ready backends receive traffic; not-ready ones are carried for audit.
    pub ready: bool,
}

/// The complete desired routing state of one Service: applying the newest one is enough.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct RouteState {
    /// The first DNS label of the hostname: `<name|host annotation>-<namespace>`. It is also
    /// the Consul tag.
    pub label: String,
    /// The environment (`test` by default); also the Consul service name.
    pub environment: String,
    /// The domain (`service.consul` by default).
    pub domain: String,
    /// The vulcand PathRegexp (`/.*` by default), checked where it enters.
    pub path: RoutePath,
    /// The Service's ports, sorted.
    pub ports: Vec<ServicePort>,
    /// Where traffic goes, sorted and de-duplicated.
    pub backends: Vec<Backend>,
    /// Stream sequence of the event that began this Service's continuous claim on its
    /// hostname (`<label>.<environment>.<domain>`); 0 means this event begins it. Set by the
    /// watcher from the subject's previous event, so which of two conflicting Services is
    /// older is decided by the events alone, whatever order consumers apply them in.
    pub host_since: u64,
    /// The same for the hostname together with the path (the vulcand route).
    pub route_since: u64,
    /// A full hostname from the `host` annotation, under a domain the administrator allows
    /// (`--allowed-host-domains`): then it is the hostname, and `label` is its first label.
    /// Events without one are written as schema version 1.
    pub full_host: Option<String>,
    /// How the edge speaks to the backends (`scheme` annotation; https by default for a port
    /// named `https` or numbered 443). Schema version 3.
    #[serde(default)]
    pub scheme: Scheme,
    /// Whether the edge skips verifying the backends' TLS certificates (https only; the
    /// `tls-insecure-skip-verify` annotation). Schema version 3.
    #[serde(default)]
    pub tls_skip_verify: bool,
    /// Tags the Service adds to its Consul entry (`consul-tags`), sorted. Schema version 3.
    #[serde(default)]
    pub consul_tags: Vec<String>,
    /// Metadata the Service adds to its Consul entry (`consul-meta.<key>`). Schema version 3.
    #[serde(default)]
    pub consul_meta: BTreeMap<String, String>,
}

/// How the edge speaks to a route's backends.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RouteState {
    /// The hostname vulcand routes: the full hostname, else `<label>.<environment>.<domain>`.
    pub fn hostname(&self) -> String {
        match &self.full_host {
            Some(h) => h.clone(),
            None => format!("{}.{}.{}", self.label, self.environment, self.domain),
        }
    }

    /// The Consul name (tag, service) this route registers, if its hostname is one Consul
    /// DNS answers: `<tag>.<environment>.<domain>` with a one-label tag. A full hostname
    /// elsewhere is routed by vulcand only.
    pub fn consul_name(&self) -> Option<(&str, &str)> {
        match &self.full_host {
            None => Some((&self.label, &self.environment)),
            Some(h) => {
                let rest = h.strip_prefix(self.label.as_str())?.strip_prefix('.')?;
                let domain = rest
                    .strip_prefix(self.environment.as_str())?
                    .strip_prefix('.')?;
                (domain == self.domain).then_some((&self.label, &self.environment))
            }
        }
    }

    /// Sorts and de-duplicates ports and backends so equal states encode to equal bytes.
    pub fn normalize(&mut self) {
        self.consul_tags.sort();
        self.consul_tags.dedup();
        self.ports.sort();
        self.ports.dedup();
        self.backends.sort();
        self.backends.dedup();
    }

    /// The claim start of the hostname, given the sequence of the event that carries it.
    pub fn host_claimed_since(&self, seq: u64) -> u64 {
        if self.host_since == 0 {
            seq
        } else {
            self.host_since.min(seq)
        }
    }

    /// The claim start of the hostname + path, given the sequence of the event that carries it.
    pub fn route_claimed_since(&self, seq: u64) -> u64 {
        if self.route_since == 0 {
            seq
        } else {
            self.route_since.min(seq)
        }
    }

    /// The `host_since`/`route_since` a successor state gets, following this state (carried
    /// by the event at `seq`): runs continue while the hostname (and path) stay the same.
    pub fn continue_claims(&mut self, previous: Option<(&RouteState, u64)>) {
        let (host, route) = match previous {
            Some((prev, seq)) if prev.hostname() == self.hostname() => {
                let host = prev.host_claimed_since(seq);
                let route = if prev.path == self.path {
                    prev.route_claimed_since(seq)
                } else {
                    0
                };
                (host, route)
            }
            _ => (0, 0),
        };
        self.host_since = host;
        self.route_since = route;
    }

    /// Backends that receive traffic.
    pub fn ready_backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.ready)
    }

    /// Checks the hostname parts and the path against the rules vulcand and Consul DNS impose.
    pub fn validate(&self) -> Result<(), ProtoError> {
        names::validate_host_label(&self.label)?;
        names::validate_environment(&self.environment)?;
        names::validate_domain(&self.domain)?;
        if let Some(host) = &self.full_host {
            names::validate_hostname(host)?;
            if host.split('.').next() != Some(self.label.as_str()) || !host.contains('.') {
                return Err(ProtoError::InvalidEvent(format!(
                    "label {:?} is not the first label of the full hostname {host:?}",
                    self.label
                )));
            }
        }
        if self.consul_tags.len() > names::MAX_CONSUL_TAGS {
            return Err(ProtoError::InvalidEvent(format!(
                "{} Consul tags, more than {}",
                self.consul_tags.len(),
                names::MAX_CONSUL_TAGS
            )));
        }
        for tag in &self.consul_tags {
            names::validate_consul_tag(tag)?;
        }
        if self.consul_meta.len() > names::MAX_CONSUL_META {
            return Err(ProtoError::InvalidEvent(format!(
                "{} Consul metadata pairs, more than {}",
                self.consul_meta.len(),
                names::MAX_CONSUL_META
            )));
        }
        for (key, value) in &self.consul_meta {
            names::validate_consul_meta(key, value)?;
        }
        if self.tls_skip_verify && self.scheme != Scheme::Https {
            return Err(ProtoError::InvalidEvent(
                "tls_skip_verify without the https scheme".into(),
            ));
        }
        if self.backends.iter().any(|b| b.port == 0) {
            return Err(ProtoError::InvalidEvent("backend port 0".into()));
        }
        Ok(())
    }
}

/// What happened to the Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub enum Change {
    /// The Service became routable; carries its complete state.
    Added(RouteState),
    /// The routable Service changed; carries its complete new state.
    Updated(RouteState),
    /// The Service is gone or no longer routable.
    Removed,
}

/// The kind of an event, without its payload (used in headers and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Added,
    Updated,
    Removed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "added",
            EventKind::Updated => "updated",
            EventKind::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "added" => Some(EventKind::Added),
            "updated" => Some(EventKind::Updated),
            "removed" => Some(EventKind::Removed),
            _ => None,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of the stream: a Service's new desired state, with provenance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct Event {
    pub key: ServiceKey,
    pub change: Change,
    /// The Kubernetes resourceVersion (or file revision) the state was read at.
    pub resource_version: String,
    /// When the watcher observed the change, milliseconds since the Unix epoch.
    pub observed_unix_ms: i64,
    /// Who observed it: the watcher instance (its pod name).
    pub observer: String,
    /// Who made the change, when the source says so (Kubernetes field manager).
    pub manager: Option<String>,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self.change {
            Change::Added(_) => EventKind::Added,
            Change::Updated(_) => EventKind::Updated,
            Change::Removed => EventKind::Removed,
        }
    }

    /// The desired route, or `None` for a removal.
    pub fn route(&self) -> Option<&RouteState> {
        match &self.change {
            Change::Added(r) | Change::Updated(r) => Some(r),
            Change::Removed => None,
        }
    }

    /// Checks the key and the route; the codec calls this on both encode and decode.
    pub fn validate(&self) -> Result<(), ProtoError> {
        self.key.validate()?;
        if let Some(route) = self.route() {
            route.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_key_reads_back_from_its_path_and_nothing_else_does() {
        let key = ServiceKey::new("east", "shop", "web");
        assert_eq!(ServiceKey::from_path(&key.to_string()), Some(key));
        for bad in [
            "east/shop",
            "east/shop/web/x",
            "east/Shop/web",
            "east//web",
            "",
        ] {
            assert_eq!(ServiceKey::from_path(bad), None, "{bad:?}");
        }
    }
}
