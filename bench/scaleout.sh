#!/usr/bin/env bash
# Scale-out of cluster mode (issue 25): N nodes, each held to the same CPU
# quota in its own cgroup, on a 3-server NATS cluster; wrk spread over the
# nodes with several tenants, nginx receiving. Prints deliveries/s and CPU
# per delivery (the nodes, the NATS servers) for each N, and the ratios to
# one node (bench/scaleout.py says how).
#
#   bench/scaleout.sh                         # N = 1 2 3, 0.25 core each, 3 runs
#   QUOTA=0.5 NODES="1 3" RUNS=5 bench/scaleout.sh
#   TENANTS=12 CONNECTIONS=8 DURATION=20 bench/scaleout.sh
#   MODE=partitioned PARTITIONS=6 bench/scaleout.sh   # the scale-out (issue 25)
#   MODE=partitioned PARTITIONS=6 ROUTING=holder bench/scaleout.sh   # each tenant sent to its holder
#
# Needs root (cgroup v1 `cpu` controller at /sys/fs/cgroup/cpu), nats-server,
# nginx and wrk (Debian: apt-get install nats-server nginx-light wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nats-server nginx wrk python3 cargo; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install nats-server nginx-light wrk)" >&2; exit 2; }
done
if [ -n "${WASMHOOK_BIN:-}" ]; then
  BIN=$WASMHOOK_BIN
else
  cargo build --release -q -p wasmhook
  BIN=target/release/wasmhook
fi
exec python3 bench/scaleout.py "$BIN"
