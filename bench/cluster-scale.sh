#!/usr/bin/env bash
# Cluster mode at issue 8's scale: 1,000 tenants and 10,000 subscriptions on
# three nodes and a 3-server NATS cluster (R3) on this machine; setup time,
# idle cost, a load of 10,000 deliveries, kill -9 of a node under load, its
# restart, the snapshot size (bench/cluster_scale.py says what each is).
#
#   bench/cluster-scale.sh          # one run
#   RUNS=3 bench/cluster-scale.sh   # medians of three
#   TENANTS=100 SUBS_PER_TENANT=10 LEASE_SECS=20 SNAPSHOT_SECS=30 bench/cluster-scale.sh
#   MODE=partitioned PARTITIONS=12 bench/cluster-scale.sh   # the scale-out (issue 25)
#
# Needs nats-server and nginx (Debian: apt-get install nats-server nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nats-server nginx python3 cargo; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install nats-server nginx-light)" >&2; exit 2; }
done
if [ -n "${WASMHOOK_BIN:-}" ]; then
  BIN=$WASMHOOK_BIN
else
  cargo build --release -q -p wasmhook
  BIN=target/release/wasmhook
fi
exec python3 bench/cluster_scale.py "$BIN" "${RUNS:-1}"
