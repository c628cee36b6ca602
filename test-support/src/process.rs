//! A child process that is killed when its guard drops, with its output kept in a log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process, killed on drop, its output appended to a log file.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Proc {
    /// Spawns `cmd`, appending stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawning {name}: {e}"))?;
        Ok(Self {
            child: Some(child),
            log: log.to_path_buf(),
            name: name.to_owned(),
        })
    }

    /// Starts the workspace's `binary` with `args`, logging at info into `<logs>/<name>.log`.
    pub fn spawn_workspace<A: AsRef<std::ffi::OsStr>>(
        logs: &Path,
        name: &str,
        binary: &str,
        args: impl IntoIterator<Item = A>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(crate::workspace_binary(binary)?);
        cmd.args(args).env("KSR_LOG", "info");
        Self::spawn(name, cmd, &logs.join(format!("{name}.log")))
    }

    /// The running process's id (benchmarks read its CPU time and memory from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process has exited, quoting the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            anyhow::bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process, if it runs.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    /// Kills the process and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
