#!/usr/bin/env bash
# The local stack: nats-server, etcd and Consul on loopback, two watchers (east, west) reading
# deploy/local/<cluster>/, two replicas of each publisher. Not wired up yet (issue 6): this
# prints the plan so the README's run command stays true.
set -euo pipefail
cat <<PLAN
kube-service-router local stack (planned, see issue 6):
  nats-server (JetStream)   127.0.0.1:random   stream KSR_ROUTES
  etcd                      127.0.0.1:random   vulcand keys under vulcand/
  consul                    127.0.0.1:random   DNS names <name>-<namespace>.test.service.consul
  ksr-watcher --cluster east  --source files deploy/local/east
  ksr-watcher --cluster west  --source files deploy/local/west
  ksr-publisher-vulcand x2, ksr-publisher-consul x2
The processes are not built yet; run the tests with: bash scripts/test.sh
PLAN
