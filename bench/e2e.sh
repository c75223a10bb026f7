#!/usr/bin/env bash
# End-to-end load harness with tools nobody on the project wrote:
#   wrk (Debian) posts ~1 KB message.created events over 64 connections to
#   `wasmhook serve` (release build, durable 202s, one tenant,
#   standard-webhooks signing), nginx (Debian) answers every delivery 204;
#   then, in the same run, the same wrk posts the same body straight to
#   nginx: the loopback ceiling.
# Prints one table: events/s accepted, deliveries/s end to end, server CPU
# per delivery, ingest latency p50/p99, the data directory's size per
# accepted event once all is delivered, and the ratio to the ceiling.
#
#   bench/e2e.sh                 # fan-out 1 (at peak, then at half of it), fan-out 10,
#                                # batches of 100, ceiling
#   DURATION=20 CONNECTIONS=64 bench/e2e.sh
#   WASMHOOK_BIN=/path/to/other/wasmhook bench/e2e.sh   # another build
#   BACKEND=nats1 bench/e2e.sh   # cluster mode: one node on one nats-server
#   BACKEND=nats3 bench/e2e.sh   # three nodes on a 3-server NATS cluster (wrk
#                                # posts to the first node; CPU counts every
#                                # node and every nats-server)
#   ONLY=1 bench/e2e.sh          # the first scenario (fan-out 1) and the ceiling
#   ORDER_KEYS=1000 ONLY=1 bench/e2e.sh  # ordered by conversation, 1,000 of them
#   PAYLOAD=random bench/e2e.sh  # an incompressible ~1 KB body
#   DEST=redis ONLY=1 bench/e2e.sh  # deliveries to a broker instead of nginx:
#                                # nats (a JetStream stream on its own
#                                # nats-server), amqp (a durable queue on a
#                                # RabbitMQ node), redis (a stream); counted
#                                # there by the brokers' Python clients
#                                # (bench/bus.py, a venv made on first use)
#
# Installs nothing: it says what is missing (apt-get install wrk nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
missing=()
BACKEND=${BACKEND:-sled}
tools="wrk nginx curl python3 cargo"
[ "$BACKEND" != sled ] && tools="$tools nats-server"
for tool in $tools; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (Debian: apt-get install wrk nginx-light curl)" >&2
  exit 2
fi

# WASMHOOK_BIN: another build of the binary (before/after in one session).
if [ -n "${WASMHOOK_BIN:-}" ]; then
  BIN=$WASMHOOK_BIN
else
  cargo build --release -q -p wasmhook
  BIN=target/release/wasmhook
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
ticks_per_sec=$(getconf CLK_TCK)

# --- nginx: the receiver, one access-log line per delivery ------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/logs"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/logs/access.log combined buffer=256k flush=200ms;
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport;
    location / { return 204; }
  }
}
CONF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)
deliveries() { cat "$WORK/nginx/logs/access.log" 2>/dev/null | grep -c '"POST /hook' || true; }

# --- DEST: a broker as the destination instead of nginx ----------------------
DEST=${DEST:-http}
DESTINATION="\"url\":\"http://127.0.0.1:NGINX_PORT/hook\""
if [ "$DEST" != http ]; then
  VENV=${BENCH_VENV:-$HOME/.cache/wasmhook-bench-venv}
  [ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q nats-py==2.16.0 pika==1.4.4 redis==8.2.0; }
  dport=$(free_port)
  case "$DEST" in
    redis)
      redis-server --bind 127.0.0.1 --port "$dport" --save "" --appendonly no > "$WORK/dest.log" 2>&1 &
      PIDS+=($!); DURL="redis://127.0.0.1:$dport/0"
      DESTINATION="\"destination\":{\"type\":\"redis\",\"url\":\"$DURL\",\"stream\":\"bench\",\"max_len\":10000000}" ;;
    nats)
      nats-server -a 127.0.0.1 -p "$dport" -js -sd "$WORK/dest-nats" > "$WORK/dest.log" 2>&1 &
      PIDS+=($!); DURL="nats://127.0.0.1:$dport"
      DESTINATION="\"destination\":{\"type\":\"nats\",\"url\":\"$DURL\",\"subject\":\"bench.events\"}" ;;
    amqp)
      mkdir -p "$WORK/rabbit"; echo "[]." > "$WORK/rabbit/plugins"; eport=$(free_port)
      epmd -port "$eport" > /dev/null 2>&1 & PIDS+=($!)
      HOME=$WORK/rabbit RABBITMQ_NODENAME=bench$dport@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=$dport RABBITMQ_DIST_PORT=$(free_port) ERL_EPMD_PORT=$eport \
        RABBITMQ_MNESIA_BASE=$WORK/rabbit/mnesia RABBITMQ_LOG_BASE=$WORK/rabbit/log \
        RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rabbit/plugins RABBITMQ_CONFIG_FILE=$WORK/rabbit/rabbitmq \
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server > "$WORK/dest.log" 2>&1 &
      PIDS+=($!); DURL="amqp://guest:guest@127.0.0.1:$dport/%2f"
      DESTINATION="\"destination\":{\"type\":\"amqp\",\"url\":\"$DURL\",\"exchange\":\"\",\"routing_key\":\"bench\"}" ;;
    *) echo "DEST is http, nats, amqp or redis" >&2; exit 2 ;;
  esac
  for _ in $(seq 600); do (echo > "/dev/tcp/127.0.0.1/$dport") 2>/dev/null && break; sleep 0.1; done
  "$VENV/bin/python" bench/bus.py setup "$DEST" "$DURL" > /dev/null
  deliveries() { "$VENV/bin/python" bench/bus.py count "$DEST" "$DURL"; }
