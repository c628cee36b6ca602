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
        path: ksr_proto::RoutePath::new(path).expect("test paths are valid"),
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
        full_host: None,
        scheme: Default::default(),
        tls_skip_verify: false,
        consul_tags: Vec::new(),
        consul_meta: Default::default(),
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
    // The version the envelope says (raw payloads may not carry a valid one: say 1).
    let version = codec::peek_version(&payload).unwrap_or(1);
    headers.insert(subject::HEADER_SCHEMA, version.to_string().as_str());
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

/// A deterministic history as a watcher would publish it: `n` events over `services`
/// Services in two clusters, with fan-in (same namespace/name in both clusters), conflicts
/// (a few shared host labels), updates, moves and removals. `host_since`/`route_since` are
/// stamped from each subject's previous event, as the watcher does; returns (seq, event).
pub async fn publish_history(
    js: &jetstream::Context,
    n: usize,
    services: usize,
) -> anyhow::Result<Vec<(u64, Event)>> {
    use std::collections::HashMap;

    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut last: HashMap<ServiceKey, (u64, Option<RouteState>)> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = next(services as u64);
        let cluster = if next(2) == 0 { "east" } else { "west" };
        let namespace = format!("ns{}", s % 7);
        let name = format!("svc{s}");
        let key = ServiceKey::new(cluster, &namespace, &name);
        let prev = last.get(&key).cloned();
        let change = if next(6) == 0 {
            Change::Removed
        } else {
            // Mostly the Service's own label; sometimes a label shared with others (conflict).
            let label = if next(10) == 0 {
                format!("shared{}-x", next(3))
            } else {
                format!("{name}-{namespace}")
            };
            let path = if next(4) == 0 { "/api/.*" } else { "/.*" };
            let ips: Vec<String> = (0..1 + next(3))
                .map(|_| format!("10.{}.{}.{}", s % 200, next(4), 1 + next(250)))
                .collect();
            let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            let mut r = route(&label, "test", path, &ip_refs);
            let prev_route = prev
                .as_ref()
                .and_then(|(seq, r)| r.as_ref().map(|r| (r, *seq)));
            r.continue_claims(prev_route);
            if prev_route.is_some() {
                Change::Updated(r)
            } else {
                Change::Added(r)
            }
        };
        if matches!(change, Change::Removed) && prev.as_ref().is_none_or(|(_, r)| r.is_none()) {
            continue;
        }
        let e = event(cluster, &namespace, &name, change);
        let seq = publish(js, &e).await?;
        last.insert(key, (seq, e.route().cloned()));
        out.push((seq, e));
    }
    Ok(out)
}

/// Waits (up to 60 s) until the durable consumer `durable` of `KSR_ROUTES` has delivered and
/// seen acknowledged every message.
pub async fn wait_consumer_settled(js: &jetstream::Context, durable: &str) -> anyhow::Result<()> {
    crate::eventually(std::time::Duration::from_secs(60), || async {
        let stream = js.get_stream("KSR_ROUTES").await?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(durable)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let info = consumer.info().await?;
        anyhow::ensure!(
            info.num_pending == 0 && info.num_ack_pending == 0,
            "consumer {durable} not caught up: {} pending, {} unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        Ok(())
    })
    .await
}

/// Every decodable event of stream `KSR_ROUTES`, as (stream sequence, event).
pub async fn stream_events(js: &jetstream::Context) -> anyhow::Result<Vec<(u64, Event)>> {
    let stream = js.get_stream("KSR_ROUTES").await?;
    Ok(ksr_runtime::replay::all_events(&stream, "ksr.routes.>")
        .await?
        .into_iter()
        .filter_map(|l| Some((l.seq, l.event.ok()?)))
        .collect())
}
