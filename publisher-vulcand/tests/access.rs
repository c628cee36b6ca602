//! etcd least privilege, against a real etcd with authentication on: a role limited to the
//! vulcand prefix and ours is enough, anything else is refused, and credentials that may not
//! write our prefixes stop the publisher with a clear error instead of retrying forever.

mod common;

use common::{Bench, WAIT};
use etcd_client::{Client, ConnectOptions, Permission};
use ksr_test_support::events::added;
use ksr_test_support::eventually;

const PASSWORD: &str = "publisher-secret";

/// Turns authentication on: `root`, and user `publisher-vulcand` whose role may read and
/// write exactly `vulcand/` and `ksr/ksr/`.
async fn enable_auth(bench: &Bench) -> anyhow::Result<Client> {
    let mut c = bench.etcd().await?;
    c.user_add("root", "root-secret", None).await?;
    c.user_grant_role("root", "root").await?;
    c.role_add("ksr-publisher-vulcand").await?;
    for prefix in ["vulcand/", "ksr/ksr/"] {
        c.role_grant_permission(
            "ksr-publisher-vulcand",
            Permission::read_write(prefix).with_prefix(),
        )
        .await?;
    }
    c.user_add("publisher-vulcand", PASSWORD, None).await?;
    c.user_grant_role("publisher-vulcand", "ksr-publisher-vulcand")
        .await?;
    c.auth_enable().await?;
    let opts = ConnectOptions::new().with_user("root", "root-secret");
    Ok(Client::connect([bench.etcd.endpoint()], Some(opts)).await?)
}

fn publisher(bench: &Bench, extra: &[&str]) -> anyhow::Result<common::Replica> {
    let (url, endpoint) = (bench.nats.url(), bench.etcd.endpoint());
    let mut args = vec!["--nats-url", &url, "--etcd-endpoints", &endpoint];
    args.extend([
        "--etcd-user",
        "publisher-vulcand",
        "--etcd-password",
        PASSWORD,
    ]);
    args.extend(extra);
    common::spawn_publisher(&args)
}

#[tokio::test]
async fn a_role_limited_to_our_prefixes_is_enough_and_nothing_else_is_allowed() -> anyhow::Result<()>
{
    let bench = Bench::start().await?;
    let mut root = enable_auth(&bench).await?;
    let _p = publisher(&bench, &[])?;
    bench
        .publish(&added("east", "shop", "web", &["10.0.0.1"]))
        .await?;
    eventually(WAIT, || async {
        let resp = root
            .clone()
            .get(
                "vulcand/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        anyhow::ensure!(resp.kvs().len() == 3, "{} vulcand keys", resp.kvs().len());
        Ok(())
    })
    .await?;

    // The publisher's credentials write nothing outside the two prefixes.
    let opts = ConnectOptions::new().with_user("publisher-vulcand", PASSWORD);
    let mut theirs = Client::connect([bench.etcd.endpoint()], Some(opts)).await?;
    let err = theirs
        .put("registry/secrets/x", "stolen", None)
        .await
        .expect_err("a write outside the prefixes");
    assert!(
        ksr_publisher_vulcand::access::is_permission_denied(&err),
        "{err}"
    );
    assert!(root.get("registry/secrets/x", None).await?.kvs().is_empty());
    Ok(())
}

#[tokio::test]
async fn credentials_that_may_not_write_our_prefixes_stop_the_publisher_naming_the_prefix()
-> anyhow::Result<()> {
    let bench = Bench::start().await?;
    enable_auth(&bench).await?;
    // vulcand's keys configured under a prefix the role does not cover.
    let p = publisher(&bench, &["--vulcand-prefix", "edge"])?;
    let result = tokio::time::timeout(WAIT, p.join()).await??;
    let err = result.expect_err("the publisher must not run");
    let text = err.to_string();
    assert!(text.contains("edge/") && text.contains("refuses"), "{text}");
    assert_eq!(err.reason(), "permission_denied");
    Ok(())
}
