//! The watcher's test bench: a real nats-server, the real watcher (`app::run`) configured
//! through its real command line, and helpers to read what it published.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;

use ksr_proto::{Event, EventKind};
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::{NatsServer, eventually};
use ksr_watcher::{app, config::Config};

/// How long [`Bench::wait_events`] watches for events that should not come.
pub const QUIET: Duration = Duration::from_millis(600);

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Bench {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub dir: tempfile::TempDir,
}

impl Bench {
    pub async fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;
        Ok(Self {
            nats,
            js,
            dir: tempfile::tempdir()?,
        })
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes `name.yaml` in the manifest directory.
    pub fn write(&self, name: &str, yaml: &str) {
        std::fs::create_dir_all(self.manifests()).expect("manifest dir");
        std::fs::write(self.manifests().join(format!("{name}.yaml")), yaml)
            .expect("write manifest");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifests().join(format!("{name}.yaml")))
            .expect("remove manifest");
    }

    /// Starts a watcher of cluster `east` on the manifest directory.
    pub fn watcher(&self, extra: &[&str]) -> Replica {
        self.watcher_with(
            &[
                "--source",
                "files",
                "--manifests",
                path_str(&self.manifests()),
                "--manifests-poll",
                "30ms",
            ],
            extra,
        )
    }

    pub fn watcher_with(&self, source: &[&str], extra: &[&str]) -> Replica {
        let admin_port = ksr_test_support::free_ports(1).expect("a free port")[0];
        let mut args: Vec<String> = vec![
            "ksr-watcher".into(),
            "--cluster".into(),
            "east".into(),
            "--nats-url".into(),
            self.nats.url(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        if !extra.contains(&"--coalesce-window") {
            args.extend(["--coalesce-window".into(), "20ms".into()]);
        }
        args.extend(source.iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from(args).expect("test config parses");
        Replica::spawn(admin_port, |stop| app::run(config, stop))
    }

    /// Every event published so far: (kind, namespace/name).
    pub async fn events(&self) -> anyhow::Result<Vec<(EventKind, String)>> {
        Ok(self
            .full_events()
            .await?
            .into_iter()
            .map(|(_, e)| (e.kind(), format!("{}/{}", e.key.namespace, e.key.name)))
            .collect())
    }

    pub async fn full_events(&self) -> anyhow::Result<Vec<(u64, Event)>> {
        let stream = self.js.get_stream("KSR_ROUTES").await?;
        let all = ksr_runtime::replay::all_events(&stream, "ksr.routes.>").await?;
        Ok(all
            .into_iter()
            .filter_map(|l| l.event.ok().map(|e| (l.seq, e)))
            .collect())
    }

    /// Waits until exactly `want` events were published, then checks that no more follow
    /// for [`QUIET`] (many coalescing windows): an extra event fails the test.
    pub async fn wait_events(&self, want: &[(EventKind, &str)]) -> anyhow::Result<()> {
        let want: Vec<(EventKind, String)> =
            want.iter().map(|(k, n)| (*k, n.to_string())).collect();
        eventually(WAIT, || async {
            let got = self.events().await?;
            anyhow::ensure!(got == want, "published {got:?}, want {want:?}");
            Ok(())
        })
        .await?;
        let quiet_until = std::time::Instant::now() + QUIET;
        let mut every = tokio::time::interval(Duration::from_millis(25));
        while std::time::Instant::now() < quiet_until {
            every.tick().await;
            let got = self.events().await?;
            anyhow::ensure!(
                got == want,
                "more events followed: published {got:?}, want {want:?}"
            );
        }
        Ok(())
    }
}

impl Bench {
    /// Like [`Bench::wait_events`], ignoring the order between subjects.
    pub async fn wait_events_unordered(&self, want: &[(EventKind, &str)]) -> anyhow::Result<()> {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect();
        want.sort();
        eventually(WAIT, || async {
            let mut got: Vec<(String, String)> = self
                .events()
                .await?
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect();
            got.sort();
            anyhow::ensure!(got == want, "published {got:?}, want {want:?}");
            Ok(())
        })
        .await
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A running process of the crate under test.
pub type Replica = ksr_test_support::Replica<ksr_watcher::Error>;

/// A labelled Service manifest with a clusterIP; `annotations` as YAML lines.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    annotations: &[(&str, &str)],
) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("\n    {k}: {v:?}"))
        .collect();
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("\n  annotations:{ann}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    type: ingress{annotations}\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n"
    )
}

/// How many full lists the watcher has started.
pub async fn relists(w: &Replica) -> f64 {
    w.metric("ksr_watcher_relists_total").await
}

/// Waits until the watcher has listed more often than `before` and published the result.
pub async fn relisted_since(w: &Replica, before: f64) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        anyhow::ensure!(relists(w).await > before, "no relist yet");
        Ok(())
    })
    .await?;
    w.ready().await
}
