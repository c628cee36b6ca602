//! A fake Kubernetes apiserver speaking the real list/watch protocol, for the watcher's tests.
//!
//! Serves `GET /api/v1/services` and `GET /apis/discovery.k8s.io/v1/endpointslices` (all
//! namespaces) from an in-memory store the test edits:
//! - list: `labelSelector` (`k=v`, `k!=v`, `k`, `!k`, comma-joined), `limit` + `continue`
//!   pages, `metadata.resourceVersion` on the list; an expired continue token answers 410;
//! - watch (`watch=true&resourceVersion=RV`): newline-delimited JSON `{"type","object"}`
//!   events after RV — ADDED, MODIFIED, DELETED (also when an object stops matching the
//!   selector), BOOKMARK (when `allowWatchBookmarks`), and for a compacted RV a 200 stream
//!   with one `ERROR` event carrying a 410 `Status`, as the real apiserver does; the stream
//!   ends after `timeoutSeconds`;
//! - faults: [`FakeApiServer::drop_watches`] ends every open watch, [`FakeApiServer::compact`]
//!   makes every older resourceVersion too old, [`FakeApiServer::fail_lists`] answers the next
//!   lists with an error status (and `Retry-After`), [`FakeApiServer::hang_watches`] makes the
//!   next watches accept the request and then send nothing, ever (no bookmarks either).
//! - Events (events.k8s.io/v1): `POST …/namespaces/{ns}/events` creates one (409 if the name
//!   exists), `PATCH …/events/{name}` merges a JSON merge patch into it (404 if missing);
//!   [`FakeApiServer::events`] and [`FakeApiServer::event_writes`] show what was recorded.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ksr_proto::selector::LabelSelector;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// The resources the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
}

impl Resource {
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Resource::Services => ("v1", "ServiceList"),
            Resource::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
        }
    }

    fn kind(self) -> (&'static str, &'static str) {
        match self {
            Resource::Services => ("v1", "Service"),
            Resource::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSlice"),
        }
    }
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: Resource,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<Change>,
    fail_lists: Vec<(u16, Option<u64>)>,
    lists: HashMap<Resource, usize>,
    watches: HashMap<Resource, usize>,
    last_list: Option<std::time::Instant>,
    hang_watches: usize,
    /// The UID of this cluster's `kube-system` namespace (its identity to the watcher).
    cluster_uid: String,
    namespace_gets: usize,
    /// Events by (namespace, name), and how many creates and patches were made.
    events: BTreeMap<(String, String), Value>,
    event_writes: (usize, usize),
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changed: broadcast::Sender<()>,
    dropped: broadcast::Sender<()>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake apiserver on a free loopback port; stops on drop.
