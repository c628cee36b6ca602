//! Large prefix reads against a real etcd: pages grow with small values and shrink when etcd
//! cannot send a page in one reply (its 4 MiB limit), and every key comes back once.

use ksr_publisher_vulcand::store::read_prefix;
use ksr_test_support::EtcdServer;

#[tokio::test]
async fn a_prefix_read_returns_every_key_once_whatever_the_value_sizes() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut client = etcd.client().await?;
    // 12 values of 700 KiB (8.4 MiB together: the first 2,000-key page cannot come in one
    // reply), then 5,000 small ones (the pages grow past 2,000).
    let big = "x".repeat(700 * 1024);
    for i in 0..12 {
        client.put(format!("p/a/{i:02}"), big.clone(), None).await?;
    }
    for i in 0..5000 {
        client.put(format!("p/b/{i:05}"), "v", None).await?;
    }
    client.put("q/outside", "v", None).await?;
    let mut kv = client.kv_client();
    let got = read_prefix(&mut kv, "p/").await?;
    assert_eq!(got.len(), 12 + 5000);
    let mut keys: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 12 + 5000, "no key twice");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
    assert!(got[..12].iter().all(|(_, v, _)| v.len() == big.len()));
    Ok(())
}
