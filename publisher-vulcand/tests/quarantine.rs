//! An unreadable record under our own prefix (hand edit, partial restore) never stops the
//! publisher: it is quarantined, reported, and rewritten, while every other Service flows.

mod common;

use common::{Bench, WAIT};
use ksr_test_support::events::added;
use ksr_test_support::eventually;

#[tokio::test]
async fn a_corrupt_record_is_quarantined_reported_and_repaired_while_the_rest_flows()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&[]);
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    bench
        .publish(&added("east", "shop", "api", &["10.0.0.2"]))
        .await?;
    let routed = bench.settled_vulcand().await?;
    assert_eq!(routed.len(), 6);
    p.shutdown().await?;

    let host_record = "ksr/ksr/vulcand/hosts/ksr.web-shop.test.service.consul";
    let fence = "ksr/ksr/vulcand/services/east/shop/api";
    let mut etcd = bench.etcd().await?;
    etcd.put(host_record, "{not json", None).await?;
    etcd.put(fence, "\u{0}garbage", None).await?;

    let p = bench.publisher(&[]);
    p.ready().await?;
    let (status, text) = p.readyz().await.expect("readyz answers");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("unreadable records") && text.contains(host_record) && text.contains(fence),
        "{text}"
    );
    assert_eq!(p.metric("ksr_vulcand_corrupt_records").await, 2.0);
    // Everything else keeps flowing.
    bench
        .publish(&added("east", "other", "new", &["10.0.0.3"]))
        .await?;
    // The start-up reconciliation re-applied the Services concerned: records readable again,
    // the vulcand keys as they were (plus the new Service's).
    eventually(WAIT, || async {
        let state = bench.snapshot("ksr/ksr/vulcand/").await?;
        for key in [host_record, fence] {
            let v = state.get(key).map(String::as_str).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(v)
                .map_err(|e| anyhow::anyhow!("{key} still unreadable: {e}"))?;
        }
        Ok(())
    })
    .await?;
    let keys = bench.settled_vulcand().await?;
    for (k, v) in &routed {
        assert_eq!(keys.get(k), Some(v), "{k}");
    }
    assert_eq!(keys.len(), 9);
    Ok(())
}
