//! Invariants at every instant: follows etcd from revision 1 (and Consul by blocking queries)
//! while a test runs and checks every revision, not only the end state.
//!
//! At every etcd event, vulcand's order: no frontend or server written before its backend, no
//! backend deleted before its frontends and servers. At every etcd revision: every frontend's backend exists and every server's backend
//! exists (vulcand's order: no frontend before its backend, no backend deleted under a
//! frontend or its servers); no two frontends carry one route; no fence goes back to a lower
//! sequence; every server belongs to a Service the test created ([`Registry`]) whose fence,
//! in that same revision, is live and claims that server's hostname (so a deleted Service's
//! servers, once gone, never come back); and no Service's servers go back to an older
//! version after a newer one was visible (the test encodes a Service's version in its port).
//! In Consul, at every index of our node: each entry of ours is well formed and points at
//! the router, the router's own entry never disappears once there, and no fence in KV goes
//! back. Findings name the revision and the keys.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use ksr_proto::ServiceKey;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which Service each address belongs to (filled by the test before it creates the
/// Service; addresses are never reused).
pub type Registry = Arc<Mutex<HashMap<std::net::IpAddr, ServiceKey>>>;

/// A background checker; [`Recorder::finish`] stops it and returns what it found.
#[derive(Debug)]
pub struct Recorder {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    findings: Arc<Mutex<Vec<String>>>,
    /// etcd revisions and Consul indexes checked.
    pub revisions: Arc<AtomicU64>,
    pub indexes: Arc<AtomicU64>,
    /// Revisions that changed vulcand keys without writing any of our records: what
    /// reconciliation (or a stepwise write) does, never the incremental path.
    pub unrecorded: Arc<AtomicU64>,
}

/// What a recorder checked.
#[derive(Debug)]
pub struct Report {
    pub revisions: u64,
    pub indexes: u64,
    pub unrecorded_writes: u64,
    pub findings: Vec<String>,
}

impl Recorder {
    /// Follows etcd at `endpoints` (comma-separated members of one cluster, tried in turn
    /// when the one followed dies; owner `ksr`, prefix `vulcand`) and, when given, Consul's
    /// HTTP port (our node `ksr`, the router at `router`).
    pub fn start(
        endpoints: String,
        consul: Option<(u16, String, u16)>,
        registry: Registry,
    ) -> Self {
        let mut r = Self {
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            findings: Arc::default(),
            revisions: Arc::default(),
            indexes: Arc::default(),
            unrecorded: Arc::default(),
        };
        r.tasks = vec![tokio::spawn(follow_etcd(
            endpoints,
            registry,
            r.findings.clone(),
            r.revisions.clone(),
            r.unrecorded.clone(),
            r.stop.clone(),
        ))];
        if let Some((port, address, router_port)) = consul {
            r.tasks.push(tokio::spawn(follow_consul(
                port,
                (address, router_port),
                r.findings.clone(),
                r.indexes.clone(),
                r.stop.clone(),
            )));
        }
        r
    }

