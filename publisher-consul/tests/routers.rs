//! Several edge routers against a real Consul: every name is one instance per router, each
//! router's node carries a health check the publisher keeps current from the router's health
//! URL, and Consul DNS answers only with the routers that are up.

mod common;

use std::net::Ipv4Addr;

use common::{Bench, HealthEndpoint, WAIT, two_endpoints};
use ksr_test_support::dns;
use ksr_test_support::events::{added, removed};
use ksr_test_support::{eventually, replica::sample};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const NAME: &str = "web-shop.test.service.consul";

async fn answers(bench: &Bench, want: &[Ipv4Addr]) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        let a = bench.resolve(NAME).await?;
        let mut got = a.addrs.clone();
        got.sort();
        if want.is_empty() {
            anyhow::ensure!(a.rcode == dns::NXDOMAIN || got.is_empty(), "{a:?}");
        } else {
            anyhow::ensure!(
                a.rcode == dns::NOERROR && got == want,
                "want {want:?}: {a:?}"
            );
        }
        Ok(())
    })
    .await
}

/// Our check on `node`: (status, output).
async fn check(bench: &Bench, node: &str) -> anyhow::Result<Option<(String, String)>> {
    let checks = bench
        .consul
        .get_json(&format!("/v1/health/node/{node}"))
        .await?;
    Ok(checks.as_array().and_then(|a| {
        a.iter()
            .find(|c| c["CheckID"] == "ksr-router-health")
            .map(|c| {
                (
                    c["Status"].as_str().unwrap_or_default().to_owned(),
                    c["Output"].as_str().unwrap_or_default().to_owned(),
                )
            })
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_only_the_routers_that_are_up() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let (port, endpoint_a, endpoint_b) = two_endpoints(A, B).await?;
    let url = format!("http://{{address}}:{port}/v2/status");
    let publisher = bench.publisher_for(
        &format!("{A},{B}"),
        &[
            "--router-health-url",
            &url,
            "--router-health-interval",
            "100ms",
            "--router-health-failures",
            "2",
        ],
    );
    publisher.ready().await?;
    bench
        .publish(&added("east", "shop", "web", &["10.1.0.1"]))
        .await?;

    // Each router's node holds the name at its router's address, and both answer.
    answers(&bench, &[A, B]).await?;
    let second = format!("ksr-{}", B.to_string().replace('.', "-"));
    for (node, address) in [("ksr", A), (second.as_str(), B)] {
        let listing = bench
            .consul
            .get_json(&format!("/v1/catalog/node/{node}"))
            .await?;
        let entry = &listing["Services"]["web-shop.test"];
        assert_eq!(entry["Service"], "test", "{node}: {listing}");
        assert_eq!(entry["Address"], address.to_string(), "{node}: {listing}");
        assert_eq!(entry["Port"], 80, "{node}");
        assert_eq!(entry["Tags"], serde_json::json!(["web-shop"]), "{node}");
        assert_eq!(entry["Meta"]["ksr-namespace"], "shop", "{node}");
        let router = &listing["Services"]["vulcan.test"];
        assert_eq!(router["Address"], address.to_string(), "{node}: {listing}");
        assert_eq!(
            listing["Node"]["Meta"]["ksr-node"], "ksr",
            "{node}: {listing}"
        );
        eventually(WAIT, || async {
            let c = check(&bench, node).await?;
            anyhow::ensure!(
                c.as_ref().is_some_and(|c| c.0 == "passing"),
                "{node}: {c:?}"
            );
            Ok(())
        })
        .await?;
    }
    let vulcan = dns::query_a(bench.consul.dns_port(), "vulcan.service.consul").await?;
    assert_eq!(vulcan.addrs.len(), 2, "each router's own entry: {vulcan:?}");

    // Router B goes down: only A is answered, B's check says why.
    drop(endpoint_b);
    answers(&bench, &[A]).await?;
    let (status, output) = check(&bench, &second).await?.expect("B's check");
    assert_eq!(status, "critical");
    assert!(output.contains("failed 2 times in a row"), "{output}");
    let metrics = publisher.metrics().await;
    assert_eq!(
        sample(&metrics, &format!("ksr_consul_router_up{{router=\"{B}\"}}")),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &format!("ksr_consul_router_up{{router=\"{A}\"}}")),
        1.0
    );
    assert!(
        sample(
            &metrics,
            &format!("ksr_consul_router_probe_failures_total{{router=\"{B}\"}}")
        ) >= 2.0
    );

    // A check removed by hand is set again.
    bench
        .deregister(serde_json::json!({"Node": second, "CheckID": "ksr-router-health"}))
        .await?;
    eventually(WAIT, || async {
        let c = check(&bench, &second).await?;
        anyhow::ensure!(c.as_ref().is_some_and(|c| c.0 == "critical"), "{c:?}");
        Ok(())
    })
    .await?;
    answers(&bench, &[A]).await?;

    // B is back: both again. A new name while B was down is on B's node too.
    bench
        .publish(&added("east", "shop", "api", &["10.1.0.2"]))
        .await?;
    let _endpoint_b = HealthEndpoint::start(B, port).await?;
    answers(&bench, &[A, B]).await?;
    let api = dns::query_a(bench.consul.dns_port(), "api-shop.test.service.consul").await?;
    let mut got = api.addrs;
    got.sort();
    assert_eq!(got, vec![A, B]);

    // Both routers down: nothing is answered (Consul DNS has no healthy instance).
    drop(endpoint_a);
    drop(_endpoint_b);
    answers(&bench, &[]).await?;
    let _endpoint_a = HealthEndpoint::start(A, port).await?;
    answers(&bench, &[A]).await?;

    // The Service goes: gone from both nodes.
    bench.publish(&removed("east", "shop", "web")).await?;
    bench.settled().await?;
    for node in ["ksr", second.as_str()] {
        let listing = bench
            .consul
            .get_json(&format!("/v1/catalog/node/{node}"))
            .await?;
        assert!(listing["Services"]["web-shop.test"].is_null(), "{listing}");
        assert!(!listing["Services"]["api-shop.test"].is_null(), "{listing}");
    }
    publisher.shutdown().await?;

    // B leaves the configuration and health checking is switched off: B's node goes with
    // everything on it, A's check is removed, and A answers again whatever its endpoint does.
    drop(_endpoint_a);
    let publisher = bench.publisher_for(&A.to_string(), &["--reconcile-interval", "1s"]);
    publisher.ready().await?;
    eventually(WAIT, || async {
        let nodes = bench.consul.get_json("/v1/catalog/nodes").await?;
        let names: Vec<&str> = nodes
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["Node"].as_str()).collect())
            .unwrap_or_default();
        anyhow::ensure!(!names.contains(&second.as_str()), "{names:?}");
        anyhow::ensure!(names.contains(&"ksr"), "{names:?}");
        Ok(())
    })
    .await?;
    assert_eq!(check(&bench, "ksr").await?, None);
    let api = dns::query_a(bench.consul.dns_port(), "api-shop.test.service.consul").await?;
    assert_eq!(api.addrs, vec![A]);
    publisher.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_drift_check_knows_every_router_node() -> anyhow::Result<()> {
    use clap::Parser;
    let bench = Bench::start().await?;
    let publisher = bench.publisher_for(&format!("{A},{B}"), &[]);
    publisher.ready().await?;
    bench
        .publish(&added("east", "shop", "web", &["10.1.0.1"]))
        .await?;
    answers(&bench, &[A, B]).await?;
    bench.settled().await?;
    publisher.shutdown().await?;

    let config = ksr_publisher_consul::config::Config::try_parse_from([
        "x",
        "--consul-address",
        &bench.consul.url(),
        "--router-address",
        &format!("{A},{B}"),
    ])?;
    ksr_runtime::tls::install_crypto_provider();
    let projector = ksr_publisher_consul::projector::open(
        &ksr_publisher_consul::store::ConsulClient::new(&config.target.consul)?,
        &config.target,
        ksr_publisher_consul::projector::metrics(&ksr_runtime::metrics::MetricsRegistry::new()),
        ksr_projection::Records::Skip,
    )
    .await?;
    let stream = bench.js.get_stream("KSR_ROUTES").await?;
    let latest = ksr_runtime::stream_pass::acknowledged_latest(&stream, u64::MAX).await?;
    let found = ksr_publisher_consul::drift::drift(&projector, &latest, "test").await?;
    assert!(found.ours.is_empty(), "{:?}", found.ours);
    assert!(found.foreign.is_empty(), "{:?}", found.foreign);

    // An instance missing on B's node is drift of ours, keyed by node.
    let second = format!("ksr-{}", B.to_string().replace('.', "-"));
    bench
        .deregister(serde_json::json!({"Node": second, "ServiceID": "web-shop.test"}))
        .await?;
    let found = ksr_publisher_consul::drift::drift(&projector, &latest, "test").await?;
    let keys: Vec<String> = found.ours.iter().map(|d| d.key().to_owned()).collect();
    assert_eq!(keys, vec![format!("{second}/web-shop.test")]);
    Ok(())
}
