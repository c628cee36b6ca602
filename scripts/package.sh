#!/usr/bin/env bash
# Builds the release binaries and a tarball people can install from:
#   dist/kube-service-router-<version>-<target>.tar.gz   (+ .sha256)
# holding bin/ (ksr-watcher, ksr-publisher-vulcand, ksr-publisher-consul, ksrctl; each reports
# its version and commit with --version), deploy/ (Kubernetes manifests, the NATS server
# configuration deploy/kubernetes/base/nats.conf, Consul ACL policies, dashboard and alerts),
# README.md, LICENSE and SHA256SUMS of every file.
#
#   bash scripts/package.sh
#
# KSR_PACKAGE_OUT sets the output directory (default dist/); KSR_PACKAGE_PREBUILT=<dir> takes
# the binaries from <dir> instead of building them (the tests package the binaries they built).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${KSR_PACKAGE_OUT:-dist}
binaries=(ksr-watcher ksr-publisher-vulcand ksr-publisher-consul ksrctl)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' watcher/Cargo.toml | head -n 1)
target=$(rustc -vV | sed -n 's/^host: //p')

if [[ -n "${KSR_PACKAGE_PREBUILT:-}" ]]; then
  bin_dir=$KSR_PACKAGE_PREBUILT
else
  # etcd-client compiles etcd's protobuf definitions: scripts/setup.sh installs protoc.
  if [[ -z "${PROTOC:-}" && -x .servers/bin/protoc ]]; then
    export PROTOC=$PWD/.servers/bin/protoc
  fi
  KSR_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  export KSR_GIT_COMMIT
  packages=()
  for b in "${binaries[@]}"; do packages+=(-p "$b"); done
  cargo build --release --locked "${packages[@]}"
  bin_dir=${CARGO_TARGET_DIR:-target}/release
fi

name=kube-service-router-$version-$target
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/$name
mkdir -p "$root/bin" "$root/deploy"
for b in "${binaries[@]}"; do
  install -m 0755 "$bin_dir/$b" "$root/bin/$b"
  "$root/bin/$b" --version >/dev/null
done
cp -r deploy/kubernetes deploy/consul deploy/monitoring "$root/deploy/"
cp README.md LICENSE Dockerfile "$root/"
(cd "$root" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)

mkdir -p "$out"
tarball=$out/$name.tar.gz
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$tarball" "$name"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "$tarball"