#[derive(Debug)]
pub struct FakeApiServer {
    url: String,
    store: Arc<Mutex<Store>>,
    changed: broadcast::Sender<()>,
    dropped: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// A cluster of its own: a `kube-system` UID no other fake apiserver has.
    pub async fn start() -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::start_with_uid(&format!(
            "{:08x}-0000-4000-8000-{n:012x}",
            std::process::id()
        ))
        .await
    }

    /// Another apiserver of the cluster whose `kube-system` namespace has `uid` (a restore, a
    /// replacement control plane).
    pub async fn start_with_uid(uid: &str) -> anyhow::Result<Self> {
        let store = Store {
            cluster_uid: uid.to_owned(),
            ..Store::default()
        };
        let shared = Shared {
            store: Arc::new(Mutex::new(store)),
            changed: broadcast::channel(1024).0,
            dropped: broadcast::channel(16).0,
        };
        let app = Router::new()
            .route("/api/v1/services", get(services))
            .route("/apis/discovery.k8s.io/v1/endpointslices", get(slices))
            .route("/api/v1/namespaces/kube-system", get(kube_system))
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                axum::routing::post(create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                axum::routing::patch(patch_event),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            store: shared.store,
            changed: shared.changed,
            dropped: shared.dropped,
            task,
        })
    }

    /// The UID of the `kube-system` namespace this apiserver serves.
    pub fn cluster_uid(&self) -> String {
        self.lock().cluster_uid.clone()
    }

    /// Every Event recorded, as stored (after patches).
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.values().cloned().collect()
    }

    /// How many Events were created and how many patched.
    pub fn event_writes(&self) -> (usize, usize) {
        self.lock().event_writes
    }

    /// How many times the `kube-system` namespace was read.
    pub fn namespace_gets(&self) -> usize {
        self.lock().namespace_gets
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (namespace and name from its metadata); returns its new
    /// resourceVersion.
    pub fn apply(&self, resource: Resource, mut object: Value) -> u64 {
        let rv = {
            let mut s = self.lock();
            s.rv += 1;
            let rv = s.rv;
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (api_version, kind) = resource.kind();
            object["apiVersion"] = json!(api_version);
            object["kind"] = json!(kind);
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            if object["metadata"]["uid"].is_null() {
                object["metadata"]["uid"] = json!(format!("uid-{ns}-{name}-{rv}"));
            }
            let old = s.objects.insert((resource, ns, name), object.clone());
            s.history.push(Change {
                rv,
                resource,
                old,
                new: Some(object),
            });
            rv
        };
        let _ = self.changed.send(());
        rv
    }

    /// Deletes an object; returns false if it did not exist.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        {
            let mut s = self.lock();
            let Some(mut old) =
                s.objects
                    .remove(&(resource, namespace.to_owned(), name.to_owned()))
            else {
                return false;
            };
            s.rv += 1;
            let rv = s.rv;
            old["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.history.push(Change {
                rv,
                resource,
                old: Some(old),
                new: None,
            });
        }
        let _ = self.changed.send(());
        true
    }

    /// Ends every open watch (the client re-watches from its last resourceVersion).
    pub fn drop_watches(&self) {
        let _ = self.dropped.send(());
    }

    /// Forgets history: every resourceVersion older than now is "too old" (410 Gone).
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted = s.rv;
        s.history.clear();
    }

    /// The next `n` watch requests hang: headers, then silence until the client gives up.
    pub fn hang_watches(&self, n: usize) {
        self.lock().hang_watches += n;
    }

    /// The next `n` list requests fail with `status` (and `Retry-After: secs` if given).
    pub fn fail_lists(&self, n: usize, status: u16, retry_after: Option<u64>) {
        let mut s = self.lock();
        s.fail_lists
            .extend(std::iter::repeat_n((status, retry_after), n));
    }

    /// When the last list page was served.
    pub fn last_list_at(&self) -> Option<std::time::Instant> {
        self.lock().last_list
    }

    /// How many list requests (pages included) and watch requests `resource` has served.
    pub fn requests(&self, resource: Resource) -> (usize, usize) {
        let s = self.lock();
        (
            s.lists.get(&resource).copied().unwrap_or(0),
            s.watches.get(&resource).copied().unwrap_or(0),
        )
    }
}

/// Whether `object`'s labels match `selector` (parsed as the apiserver parses it).
fn matches(selector: &LabelSelector, object: &Value) -> bool {
    let labels: BTreeMap<String, String> = object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    selector.matches(&labels)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `POST /apis/events.k8s.io/v1/namespaces/{ns}/events`.
async fn create_event(
    State(s): State<Shared>,
    axum::extract::Path(ns): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not JSON"),
        );
    };
    let name = event["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut store = s.lock();
    if name.is_empty() || store.events.contains_key(&(ns.clone(), name.clone())) {
        return json_response(
            StatusCode::CONFLICT,
            &status(409, "AlreadyExists", "no name, or the name exists"),
        );
    }
    store.rv += 1;
    event["metadata"]["resourceVersion"] = json!(store.rv.to_string());
    event["metadata"]["namespace"] = json!(ns.clone());
    store.event_writes.0 += 1;
    store.events.insert((ns, name), event.clone());
    json_response(StatusCode::CREATED, &event)
}

/// `PATCH /apis/events.k8s.io/v1/namespaces/{ns}/events/{name}` (JSON merge patch).
async fn patch_event(
    State(s): State<Shared>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not JSON"),
        );
    };
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }
    let mut store = s.lock();
    store.rv += 1;
    let rv = store.rv;
    let Some(event) = store.events.get_mut(&(ns, name)) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "no such event"),
        );
    };
    merge(event, &patch);
    event["metadata"]["resourceVersion"] = json!(rv.to_string());
    let event = event.clone();
    store.event_writes.1 += 1;
    json_response(StatusCode::OK, &event)
}

/// `GET /api/v1/namespaces/kube-system`: the namespace whose UID identifies the cluster.
async fn kube_system(State(s): State<Shared>) -> Response {
    let uid = {
        let mut store = s.lock();
        store.namespace_gets += 1;
        store.cluster_uid.clone()
    };
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "kube-system", "uid": uid, "resourceVersion": "1"}}),
    )
}

