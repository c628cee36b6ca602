//! ksr-watcher: 10,000 Services listed from a (fake) apiserver → published to JetStream.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::{NatsServer, wait_until};
use serde_json::json;

use crate::procs::Proc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services in the cluster.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Give every Service the metadata `kubectl apply` leaves on a real one (its
    /// last-applied-configuration annotation and managedFields entries), not a bare minimum.
    #[arg(long)]
    kubectl_applied: bool,
}

/// What `kubectl apply` (client-side) and the apiserver add to a Service like `svc`: the
/// last-applied copy and two managedFields entries (kubectl's and the controller's).
fn as_kubectl_applied(mut svc: serde_json::Value) -> serde_json::Value {
    let applied = serde_json::to_string(&svc).unwrap_or_default();
    svc["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration": applied});
    svc["metadata"]["managedFields"] = json!([
        {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                                     "f:labels": {".": {}, "f:type": {}}},
                      "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {
                                     ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                                 "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-30T10:00:01Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:status": {"f:loadBalancer": {}}}, "subresource": "status"}
    ]);
    svc
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
    let api = FakeApiServer::start().await?;
    for i in 0..args.services {
        let svc = json!({"metadata": {"name": format!("svc{i}"), "namespace": format!("ns{}", i % 50), "labels": {"type": "ingress"}},
                         "spec": {"clusterIP": format!("10.96.{}.{}", i / 250 % 250, i % 250 + 1), "ports": [{"name": "http", "port": 80}]}});
        let svc = if args.kubectl_applied {
            as_kubectl_applied(svc)
        } else {
            svc
        };
        api.apply(Resource::Services, svc);
    }
    println!(
        "watcher benchmark: {} labelled Services in a (fake) apiserver{}, list pages of 500",
        args.services,
        if args.kubectl_applied {
            " with kubectl's metadata (last-applied, managedFields)"
        } else {
            ""
        }
    );
    let watcher = Proc::spawn(
        "ksr-watcher",
        &[
            "--cluster".into(),
            "east".into(),
            "--nats-url".into(),
            nats.url(),
            "--kube-url".into(),
            api.url().to_owned(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ],
    )?;
    let t0 = Instant::now();
    wait_until("all Services published", Duration::from_secs(120), || {
        let mut s = stream.clone();
        async move {
            let info = s.info().await.ok()?;
            (info.state.messages >= args.services as u64).then_some(())
        }
    })
    .await?;
    let done = Instant::now();
    let listed = api.last_list_at().unwrap_or(t0);
    let after_list = done.saturating_duration_since(listed);
    let (rss, peak) = watcher.memory_mib();
    println!(
        "  start → {} events published: {:.2} s; list complete → all published: {:.2} s ({:.0} events/s)",
        args.services,
        (done - t0).as_secs_f64(),
        after_list.as_secs_f64(),
        args.services as f64 / after_list.as_secs_f64().max(1e-9)
    );
    println!("  watcher RSS: {rss:.1} MiB (peak {peak:.1} MiB)");
    Ok(())
}
