//! Reads what etcd and Consul hold and compares it with the [`model`](crate::model), both
//! directions, value by value: vulcand keys, fences, host and name records, catalog entries.

use std::collections::BTreeMap;

use base64::Engine;
use ksr_proto::ServiceKey;

use crate::model::{Ages, ConsulEntry, Expected, Service, Settings, Status, differences};

/// A fence as the targets store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub seq: u64,
    pub claim: Option<String>,
}

fn fence_of(value: &str) -> Option<Fence> {
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    Some(Fence {
        seq: v["seq"].as_u64()?,
        claim: v["claim"].as_str().map(str::to_owned),
    })
}

fn status_of(value: &str) -> Option<Status> {
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    Some(Status {
        owner: v["owner"].as_str()?.to_owned(),
        waiting: v["waiting"]
            .as_array()?
            .iter()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect(),
    })
}

/// Checks the fences under `prefix` (`ksr/<owner>/<target>/services/`): every Service the
/// stream knows has its newest sequence (removed ones: a tombstone, or nothing once
/// collected), claiming `claim(service)`; nothing else is fenced.
fn fences(
    what: &str,
    stored: &BTreeMap<String, String>,
    prefix: &str,
    ages: &Ages,
    live: &BTreeMap<&ServiceKey, Option<String>>,
) -> String {
    let mut got: BTreeMap<String, Option<Fence>> = BTreeMap::new();
    for (k, v) in stored {
        if let Some(rest) = k.strip_prefix(prefix) {
            got.insert(rest.to_owned(), fence_of(v));
        }
    }
    let mut want: BTreeMap<String, Option<Fence>> = BTreeMap::new();
    for (key, seq, is_live) in ages.services() {
        let id = format!("{}/{}/{}", key.cluster, key.namespace, key.name);
        let fence = Fence {
            seq,
            claim: live.get(key).cloned().flatten(),
        };
        if is_live {
            want.insert(id, Some(fence));
        } else if got.contains_key(&id) {
            // A tombstone may be collected; while it is there it must be exact.
            want.insert(id, Some(fence));
        }
    }
    differences(what, &got, &want)
}

/// Compares etcd's contents (every key) with the model of `services`; `ages` is the stream's.
pub fn vulcand(
    settings: &Settings,
    services: &[Service],
    ages: &Ages,
    etcd: &BTreeMap<String, String>,
) -> String {
    let want = crate::model::expected(settings, services);
    let prefix = format!("{}/", settings.vulcand_prefix.trim_end_matches('/'));
    let got: BTreeMap<String, String> = etcd
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut out = differences("vulcand keys", &got, &want.vulcand);
    let state = format!("ksr/{}/vulcand/", settings.owner);
    let hosts: BTreeMap<String, Option<Status>> = etcd
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(&format!("{state}hosts/"))?;
            Some((id.to_owned(), status_of(v)))
        })
        .collect();
    let want_hosts: BTreeMap<String, Option<Status>> = want
        .hosts
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    out += &differences("vulcand host records", &hosts, &want_hosts);
    let live: BTreeMap<&ServiceKey, Option<String>> = services
        .iter()
        .map(|s| (&s.key, Some(format!("{}.{}", settings.owner, s.hostname))))
        .collect();
    out += &fences(
        "vulcand fences",
        etcd,
        &format!("{state}services/"),
        ages,
        &live,
    );
    out
}

/// Our node's catalog entries and our KV records, as [`ConsulServer::contents`] returns them
/// (`svc:<id>` and `kv:<key>` with base64 values).
///
/// [`ConsulServer::contents`]: crate::ConsulServer::contents
pub fn consul(
    settings: &Settings,
    environments: &[&str],
    services: &[Service],
    ages: &Ages,
    contents: &BTreeMap<String, String>,
) -> String {
    let mut got: BTreeMap<String, ConsulEntry> = BTreeMap::new();
    let mut kv: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in contents {
        if let Some(id) = k.strip_prefix("svc:") {
            let s: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            };
            got.insert(
                id.to_owned(),
                ConsulEntry {
                    service: s["Service"].as_str().unwrap_or_default().to_owned(),
                    tags: strings(&s["Tags"]),
                    address: s["Address"].as_str().unwrap_or_default().to_owned(),
                    port: s["Port"].as_u64().unwrap_or_default() as u16,
                    meta: s["Meta"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect(),
                },
            );
        } else if let Some(key) = k.strip_prefix("kv:") {
            let b64: String = serde_json::from_str(v).unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            kv.insert(key.to_owned(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    consul_entries(settings, environments, services, ages, &got, &kv)
}

/// [`consul`] on parsed contents: catalog entries by ID, and KV keys with their values.
pub fn consul_entries(
    settings: &Settings,
    environments: &[&str],
    services: &[Service],
    ages: &Ages,
    got: &BTreeMap<String, ConsulEntry>,
    kv: &BTreeMap<String, String>,
) -> String {
    let Expected {
        consul: mut want,
        names: want_names,
        ..
    } = crate::model::expected(settings, services);
    for env in environments {
        let (id, entry) = crate::model::router_entry(settings, env);
        want.insert(id, entry);
    }
    let mut out = differences("consul catalog", got, &want);
    let state = format!("ksr/{}/consul/", settings.owner);
    let names: BTreeMap<String, Option<Status>> = kv
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix(&format!("{state}names/"))?.to_owned(),
                status_of(v),
            ))
        })
        .collect();
    let want_names: BTreeMap<String, Option<Status>> =
        want_names.into_iter().map(|(k, v)| (k, Some(v))).collect();
    out += &differences("consul name records", &names, &want_names);
    let live: BTreeMap<&ServiceKey, Option<String>> = services
        .iter()
        .map(|s| (&s.key, s.consul.as_ref().map(|(t, e)| format!("{t}.{e}"))))
        .collect();
    out += &fences(
        "consul fences",
        kv,
        &format!("{state}services/"),
        ages,
        &live,
    );
    out
}