fi

# --- the event body (~1 KB) and wrk's Lua scripts ----------------------------
# PAYLOAD=random: the 700 characters are random base64 instead of "x"s, which
# no compression shrinks (the stored records' worst case).
if [ "${PAYLOAD:-}" = random ]; then
  PAD=$(python3 -c 'import base64, random; random.seed(7); print(base64.b64encode(random.randbytes(525)).decode())')
else
  PAD=$(python3 -c 'print("x" * 700)')
fi
DATA="{\"conversation_id\":\"c-1\",\"author\":\"visitor\",\"content\":\"$PAD\"}"
# ORDER_KEYS=N: every subscription is ordered by /data/conversation_id and
# the events spread over N conversations (the cost of ordering per key).
ORDER_KEYS=${ORDER_KEYS:-0}
DATA_TAIL="\",\"author\":\"visitor\",\"content\":\"$PAD\"}"
# What both event scripts share: unique ids per thread, JSON POSTs, and
# event(prefix) building one event.
preamble() {
  cat <<LUA
-- setup() runs in the main Lua state and sets each thread's global "tid",
-- so ids are unique across threads (a local here would shadow it).
local counter = 0
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local keys = $ORDER_KEYS
local function event(prefix)
  counter = counter + 1
  if keys > 0 then
    local conv = (tid * 7919 + counter) % keys
    return '{"id":"' .. prefix .. tid .. '-' .. counter .. '","type":"message.created","data":{"conversation_id":"c-' .. conv .. '$DATA_TAIL}'
  end
  return '{"id":"' .. prefix .. tid .. '-' .. counter .. '","type":"message.created","data":$DATA}'
end
LUA
}
{ preamble; cat <<'LUA'; } > "$WORK/single.lua"
function request()
  return wrk.format(nil, nil, nil, event("e"))
end
LUA
{ preamble; cat <<'LUA'; } > "$WORK/batch.lua"
function request()
  local events = {}
  for i = 1, 100 do events[i] = event("b") end
  return wrk.format(nil, nil, nil, '{"events":[' .. table.concat(events, ",") .. ']}')
end
LUA
cat > "$WORK/ceiling.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id":"x","type":"message.created","data":$DATA}'
LUA

# Runs wrk; prints "requests non2xx rps p50_ms p99_ms".
run_wrk() { # url script
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$2" "$1" 2>&1)
  echo "$out" > "$WORK/last-wrk.txt"
  python3 - "$WORK/last-wrk.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s|m|h)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000, "h": 3600000}[unit]
req = int(re.search(r"(\d+) requests in", t).group(1))
non = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
# The distribution's lines only ("71.50%" in the thread stats is not one).
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
print(req, int(non.group(1)) if non else 0, rps, p50, p99)
PY
}

