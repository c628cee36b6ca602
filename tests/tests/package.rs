//! The release: `scripts/package.sh` makes a tarball whose binaries run and report their
//! version, whose checksums hold, and which carries every binary the manifests it ships run.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "{cmd:?} failed:\n{text}");
    Ok(text)
}

/// Every `command:` of a `ksr-…` container in the manifests under `dir`.
fn manifest_commands(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(manifest_commands(&path)?);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&std::fs::read_to_string(&path)?)?;
        for doc in docs {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(cmd) = c["command"][0].as_str()
                    && name.starts_with("ksr-")
                {
                    out.push(cmd.to_owned());
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn the_release_tarball_runs_reports_its_version_and_holds_what_its_manifests_run()
-> anyhow::Result<()> {
    let root = ksr_test_support::workspace_root();
    let bin_dir = ksr_test_support::workspace_binary("ksrctl")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out = tempfile::tempdir()?;
    let printed = run(Command::new("bash")
        .arg(root.join("scripts/package.sh"))
        .env("KSR_PACKAGE_OUT", out.path())
        .env("KSR_PACKAGE_PREBUILT", &bin_dir))?;
    let tarball = Path::new(printed.lines().last().unwrap_or_default()).to_path_buf();
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .ok_or_else(|| anyhow::anyhow!("not a tarball: {printed}"))?
        .to_owned();
    anyhow::ensure!(name.starts_with("kube-service-router-0.1.0-"), "{name}");

    // The published checksum holds, and so does every file's inside.
    run(Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{name}.tar.gz.sha256"))
        .current_dir(out.path()))?;
    let unpacked = tempfile::tempdir()?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(unpacked.path()))?;
    let release = unpacked.path().join(&name);
    run(Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&release))?;

    // Each binary runs and says what it is.
    for binary in [
        "ksr-watcher",
        "ksr-publisher-vulcand",
        "ksr-publisher-consul",
        "ksrctl",
    ] {
        let said = run(Command::new(release.join("bin").join(binary)).arg("--version"))?;
        anyhow::ensure!(
            said.starts_with(&format!("{binary} 0.1.0 (commit ")),
            "{binary} --version: {said}"
        );
    }
    // A process's first log line says what starts (here: a watcher with no NATS to reach).
    let mut watcher = Command::new(release.join("bin/ksr-watcher"))
        .args([
            "--cluster",
            "east",
            "--nats-url",
            "nats://127.0.0.1:9",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("KSR_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut first = String::new();
    if let Some(err) = watcher.stderr.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(err), &mut first)?;
    }
    watcher.kill()?;
    watcher.wait()?;
    for want in [
        "starting",
        "binary=\"ksr-watcher\"",
        "version=\"0.1.0\"",
        "commit=",
    ] {
        anyhow::ensure!(
            first.contains(want),
            "first log line {first:?} lacks {want}"
        );
    }
    for file in [
        "LICENSE",
        "README.md",
        "Dockerfile",
        "deploy/kubernetes/base/nats.conf",
        "deploy/kubernetes/base/kustomization.yaml",
        "deploy/monitoring/ksr-alerts.rules.yaml",
        "deploy/consul/ksr-publisher-policy.hcl",
    ] {
        anyhow::ensure!(release.join(file).is_file(), "the release lacks {file}");
    }

    // Every binary the shipped manifests run is in the release (and in the image: the
    // manifests test checks the Dockerfile).
    let commands = manifest_commands(&release.join("deploy/kubernetes"))?;
    anyhow::ensure!(commands.len() >= 4, "{commands:?}");
    for command in commands {
        let binary = command
            .strip_prefix("/usr/local/bin/")
            .ok_or_else(|| anyhow::anyhow!("{command} is not an image binary"))?;
        anyhow::ensure!(
            release.join("bin").join(binary).is_file(),
            "the manifests run {binary}, which the release lacks"
        );
    }
    Ok(())
}
