#!/usr/bin/env bash
# The local stack: nats-server, etcd and Consul on loopback; two watchers (clusters east and
# west) reading deploy/local/<cluster>/; two replicas of each publisher; then a live table of
# the routes vulcand would serve (read back from etcd) and Consul's DNS answer for each host.
# Edit or delete a manifest under deploy/local/ and the table changes within a second.
# Ctrl-C stops everything this script started.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="${KSR_SERVERS_DIR:-$root/.servers}/bin"
run="${KSR_RUN_DIR:-$root/.run}"
base="${KSR_PORT_BASE:-24000}"          # ports base+0 … base+20 on 127.0.0.1
nats_port=$((base)); etcd_port=$((base + 1)); etcd_peer=$((base + 2))
consul_http=$((base + 3)); consul_dns=$((base + 4)); consul_server=$((base + 5))
consul_lan=$((base + 6)); consul_wan=$((base + 7))

export PROTOC="$bin/protoc"
echo "building the release binaries (first run: a few minutes)…"
cargo build --release --locked -q -p ksr-watcher -p ksr-publisher-vulcand -p ksr-publisher-consul -p ksrctl
target="${CARGO_TARGET_DIR:-$root/target}/release"

rm -rf "$run" && mkdir -p "$run/logs"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping…"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; logs were in $run/logs"
}
trap cleanup INT TERM EXIT

start() { # name, command…
  local name=$1; shift
  "$@" >"$run/logs/$name.log" 2>&1 &
  pids+=($!)
}

wait_http() { # port, path, what
  for _ in $(seq 1 300); do
        if { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then
      printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
      if head -n1 <&3 | grep -q ' 200 '; then exec 3>&-; return 0; fi
      exec 3>&-
    fi
    sleep 0.1
  done
  echo "$3 did not come up; see $run/logs" >&2; exit 1
}

# NATS with authentication: one NKey per role (kept across runs), each role limited to its
# subjects (README, "Security").
"$target/ksrctl" nats-auth --out "$run/nats-keys" --clusters east,west >/dev/null
cp "$run/nats-keys/ksr-auth.conf" "$run/ksr-auth.conf"
printf 'include ksr-auth.conf\n' >"$run/nats.conf"
start nats "$bin/nats-server" -c "$run/nats.conf" -a 127.0.0.1 -p "$nats_port" -m $((base + 8)) -js -sd "$run/nats"
start etcd "$bin/etcd" --name ksr --data-dir "$run/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "ksr=http://127.0.0.1:$etcd_peer" --log-level warn
start consul "$bin/consul" agent -server -bootstrap -node ksr-demo-agent -data-dir "$run/consul" \
  -bind 127.0.0.1 -advertise 127.0.0.1 -client 127.0.0.1 -http-port "$consul_http" -dns-port "$consul_dns" \
  -server-port "$consul_server" -serf-lan-port "$consul_lan" -serf-wan-port "$consul_wan" \
  -disable-host-node-id -log-level warn -hcl 'ports { grpc = -1 } performance { raft_multiplier = 1 } disable_update_check = true'
wait_http $((base + 8)) /healthz nats-server
wait_http "$etcd_port" /health etcd
wait_http "$consul_http" /v1/status/leader consul

common=(--nats-url "nats://127.0.0.1:$nats_port" --log-format text)
key() { echo "--nats-nkey=$run/nats-keys/$1.nk"; }
for cluster in east west; do
  n=$([ "$cluster" = east ] && echo 10 || echo 11)
  start "watcher-$cluster" "$target/ksr-watcher" "${common[@]}" "$(key "watcher-$cluster")" --cluster "$cluster" --source files \
    --manifests "$root/deploy/local/$cluster" --admin-addr "127.0.0.1:$((base + n))" --observer "watcher-$cluster"
done
for i in 1 2; do
  start "vulcand-$i" "$target/ksr-publisher-vulcand" "${common[@]}" "$(key publisher-vulcand)" --etcd-endpoints "127.0.0.1:$etcd_port" \
    --admin-addr "127.0.0.1:$((base + 11 + i))"
  start "consul-$i" "$target/ksr-publisher-consul" "${common[@]}" "$(key publisher-consul)" --consul-address "http://127.0.0.1:$consul_http" \
    --router-address 127.0.0.1 --router-port 8181 --admin-addr "127.0.0.1:$((base + 13 + i))"
done
for p in 10 11 12 13 14 15; do wait_http $((base + p)) /readyz "process on admin port $((base + p))"; done
# After the watchers are ready: the stream exists.
start checkpointer "$target/ksrctl" checkpoint --follow --every 1000 --nats-url "nats://127.0.0.1:$nats_port" "$(key checkpointer)"

cat <<INFO

kube-service-router is running on loopback:
  nats-server  nats://127.0.0.1:$nats_port      stream KSR_ROUTES; NKeys in $run/nats-keys (ksrctl: --nats-nkey $run/nats-keys/ksrctl.nk)
  etcd         127.0.0.1:$etcd_port          vulcand keys under vulcand/ (etcdctl --endpoints 127.0.0.1:$etcd_port get --prefix vulcand/)
  consul       http://127.0.0.1:$consul_http    DNS on 127.0.0.1:$consul_dns (dig @127.0.0.1 -p $consul_dns myapp-default.test.service.consul)
  watchers     east, west (manifests in deploy/local/east and deploy/local/west)
  publishers   2 × vulcand, 2 × consul; admin ports $((base + 10))–$((base + 15)) serve /livez /readyz /metrics
  checkpointer ksrctl checkpoint --follow (routing-table checkpoints every 1,000 events)
Edit, add or delete a manifest and watch the table change. Ctrl-C stops everything.

INFO
"$target/ksrctl" routes --watch --etcd-endpoints "127.0.0.1:$etcd_port" --consul-dns "127.0.0.1:$consul_dns" &
pids+=($!)
wait "${pids[-1]}"
