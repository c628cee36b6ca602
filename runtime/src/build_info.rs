//! What this build is — version and source commit — for `--version`, `ksr_build_info` and
//! every process's first log line.

use std::sync::OnceLock;

/// The release version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit a release was built from: `KSR_GIT_COMMIT` at build time (`scripts/package.sh`
/// and the Dockerfile set it), `unknown` for a plain `cargo build`.
pub const COMMIT: &str = match option_env!("KSR_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// `0.1.0 (commit 1a2b3c4d…)`, as `--version` prints it after the binary's name.
pub fn version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| format!("{VERSION} (commit {COMMIT})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_release_and_the_commit() {
        assert!(version().starts_with(VERSION));
        assert!(version().contains(COMMIT));
    }
}
