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
struct Store<T> {
    live: BTreeMap<ObjKey, T>,
    pending: Option<BTreeMap<ObjKey, T>>,
    synced: bool,
}

/// Services and EndpointSlices, filtered by namespace.
#[derive(Debug)]
pub struct Inventory {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
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
            services: Store::default(),
            slices: Store {
                synced: !watch_slices,
                ..Store::default()
            },
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
        self.services.live.get(key)
    }

    /// The EndpointSlices of a Service.
    pub fn slices_of(&self, key: &ObjKey) -> Vec<&EndpointSlice> {
        self.slices
            .live
            .values()
            .filter(|s| slice_owner(s).as_ref() == Some(key))
            .collect()
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
                        .insert(k, *s);
                }
            }
            SourceEvent::InitApply(Resource::Slice(s)) => {
                let k = key_of(&s.metadata);
                if self.allowed(&k.0) {
                    self.slices
                        .pending
                        .get_or_insert_with(BTreeMap::new)
                        .insert(k, *s);
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
                out.dirty
                    .extend(self.slices.live.values().filter_map(slice_owner));
                out.dirty.extend(fresh.values().filter_map(slice_owner));
                self.slices.live = fresh;
                self.slices.synced = true;
                out.resynced = true;
            }
            SourceEvent::Apply(Resource::Service(s)) => {
                let k = key_of(&s.metadata);
                if self.allowed(&k.0) {
                    out.dirty.insert(k.clone());
                    self.services.live.insert(k, *s);
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
                    if let Some(old) = self.slices.live.get(&k).and_then(slice_owner) {
                        out.dirty.insert(old);
                    }
                    out.dirty.extend(slice_owner(&s));
                    self.slices.live.insert(k, *s);
                }
            }
            SourceEvent::Delete(Resource::Slice(s)) => {
                let k = key_of(&s.metadata);
                if let Some(old) = self.slices.live.remove(&k) {
                    out.dirty.extend(slice_owner(&old));
                }
            }
            SourceEvent::Error(_) => {}
        }
        out
    }
}
