//! Stream and subject naming, message headers and the `Nats-Msg-Id` rule.

use crate::ProtoError;
use crate::model::{Change, ServiceKey};
use crate::names;

/// The default stream name.
pub const DEFAULT_STREAM: &str = "KSR_ROUTES";
/// Every event subject starts with this.
pub const SUBJECT_PREFIX: &str = "ksr.routes";
/// Header: the envelope's schema version, so tools can filter without decoding.
pub const HEADER_SCHEMA: &str = "Ksr-Schema";
/// Header naming what the publishing watcher watches (Kubernetes: `k8s:<kube-system UID>`;
/// files: `files:<digest of the directory>`), so a second watcher given the same
/// `--cluster` for another cluster is detected.
pub const HEADER_CLUSTER_ID: &str = "Ksr-Cluster-Id";
/// Header: `added`, `updated` or `removed`.
pub const HEADER_KIND: &str = "Ksr-Kind";
/// Header: the cluster the event comes from.
pub const HEADER_CLUSTER: &str = "Ksr-Cluster";

/// `ksr.routes.<cluster>.<namespace>.<name>`: one subject per Service.
pub fn subject(key: &ServiceKey) -> String {
    format!(
        "{SUBJECT_PREFIX}.{}.{}.{}",
        key.cluster, key.namespace, key.name
    )
}

/// All subjects of one cluster: `ksr.routes.<cluster>.>`.
pub fn cluster_filter(cluster: &str) -> String {
    format!("{SUBJECT_PREFIX}.{cluster}.>")
}

/// Where a watcher of `cluster` listens for an operator's confirmation of held removals
/// (core NATS request/reply; `ksrctl confirm-removals`).
pub fn confirm_removals_subject(cluster: &str) -> String {
    format!("ksr.control.{cluster}.confirm-removals")
}

/// Where a watcher of `cluster` answers "are you there?" (core NATS request/reply; `ksrctl
/// retire-cluster` refuses while one answers).
pub fn watcher_ping_subject(cluster: &str) -> String {
    format!("ksr.control.{cluster}.ping")
}

/// All event subjects: `ksr.routes.>`.
pub fn all_filter() -> String {
    format!("{SUBJECT_PREFIX}.>")
}

/// Parses and validates an event subject back into its Service key.
pub fn parse_subject(subject: &str) -> Result<ServiceKey, ProtoError> {
    let rest = subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| ProtoError::InvalidEvent(format!("subject {subject:?} is not ours")))?;
    let mut parts = rest.split('.');
    let (Some(cluster), Some(namespace), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProtoError::InvalidEvent(format!(
            "subject {subject:?} is not {SUBJECT_PREFIX}.<cluster>.<namespace>.<name>"
        )));
    };
    let key = ServiceKey::new(cluster, namespace, name);
    key.validate()?;
    names::validate_cluster(cluster)?;
    Ok(key)
}

/// The `Nats-Msg-Id` of an event: `<cluster>/<namespace>/<name>/<previous seq>/<digest>`.
///
/// It includes the cluster (sourced aggregate streams de-duplicate across clusters), the
/// subject sequence the event follows (so a state that flips back is a new message) and a
/// digest of the change itself (not of the observation time), so two watcher replicas that
/// publish the same change after the same predecessor produce the same id and one of them is
/// de-duplicated.
pub fn msg_id(key: &ServiceKey, previous_seq: u64, change: &Change) -> String {
    format!(
        "{}/{}/{}/{previous_seq}/{:016x}",
        key.cluster,
        key.namespace,
        key.name,
        change_digest(change)
    )
}

/// A stable 64-bit FNV-1a digest of the change's canonical (bincode) encoding.
pub fn change_digest(change: &Change) -> u64 {
    let bytes = bincode::encode_to_vec(change, bincode::config::standard()).unwrap_or_default();
    fnv1a(&bytes)
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike `std`'s hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_round_trips() {
        let key = ServiceKey::new("east", "default", "webtest1");
        assert_eq!(subject(&key), "ksr.routes.east.default.webtest1");
        assert_eq!(parse_subject(&subject(&key)).unwrap(), key);
    }

    #[test]
    fn foreign_or_malformed_subjects_are_errors() {
        for bad in [
            "other.east.default.web",
            "ksr.routes.east.default",
            "ksr.routes.east.default.web.extra",
            "ksr.routes.EAST.default.web",
            "ksr.routes..default.web",
        ] {
            assert!(parse_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn msg_id_depends_on_cluster_predecessor_and_change_only() {
        let key = ServiceKey::new("east", "ns", "a");
        let other = ServiceKey::new("west", "ns", "a");
        let id = msg_id(&key, 7, &Change::Removed);
        assert_eq!(id, msg_id(&key, 7, &Change::Removed));
        assert_ne!(id, msg_id(&key, 8, &Change::Removed));
        assert_ne!(id, msg_id(&other, 7, &Change::Removed));
        assert!(id.starts_with("east/ns/a/7/"));
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
