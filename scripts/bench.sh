#!/usr/bin/env bash
# Benchmarks: builds the release binaries, then runs `ksr-bench <name> [flags]` (default: the
# four main ones), e.g. `bash scripts/bench.sh vulcand --etcd-api v2`; `e2e` (the whole pipeline at
# 1k–100k Services, about 10 minutes) runs only when named.
# Everything runs on loopback against the real servers from scripts/setup.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh >/dev/null
export PROTOC="$root/.servers/bin/protoc"
cargo build --release --workspace --bins --locked
if [ $# -gt 0 ]; then
  exec target/release/ksr-bench "$@"
fi
for b in watcher vulcand consul replay; do
  target/release/ksr-bench "$b"
done