# --- one scenario: a fresh server, FANOUT subscriptions, wrk, drain ---------
scenario() { # label fanout script path per_request
  local label=$1 fanout=$2 script=$3 path=$4 per=$5
  local port data token key
  port=$(free_port); data="$WORK/data-$(wc -l < "$WORK/table.txt")"; token=bench-operator-token-0123456789abcdef
  local pids=() nats_args=()
  case "$BACKEND" in
    nats1|nats3)
      local n=${BACKEND#nats} routes="" urls="" cports=() nports=()
      for i in $(seq 0 $((n - 1))); do cports+=("$(free_port)"); nports+=("$(free_port)"); done
      for i in $(seq 0 $((n - 1))); do
        routes="$routes${routes:+,}nats-route://127.0.0.1:${cports[$i]}"
        urls="$urls${urls:+,}nats://127.0.0.1:${nports[$i]}"
      done
      for i in $(seq 0 $((n - 1))); do
        local cluster_args=()
        [ "$n" -gt 1 ] && cluster_args=(--cluster_name bench --cluster "nats://127.0.0.1:${cports[$i]}" --routes "$routes")
        nats-server -a 127.0.0.1 -p "${nports[$i]}" -n "n$i" -js -sd "$data-nats-$i" "${cluster_args[@]}" \
          > "$WORK/nats-$i.log" 2>&1 &
        pids+=($!); PIDS+=($!)
      done
      sleep 3
      nats_args=(--nats "$urls")
      ;;
  esac
  local nodes=1
  [ "$BACKEND" = nats3 ] && nodes=3
  local ports=("$port")
  for i in $(seq 1 $((nodes - 1))); do ports+=("$(free_port)"); done
  for i in $(seq 0 $((nodes - 1))); do
    # The backlog quota would turn a deep queue into 429s: this measures
    # throughput, so it is lifted.
    WASMHOOK_LIMITS_PENDING_DELIVERIES_PER_TENANT=1000000000 \
    WASMHOOK_ADMIN_TOKEN=$token WASMHOOK_SERVER_SECRETS_KEY=$(printf 'be%.0s' {1..32}) RUST_LOG=error "$BIN" serve --listen "127.0.0.1:${ports[$i]}" \
      --data "$data-$i" --allow-private-destinations "${nats_args[@]}" > "$WORK/server-$i.log" 2>&1 &
    pids+=($!); PIDS+=($!)
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 300); do curl -sf "127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
  done
  local created tenant
  created=$(curl -s -X POST "127.0.0.1:$port/v1/tenants" -H "Authorization: Bearer $token" -d '{"name":"bench"}')
  key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$created")
  tenant=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
  local ordering=""
  [ "$ORDER_KEYS" -gt 0 ] && ordering=",\"ordering\":{\"key\":\"/data/conversation_id\"}"
  for _ in $(seq "$fanout"); do
    curl -sf -X POST "127.0.0.1:$port/v1/subscriptions" -H "Authorization: Bearer $key" \
      -d "{${DESTINATION/NGINX_PORT/$NGINX_PORT},\"event_types\":[\"*\"],\"max_in_flight\":64$ordering}" >/dev/null
  done
  local before_log before_cpu started
  if [ "$nodes" -gt 1 ]; then
    # Every node leases its share of the partitions before the load, and
    # no node more (the first node takes them all, then gives back what
    # the others come for: partitions moving under load answer 503).
    local count=${WASMHOOK_CLUSTER_PARTITIONS:-64}
    local share=$(( (count + nodes - 1) / nodes ))
    for _ in $(seq 200); do
      local total=0 most=0 n
      for p in "${ports[@]}"; do
        n=$(curl -s "127.0.0.1:$p/healthz" | python3 -c 'import json,sys; print((json.load(sys.stdin).get("cluster") or {}).get("partitions_leased", 0))')
        total=$((total + n)); [ "$n" -gt "$most" ] && most=$n
      done
      [ "$total" -ge "$count" ] && [ "$most" -le "$share" ] && break; sleep 0.3
    done
    # Partitioned: wrk posts to the first node, which forwards every
    # request unless it holds the tenant's partition (FNV-1a of its id).
    if [ "${WASMHOOK_CLUSTER_MODE:-}" = partitioned ]; then
      curl -s "127.0.0.1:$port/healthz" | python3 -c '
import json, sys
tenant, count = sys.argv[1], int(sys.argv[2])
h = 0x811C9DC5
for b in tenant.encode():
    h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
