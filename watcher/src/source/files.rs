//! The files source: a directory of Service and EndpointSlice manifests (YAML or JSON,
//! multi-document), polled for changes. Every change is reported as a full relist, so the
//! same diff as after a Kubernetes relist applies. A file that cannot be read or parsed keeps
//! its last good objects (an editing mistake never removes routes) and is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::Stream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::mpsc;

use crate::inventory::{Kind, Resource, SourceEvent};

/// The objects of one file and the fingerprint they were read at.
#[derive(Debug, Clone, Default)]
struct FileState {
    fingerprint: Option<(SystemTime, u64)>,
    objects: Vec<Resource>,
}

/// Parses one manifest file into Services and EndpointSlices (other kinds are ignored).
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Resource>, String> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut stack: Vec<serde_json::Value> = docs;
    while let Some(doc) = stack.pop() {
        let kind = doc
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "List" | "ServiceList" | "EndpointSliceList" => {
                if let Some(items) = doc.get("items").and_then(|i| i.as_array()) {
                    stack.extend(items.iter().cloned());
                }
            }
            "Service" => {
                let mut svc: Service =
                    serde_json::from_value(doc).map_err(|e| format!("a Service: {e}"))?;
                fill_meta(&mut svc.metadata, origin);
                out.push(Resource::Service(Box::new(svc)));
            }
            "EndpointSlice" => {
                let mut slice: EndpointSlice =
                    serde_json::from_value(doc).map_err(|e| format!("an EndpointSlice: {e}"))?;
                fill_meta(&mut slice.metadata, origin);
                out.push(Resource::Slice(Box::new(slice)));
            }
            _ => {}
        }
    }
    out.reverse();
    Ok(out)
}

fn fill_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, origin: &str) {
    meta.namespace.get_or_insert_with(|| "default".to_owned());
    meta.resource_version
        .get_or_insert_with(|| origin.to_owned());
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(manifest_files(&path)?);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Polls `dir` every `interval`; emits a full relist at start and after every change.
/// The identity of a manifest directory: a digest of its canonical path (stable across
/// restarts; a copy of the directory elsewhere is another cluster).
pub fn identity(dir: &std::path::Path) -> String {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let digest = ksr_proto::subject::fnv1a(canonical.to_string_lossy().as_bytes());
    format!("files:{digest:016x}")
}

pub fn source(dir: PathBuf, interval: Duration) -> impl Stream<Item = SourceEvent> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut files: BTreeMap<PathBuf, FileState> = BTreeMap::new();
        // Nothing is listed until the directory could be read: an unreadable directory must
        // never look like an empty cluster.
        let mut listed = false;
        loop {
            let mut changed = false;
            match manifest_files(&dir) {
                Ok(paths) => {
                    changed |= !listed;
                    listed = true;
                    let before = files.len();
                    files.retain(|p, _| paths.contains(p));
                    changed |= files.len() != before;
                    for path in paths {
                        let meta = std::fs::metadata(&path);
                        let fingerprint = meta
                            .as_ref()
                            .ok()
                            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
                        let state = files.entry(path.clone()).or_default();
                        if state.fingerprint == fingerprint && fingerprint.is_some() {
                            continue;
                        }
                        state.fingerprint = fingerprint;
                        changed = true;
                        let origin = match fingerprint {
                            Some((t, _)) => format!(
                                "file:{}@{}",
                                path.file_name()
                                    .and_then(|n| n.to_str())
                                    .unwrap_or_default(),
                                t.duration_since(SystemTime::UNIX_EPOCH)
                                    .map(|d| d.as_millis())
                                    .unwrap_or(0)
                            ),
                            None => "file".into(),
                        };
                        let parsed = std::fs::read_to_string(&path)
                            .map_err(|e| e.to_string())
                            .and_then(|t| parse_manifests(&t, &origin));
                        match parsed {
                            Ok(objects) => state.objects = objects,
                            Err(e) => {
                                let msg = format!(
                                    "{}: {e} (keeping its last good objects)",
                                    path.display()
                                );
                                if tx.send(SourceEvent::Error(msg)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    let msg = format!("cannot read {}: {e}", dir.display());
                    if tx.send(SourceEvent::Error(msg)).await.is_err() {
                        return;
                    }
                }
            }
            if changed {
                for kind in [Kind::Services, Kind::Slices] {
                    let mut events = vec![SourceEvent::Init(kind)];
                    events.extend(
                        files
                            .values()
                            .flat_map(|f| f.objects.iter())
                            .filter(|o| o.kind() == kind)
                            .map(|o| SourceEvent::InitApply(o.clone())),
                    );
                    events.push(SourceEvent::InitDone(kind));
                    for e in events {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}
