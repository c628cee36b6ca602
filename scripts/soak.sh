#!/usr/bin/env bash
# Soak: the end-to-end fault scenario at any size, against the release binaries.
#   bash scripts/soak.sh [--changes N] [--faults M] [--seed S] [--no-reconcile] [--clustered] [--logs DIR]
# (--clustered: three-node NATS, etcd and Consul; the faults kill their leaders.)
# Prints what it changed, each fault, how many etcd revisions and Consul indexes the
# recorder checked, and that the end state equals the model; exits non-zero otherwise.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh >/dev/null
export PROTOC="$root/.servers/bin/protoc"
cargo build --release --workspace --bins --locked
exec target/release/ksr-bench soak "$@"
