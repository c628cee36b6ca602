//! The pure projection: a host record → the exact vulcand keys and JSON values.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::layout::Layout;
use crate::records::HostRecord;

/// Write order class of a vulcand key: backends before servers before frontends (deletes in
/// reverse), as vulcand requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyClass {
    Backend = 0,
    Server = 1,
    Frontend = 2,
}

/// vulcand key → (class, JSON value).
pub type Projection = BTreeMap<String, (KeyClass, String)>;

/// vulcand's backend value (`engine.Backend` as `BackendFromJSON` reads it, v0.8 and later).
#[derive(Serialize)]
struct BackendValue<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
    /// `engine.HTTPBackendSettings`; absent: vulcand's defaults (and certificates verified).
    #[serde(rename = "Settings", skip_serializing_if = "Option::is_none")]
    settings: Option<BackendSettings>,
}

/// The part of `engine.HTTPBackendSettings` we set.
#[derive(Serialize)]
struct BackendSettings {
    /// `TLS *TLSSettings` (`json:",omitempty"`).
    #[serde(rename = "TLS")]
    tls: TlsSettings,
}

/// The part of `engine.TLSSettings` we set; the rest keeps vulcand's defaults.
#[derive(Serialize)]
struct TlsSettings {
    #[serde(rename = "InsecureSkipVerify")]
    insecure_skip_verify: bool,
}

#[derive(Serialize)]
struct ServerValue {
    #[serde(rename = "URL")]
    url: String,
}

#[derive(Serialize)]
struct FrontendValue<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
    #[serde(rename = "BackendId")]
    backend_id: &'a str,
    #[serde(rename = "Route")]
    route: &'a str,
}

fn json(value: &impl Serialize) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// The keys a host record projects to: one backend, its servers and one frontend per path
/// routed under the hostname (see [`crate::target::routes`]); empty when nobody claims it.
pub fn project(layout: &Layout, record: &HostRecord) -> Projection {
    let mut out = Projection::new();
    let host = &record.meta.host;
    for (path, owners) in crate::target::routes(record).paths {
        // Never written when vulcand could not load it (a hand-edited hostname; a path vulcand
        // refuses makes the whole record unreadable); reconciliation then removes its keys.
        let Ok(route) = ksr_proto::route::route_expression(host, path) else {
            continue;
        };
        let id = layout.route_id(host, path);
        // The backend's settings follow the oldest claim of the path's Service (its clusters
        // fan in); each server speaks its own claim's scheme.
        let oldest = owners
            .iter()
            .min_by_key(|c| (c.data.path_since, c.cluster.as_str()));
        let settings = oldest
            .filter(|c| c.data.tls_skip_verify)
            .map(|_| BackendSettings {
                tls: TlsSettings {
                    insecure_skip_verify: true,
                },
            });
        out.insert(
            layout.backend_key(&id),
            (
                KeyClass::Backend,
                json(&BackendValue {
                    kind: "http",
                    settings,
                }),
            ),
        );
        for claim in owners {
            for addr in &claim.data.backends {
                out.insert(
                    layout.server_key(&id, &Layout::server_id(&claim.cluster, addr)),
                    (
                        KeyClass::Server,
                        json(&ServerValue {
                            url: format!("{}://{addr}", claim.data.scheme),
                        }),
                    ),
                );
            }
        }
        out.insert(
            layout.frontend_key(&id),
            (
                KeyClass::Frontend,
                json(&FrontendValue {
                    kind: "http",
                    backend_id: &id,
                    route: &route,
                }),
            ),
        );
    }
    out
}

/// One write to a vulcand key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    Put {
        key: String,
        class: KeyClass,
        value: String,
    },
    Delete {
        key: String,
        class: KeyClass,
    },
}

impl KeyOp {
    /// Position in a transaction: deletes frontend → servers → backend, then puts backend →
    /// servers → frontend.
    pub fn order(&self) -> (u8, u8) {
        match self {
            KeyOp::Delete { class, .. } => (0, 2 - *class as u8),
            KeyOp::Put { class, .. } => (1, *class as u8),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            KeyOp::Put { key, .. } | KeyOp::Delete { key, .. } => key,
        }
    }
}