held = (json.load(sys.stdin).get("cluster") or {}).get("data_partitions", [])
print(f"partition {h % count} of tenant {tenant}: the first node " + ("holds it" if h % count in held else "forwards every request"), file=sys.stderr)
' "$tenant" "${WASMHOOK_CLUSTER_PARTITIONS:-64}"
    fi
  fi
  before_log=$(deliveries); before_cpu=$(cpu_ticks "${pids[@]}"); started=$(date +%s.%N)
  read -r req non rps p50 p99 < <(WRK_KEY=$key run_wrk_auth "127.0.0.1:$port$path" "$script" "$key")
  local accepted=$(( (req - non) * per ))
  local expected=$(( before_log + accepted * fanout ))
  local deadline=$(( $(date +%s) + 300 ))
  while [ "$(deliveries)" -lt "$expected" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
  local ended got cpu
  ended=$(date +%s.%N); got=$(( $(deliveries) - before_log ))
  cpu=$(( $(cpu_ticks "${pids[@]}") - before_cpu ))
  # Disk: the data directories (every node's; NATS's own are apart) once
  # everything is delivered and the periodic flush has run.
  sleep 2
  local disk
  disk=$(du -scb "$data"-[0-9]* | tail -1 | cut -f1)
  python3 - "$label" "$accepted" "$got" "$non" "$started" "$ended" "$cpu" "$ticks_per_sec" "$p50" "$p99" "$DURATION" "$fanout" "$disk" <<'PY' >> "$WORK/table.txt"
import sys
label, accepted, got, non, t0, t1, cpu, hz, p50, p99, dur, fanout, disk = sys.argv[1:]
accepted, got, non, fanout = int(accepted), int(got), int(non), int(fanout)
secs = float(t1) - float(t0)
cpu_s = int(cpu) / int(hz)
print(f"{label}\t{accepted / float(dur):.0f}\t{got / secs:.0f}\t{cpu_s * 1e6 / max(got, 1):.0f}\t{float(p50):.1f}\t{float(p99):.1f}\t{got}/{accepted * fanout}\t{non}\t{int(disk) / max(accepted, 1) / 1000:.1f}")
PY
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}

# wrk with the tenant's key (a header set in the script's environment).
run_wrk_auth() { # url script key
  local script="$WORK/auth-$(basename "$2")"
  { echo "wrk.headers[\"Authorization\"] = \"Bearer $3\""; cat "$2"; } > "$script"
  run_wrk "http://$1" "$script"
}

: > "$WORK/table.txt"
scenario "single events, fan-out 1" 1 "$WORK/single.lua" /v1/events 1
if [ -z "${ONLY:-}" ]; then
# The same at half of that peak: each connection waits between requests
# (wrk's delay hook) so that CONNECTIONS / delay is half the rate just
# measured; the latency then is what a sender sees below saturation.
peak=$(head -1 "$WORK/table.txt" | cut -f2)
delay_ms=$(python3 -c "print(max(1, round($CONNECTIONS / ($peak / 2) * 1000)))")
{ cat "$WORK/single.lua"; echo "function delay() return $delay_ms end"; } > "$WORK/half.lua"
scenario "single events, fan-out 1, half load" 1 "$WORK/half.lua" /v1/events 1
scenario "single events, fan-out 10" 10 "$WORK/single.lua" /v1/events 1
scenario "batches of 100, fan-out 1" 1 "$WORK/batch.lua" /v1/events/batch 100
fi
read -r creq cnon crps cp50 cp99 < <(run_wrk "http://127.0.0.1:$NGINX_PORT/hook" "$WORK/ceiling.lua")

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; backend $BACKEND; destination $DEST; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "| run | events/s accepted | deliveries/s | server CPU per delivery | ingest p50 / p99 | delivered / counted by wrk | non-2xx | disk per event | ratio to ceiling |"
echo "|---|---|---|---|---|---|---|---|---|"
while IFS=$'\t' read -r label acc dps cpu p50 p99 delivered non disk; do
  ratio=$(python3 -c "print(f'{$acc / $crps:.3f}')")
  echo "| $label | $acc | $dps | ${cpu} µs | $p50 / $p99 ms | $delivered | $non | ${disk} KB | $ratio |"
done < "$WORK/table.txt"
printf '| ceiling: wrk -> nginx | %.0f requests/s | | | %.1f / %.1f ms | | %s | | 1 |\n' "$crps" "$cp50" "$cp99" "$cnon"