async fn services(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    handle(s, Resource::Services, q).await
}

async fn slices(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    handle(s, Resource::EndpointSlices, q).await
}

async fn handle(s: Shared, resource: Resource, q: HashMap<String, String>) -> Response {
    let text = q.get("labelSelector").cloned().unwrap_or_default();
    // The apiserver answers 400 BadRequest to a selector it cannot parse.
    let selector: LabelSelector = match text.parse() {
        Ok(sel) => sel,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &status(400, "BadRequest", &e.to_string()),
            );
        }
    };
    if q.get("watch").map(String::as_str) == Some("true") {
        return watch(s, resource, selector, &q);
    }
    list(&s, resource, &selector, &q)
}

fn list(
    s: &Shared,
    resource: Resource,
    selector: &LabelSelector,
    q: &HashMap<String, String>,
) -> Response {
    let mut store = s.lock();
    *store.lists.entry(resource).or_default() += 1;
    if !store.fail_lists.is_empty() {
        let (code, retry_after) = store.fail_lists.remove(0);
        let code_status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(
            code_status,
            &status(code, "InternalError", "injected failure"),
        );
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let (list_rv, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.split(':');
            let rv: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let off: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if rv < store.compacted {
                return json_response(
                    StatusCode::GONE,
                    &status(410, "Expired", "the continue token is too old"),
                );
            }
            (rv, off)
        }
        None => (store.rv, 0),
    };
    // Objects as of the list's resourceVersion: current objects not newer than it (this fake
    // serves pages from the live store, which is what tests need: edits between pages are
    // rare and then only add newer objects that the watch delivers).
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, _, _), o)| *r == resource && matches(selector, o))
        .filter(|(_, o)| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                <= list_rv
        })
        .map(|(_, o)| o.clone())
        .collect();
    let page: Vec<Value> = items.iter().skip(offset).take(limit).cloned().collect();
    let next = offset + page.len();
    let cont = if next < items.len() {
        format!("{list_rv}:{next}")
    } else {
        String::new()
    };
    store.last_list = Some(std::time::Instant::now());
    let (api_version, kind) = resource.list_kind();
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"resourceVersion": list_rv.to_string(), "continue": cont},
            "items": page,
        }),
    )
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn line(value: &Value) -> Result<Bytes, Infallible> {
    let mut text = value.to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

fn watch(
    s: Shared,
    resource: Resource,
    selector: LabelSelector,
    q: &HashMap<String, String>,
) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290),
    );
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    {
        let mut store = s.lock();
        *store.watches.entry(resource).or_default() += 1;
        if store.hang_watches > 0 {
            store.hang_watches -= 1;
            // Keep the sender alive forever in a task: the body never ends, never speaks.
            tokio::spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
            return body(rx);
        }
        if from < store.compacted {
            let gone = json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({})", store.compacted))});
            let _ = tx.try_send(line(&gone));
            drop(tx);
            return body(rx);
        }
    }
    let mut changed = s.changed.subscribe();
    let mut dropped = s.dropped.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sent = from;
        let mut bookmark = tokio::time::interval(Duration::from_millis(300));
        loop {
            let events: Vec<Value> = {
                let store = s.lock();
                let pending: Vec<Value> = store
                    .history
                    .iter()
                    .filter(|c| c.resource == resource && c.rv > sent)
                    .filter_map(|c| {
                        let was = c.old.as_ref().is_some_and(|o| matches(&selector, o));
                        let is = c.new.as_ref().is_some_and(|o| matches(&selector, o));
                        match (&c.new, was, is) {
                            (Some(o), false, true) => Some(json!({"type": "ADDED", "object": o})),
                            (Some(o), true, true) => Some(json!({"type": "MODIFIED", "object": o})),
                            (Some(o), true, false) => Some(json!({"type": "DELETED", "object": o})),
                            (None, true, _) => c
                                .old
                                .as_ref()
                                .map(|o| json!({"type": "DELETED", "object": o})),
                            _ => None,
                        }
                    })
                    .collect();
                sent = sent.max(store.rv);
                pending
            };
            for e in events {
                if tx.send(line(&e)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = changed.recv() => {}
                _ = dropped.recv() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = bookmark.tick(), if bookmarks => {
                    let (api_version, kind) = resource.kind();
                    let b = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                                   "metadata": {"resourceVersion": sent.to_string()}}});
                    if tx.send(line(&b)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    body(rx)
}

fn body(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
