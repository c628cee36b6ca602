#!/usr/bin/env bash
# Installs the pinned real servers (nats-server, etcd, consul) and protoc into .servers/,
# from Debian packages, without touching the system's apt sources. Idempotent: a second run
# with everything present only prints the versions.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${KSR_SERVERS_DIR:-$root/.servers}"
apt_dir="$dest/.apt"

# Pinned upstream versions and the suite each comes from. The Debian revision (binNMU
# suffixes such as +b3) is resolved at download time, because Debian rebuilds packages and
# drops old revisions; the upstream version must match the pin exactly or setup fails.
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
)

BINARIES=(usr/sbin/nats-server usr/bin/etcd usr/bin/etcdctl usr/bin/consul usr/bin/protoc)

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
}

if have_all; then
  print_versions
  exit 0
fi

command -v apt-get >/dev/null || { echo "setup: apt-get is required (Debian)"; exit 1; }
command -v dpkg >/dev/null || { echo "setup: dpkg is required (Debian)"; exit 1; }

mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
cat >"$apt_dir/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian bullseye main
SRC
: >"$apt_dir/preferences"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=$apt_dir/preferences"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::State::Status=/dev/null"
  -o "APT::Get::List-Cleanup=0"
  -o "Acquire::Retries=3"
  -o "APT::Sandbox::User=root"
)
if [ ! -f "$apt_dir/lists/.updated" ]; then
  echo "setup: apt-get update (private lists in $apt_dir)"
  apt-get "${APT_OPTS[@]}" -q update >/dev/null
  touch "$apt_dir/lists/.updated"
fi

cd "$apt_dir/debs"
for spec in "${PACKAGES[@]}"; do
  IFS='|' read -r name suite version <<<"$spec"
  if ! ls "${name}_${version}"[-+]*.deb >/dev/null 2>&1; then
    full=$(apt-cache "${APT_OPTS[@]}" madison "$name" \
      | awk -F'|' -v s=" $suite/" -v v="$version" '
          index($3, s) { gsub(/ /, "", $2); split($2, a, /[-+~]/); sub(/^[0-9]+:/, "", a[1]);
                         if (a[1] == v) { print $2; exit } }')
    if [ -z "$full" ]; then
      echo "setup: $name $version not found in Debian $suite; available:" >&2
      apt-cache "${APT_OPTS[@]}" madison "$name" >&2 || true
      exit 1
    fi
    echo "setup: downloading $name=$full ($suite)"
    apt-get "${APT_OPTS[@]}" -q download "$name=$full" >/dev/null
  fi
done
for deb in *.deb; do
  dpkg -x "$deb" "$dest"
done
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
