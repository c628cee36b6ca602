//! NATS least privilege, against a real nats-server configured with what `ksrctl nats-auth`
//! writes: every role does its job with its own NKey, and nothing more.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use ksr_test_support::apiserver::{FakeApiServer, Resource};
use ksr_test_support::{
    ConsulServer, EtcdServer, NatsOptions, NatsServer, Proc, eventually, workspace_binary,
};

const WAIT: Duration = Duration::from_secs(60);

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A connection as `role`, with short JetStream timeouts (a denied request gets no answer).
async fn connect_as(
    nats: &NatsServer,
    keys: &Path,
    role: &str,
) -> anyhow::Result<jetstream::Context> {
    let seed = std::fs::read_to_string(keys.join(format!("{role}.nk")))?;
    let client = async_nats::ConnectOptions::new()
        .nkey(seed.trim().to_owned())
        .connect(nats.url())
        .await?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(1500))
        .build(client))
}

fn manifest(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    type: ingress\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
    )
}

/// The permission violations nats-server logged.
fn violations(nats: &NatsServer) -> String {
    nats.log()
        .lines()
        .filter(|l| l.contains("Violation"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs ksrctl as `role` and fails, quoting nats-server's violations, unless it succeeds.
fn ksrctl_ok(nats: &NatsServer, keys: &Path, role: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = ksrctl(nats, keys, role, args)?;
    anyhow::ensure!(
        out.status.success(),
        "ksrctl {args:?} as {role}: {out:?}\n{}",
        violations(nats)
    );
    Ok(())
}

fn ksrctl(
    nats: &NatsServer,
    keys: &Path,
    role: &str,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(workspace_binary("ksrctl")?)
        .args(args)
        .args([
            "--nats-url",
            &nats.url(),
            "--nats-nkey",
            path(&keys.join(format!("{role}.nk"))),
        ])
        .output()?)
}

#[tokio::test]
async fn each_role_does_its_job_with_its_own_nkey_and_nothing_more() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    let out = Command::new(workspace_binary("ksrctl")?)
        .args(["nats-auth", "--out", path(&keys), "--clusters", "east,west"])
        .output()?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let nats = NatsServer::start_with(NatsOptions {
        // (nats-server resolves `include` relative to the including file: inline it.)
        config: Some(std::fs::read_to_string(keys.join("ksr-auth.conf"))?),
    })
    .await?;
    let etcd = EtcdServer::start().await?;
    let consul = ConsulServer::start().await?;
    let logs = dir.path();

    // Without a key nobody gets in.
    anyhow::ensure!(
        async_nats::ConnectOptions::new()
            .connect(nats.url())
            .await
            .is_err(),
        "an anonymous client connected"
    );

    let nkey = |role: &str| path(&keys.join(format!("{role}.nk"))).to_owned();
    let spawn = |name: &str, binary: &str, args: Vec<String>| -> anyhow::Result<Proc> {
        let admin = ["--admin-addr".to_owned(), "127.0.0.1:0".to_owned()];
        Proc::spawn_workspace(logs, name, binary, args.into_iter().chain(admin))
    };
    let mut procs = Vec::new();
    // East watches a (fake) apiserver: it also follows the publishers' status for its
    // Services' Events. West reads manifests.
    let api = FakeApiServer::start().await?;
    api.apply(
        Resource::Services,
        serde_json::json!({"metadata": {"name": "web", "namespace": "default", "uid": "uid-web",
                                        "labels": {"type": "ingress"}},
                           "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}),
    );
    for (cluster, ip) in [("east", "10.96.0.1"), ("west", "10.97.0.1")] {
        let source: Vec<String> = if cluster == "east" {
            vec!["--kube-url".into(), api.url().into()]
        } else {
            let manifests = dir.path().join(cluster);
            std::fs::create_dir_all(&manifests)?;
            std::fs::write(manifests.join("web.yaml"), manifest("web", ip))?;
            vec![
                "--source".into(),
                "files".into(),
                "--manifests".into(),
                path(&manifests).into(),
                "--manifests-poll".into(),
                "50ms".into(),
            ]
        };
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            cluster.into(),
            "--nats-url".into(),
            nats.url(),
            "--nats-nkey".into(),
            nkey(&format!("watcher-{cluster}")),
        ];
        args.extend(source);
        procs.push(spawn(&format!("watcher-{cluster}"), "ksr-watcher", args)?);
    }
    procs.push(spawn(
        "publisher-vulcand",
        "ksr-publisher-vulcand",
        vec![
            "--nats-url".into(),
            nats.url(),
            "--nats-nkey".into(),
            nkey("publisher-vulcand"),
            "--etcd-endpoints".into(),
            etcd.endpoint(),
            "--reconcile-interval".into(),
            "1s".into(),
        ],
    )?);
    procs.push(spawn(
        "publisher-consul",
        "ksr-publisher-consul",
        vec![
            "--nats-url".into(),
            nats.url(),
            "--nats-nkey".into(),
            nkey("publisher-consul"),
            "--consul-address".into(),
            consul.url(),
            "--reconcile-interval".into(),
            "1s".into(),
        ],
    )?);

    // The happy path: both clusters' Service routed and registered.
    let procs = std::sync::Mutex::new(procs);
    eventually(WAIT, || async {
        for p in procs.lock().expect("not poisoned").iter_mut() {
            p.check_alive()?;
        }
        let keys = etcd.contents("vulcand/").await?;
        let servers = keys.keys().filter(|k| k.contains("/servers/")).count();
        anyhow::ensure!(servers == 2, "servers in etcd: {keys:?}");
        let catalog = consul.contents("ksr", false).await?;
        anyhow::ensure!(catalog.contains_key("svc:web-default.test"), "{catalog:?}");
        Ok(())
    })
    .await?;

    // Each publisher reports its status with its own key, east's watcher reads it with its
    // own and tells the Service's owner.
    eventually(WAIT, || async {
        let notes: Vec<String> = api
            .events()
            .iter()
            .filter(|e| e["reason"] == "Routed")
            .filter_map(|e| e["note"].as_str().map(str::to_owned))
            .collect();
        for target in ["vulcand", "consul"] {
            anyhow::ensure!(
                notes
                    .iter()
                    .any(|n| n.starts_with(&format!("{target} serves it"))),
                "{notes:?}\n{}",
                violations(&nats)
            );
        }
        Ok(())
    })
    .await?;

    // ksrctl reads with the read-only key; the checkpointer writes checkpoints with its own.
    ksrctl_ok(&nats, &keys, "ksrctl", &["status"])?;
    ksrctl_ok(&nats, &keys, "ksrctl", &["explain", "east/default/web"])?;
    ksrctl_ok(&nats, &keys, "ksrctl", &["events"])?;
    ksrctl_ok(
        &nats,
        &keys,
        "checkpointer",
        &["checkpoint", "--every", "1"],
    )?;

    // The operator's key reaches a watcher's control subject (the watcher may answer it);
    // the read-only key cannot.
    ksrctl_ok(
        &nats,
        &keys,
        "operator",
        &["confirm-removals", "--cluster", "east"],
    )?;
    let refused = ksrctl(
        &nats,
        &keys,
        "ksrctl",
        &["confirm-removals", "--cluster", "east"],
    )?;
    anyhow::ensure!(
        !refused.status.success(),
        "the read-only key sent a control request"
    );

    // Denials.
    let event = ksr_test_support::events::added("east", "default", "evil", &["10.66.0.1"]);
    let payload = ksr_proto::codec::encode(&event)?;
    let publisher = connect_as(&nats, &keys, "publisher-vulcand").await?;
    anyhow::ensure!(
        publisher
            .publish("ksr.routes.east.default.evil", payload.clone().into())
            .await?
            .await
            .is_err(),
        "a publisher's key published an event"
    );
    let east = connect_as(&nats, &keys, "watcher-east").await?;
    anyhow::ensure!(
        east.publish("ksr.routes.west.default.evil", payload.clone().into())
            .await?
            .await
            .is_err(),
        "watcher east published for west"
    );
    anyhow::ensure!(
        east.delete_stream("KSR_ROUTES").await.is_err(),
        "a watcher deleted the stream"
    );
    let reader = connect_as(&nats, &keys, "ksrctl").await?;
    anyhow::ensure!(
        reader.delete_stream("KSR_ROUTES").await.is_err(),
        "ksrctl's read-only key deleted the stream"
    );
    let mut stream = reader.get_stream("KSR_ROUTES").await?;
    anyhow::ensure!(
        stream.purge().await.is_err(),
        "ksrctl's read-only key purged the stream"
    );
    anyhow::ensure!(
        reader
            .publish("ksr.routes.east.default.evil", payload.into())
            .await?
            .await
            .is_err(),
        "ksrctl's read-only key published an event"
    );
    let status = reader.get_key_value("KSR_ROUTES_status").await?;
    anyhow::ensure!(
        status
            .put("ksr-vulcand-ksr.east.default.web", "forged".into())
            .await
            .is_err(),
        "ksrctl's read-only key wrote a status"
    );
    let consul_publisher = connect_as(&nats, &keys, "publisher-consul").await?;
    let their_status = consul_publisher.get_key_value("KSR_ROUTES_status").await?;
    anyhow::ensure!(
        their_status
            .put("ksr-vulcand-ksr.east.default.web", "forged".into())
            .await
            .is_err(),
        "a publisher wrote another publisher's status"
    );
    let store = reader.get_object_store("KSR_CHECKPOINTS").await?;
    let mut forged: &[u8] = b"forged";
    anyhow::ensure!(
        store.put("forged", &mut forged).await.is_err(),
        "ksrctl's read-only key wrote a checkpoint"
    );
    // The stream is whole and holds no forged event.
    let info = stream.info().await?;
    anyhow::ensure!(info.state.messages == 2, "stream holds {:?}", info.state);
    let log = nats.log();
    for denied in [
        "ksr.routes.west.default.evil",
        "$JS.API.STREAM.DELETE.KSR_ROUTES",
        "$JS.API.STREAM.PURGE.KSR_ROUTES",
        "$O.KSR_CHECKPOINTS",
        "$KV.KSR_ROUTES_status.ksr-vulcand-ksr",
    ] {
        anyhow::ensure!(
            log.contains(denied),
            "no violation logged for {denied}:\n{log}"
        );
    }
    // Nothing else was refused: every role had what it needed.
    let expected = [
        "evil",
        "STREAM.DELETE",
        "STREAM.PURGE",
        "$O.KSR_CHECKPOINTS",
        "$KV.KSR_ROUTES_status.ksr-vulcand-ksr",
        "ksr.control.east.confirm-removals",
    ];
    for line in log.lines().filter(|l| l.contains("Violation")) {
        anyhow::ensure!(
            expected.iter().any(|e| line.contains(e)),
            "a role was refused what it needs: {line}"
        );
    }
    Ok(())
}
