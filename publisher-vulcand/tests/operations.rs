//! Operating the process: health endpoints, metrics, graceful shutdown.

mod common;

use common::{Bench, WAIT};
use ksr_test_support::events::added;
use ksr_test_support::{eventually, http};

#[tokio::test]
async fn admin_endpoints_report_liveness_readiness_and_metrics() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&[]);
    // Ready as soon as it consumes, even with nothing to apply.
    eventually(WAIT, || async {
        let (status, body) = http::get(p.admin_port, "/readyz")
            .await
            .ok_or_else(|| anyhow::anyhow!("no answer"))?;
        anyhow::ensure!(status == 200, "readyz {status}: {body}");
        // It says which incarnation of the stream it follows.
        anyhow::ensure!(
            body.contains("following stream KSR_ROUTES, incarnation"),
            "{body}"
        );
        Ok(())
    })
    .await?;
    assert_eq!(
        http::get(p.admin_port, "/livez").await.map(|r| r.0),
        Some(200)
    );

    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    ksr_test_support::events::publish_raw(
        &bench.js,
        "ksr.routes.east.default.bad",
        "added",
        "east",
        vec![1, 2, 3],
    )
    .await?;
    bench.settled_vulcand().await?;
    let metrics = eventually(WAIT, || async {
        let (_, body) = http::get(p.admin_port, "/metrics")
            .await
            .ok_or_else(|| anyhow::anyhow!("no answer"))?;
        anyhow::ensure!(
            body.contains("ksr_vulcand_reconcile_runs_total 1"),
            "no reconcile yet"
        );
        Ok(body)
    })
    .await?;
    for line in [
        r#"ksr_vulcand_events_applied_total{kind="added"} 1"#,
        r#"ksr_vulcand_events_terminated_total{reason="truncated"} 1"#,
        "ksr_vulcand_hosts 1",
        "ksr_vulcand_hosts_in_conflict 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn shutdown_finishes_and_returns_cleanly() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let p = bench.publisher(&["--drain-timeout", "5s"]);
    bench
        .publish(&added("east", "default", "web", &["10.0.0.1"]))
        .await?;
    bench.settled_vulcand().await?;
    p.shutdown().await?;
    Ok(())
}
