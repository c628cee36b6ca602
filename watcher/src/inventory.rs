//! The watcher's view of the source: Services and EndpointSlices, with relist buffering.
//!
//! A relist (start-up, or after 410 Gone) arrives as `Init`, `InitApply`…, `InitDone`. Objects
//! are buffered until `InitDone` and only then replace the view, so a list that fails half-way
//! changes nothing (and in particular removes nothing). Until both kinds have completed their
//! first list, the view is not `synced` and nothing is published.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::normalize::SERVICE_NAME_LABEL;

/// A Service's namespace and name.
pub type ObjKey = (String, String);

/// Which watched kind an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Services,
    Slices,
}

/// An object from a source.
#[derive(Debug, Clone)]
pub enum Resource {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Services,
            Resource::Slice(_) => Kind::Slices,
        }
    }
}

/// What a source reports (the shape of kube-runtime's watcher events).
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A full list of `Kind` begins.
    Init(Kind),
    /// An object of the list in progress.
    InitApply(Resource),
    /// The list of `Kind` is complete.
    InitDone(Kind),
    /// An object was created or changed.
    Apply(Resource),
    /// An object was deleted.
    Delete(Resource),
    /// The source hit an error and retries (watch restarts, failed lists).
    Error(String),
}

/// What an applied event changed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Services whose desired state may have changed.
    pub dirty: BTreeSet<ObjKey>,
    /// A full list completed: every Service (and every subject we know) must be diffed.
    pub resynced: bool,
}

#[derive(Debug, Default)]
struct Objects<T> {
    /// Boxed: a map node holds a pointer per slot, not a whole object per (possibly empty)
    /// slot (a Service is 824 bytes before its strings).
    live: BTreeMap<ObjKey, Box<T>>,
    pending: Option<BTreeMap<ObjKey, Box<T>>>,
    synced: bool,
}

/// Services and EndpointSlices, filtered by namespace.
#[derive(Debug)]
pub struct Inventory {
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    /// The slices of each Service (so a Service's slices are found without a scan).
    slices_by_owner: BTreeMap<ObjKey, BTreeSet<ObjKey>>,
    namespaces: Vec<String>,
    excluded: Vec<String>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Service an EndpointSlice belongs to.
fn slice_owner(slice: &EndpointSlice) -> Option<ObjKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service.clone(),
    ))
}

impl Inventory {
    /// `watch_slices`: whether EndpointSlices are watched (else they count as synced).
    pub fn new(watch_slices: bool, namespaces: Vec<String>, excluded: Vec<String>) -> Self {
        Self {
            services: Objects::default(),
            slices: Objects {
                synced: !watch_slices,
                ..Objects::default()
            },
            slices_by_owner: BTreeMap::new(),
            namespaces,
            excluded,
        }
    }

    /// Both kinds have completed a full list.
    pub fn synced(&self) -> bool {
        self.services.synced && self.slices.synced
    }

