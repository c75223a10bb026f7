#!/usr/bin/env bash
# What N durable consumers cost a 3-server NATS JetStream cluster on this
# machine: creation time, the servers' memory and idle CPU, their disk, and
# the time until every consumer answers after a restart of the whole
# cluster. Issue 8 asks for this before choosing how cluster mode maps
# subscriptions to JetStream.
#
#   bench/nats-consumer-cost.sh 1000 10000      # per-subscription consumers
#   MODE=partitions bench/nats-consumer-cost.sh 64
#
# Needs nats-server (Debian: apt-get install nats-server) and python3; it
# installs the nats-py client into a venv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-per-sub}
IDLE=${IDLE:-20}
# Each replicated consumer keeps files open on every server: at 10,000 the
# servers need more than a default limit. NOFILE raises it (as root).
if [ -n "${NOFILE:-}" ]; then ulimit -n "$NOFILE" || echo "cannot raise the open-file limit to $NOFILE"; fi
echo "open-file limit: $(ulimit -n)"
command -v nats-server >/dev/null || { echo "missing: nats-server (apt-get install nats-server)" >&2; exit 2; }
VENV=target/bench-venv
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q nats-py; }
PY="$VENV/bin/python bench/nats_consumer_cost.py"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { local t=0; for p in "${PIDS[@]}"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
rss_mb() { local t=0; for p in "${PIDS[@]}"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; echo $((t / 1024)); }
HZ=$(getconf CLK_TCK)

for N in "$@"; do
  WORK=$(mktemp -d)
  PIDS=()
  CPORTS=() ; PORTS=()
  for i in 1 2 3; do PORTS+=("$(free_port)"); CPORTS+=("$(free_port)"); done
  ROUTES="nats-route://127.0.0.1:${CPORTS[0]},nats-route://127.0.0.1:${CPORTS[1]},nats-route://127.0.0.1:${CPORTS[2]}"
  URLS="nats://127.0.0.1:${PORTS[0]},nats://127.0.0.1:${PORTS[1]},nats://127.0.0.1:${PORTS[2]}"
  start_cluster() {
    PIDS=()
    for i in 0 1 2; do
      nats-server -a 127.0.0.1 -p "${PORTS[$i]}" -n "n$i" --cluster_name bench \
        --cluster "nats://127.0.0.1:${CPORTS[$i]}" --routes "$ROUTES" \
        -js -sd "$WORK/n$i" >"$WORK/n$i.log" 2>&1 &
      PIDS+=($!)
    done
    sleep 3
  }
  start_cluster
  base_rss=$(rss_mb)
  out=$(timeout 1800 $PY create "$URLS" "$MODE" "$N" || echo "create failed or timed out")
  if grep -q "out of resources" "$WORK"/n*.log; then
    out="$out; JetStream DISABLED itself on: $(grep -l 'out of resources' "$WORK"/n*.log | xargs -n1 basename | tr '\n' ' ')($(grep -ho 'too many open files' "$WORK"/n*.log | head -1))"
  fi
  sleep 5
  t0=$(ticks); sleep "$IDLE"; t1=$(ticks)
  idle_cpu=$(python3 -c "print(f'{($t1-$t0)/$HZ/$IDLE*100:.1f}')")
  rss=$(rss_mb)
  disk=$(du -sm "$WORK" | cut -f1)
  kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true
  start_cluster
  ready=$(timeout 1800 $PY ready "$URLS" "$MODE" "$N" || echo "not ready in 1800 s")
  rss_after=$(rss_mb)
  echo "mode=$MODE consumers=$N | $out | RSS 3 servers: $base_rss MB empty, $rss MB with them, $rss_after MB after restart | idle CPU ${idle_cpu}% of one core | disk ${disk} MB | restart: $ready"
  kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true
  rm -rf "$WORK"
done
