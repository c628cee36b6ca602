//! Per-Service projection status: what each publisher did with a Service (serving it, keeping
//! it waiting behind an older claim, or refusing it), as the publishers report it back.
//!
//! Only a publisher knows who won a hostname or a Consul name, so after every applied batch it
//! writes the standing of each Service the batch touched to a small JetStream key-value bucket
//! (`<stream>_status`, one key per publisher and Service: `<publisher>.<cluster>.<namespace>.<name>`,
//! a JSON value). The watcher of the Service's cluster turns changes into Kubernetes Events and
//! `ksrctl explain` prints the last one. Status is advisory: it is written after the commit,
//! coalesced, never waited for, and losing it never changes routing.

use serde::{Deserialize, Serialize};

use ksr_proto::ServiceKey;

/// Where one Service stands in one target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Standing {
    /// The target serves it under `name`.
    Serving { name: String },
    /// Another claim on `name` is older: `owner` (a namespace, or `namespace/service` for a
    /// path) holds it since stream sequence `owner_since`; this Service takes over when it goes.
    Waiting {
        name: String,
        owner: String,
        owner_since: u64,
    },
    /// The target refused the Service's event.
    Rejected { reason: String },
}

/// The status one publisher reports for one Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `vulcand` or `consul`.
    pub target: String,
    /// The publisher (its durable consumer's name).
    pub publisher: String,
    /// Stream sequence of the Service's event from which it stands so (later events that
    /// leave its standing as it is are not written again).
    pub seq: u64,
    #[serde(flatten)]
    pub standing: Standing,
    /// When it was written (Unix milliseconds).
    pub at_ms: u64,
}

impl Status {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The status bucket of a stream.
pub fn bucket(stream: &str) -> String {
    format!("{stream}_status")
}

/// The key of `publisher`'s status of `key`.
pub fn key(publisher: &str, key: &ServiceKey) -> String {
    format!("{publisher}.{}.{}.{}", key.cluster, key.namespace, key.name)
}

/// The Service and the publisher a status key names.
pub fn parse_key(k: &str) -> Option<(String, ServiceKey)> {
    let mut parts = k.split('.');
    let (p, c, ns, n) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((p.to_owned(), ServiceKey::new(c, ns, n)))
}

/// Now, in Unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A change to report: the Service, the sequence of the event it follows from, and its standing (`None`:
/// the Service claims nothing in this target any more, its status is deleted).
pub type Change = (ServiceKey, u64, Option<Standing>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_as_readable_json() {
        let s = Status {
            target: "vulcand".into(),
            publisher: "ksr-vulcand-ksr".into(),
            seq: 7,
            standing: Standing::Waiting {
                name: "web-shop.test.example.com".into(),
                owner: "shop".into(),
                owner_since: 3,
            },
            at_ms: 1,
        };
        let json = String::from_utf8(s.encode()).unwrap();
        assert!(json.contains(r#""state":"waiting""#), "{json}");
        assert_eq!(Status::decode(json.as_bytes()).unwrap(), s);
        let k = key("ksr-vulcand-ksr", &ServiceKey::new("east", "shop", "web"));
        assert_eq!(k, "ksr-vulcand-ksr.east.shop.web");
        assert_eq!(
            parse_key(&k),
            Some((
                "ksr-vulcand-ksr".into(),
                ServiceKey::new("east", "shop", "web")
            ))
        );
        assert_eq!(parse_key("a.b.c"), None);
    }
}
