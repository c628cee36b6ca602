#!/usr/bin/env bash
# Benchmarks: builds the release binaries, then runs `ksr-bench <name>` (default: all).
# Everything runs on loopback against the real servers from scripts/setup.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh >/dev/null
export PROTOC="$root/.servers/bin/protoc"
cargo build --release --workspace --bins --locked
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(watcher vulcand consul replay)
for b in "${benches[@]}"; do
  target/release/ksr-bench "$b"
done
