//! Building and publishing route events in tests, the way the watcher publishes them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage as Publish};

use ksr_proto::{Backend, Change, Event, RouteState, ServiceKey, codec, subject};

/// A route for `<label>.<env>.service.consul` + `path` with ready backends on port 80.
pub fn route(label: &str, env: &str, path: &str, ips: &[&str]) -> RouteState {
    let mut r = RouteState {
        label: label.to_owned(),
        environment: env.to_owned(),
        domain: "service.consul".to_owned(),
        path: path.to_owned(),
        ports: vec![],
        backends: ips
            .iter()
            .map(|ip| Backend {
                ip: ip.parse::<IpAddr>().expect("test IPs are valid"),
                port: 80,
                ready: true,
            })
            .collect(),
        host_since: 0,
        route_since: 0,
    };
    r.normalize();
    r
}

/// An event for `cluster/namespace/name`.
pub fn event(cluster: &str, namespace: &str, name: &str, change: Change) -> Event {
    Event {
        key: ServiceKey::new(cluster, namespace, name),
        change,
        resource_version: "1".into(),
        observed_unix_ms: 1_764_230_400_000,
        observer: "test".into(),
        manager: None,
    }
}

/// `Added` of the default route of `name` in `namespace` (`<name>-<namespace>`, path `/.*`).
pub fn added(cluster: &str, namespace: &str, name: &str, ips: &[&str]) -> Event {
    let r = route(&format!("{name}-{namespace}"), "test", "/.*", ips);
    event(cluster, namespace, name, Change::Added(r))
}

/// `Removed` of `cluster/namespace/name`.
pub fn removed(cluster: &str, namespace: &str, name: &str) -> Event {
    event(cluster, namespace, name, Change::Removed)
}

static MSG_IDS: AtomicU64 = AtomicU64::new(0);

/// Publishes `event` on its subject with the contract's headers; returns its stream sequence.
pub async fn publish(js: &jetstream::Context, event: &Event) -> anyhow::Result<u64> {
    let payload = codec::encode(event)?;
    publish_raw(
        js,
        &subject::subject(&event.key),
        event.kind().as_str(),
        &event.key.cluster,
        payload,
    )
    .await
}

/// Publishes arbitrary bytes on `subject` (for poison-message tests).
pub async fn publish_raw(
    js: &jetstream::Context,
    subject_name: &str,
    kind: &str,
    cluster: &str,
    payload: Vec<u8>,
) -> anyhow::Result<u64> {
    let mut headers = HeaderMap::new();
    headers.insert(
        subject::HEADER_SCHEMA,
        codec::SCHEMA_VERSION.to_string().as_str(),
    );
    headers.insert(subject::HEADER_KIND, kind);
    headers.insert(subject::HEADER_CLUSTER, cluster);
    let id = format!(
        "test-{}-{}",
        std::process::id(),
        MSG_IDS.fetch_add(1, Ordering::Relaxed)
    );
    let ack = js
        .send_publish(
            subject_name.to_owned(),
            Publish::build()
                .payload(payload.into())
                .headers(headers)
                .message_id(id),
        )
        .await?
        .await?;
    Ok(ack.sequence)
}
