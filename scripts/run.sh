#!/usr/bin/env bash
# The README's run command: the whole system on loopback with demo Services.
# Installs the servers (scripts/setup.sh), builds the binaries, then starts the local stack.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec bash deploy/local/stack.sh "$@"
