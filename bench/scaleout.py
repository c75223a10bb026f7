"""Scale-out of cluster mode: does a cluster of N nodes, each held to the
same CPU quota, deliver N times what one node does? Run by
bench/scaleout.sh (which builds the release binary); only the standard
library, nats-server, nginx and wrk.

Per run and per N (1, 2, 3 by default), on fresh servers:
  - a 3-server NATS cluster (JetStream, R3), outside any quota;
  - N wasmhook nodes, each in its own cgroup v1 `cpu` group with a quota of
    QUOTA cores (as if each were its own small machine);
  - TENANTS tenants, each with one subscription delivering to nginx
    (`return 204`, outside the quotas), created through node 0;
  - one wrk per node (outside the quotas) with CONNECTIONS / N connections
    (the same total load whatever N), each rotating over every tenant's key
    (a load balancer in front of the nodes: a node sees every tenant),
    posting ~1 KB message.created events for DURATION s;
  - then waits until nginx has every accepted event's delivery.

Prints per N: events accepted, deliveries/s (from the first request until
the last delivery), CPU per delivery of all the nodes together and of the
NATS servers, and the ratios to N = 1. Medians of RUNS runs.

  python3 bench/scaleout.py BIN

Needs root and the cgroup v1 `cpu` controller at /sys/fs/cgroup/cpu.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import HZ, TOKEN, Processes, call, cpu_ticks, free_port, start_nats_cluster, start_nginx, \
    wait_until

QUOTA = float(os.environ.get("QUOTA", "0.25"))
NODES = [int(n) for n in os.environ.get("NODES", "1 2 3").split()]
RUNS = int(os.environ.get("RUNS", "3"))
DURATION = int(os.environ.get("DURATION", "20"))
TENANTS = int(os.environ.get("TENANTS", "12"))
# The same total load whatever N: CONNECTIONS spread evenly over the nodes.
CONNECTIONS = int(os.environ.get("CONNECTIONS", "24"))
# "replicas" (every node applies every write) or "partitioned" (issue 25:
# each tenant's data on the node leasing its partition).
MODE = os.environ.get("MODE", "replicas")
PARTITIONS = int(os.environ.get("PARTITIONS", "64"))
# Partitioned mode: "blind" (every node's wrk rotates over every tenant, as
# a load balancer that does not know the partitions: most requests are
# forwarded) or "holder" (each tenant's requests go to the node holding its
# partition, as a partition-aware balancer would send them; the
# connections split by tenants held).
ROUTING = os.environ.get("ROUTING", "blind")
CGROUP = "/sys/fs/cgroup/cpu"
PAD = "x" * 700
DATA = '{"conversation_id":"c-1","author":"visitor","content":"%s"}' % PAD


def partition_of(tenant_id, partitions):
    """The partition of a tenant's data, as the nodes compute it (FNV-1a of
    the id; `cluster::leases::partition_of`)."""
    h = 0x811C9DC5
    for b in tenant_id.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % max(1, partitions)


class Run(Processes):
    def __init__(self, binary, work, nodes):
        super().__init__(work)
        self.binary = binary
        self.n = nodes
        self.groups = []

    def spawn(self, args, env=None, log="x.log", group=None):
        if group is not None:
            # Into the node's group before exec, so every thread is held.
            args = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"] + args
        return super().spawn(args, env=env, log=log)

    def stop_all(self):
        super().stop_all()
        for g in self.groups:
            try:
                os.rmdir(g)
            except OSError:
                pass

    def group(self, name):
        g = os.path.join(CGROUP, f"wasmhook-scaleout-{os.getpid()}-{name}")
        os.makedirs(g, exist_ok=True)
        with open(os.path.join(g, "cpu.cfs_period_us"), "w") as f:
            f.write("100000")
        with open(os.path.join(g, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(QUOTA * 100000)))
        self.groups.append(g)
        return g

    def start_nats(self):
        self.nats, self.nats_urls, _ = start_nats_cluster(self.spawn, self.work, "scaleout")

    def start_nginx(self):
        self.nginx_port, self.access_log = start_nginx(self.spawn, self.work)

    def delivered(self):
        try:
            with open(self.access_log) as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def start_nodes(self):
        self.ports = [free_port() for _ in range(self.n)]
        self.nodes = []
        for i in range(self.n):
            env = dict(os.environ, WASMHOOK_ADMIN_TOKEN=TOKEN, RUST_LOG="error",
                       WASMHOOK_SERVER_SECRETS_KEY="be" * 32,
                       WASMHOOK_CLUSTER_NODE_ID=f"node{i}",
                       WASMHOOK_CLUSTER_MODE=MODE,
                       WASMHOOK_CLUSTER_PARTITIONS=str(PARTITIONS),
                       WASMHOOK_LIMITS_PENDING_DELIVERIES_PER_TENANT="1000000000")
            self.nodes.append(self.spawn(
                [self.binary, "serve", "--listen", f"127.0.0.1:{self.ports[i]}",
                 "--data", os.path.join(self.work, f"node-{i}"),
                 "--allow-private-destinations", "--nats", self.nats_urls],
                env=env, log=f"node-{i}.log", group=self.group(f"node{i}")))
        for i in range(self.n):
            wait_until(lambda i=i: call(self.base(i), "GET", "/healthz", timeout=2)[0] == 200,
                       120, f"node {i}")
        wait_until(lambda: sum(self.leased(i) for i in range(self.n)) >= PARTITIONS, 180, "leases")
        # And spread: a node that joined late takes its share from the
        # others, and deliveries wait while their partition moves.
        share = PARTITIONS // self.n - 1
        wait_until(lambda: min(self.leased(i) for i in range(self.n)) >= share, 180,
                   "leases spread over the nodes")

    def base(self, i):
        return f"http://127.0.0.1:{self.ports[i]}"

    def leased(self, i):
        status, h = call(self.base(i), "GET", "/healthz", timeout=5)
        return (h.get("cluster") or {}).get("partitions_leased", 0) if status == 200 else 0

    def data_partitions(self, i):
        status, h = call(self.base(i), "GET", "/healthz", timeout=5)
        return set((h.get("cluster") or {}).get("data_partitions") or []) if status == 200 else set()

    def wrk_script(self, keys, prefix):
        path = os.path.join(self.work, f"{prefix}.lua")
        quoted = ", ".join(f'"{k}"' for k in keys)
        with open(path, "w") as f:
            f.write(f"""local keys = {{{quoted}}}
