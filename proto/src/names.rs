//! Name validation: Kubernetes DNS names, NATS-token-safe cluster names, DNS labels for hosts.
//!
//! Every name that ends up in a NATS subject, an etcd key, a vulcand route or a DNS name passes
//! through here first, so none of those can be corrupted by a surprising character.

use crate::ProtoError;

/// DNS labels (and so Consul tags and service names) are at most 63 bytes.
pub const MAX_LABEL: usize = 63;
/// A full DNS name is at most 253 bytes in text form.
pub const MAX_DNS_NAME: usize = 253;

fn invalid(what: &'static str, value: &str, reason: &'static str) -> ProtoError {
    ProtoError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    }
}

/// RFC 1123 label as Kubernetes checks it: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
fn check_dns1123_label(what: &'static str, value: &str) -> Result<(), ProtoError> {
    if value.is_empty() {
        return Err(invalid(what, value, "must not be empty"));
    }
    if value.len() > MAX_LABEL {
        return Err(invalid(what, value, "must be at most 63 bytes"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            what,
            value,
            "may contain only lower-case letters, digits and '-'",
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(
            what,
            value,
            "must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// A Kubernetes namespace: an RFC 1123 label.
pub fn validate_namespace(value: &str) -> Result<(), ProtoError> {
    check_dns1123_label("namespace", value)
}

/// A Kubernetes Service name: an RFC 1035 label (starts with a letter).
pub fn validate_service_name(value: &str) -> Result<(), ProtoError> {
    check_dns1123_label("service name", value)?;
    if !value.as_bytes()[0].is_ascii_lowercase() {
        return Err(invalid("service name", value, "must start with a letter"));
    }
    Ok(())
}

/// A cluster name: an RFC 1123 label, so it is one NATS subject token, one etcd path segment
/// and a valid Consul meta value.
pub fn validate_cluster(value: &str) -> Result<(), ProtoError> {
    check_dns1123_label("cluster name", value)
}

/// The `host` annotation: one DNS label that replaces the Service name in the hostname.
pub fn validate_host_annotation(value: &str) -> Result<(), ProtoError> {
    check_dns1123_label("host annotation", value)
}

/// The first label of the hostname, `<name|host>-<namespace>`.
pub fn validate_host_label(value: &str) -> Result<(), ProtoError> {
    check_dns1123_label("hostname label", value)
}

/// The environment: one DNS label (it is the Consul service name).
pub fn validate_environment(value: &str) -> Result<(), ProtoError> {
    check_dns1123_label("environment", value)
}

/// The domain: a DNS name of RFC 1123 labels separated by dots.
pub fn validate_domain(value: &str) -> Result<(), ProtoError> {
    if value.len() > MAX_DNS_NAME {
        return Err(invalid("domain", value, "must be at most 253 bytes"));
    }
    for label in value.split('.') {
        check_dns1123_label("domain", label).map_err(|e| match e {
            ProtoError::InvalidName { reason, .. } => invalid("domain", value, reason),
            other => other,
        })?;
    }
    Ok(())
}

/// A full hostname as vulcand matches it: lower-case RFC 1123 labels joined by dots, at most
/// 253 bytes (vulcand lower-cases the request's host, so an upper-case route never matches).
pub fn validate_hostname(value: &str) -> Result<(), ProtoError> {
    if value.len() > MAX_DNS_NAME {
        return Err(invalid("hostname", value, "must be at most 253 bytes"));
    }
    for label in value.split('.') {
        check_dns1123_label("hostname", label).map_err(|e| match e {
            ProtoError::InvalidName { reason, .. } => invalid("hostname", value, reason),
            other => other,
        })?;
    }
    Ok(())
}

/// Builds the hostname label `<name|host>-<namespace>` and checks it fits in one DNS label.
pub fn host_label(
    name: &str,
    host_annotation: Option<&str>,
    namespace: &str,
) -> Result<String, ProtoError> {
    let first = match host_annotation {
        Some(host) => {
            validate_host_annotation(host)?;
            host
        }
        None => name,
    };
    let label = format!("{first}-{namespace}");
    validate_host_label(&label)?;
    Ok(label)
}

/// The most tags one Service adds to its Consul entry (`consul-tags`).
pub const MAX_CONSUL_TAGS: usize = 8;
/// The most metadata pairs one Service adds (`consul-meta.<key>`): Consul allows 64 per
/// entry, and ksr writes a few of its own.
pub const MAX_CONSUL_META: usize = 32;
/// Consul's limits on a metadata key and value (its `metaKeyMaxLength`, `metaValueMaxLength`).
pub const MAX_CONSUL_META_KEY: usize = 128;
pub const MAX_CONSUL_META_VALUE: usize = 512;

/// A tag a Service adds to its Consul entry: one lower-case DNS label, so that
/// `<tag>.<service>.service.consul` resolves.
pub fn validate_consul_tag(tag: &str) -> Result<(), ProtoError> {
    check_dns1123_label("Consul tag", tag)
}

/// A metadata pair a Service adds to its Consul entry, by Consul's own rules (a key of
/// letters, digits, `_` and `-`, at most 128 bytes, not under the prefix `consul-` Consul keeps
/// for itself; a value of at most 512 bytes) and ours (not under `ksr-`, which ksr writes).
pub fn validate_consul_meta(key: &str, value: &str) -> Result<(), ProtoError> {
    const WHAT: &str = "Consul metadata key";
    if key.is_empty() {
        return Err(invalid(WHAT, key, "must not be empty"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            WHAT,
            key,
            "may hold only letters, digits, '_' and '-'",
        ));
    }
    if key.len() > MAX_CONSUL_META_KEY {
        return Err(invalid(WHAT, key, "must be at most 128 bytes"));
    }
    if key.starts_with("consul-") {
        return Err(invalid(WHAT, key, "the prefix consul- is Consul's own"));
    }
    if key.starts_with("ksr-") {
        return Err(invalid(
            WHAT,
            key,
            "the prefix ksr- is kube-service-router's own",
        ));
    }
    if value.len() > MAX_CONSUL_META_VALUE {
        return Err(invalid(
            "Consul metadata value",
            value,
            "must be at most 512 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_names() {
        for ok in ["a", "default", "kube-system", "a1", "1a", &"x".repeat(63)] {
            validate_namespace(ok).unwrap();
        }
        validate_service_name("webtest1").unwrap();
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for bad in [
            "",
            "A",
            "a_b",
            "-a",
            "a-",
            "a.b",
            "a b",
            "ä",
            &"x".repeat(64),
        ] {
            let err = validate_namespace(bad).unwrap_err();
            assert_eq!(err.reason(), "invalid_name", "{bad:?}");
        }
        assert!(validate_service_name("1abc").is_err());
        assert!(validate_cluster("east.1").is_err());
        assert!(validate_cluster("east>").is_err());
        assert!(validate_cluster("*").is_err());
    }

    #[test]
    fn host_label_joins_name_or_annotation_with_namespace() {
        assert_eq!(host_label("web", None, "default").unwrap(), "web-default");
        assert_eq!(
            host_label("web", Some("myapp"), "team").unwrap(),
            "myapp-team"
        );
        // The seed's example annotation is a full domain: not a label, so rejected.
        assert!(host_label("web", Some("myapp.mydomain.com"), "default").is_err());
        let long = "a".repeat(40);
        let err = host_label(&long, None, &"b".repeat(30)).unwrap_err();
        assert!(err.to_string().contains("63"), "{err}");
    }

    #[test]
    fn domain_is_dot_separated_labels() {
        validate_domain("service.consul").unwrap();
        assert!(validate_domain("service..consul").is_err());
        assert!(validate_domain("Service.consul").is_err());
    }
}
