#!/usr/bin/env bash
# Installs the pinned real servers (nats-server, etcd, consul), protoc and promtool (checks the
# alerting rules in deploy/monitoring/) into .servers/,
# from Debian packages, without touching the system's apt sources. Idempotent: a second run
# with everything present only prints the versions.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${KSR_SERVERS_DIR:-$root/.servers}"

# Pinned upstream versions and the suite each comes from (see lib/debs.sh).
# name|suite|upstream version
PACKAGES=(
  "nats-server|trixie|2.10.27"
  "etcd-server|trixie|3.5.16"
  "etcd-client|trixie|3.5.16"
  "consul|bullseye|1.8.7"
  "protobuf-compiler|bookworm|3.21.12"
  "libprotoc32|bookworm|3.21.12"
  "libprotobuf32|bookworm|3.21.12"
  "libprotobuf-dev|bookworm|3.21.12"
  "promtool|trixie|2.53.3"
)

BINARIES=(usr/sbin/nats-server usr/bin/etcd usr/bin/etcdctl usr/bin/consul usr/bin/protoc usr/bin/promtool)

have_all() {
  for b in "${BINARIES[@]}"; do [ -x "$dest/bin/$(basename "$b")" ] || return 1; done
  [ -x "$dest/bin/nats-server" ] \
    && [ -f "$dest/usr/include/google/protobuf/descriptor.proto" ] \
    && [ -f "$dest/.versions" ] && [ "$(cat "$dest/.versions")" = "${PACKAGES[*]}" ]
}

print_versions() {
  echo "servers in $dest/bin:"
  echo "  nats-server $("$dest/bin/nats-server" --version | awk '{print $NF}')"
  echo "  etcd        $("$dest/bin/etcd" --version | awk '/etcd Version/{print $3}')"
  echo "  consul      $("$dest/bin/consul" version | awk 'NR==1{print $2}')"
  echo "  protoc      $("$dest/bin/protoc" --version | awk '{print $2}')"
  echo "  promtool    $("$dest/bin/promtool" --version 2>&1 | awk 'NR==1{print $3}')"
}

if have_all; then
  print_versions
  exit 0
fi

# shellcheck source=lib/debs.sh
source "$root/scripts/lib/debs.sh"
fetch_debs "$dest" "${PACKAGES[@]}"
# protoc needs its shared libraries, unpacked beside it: a wrapper sets the library path.
mkdir -p "$dest/bin"
for b in "${BINARIES[@]}"; do ln -sf "../$b" "$dest/bin/$(basename "$b")"; done
rm -f "$dest/bin/protoc"
cat >"$dest/bin/protoc" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$dest/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/usr/bin/protoc" -I "$dest/usr/include" "\$@"
WRAP
chmod +x "$dest/bin/protoc"
echo "${PACKAGES[*]}" >"$dest/.versions"
print_versions