/// The writes that turn projection `from` into `to` (unchanged keys are not rewritten).
pub fn diff(from: &Projection, to: &Projection) -> Vec<KeyOp> {
    let mut ops = Vec::new();
    for (key, (class, _)) in from {
        if !to.contains_key(key) {
            ops.push(KeyOp::Delete {
                key: key.clone(),
                class: *class,
            });
        }
    }
    for (key, (class, value)) in to {
        if from.get(key).map(|(_, v)| v) != Some(value) {
            ops.push(KeyOp::Put {
                key: key.clone(),
                class: *class,
                value: value.clone(),
            });
        }
    }
    sort_ops(&mut ops);
    ops
}

/// Sorts writes into vulcand's safe order (stable within a class).
pub fn sort_ops(ops: &mut [KeyOp]) {
    ops.sort_by_key(KeyOp::order);
}

#[cfg(test)]
mod tests {
    use ksr_proto::{RoutePath, Scheme, ServiceKey};

    use super::*;
    use crate::records::{HostMeta, PathClaim};

    fn record(claims: &[(&str, u64, Scheme, bool)]) -> HostRecord {
        let mut r = HostRecord::new(HostMeta {
            host: "dash-kd.test.service.consul".into(),
        });
        for (i, (cluster, since, scheme, skip)) in claims.iter().enumerate() {
            r.claims.upsert(
                &ServiceKey::new(*cluster, "kd", "dash"),
                i as u64 + 1,
                *since,
                PathClaim {
                    path: RoutePath::default_path(),
                    path_since: *since,
                    backends: vec![format!("10.0.0.{}:8443", i + 1).parse().unwrap()],
                    scheme: *scheme,
                    tls_skip_verify: *skip,
                },
            );
        }
        r
    }

    /// The values of the keys `select` picks.
    fn values(p: &Projection, select: impl Fn(&str) -> bool) -> Vec<&str> {
        p.iter()
            .filter(|(k, _)| select(k))
            .map(|(_, (_, v))| v.as_str())
            .collect()
    }

    fn backend(p: &Projection) -> Vec<&str> {
        values(p, |k| k.ends_with("/backend"))
    }

    fn servers(p: &Projection) -> Vec<&str> {
        values(p, |k| k.contains("/servers/"))
    }

    /// The JSON keys vulcand reads, as its sources name them (v0.8.0-beta.2 and later,
    /// `engine/model.go` and `engine/tls.go`): `backend` is `{"Type","Settings"}`, Settings is
    /// `HTTPBackendSettings{Timeouts, KeepAlive, TLS *TLSSettings}`, TLSSettings has
    /// `InsecureSkipVerify bool`; a server is `{"URL"}`.
    #[test]
    fn https_backends_carry_the_scheme_and_only_an_unverified_one_has_tls_settings() {
        let layout = Layout::new("vulcand", "ksr");
        let verified = project(&layout, &record(&[("east", 1, Scheme::Https, false)]));
        assert_eq!(backend(&verified), vec![r#"{"Type":"http"}"#]);
        assert_eq!(
            servers(&verified),
            vec![r#"{"URL":"https://10.0.0.1:8443"}"#]
        );

        let unverified = project(&layout, &record(&[("east", 1, Scheme::Https, true)]));
        let parsed: serde_json::Value = serde_json::from_str(backend(&unverified)[0]).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"Type": "http", "Settings": {"TLS": {"InsecureSkipVerify": true}}})
        );

        // Two clusters of one Service fan in: the backend follows the oldest claim, each
        // server its own scheme.
        let fanned = project(
            &layout,
            &record(&[
                ("east", 5, Scheme::Http, false),
                ("west", 2, Scheme::Https, true),
            ]),
        );
        assert!(backend(&fanned)[0].contains("InsecureSkipVerify"));
        let mut servers = servers(&fanned);
        servers.sort();
        assert_eq!(
            servers,
            vec![
                r#"{"URL":"http://10.0.0.1:8443"}"#,
                r#"{"URL":"https://10.0.0.2:8443"}"#
            ]
        );
    }
}
