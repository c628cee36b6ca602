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

#[derive(Serialize)]
struct BackendValue<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
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
/// routed under the hostname (see [`crate::plan::routes`]); empty when nobody claims it.
pub fn project(layout: &Layout, record: &HostRecord) -> Projection {
    let mut out = Projection::new();
    let host = &record.meta.host;
    for (path, owners) in crate::plan::routes(record).paths {
        // Never written when vulcand could not load it (records of older versions may hold
        // such a path; reconciliation then removes its keys).
        let Ok(route) = ksr_proto::route::route_expression(host, path) else {
            continue;
        };
        let id = layout.route_id(host, path);
        out.insert(
            layout.backend_key(&id),
            (KeyClass::Backend, json(&BackendValue { kind: "http" })),
        );
        for claim in owners {
            for addr in &claim.data.backends {
                out.insert(
                    layout.server_key(&id, &Layout::server_id(&claim.cluster, addr)),
                    (
                        KeyClass::Server,
                        json(&ServerValue {
                            url: format!("http://{addr}"),
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