    fn allowed(&self, namespace: &str) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && !self.excluded.iter().any(|n| n == namespace)
    }

    /// Every Service in the view.
    pub fn service_keys(&self) -> impl Iterator<Item = &ObjKey> {
        self.services.live.keys()
    }

    pub fn service(&self, key: &ObjKey) -> Option<&Service> {
        self.services.live.get(key).map(|s| &**s)
    }

    /// The EndpointSlices of a Service.
    pub fn slices_of(&self, key: &ObjKey) -> Vec<&EndpointSlice> {
        self.slices_by_owner
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.live.get(k).map(|s| &**s))
            .collect()
    }

    /// Puts (or, for `None`, removes) slice `key`, keeping the owner index; returns the owners
    /// whose slices changed.
    fn set_slice(&mut self, key: ObjKey, slice: Option<Box<EndpointSlice>>) -> Vec<ObjKey> {
        let mut owners = Vec::new();
        let old = match slice {
            Some(s) => {
                if let Some(owner) = slice_owner(&s) {
                    self.slices_by_owner
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.clone());
                    owners.push(owner);
                }
                self.slices.live.insert(key.clone(), s)
            }
            None => self.slices.live.remove(&key),
        };
        if let Some(old_owner) = old.as_ref().and_then(|s| slice_owner(s)) {
            let still = self
                .slices
                .live
                .get(&key)
                .and_then(|s| slice_owner(s))
                .as_ref()
                == Some(&old_owner);
            if !still && let Some(set) = self.slices_by_owner.get_mut(&old_owner) {
                set.remove(&key);
                if set.is_empty() {
                    self.slices_by_owner.remove(&old_owner);
                }
            }
            owners.push(old_owner);
        }
        owners
    }

    /// Applies one source event.
    pub fn apply(&mut self, event: SourceEvent) -> Outcome {
        let mut out = Outcome::default();
        match event {
            SourceEvent::Init(Kind::Services) => self.services.pending = Some(BTreeMap::new()),
            SourceEvent::Init(Kind::Slices) => self.slices.pending = Some(BTreeMap::new()),
            SourceEvent::InitApply(Resource::Service(s)) => {
                let k = key_of(&s.metadata);
                if self.allowed(&k.0) {
                    self.services
                        .pending
                        .get_or_insert_with(BTreeMap::new)
                        .insert(k, s);
                }
            }
            SourceEvent::InitApply(Resource::Slice(s)) => {
                let k = key_of(&s.metadata);
                if self.allowed(&k.0) {
                    self.slices
                        .pending
                        .get_or_insert_with(BTreeMap::new)
                        .insert(k, s);
                }
            }
            SourceEvent::InitDone(Kind::Services) => {
                let fresh = self.services.pending.take().unwrap_or_default();
                out.dirty.extend(self.services.live.keys().cloned());
                out.dirty.extend(fresh.keys().cloned());
                self.services.live = fresh;
                self.services.synced = true;
                out.resynced = true;
            }
            SourceEvent::InitDone(Kind::Slices) => {
                let fresh = self.slices.pending.take().unwrap_or_default();
                out.dirty.extend(self.slices_by_owner.keys().cloned());
                self.slices_by_owner.clear();
                for (k, s) in &fresh {
                    if let Some(owner) = slice_owner(s) {
                        out.dirty.insert(owner.clone());
                        self.slices_by_owner
                            .entry(owner)
                            .or_default()
                            .insert(k.clone());
                    }
                }
                self.slices.live = fresh;
                self.slices.synced = true;
                out.resynced = true;
            }
            SourceEvent::Apply(Resource::Service(s)) => {
                let k = key_of(&s.metadata);
                if self.allowed(&k.0) {
                    out.dirty.insert(k.clone());
                    self.services.live.insert(k, s);
                }
            }
            SourceEvent::Delete(Resource::Service(s)) => {
                let k = key_of(&s.metadata);
                if self.services.live.remove(&k).is_some() {
                    out.dirty.insert(k);
                }
            }
            SourceEvent::Apply(Resource::Slice(s)) => {
                let k = key_of(&s.metadata);
                if self.allowed(&k.0) {
                    out.dirty.extend(self.set_slice(k, Some(s)));
                }
            }
            SourceEvent::Delete(Resource::Slice(s)) => {
                let k = key_of(&s.metadata);
                out.dirty.extend(self.set_slice(k, None));
            }
            SourceEvent::Error(_) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, service: &str) -> Resource {
        let mut s = EndpointSlice::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into());
        Resource::Slice(Box::new(s))
    }

    fn owner(service: &str) -> ObjKey {
        ("ns".into(), service.into())
    }

    #[test]
    fn slices_are_found_through_their_owner_and_follow_moves_deletes_and_relists() {
        let mut inv = Inventory::new(true, vec![], vec![]);
        inv.apply(SourceEvent::Init(Kind::Slices));
        inv.apply(SourceEvent::InitApply(slice("a-1", "a")));
        inv.apply(SourceEvent::InitApply(slice("a-2", "a")));
        let out = inv.apply(SourceEvent::InitDone(Kind::Slices));
        assert!(out.dirty.contains(&owner("a")));
        assert_eq!(inv.slices_of(&owner("a")).len(), 2);

        // A slice relabelled to another Service moves; both Services are dirty.
        let out = inv.apply(SourceEvent::Apply(slice("a-2", "b")));
        assert!(out.dirty.contains(&owner("a")) && out.dirty.contains(&owner("b")));
        assert_eq!(
            (
                inv.slices_of(&owner("a")).len(),
                inv.slices_of(&owner("b")).len()
            ),
            (1, 1)
        );

        let out = inv.apply(SourceEvent::Delete(slice("a-1", "a")));
        assert!(out.dirty.contains(&owner("a")));
        assert!(inv.slices_of(&owner("a")).is_empty());

        // A relist replaces the index: b's slice is gone, c's is new, both dirty.
        inv.apply(SourceEvent::Init(Kind::Slices));
        inv.apply(SourceEvent::InitApply(slice("c-1", "c")));
        let out = inv.apply(SourceEvent::InitDone(Kind::Slices));
        assert!(out.dirty.contains(&owner("b")) && out.dirty.contains(&owner("c")));
        assert!(inv.slices_of(&owner("b")).is_empty());
        assert_eq!(inv.slices_of(&owner("c")).len(), 1);
    }
}
