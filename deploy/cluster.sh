#!/usr/bin/env bash
# A whole wasmhook cluster on one machine, to try cluster mode: three
# nats-server processes (JetStream on, one NATS cluster) and three wasmhook
# nodes using them. Everything lives under one directory and stops on
# Ctrl-C. For a real deployment, run one NATS server and one node per
# machine with the same settings (see docs/cluster.md).
#
#   deploy/cluster.sh                  # ports 4222-4224 (NATS), 8081-8083 (API)
#   DIR=/tmp/wh-cluster deploy/cluster.sh
#
# Needs nats-server (Debian: apt-get install nats-server) and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${DIR:-$(mktemp -d -t wasmhook-cluster.XXXXXX)}
# The operator token: the same on every node (cluster mode refuses to start
# without it, since a token generated per node would differ).
export WASMHOOK_ADMIN_TOKEN=${WASMHOOK_ADMIN_TOKEN:-wha_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
# Secrets are sealed at rest under this key: the same on every node.
export WASMHOOK_SERVER_SECRETS_KEY=${WASMHOOK_SERVER_SECRETS_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
command -v nats-server >/dev/null || { echo "missing: nats-server (apt-get install nats-server)" >&2; exit 2; }
cargo build --release -q -p wasmhook
BIN=target/release/wasmhook

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# --- NATS: three servers, routed to each other -------------------------------
# -js: JetStream on, its files under -sd. --cluster: where the servers talk to
# each other; --routes: all three (each ignores its own). --cluster_name must
# match on all of them.
ROUTES="nats-route://127.0.0.1:6222,nats-route://127.0.0.1:6223,nats-route://127.0.0.1:6224"
for i in 0 1 2; do
  nats-server -n "nats-$i" -a 127.0.0.1 -p $((4222 + i)) -js -sd "$DIR/nats-$i" \
    --cluster_name wasmhook --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$ROUTES" \
    >"$DIR/nats-$i.log" 2>&1 &
  PIDS+=($!)
done
URLS="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
sleep 3

# --- wasmhook: three nodes ---------------------------------------------------
# --nats: every NATS URL (a node reconnects to another one if its server
# dies). --data: this node's caches only (its view of the log, compiled
# plugins); it can be deleted while the node is stopped. Each node serves the
# whole API: put them behind any load balancer.
# WASMHOOK_CLUSTER_NODE_ID names the node in leases and logs.
for i in 0 1 2; do
  WASMHOOK_CLUSTER_NODE_ID="node-$i" "$BIN" serve --nats "$URLS" \
    --listen "127.0.0.1:$((8081 + i))" --data "$DIR/node-$i" \
    >"$DIR/node-$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 2
cat <<EOF
wasmhook cluster running under $DIR
  API:      http://127.0.0.1:8081  http://127.0.0.1:8082  http://127.0.0.1:8083
  NATS:     $URLS
  operator token: $WASMHOOK_ADMIN_TOKEN
  health:   curl -s http://127.0.0.1:8081/healthz
  logs:     $DIR/*.log
Ctrl-C stops everything (the data stays in $DIR).
EOF
wait