    /// Findings so far.
    pub fn findings(&self) -> Vec<String> {
        self.findings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the recorder has seen etcd's current revision `rev`, then stops it.
    pub async fn finish(mut self, rev: u64) -> Report {
        let _ = crate::eventually(Duration::from_secs(30), || async {
            let seen = self.revisions.load(Ordering::Relaxed);
            anyhow::ensure!(seen >= rev, "recorder at revision {seen}, etcd at {rev}");
            Ok(())
        })
        .await;
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        Report {
            revisions: self.revisions.load(Ordering::Relaxed),
            indexes: self.indexes.load(Ordering::Relaxed),
            unrecorded_writes: self.unrecorded.load(Ordering::Relaxed),
            findings: self.findings(),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn report(findings: &Mutex<Vec<String>>, what: String) {
    let mut f = findings.lock().unwrap_or_else(|p| p.into_inner());
    if f.len() < 50 {
        f.push(what);
    }
}

/// The state the etcd invariants need across revisions.
#[derive(Default)]
struct EtcdInvariants {
    keys: BTreeMap<String, String>,
    /// Highest fence sequence seen per fence key (kept after deletes).
    fences: HashMap<String, u64>,
    /// Highest server port (version) seen per Service.
    versions: HashMap<ServiceKey, u16>,
}

const VULCAND: &str = "vulcand/";
const FENCES: &str = "ksr/ksr/vulcand/services/";

impl EtcdInvariants {
    /// vulcand's order, event by event (etcd delivers a transaction's events in the order of
    /// its operations, and so does vulcand's watch): a frontend or a server is written only
    /// after its backend, and a backend is deleted only after its frontends and servers.
    fn check_order(&self, rev: i64, key: &str, put: Option<&str>, findings: &Mutex<Vec<String>>) {
        let parts: Vec<&str> = key.split('/').collect();
        match (parts.as_slice(), put) {
            (["vulcand", "frontends", id, "frontend"], Some(value)) => {
                let f: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
                let backend = f["BackendId"].as_str().unwrap_or_default();
                if !self
                    .keys
                    .contains_key(&format!("vulcand/backends/{backend}/backend"))
                {
                    report(
                        findings,
                        format!(
                            "revision {rev}: frontend {id} written before its backend {backend}"
                        ),
                    );
                }
            }
            (["vulcand", "backends", id, "servers", _], Some(_))
                if !self
                    .keys
                    .contains_key(&format!("vulcand/backends/{id}/backend")) =>
            {
                report(
                    findings,
                    format!("revision {rev}: server {key} written before its backend"),
                );
            }
            (["vulcand", "backends", id, "backend"], None) => {
                let servers = format!("vulcand/backends/{id}/servers/");
                if self
                    .keys
                    .range(servers.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&servers))
                {
                    report(
                        findings,
                        format!("revision {rev}: backend {id} deleted before its servers"),
                    );
                }
                let pointing = format!(
                    "\"BackendId\":{}",
                    serde_json::to_string(id).unwrap_or_default()
                );
                if self
                    .keys
                    .iter()
                    .any(|(k, v)| k.starts_with("vulcand/frontends/") && v.contains(&pointing))
                {
                    report(
                        findings,
                        format!(
                            "revision {rev}: backend {id} deleted while a frontend points at it"
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    fn put(&mut self, key: String, value: String) {
        self.keys.insert(key, value);
    }

    /// Our vulcand keys are exactly what our host records project, at every revision.
    fn check_projection(&self, rev: i64, findings: &Mutex<Vec<String>>) {
        let layout = ksr_publisher_vulcand::layout::Layout::new("vulcand", "ksr");
        let hosts = layout.hosts_prefix();
        let mut expected = BTreeMap::new();
        for (k, v) in self.keys.range(hosts.clone()..) {
            if !k.starts_with(&hosts) {
                break;
            }
            match serde_json::from_str::<ksr_publisher_vulcand::records::HostRecord>(v) {
                Ok(record) => expected.extend(
                    ksr_publisher_vulcand::keys::project(&layout, &record)
                        .into_iter()
                        .map(|(k, (_, v))| (k, v)),
                ),
                Err(e) => report(
                    findings,
                    format!("revision {rev}: record {k} unreadable: {e}"),
                ),
            }
        }
        let ours = "vulcand/";
        let actual: BTreeMap<&String, &String> = self
            .keys
            .range(ours.to_owned()..)
            .take_while(|(k, _)| k.starts_with(ours))
            .filter(|(k, _)| layout.id_of_vulcand_key(k).is_some())
            .collect();
        for (k, v) in &actual {
            if expected.get(*k) != Some(*v) {
                report(
                    findings,
                    format!(
                        "revision {rev}: key {k} = {v} is not what the records project ({:?})",
                        expected.get(*k)
                    ),
                );
            }
        }
        for (k, v) in &expected {
            if !actual.contains_key(k) {
                report(
                    findings,
                    format!("revision {rev}: key {k} = {v} projected but missing"),
                );
            }
        }
    }

    fn check(&mut self, rev: i64, registry: &Registry, findings: &Mutex<Vec<String>>) {
        self.check_projection(rev, findings);
        let mut routes: HashMap<String, String> = HashMap::new();
        let live_fences: HashMap<String, Option<String>> = self
            .keys
            .range(FENCES.to_owned()..)
            .take_while(|(k, _)| k.starts_with(FENCES))
            .map(|(k, v)| {
                let f: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
                (
                    k[FENCES.len()..].to_owned(),
                    f["claim"].as_str().map(str::to_owned),
                )
            })
            .collect();
        for (key, value) in self.keys.range(VULCAND.to_owned()..) {
            if !key.starts_with(VULCAND) {
                break;
            }
            let parts: Vec<&str> = key.split('/').collect();
            match parts.as_slice() {
                // (A frontend's and a server's backend are checked event by event.)
                ["vulcand", "frontends", id, "frontend"] => {
                    let f: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
                    let route = f["Route"].as_str().unwrap_or_default().to_owned();
                    if let Some(other) = routes.insert(route.clone(), (*id).to_owned()) {
                        report(
                            findings,
                            format!(
                                "revision {rev}: frontends {other} and {id} both carry route {route}"
                            ),
                        );
                    }
                }
                ["vulcand", "backends", id, "servers", _sid] => {
                    let s: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
                    let addr: Option<SocketAddr> = s["URL"]
                        .as_str()
                        .and_then(|u| u.strip_prefix("http://"))
                        .and_then(|a| a.parse().ok());
                    let Some(addr) = addr else {
                        report(
                            findings,
                            format!("revision {rev}: server {key} = {value} is not http://ip:port"),
                        );
                        continue;
                    };
                    let owner = registry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&addr.ip())
                        .cloned();
                    let Some(service) = owner else {
                        report(
                            findings,
                            format!(
                                "revision {rev}: server {key} = {value} belongs to no Service the test created"
                            ),
                        );
                        continue;
                    };
                    let fence =
                        format!("{}/{}/{}", service.cluster, service.namespace, service.name);
                    let host_id = id.rsplit_once('.').map_or(*id, |(h, _)| h);
                    match live_fences.get(&fence) {
                        Some(Some(claim)) if claim == host_id => {}
                        other => report(
                            findings,
                            format!(
                                "revision {rev}: server {key} of {service} while its fence claims {other:?}, not {host_id}"
                            ),
                        ),
                    }
                    let seen = self.versions.entry(service.clone()).or_insert(0);
                    if addr.port() < *seen {
                        report(
                            findings,
                            format!(
                                "revision {rev}: {service} went back to version {} ({key}) after {} was visible",
                                addr.port(),
                                seen
                            ),
                        );
                    }
                    *seen = (*seen).max(addr.port());
                }
                _ => {}
            }
        }
        for (k, v) in self.keys.range(FENCES.to_owned()..) {
            if !k.starts_with(FENCES) {
                break;
            }
            let f: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
            let seq = f["seq"].as_u64().unwrap_or(0);
            let max = self.fences.entry(k.clone()).or_insert(0);
            if seq < *max {
                report(
                    findings,
                    format!("revision {rev}: fence {k} went back from {max} to {seq}"),
                );
            }
            *max = (*max).max(seq);
        }
    }
}

async fn follow_etcd(
    endpoints: String,
    registry: Registry,
    findings: Arc<Mutex<Vec<String>>>,
    revisions: Arc<AtomicU64>,
    unrecorded: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut state = EtcdInvariants::default();
    let mut next: i64 = 1;
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let mut attempt = 0usize;
    while !stop.is_cancelled() {
        // One member at a time, the next one after each failure (a dead member's watch ends).
        let endpoint = endpoints[attempt % endpoints.len()];
        attempt += 1;
        let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(next);
        let Ok(mut stream) = client.watch("", Some(options)).await else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = stream.message() => m,
            };
            let Ok(Some(resp)) = msg else { break };
            if resp.compact_revision() > 0 {
                report(
                    &findings,
                    format!(
                        "etcd compacted to {} before the recorder read it",
                        resp.compact_revision()
                    ),
                );
                return;
            }
            let mut current: Option<i64> = None;
            // What the revision in hand touched: vulcand keys, our records.
            let mut touched = (false, false);
            let end_revision = |c: i64, touched: &mut (bool, bool), state: &mut EtcdInvariants| {
                state.check(c, &registry, &findings);
                revisions.store(c as u64, Ordering::Relaxed);
                if touched.0 && !touched.1 {
                    unrecorded.fetch_add(1, Ordering::Relaxed);
                }
                *touched = (false, false);
            };
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let rev = kv.mod_revision();
                if let Some(c) = current
                    && c != rev
                {
                    end_revision(c, &mut touched, &mut state);
                }
                current = Some(rev);
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                touched.0 |= key.starts_with(VULCAND);
                touched.1 |= key.starts_with("ksr/");
                match event.event_type() {
                    etcd_client::EventType::Put => {
                        let value = String::from_utf8_lossy(kv.value()).into_owned();
                        state.check_order(rev, &key, Some(&value), &findings);
                        state.put(key, value);
                    }
                    etcd_client::EventType::Delete => {
                        state.keys.remove(&key);
                        state.check_order(rev, &key, None, &findings);
                    }
                }
            }
            if let Some(c) = current {
                end_revision(c, &mut touched, &mut state);
                next = c + 1;
            }
        }
    }
}

async fn follow_consul(
    port: u16,
    router: (String, u16),
    findings: Arc<Mutex<Vec<String>>>,
    indexes: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let client = crate::http_client();
    let mut index: u64 = 0;
    let mut router_seen = false;
    let mut fences: HashMap<String, u64> = HashMap::new();
    while !stop.is_cancelled() {
        let node = client
            .get(format!(
                "http://127.0.0.1:{port}/v1/catalog/node/ksr?index={index}&wait=2s&consistent"
            ))
            .send();
        let resp = tokio::select! {
            _ = stop.cancelled() => return,
            r = node => r,
        };
        let Ok(resp) = resp else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        let new_index: u64 = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        // A restarted Consul may answer with a lower index: start over from it. (Reads are
        // `consistent`: in the default mode a just-restarted server answers from its snapshot
        // before it has applied its log.)
        index = new_index;
        indexes.fetch_add(1, Ordering::Relaxed);
        let services = body["Services"].as_object().cloned().unwrap_or_default();
        let mut router_now = false;
        for (id, s) in &services {
            let (address, port_) = (
                s["Address"].as_str().unwrap_or_default(),
                s["Port"].as_u64().unwrap_or(0),
            );
            if address != router.0 || port_ != u64::from(router.1) {
                report(
                    &findings,
                    format!(
                        "consul index {index}: {id} points at {address}:{port_}, not the router"
                    ),
                );
            }
            if let Some(env) = id.strip_prefix("vulcan.") {
                router_now = true;
                if s["Service"] != "vulcan" || s["Tags"] != serde_json::json!([env]) {
                    report(
                        &findings,
                        format!("consul index {index}: router entry {id} is {s}"),
                    );
                }
                continue;
            }
            let Some((tag, env)) = id.split_once('.') else {
                report(
                    &findings,
                    format!("consul index {index}: entry {id} is not <tag>.<env>"),
                );
                continue;
            };
            let ns = s["Meta"]["ksr-namespace"].as_str().unwrap_or_default();
            if s["Service"] != env
                || s["Tags"] != serde_json::json!([tag])
                || !tag.ends_with(&format!("-{ns}"))
                || s["Meta"]["ksr-owner"] != "ksr"
            {
                report(
                    &findings,
                    format!("consul index {index}: entry {id} is {s}"),
                );
            }
        }
        if router_seen && !router_now {
            report(
                &findings,
                format!("consul index {index}: the router's entry disappeared"),
            );
        }
        router_seen |= router_now;
        // Fences (read right after; they only ever grow, so any order of reads is fine).
        if let Ok(resp) = client
            .get(format!(
                "http://127.0.0.1:{port}/v1/kv/ksr/ksr/consul/services/?recurse=true&consistent"
            ))
            .send()
            .await
            && let Ok(entries) = resp.json::<serde_json::Value>().await
        {
            for e in entries.as_array().into_iter().flatten() {
                let key = e["Key"].as_str().unwrap_or_default().to_owned();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(e["Value"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                let f: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let seq = f["seq"].as_u64().unwrap_or(0);
                let max = fences.entry(key.clone()).or_insert(0);
                if seq < *max {
                    report(
                        &findings,
                        format!("consul index {index}: fence {key} went back from {max} to {seq}"),
                    );
                }
                *max = (*max).max(seq);
            }
        }
    }
}
