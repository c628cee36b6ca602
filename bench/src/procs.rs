//! Spawning the release binaries under test and reading their memory use.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Spawns the sibling binary `name` (built in the same target dir as this one).
    pub fn spawn(name: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_with(name, args, Stdio::inherit())
    }

    /// Spawns `name` with its standard output sent to `stdout`.
    pub fn spawn_with(name: &str, args: &[String], stdout: Stdio) -> anyhow::Result<Self> {
        Self::spawn_logging(name, args, stdout, "warn")
    }

    /// Spawns `name` with its standard output sent to `stdout`, logging at `log` (`KSR_LOG`)
    /// to the benchmark's standard error.
    pub fn spawn_logging(
        name: &str,
        args: &[String],
        stdout: Stdio,
        log: &str,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let path: PathBuf = exe.with_file_name(name);
        anyhow::ensure!(
            path.is_file(),
            "{} not built: run `cargo build --release --workspace`",
            path.display()
        );
        let child = Command::new(&path)
            .args(args)
            .env("KSR_LOG", log)
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()?;
        Ok(Self { child })
    }

    /// (current RSS, peak RSS) in MiB, from /proc.
    pub fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// CPU seconds (user + system) process `pid` has used so far (`self` for this process), from
/// /proc (clock ticks of 1/100 s, Linux's USER_HZ); NaN when it cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces: count fields after its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

impl Proc {
    /// CPU seconds the child has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
