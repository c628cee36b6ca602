//! The dashboard and alerts in `deploy/monitoring/`, checked with the real tools: promtool
//! checks the rules and runs their unit tests, the PrometheusRule carries the same groups as
//! the plain rules file, and every metric the dashboard and the rules use is exported by the
//! running processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ksr_test_support::{
    ConsulServer, EtcdServer, NatsServer, Proc, eventually, free_ports, http, server_binary,
};

const WAIT: Duration = Duration::from_secs(60);

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn read(file: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(monitoring().join(file))?)
}

fn yaml(file: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_saphyr::from_str(&read(file)?)?)
}

fn promtool(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(server_binary("promtool")?)
        .args(args)
        .current_dir(monitoring())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_and_stays_silent_as_tested() -> anyhow::Result<()>
{
    promtool(&["check", "rules", "ksr-alerts.rules.yaml"])?;
    promtool(&["test", "rules", "ksr-alerts.test.yaml"])?;
    // Every alert has unit tests.
    let rules = yaml("ksr-alerts.rules.yaml")?;
    let tests = read("ksr-alerts.test.yaml")?;
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let alert = rule["alert"].as_str().unwrap_or_default();
            assert!(
                tests.contains(&format!("alertname: {alert}\n")),
                "{alert} has no unit test"
            );
        }
    }
    Ok(())
}

#[test]
fn the_prometheus_rule_holds_the_same_groups_as_the_rules_file() -> anyhow::Result<()> {
    let plain = yaml("ksr-alerts.rules.yaml")?;
    let crd = yaml("prometheusrule.yaml")?;
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(crd["spec"]["groups"], plain["groups"]);
    Ok(())
}

/// The `ksr_…` metric names a text (PromQL, JSON) mentions.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("ksr_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // (Skip words that merely contain `ksr_`, such as label values.)
        let preceded = rest[..i].chars().next_back();
        if !preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names a Prometheus exposition offers, including those of families with no
/// sample yet (a counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut parts = t.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() -> anyhow::Result<()> {
    let mut used = names_in(&read("grafana-dashboard.json")?);
    used.extend(names_in(&read("ksr-alerts.rules.yaml")?));
    assert!(used.len() > 20, "{used:?}");

    let nats = NatsServer::start().await?;
    let mut etcd = EtcdServer::start().await?;
    let mut consul = ConsulServer::start().await?;
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("east");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("web.yaml"), service("web", "10.96.0.1", ""))?;
    // A rejected Service (a path vulcand cannot parse), for the rejection metrics.
    std::fs::write(
        manifests.join("bad.yaml"),
        service(
            "bad",
            "10.96.0.2",
            "  annotations:\n    path: \"/static/**\"\n",
        ),
    )?;
    let ports = free_ports(3)?;
    let spawn = |name: &str, port: u16, args: Vec<String>| -> anyhow::Result<Proc> {
        let common = [
            "--admin-addr".to_owned(),
            format!("127.0.0.1:{port}"),
            "--nats-url".to_owned(),
            nats.url(),
        ];
        Proc::spawn_workspace(dir.path(), name, name, args.into_iter().chain(common))
    };
    let manifests_dir = manifests.clone();
    let manifests = manifests.to_string_lossy().into_owned();
    let _procs = [
        spawn(
            "ksr-watcher",
            ports[0],
            [
                "--cluster",
                "east",
                "--source",
                "files",
                "--manifests-poll",
                "50ms",
                "--manifests",
                &manifests,
            ]
            .map(String::from)
            .into(),
        )?,
        spawn(
            "ksr-publisher-vulcand",
            ports[1],
            vec![
                "--etcd-endpoints".into(),
                etcd.endpoint(),
                "--reconcile-interval".into(),
                "1s".into(),
            ],
        )?,
        spawn(
            "ksr-publisher-consul",
            ports[2],
            vec![
                "--consul-address".into(),
                consul.url(),
                "--reconcile-interval".into(),
                "1s".into(),
            ],
        )?,
    ];
    let scrape = || async {
        let mut have = BTreeSet::new();
        for port in &ports {
            let (_, text) = http::get(*port, "/metrics")
                .await
                .ok_or_else(|| anyhow::anyhow!("no /metrics on {port}"))?;
            have.extend(exported(&text));
        }
        anyhow::Ok(have)
    };
    let routed = ["ksr_vulcand_hosts 1", "ksr_consul_names 1"];
    eventually(WAIT, || async {
        for (port, line) in ports[1..].iter().zip(routed) {
            let (_, text) = http::get(*port, "/metrics").await.unwrap_or_default();
            anyhow::ensure!(text.lines().any(|l| l == line), "not routed yet");
        }
        Ok(())
    })
    .await?;
    // Families with labels appear with their first sample: make both targets fail a batch.
    etcd.stop();
    consul.stop();
    std::fs::write(
        manifests_dir.join("web.yaml"),
        service("web", "10.96.0.3", ""),
    )?;
    eventually(WAIT, || async {
        let have = scrape().await?;
        let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
        anyhow::ensure!(missing.is_empty(), "not exported: {missing:?}");
        Ok(())
    })
    .await
}

fn service(name: &str, ip: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    type: ingress\n{annotations}spec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
    )
}

#[test]
fn metric_names_are_found_in_promql_and_json() {
    let names = names_in(r#"{"expr": "rate(ksr_watcher_events_published_total[5m]) + ksr_ready"}"#);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ksr_ready", "ksr_watcher_events_published_total"]
    );
}
