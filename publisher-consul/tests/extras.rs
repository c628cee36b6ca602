//! Consul tags and metadata a Service adds (`consul-tags`, `consul-meta.<key>`): in the catalog
//! and DNS of a real Consul, merged across the Services behind one name; and the metadata rules
//! we check up front equal to what that Consul itself accepts.

mod common;

use common::{Bench, ROUTER};
use ksr_proto::{Change, names};
use ksr_test_support::events::{event, route};
use ksr_test_support::http_client;
use serde_json::{Value, json};

fn with_extras(tags: &[&str], meta: &[(&str, &str)]) -> ksr_proto::RouteState {
    let mut r = route("web-shop", "test", "/.*", &["10.0.0.1"]);
    r.consul_tags = tags.iter().map(|t| (*t).to_owned()).collect();
    r.consul_meta = meta
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    r.normalize();
    r
}

#[tokio::test]
async fn tags_and_metadata_reach_the_catalog_and_dns_and_merge_across_clusters()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let _p = bench.publisher(&[]);
    let east = with_extras(&["v2", "canary"], &[("team", "web"), ("tier", "front")]);
    bench
        .publish(&event("east", "shop", "web", Change::Added(east)))
        .await?;
    let snap = bench.settled().await?;
    let entry: Value = serde_json::from_str(&snap["svc:web-shop.test"])?;
    assert_eq!(entry["Tags"], json!(["web-shop", "canary", "v2"]));
    assert_eq!(entry["Meta"]["team"], "web");
    assert_eq!(entry["Meta"]["tier"], "front");
    assert_eq!(entry["Meta"]["ksr-namespace"], "shop");
    // Consul DNS answers by tag: `<tag>.<service>.service.consul`.
    bench
        .wait_resolves("canary.test.service.consul", true)
        .await?;
    assert_eq!(
        bench.resolve("canary.test.service.consul").await?.addrs,
        vec![ROUTER]
    );

    // The same Service in another cluster, younger: tags join, metadata keys it shares with
    // the older claim keep the older value.
    let west = with_extras(&["blue"], &[("team", "other"), ("zone", "w")]);
    bench
        .publish(&event("west", "shop", "web", Change::Added(west)))
        .await?;
    let snap = bench.settled().await?;
    let entry: Value = serde_json::from_str(&snap["svc:web-shop.test"])?;
    assert_eq!(entry["Tags"], json!(["web-shop", "blue", "canary", "v2"]));
    assert_eq!(entry["Meta"]["team"], "web", "the older claim's value");
    assert_eq!(entry["Meta"]["zone"], "w");

    // Without annotations again: back to the name's own tag and ksr's metadata.
    let plain = route("web-shop", "test", "/.*", &["10.0.0.1"]);
    for cluster in ["east", "west"] {
        bench
            .publish(&event(
                cluster,
                "shop",
                "web",
                Change::Updated(plain.clone()),
            ))
            .await?;
    }
    let snap = bench.settled().await?;
    let entry: Value = serde_json::from_str(&snap["svc:web-shop.test"])?;
    assert_eq!(entry["Tags"], json!(["web-shop"]));
    assert!(entry["Meta"].get("team").is_none(), "{entry}");
    bench
        .wait_resolves("canary.test.service.consul", false)
        .await
}

/// Whether the real Consul registers a service carrying `meta`, through the catalog and
/// through a transaction (the publisher's own write path).
async fn consul_accepts(bench: &Bench, meta: &Value) -> anyhow::Result<(bool, bool)> {
    let url = bench.consul.url();
    let service = json!({"ID": "diff-1", "Service": "diff", "Meta": meta});
    let catalog = http_client()
        .put(format!("{url}/v1/catalog/register"))
        .json(&json!({"Node": "ksr-diff", "Address": "127.0.0.2", "Service": service}))
        .send()
        .await?
        .status()
        .is_success();
    let txn = http_client()
        .put(format!("{url}/v1/txn"))
        .json(&json!([{"Service": {"Verb": "set", "Node": "ksr-diff", "Service": service}}]))
        .send()
        .await?
        .status()
        .is_success();
    Ok((catalog, txn))
}

/// Metadata keys (and values) that Consul 1.8.7 must judge exactly as
/// `names::validate_consul_meta` does — but for our own `ksr-` prefix, which Consul accepts
/// and we keep for ourselves.
#[tokio::test]
async fn the_metadata_rules_are_consuls_own() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    // The node the transactions register on.
    http_client()
        .put(format!("{}/v1/catalog/register", bench.consul.url()))
        .json(&json!({"Node": "ksr-diff", "Address": "127.0.0.2"}))
        .send()
        .await?
        .error_for_status()?;
    let mut keys: Vec<String> = [
        "a",
        "Z",
        "team",
        "team_name",
        "team-name",
        "_",
        "-",
        "0",
        "",
        "consul",
        "consulx",
        "consul-",
        "consul-x",
        "Consul-x",
        "CONSUL-X",
        "xconsul-x",
        "ksr",
        "ksr-x",
        "ksrx",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    // Every printable ASCII character (and a few others) inside a key.
    keys.extend((0x20u8..0x7f).map(|c| format!("a{}b", c as char)));
    keys.extend(["aéb", "a\u{0}b", "a\tb", "a\nb"].map(str::to_owned));
    keys.extend([127, 128, 129].map(|n| "k".repeat(n)));
    let mut cases: Vec<(String, String)> = keys.into_iter().map(|k| (k, "v".into())).collect();
    for n in [0, 511, 512, 513] {
        cases.push(("long".into(), "v".repeat(n)));
    }
    let mut disagreements = Vec::new();
    for (key, value) in &cases {
        let (catalog, txn) = consul_accepts(&bench, &json!({ key: value })).await?;
        let ours = names::validate_consul_meta(key, value).is_ok();
        let ours_for_consul = ours || key.starts_with("ksr-");
        if catalog != ours_for_consul || txn != ours_for_consul {
            disagreements.push(format!(
                "{key:?} ({} bytes of value): catalog {catalog}, txn {txn}, ours {ours}",
                value.len()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    // More pairs than Consul allows on one entry are refused there as well; we stay well
    // below (names::MAX_CONSUL_META per Service, 32 per entry, plus ksr's five).
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (catalog, _) = consul_accepts(&bench, &Value::Object(many)).await?;
    assert!(!catalog, "Consul refuses 65 metadata pairs");
    Ok(())
}
