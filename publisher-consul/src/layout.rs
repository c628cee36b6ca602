//! Where our state lives in Consul KV, and the ids of our catalog entries.
//!
//! ```text
//! ksr/<owner>/consul/services/<cluster>/<namespace>/<name>   fence: applied seq + name id
//! ksr/<owner>/consul/names/<label>.<environment>             claims, owner, waiting
//! catalog node <node>: service <environment>, ID <label>.<environment>, tag <label>
//!                      service vulcan, ID vulcan.<environment>, tag <environment>
//! ```

use ksr_projection::RecordKey;
use ksr_proto::ServiceKey;

/// The KV layout of one installation.
#[derive(Debug, Clone)]
pub struct Layout {
    state: String,
}

impl Layout {
    pub fn new(owner: &str) -> Self {
        Self {
            state: format!("ksr/{owner}/consul"),
        }
    }

    /// The id of a routed name (also its catalog service ID).
    pub fn name_id(label: &str, environment: &str) -> String {
        format!("{label}.{environment}")
    }

    /// The catalog service ID of the router's own registration.
    pub fn router_id(environment: &str) -> String {
        format!("vulcan.{environment}")
    }

    pub fn state_prefix(&self) -> String {
        format!("{}/", self.state)
    }

    pub fn services_prefix(&self) -> String {
        format!("{}/services/", self.state)
    }

    pub fn names_prefix(&self) -> String {
        format!("{}/names/", self.state)
    }

    pub fn service_record_key(&self, key: &ServiceKey) -> String {
        format!(
            "{}/services/{}/{}/{}",
            self.state, key.cluster, key.namespace, key.name
        )
    }

    pub fn name_record_key(&self, id: &str) -> String {
        format!("{}/names/{id}", self.state)
    }

    pub fn record_key(&self, key: &RecordKey) -> String {
        match key {
            RecordKey::Service(s) => self.service_record_key(s),
            RecordKey::Name(id) => self.name_record_key(id),
        }
    }

    /// The record a KV key holds, if it is one of ours.
    pub fn parse_record_key(&self, key: &str) -> Option<RecordKey> {
        if let Some(rest) = key.strip_prefix(&self.services_prefix()) {
            return ServiceKey::from_path(rest).map(RecordKey::Service);
        }
        key.strip_prefix(&self.names_prefix())
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(|id| RecordKey::Name(id.to_owned()))
    }
}
