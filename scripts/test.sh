#!/usr/bin/env bash
# The README's test command: installs the pinned servers and protoc (scripts/setup.sh), then
# checks formatting, lints and runs every test of the workspace against the real servers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v cargo >/dev/null; then
  echo "test: cargo is required (Rust >= 1.89; https://rustup.rs)" >&2
  exit 1
fi

bash scripts/setup.sh
export PROTOC="$root/.servers/bin/protoc"

echo "test: cargo fmt --check"
cargo fmt --all -- --check

echo "test: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The end-to-end tests run the real binaries as separate processes.
cargo build --workspace --bins --locked

if cargo nextest --version >/dev/null 2>&1; then
  # Doc tests first: nextest does not run them, and its summary should close the output.
  cargo test --workspace --locked --doc --quiet
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
