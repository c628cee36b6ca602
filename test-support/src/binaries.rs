//! Finds the server binaries that `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

/// The repository root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The path of an installed server binary, or an error naming the setup command.
///
/// Looks in `$KSR_SERVERS_DIR/bin`, then `<repo>/.servers/bin`.
pub fn server_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("KSR_SERVERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".servers"));
    let path = dir.join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!(
            "{name} is not installed at {}: run `bash scripts/setup.sh` (the README's test \
             command does this) — tests never skip a missing server",
            path.display()
        )
    }
}