local counter = 0
wrk.method = "POST"
function request()
  counter = counter + 1
  local key = keys[(counter % #keys) + 1]
  local body = '{{"id":"{prefix}-' .. counter .. '","type":"message.created","data":{DATA}}}'
  return wrk.format(nil, nil, {{["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key}}, body)
end
""")
        return path

    def run(self):
        self.start_nats()
        self.start_nginx()
        self.start_nodes()
        keys, ids = [], []
        for t in range(TENANTS):
            status, body = call(self.base(0), "POST", "/v1/tenants", body={"name": f"t{t}"})
            assert status == 201, body
            key = body["api_key"]
            ids.append(body["id"])
            status, body = call(self.base(0), "POST", "/v1/subscriptions", token=key,
                                body={"url": f"http://127.0.0.1:{self.nginx_port}/hook/{t}",
                                      "event_types": ["*"], "max_in_flight": 16})
            assert status == 201, body
            keys.append(key)
        # Every node has seen every tenant before the load.
        for i in range(self.n):
            wait_until(lambda i=i: call(self.base(i), "GET", "/v1/subscriptions",
                                        token=keys[-1])[0] == 200, 60, f"tenants on node {i}")
        node_pids = [p.pid for p in self.nodes]
        nats_pids = [p.pid for p in self.nats]
        before = self.delivered()
        n0, s0, t0 = cpu_ticks(node_pids), cpu_ticks(nats_pids), time.monotonic()
        loads = [(keys, max(1, CONNECTIONS // self.n)) for _ in range(self.n)]
        if MODE == "partitioned":
            # Before the load, whatever the routing: a partition not held
            # yet answers 503, which would count as refused.
            wait_until(lambda: sum(len(self.data_partitions(i)) for i in range(self.n)) == PARTITIONS,
                       120, "every partition's data held")
        if ROUTING == "holder":
            held = [self.data_partitions(i) for i in range(self.n)]
            loads = []
            for i in range(self.n):
                mine = [k for k, t in zip(keys, ids) if partition_of(t, PARTITIONS) in held[i]]
                loads.append((mine, round(CONNECTIONS * len(mine) / len(keys))))
        wrks = [subprocess.Popen(
            ["wrk", "-t1", f"-c{max(1, conns)}", f"-d{DURATION}s", "-s",
             self.wrk_script(mine, f"n{i}"), self.base(i) + "/v1/events"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i, (mine, conns) in enumerate(loads) if mine]
        accepted = refused = 0
        for w in wrks:
            out, _ = w.communicate()
            if os.environ.get("VERBOSE"):
                print(out, flush=True)
            total = int(re.search(r"(\d+) requests in", out).group(1))
            non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            non = int(non.group(1)) if non else 0
            accepted += total - non
            refused += non
        want = before + accepted
        wait_until(lambda: self.delivered() >= want, 600, "deliveries")
        secs = time.monotonic() - t0
        got = self.delivered() - before
        return {
            "accepted": accepted,
            "refused": refused,
            "deliveries_per_s": got / secs,
            "nodes_cpu_us_per_delivery": (cpu_ticks(node_pids) - n0) / HZ * 1e6 / got,
            "nats_cpu_us_per_delivery": (cpu_ticks(nats_pids) - s0) / HZ * 1e6 / got,
        }


def main():
    if os.geteuid() != 0 or not os.access(os.path.join(CGROUP, "cgroup.procs"), os.W_OK):
        print(f"scaleout: needs root and a writable cgroup v1 cpu controller at {CGROUP}")
        sys.exit(2)
    binary = sys.argv[1]
    results = {n: [] for n in NODES}
    for run in range(RUNS):
        for n in NODES:
            work = tempfile.mkdtemp(prefix="wasmhook-scaleout-")
            r = Run(binary, work, n)
            try:
                out = r.run()
            except BaseException:
                r.stop_all()
                print(f"run {run + 1}, {n} node(s) failed; its logs are in {work}", flush=True)
                raise
            r.stop_all()
            shutil.rmtree(work, ignore_errors=True)
            print(f"run {run + 1}, {n} node(s): {json.dumps({k: round(v, 1) for k, v in out.items()})}",
                  flush=True)
            results[n].append(out)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in results.items()}
    base = med[NODES[0]]
    print()
    print(f"mode {MODE}, {PARTITIONS} partitions, routing {ROUTING}, "
          f"{TENANTS} tenants, each node held to {QUOTA} of a core, 3 nats-servers (R3), "
          f"{CONNECTIONS} connections spread over the nodes for {DURATION} s; {os.cpu_count()} cores; "
          f"medians of {RUNS}")
    print("| nodes | deliveries/s | × 1 node | nodes' CPU per delivery (µs) | × 1 node "
          "| NATS CPU per delivery (µs) | refused |")
    print("|---|---|---|---|---|---|---|")
    for n, m in med.items():
        print(f"| {n} | {m['deliveries_per_s']:,.0f} | {m['deliveries_per_s'] / base['deliveries_per_s']:.2f} "
              f"| {m['nodes_cpu_us_per_delivery']:,.0f} "
              f"| {m['nodes_cpu_us_per_delivery'] / base['nodes_cpu_us_per_delivery']:.2f} "
              f"| {m['nats_cpu_us_per_delivery']:,.0f} | {m['refused']:,.0f} |")


if __name__ == "__main__":
    main()
