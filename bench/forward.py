"""What forwarding a request to its partition's holder costs, by way
(issue 25): directly over HTTP (`cluster.advertise_url`) or over NATS.
Only the standard library, nats-server and wrk.

On one set of fresh servers: a 3-server NATS cluster (JetStream, R3) and
three partitioned nodes (6 partitions, no CPU quota). Node 1 advertises
its API ("listen"), node 2 does not ("none"), so node 0 forwards a tenant
of node 1 directly and a tenant of node 2 over NATS. Then, alternated RUNS
times, wrk (2 threads, CONNECTIONS connections, DURATION s of ~1 KB events
with no subscription: acceptance only) posts:
  - direct: to node 0, for a tenant node 1 holds;
  - nats:   to node 0, for a tenant node 2 holds;
  - local:  to node 1 and node 2, for their own tenants.
Prints per way the medians of requests/s and of CPU per request of the
three nodes together and of the three NATS servers together.

  python3 bench/forward.py BIN

WAYS (e.g. "nats,local (node 2)") runs only those ways. PERF=DIR records
each way's first run of the three nodes with `perf record` (one file per
way and node, in DIR) for `perf report -i`.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import HZ, TOKEN, Processes, call, cpu_ticks, free_port, start_nats_cluster, \
    wait_until

RUNS = int(os.environ.get("RUNS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
PARTITIONS = 6
PAD = "x" * 700


def partition_of(tenant):
    h = 0x811C9DC5
    for b in tenant.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % PARTITIONS


def main():
    binary = sys.argv[1]
    work = tempfile.mkdtemp(prefix="wasmhook-forward-")
    procs = Processes(work)
    try:
        nats, urls, _ = start_nats_cluster(procs.spawn, work, "forward")
        ports = [free_port() for _ in range(3)]
        nodes = []
        for i, advertise in enumerate(["listen", "listen", "none"]):
            env = dict(os.environ, WASMHOOK_ADMIN_TOKEN=TOKEN,
                       RUST_LOG=os.environ.get("RUST_LOG", "error"),
                       WASMHOOK_SERVER_SECRETS_KEY="be" * 32,
                       WASMHOOK_CLUSTER_NODE_ID=f"node{i}",
                       WASMHOOK_CLUSTER_MODE="partitioned",
                       WASMHOOK_CLUSTER_PARTITIONS=str(PARTITIONS),
                       WASMHOOK_CLUSTER_ADVERTISE_URL=advertise)
            nodes.append(procs.spawn(
                [binary, "serve", "--listen", f"127.0.0.1:{ports[i]}",
                 "--data", os.path.join(work, f"node-{i}"), "--nats", urls],
                env=env, log=f"node-{i}.log"))
        base = [f"http://127.0.0.1:{p}" for p in ports]

        def held(i):
            status, h = call(base[i], "GET", "/healthz", timeout=5)
            return set((h.get("cluster") or {}).get("data_partitions") or []) if status == 200 else set()

        # Two each, stable (a lease round later every node knows who).
        wait_until(lambda: [len(held(i)) for i in range(3)] == [2, 2, 2], 180, "partitions spread")
        time.sleep(8)
        owner = {p: i for i in range(3) for p in held(i)}
        keys = {}
        for t in range(60):
            status, body = call(base[0], "POST", "/v1/tenants", body={"name": f"t{t}"})
            assert status == 201, body
            keys.setdefault(owner[partition_of(body["id"])], body["api_key"])
            if len(keys) == 3:
                break
        for i in range(3):
            wait_until(lambda i=i: all(call(base[i], "GET", "/v1/subscriptions", token=k)[0] == 200
                                       for k in keys.values()), 60, f"tenants on node {i}")
        ways = {"direct": (0, keys[1]), "nats": (0, keys[2]),
                "local (node 1)": (1, keys[1]), "local (node 2)": (2, keys[2])}
        if os.environ.get("WAYS"):
            ways = {w: ways[w] for w in os.environ["WAYS"].split(",")}
        perf_dir = os.environ.get("PERF")
        node_pids = [p.pid for p in nodes]
        nats_pids = [p.pid for p in nats]
        results = {w: [] for w in ways}
        for run in range(RUNS):
            for way, (node, key) in ways.items():
                script = os.path.join(work, "events.lua")
                with open(script, "w") as f:
                    f.write(f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = '{{"type":"message.created","data":{{"conversation_id":"c-1","content":"{PAD}"}}}}'
""")
                perfs = []
                if perf_dir and run == 0:
                    os.makedirs(perf_dir, exist_ok=True)
                    slug = way.replace(" ", "-").replace("(", "").replace(")", "")
                    perfs = [subprocess.Popen(
                        ["perf", "record", "-q", "-F", "499", "-g", "-p", str(pid), "-o",
                         os.path.join(perf_dir, f"{slug}-node{i}.data"), "--", "sleep", str(DURATION)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for i, pid in enumerate(node_pids)]
                n0, s0 = cpu_ticks(node_pids), cpu_ticks(nats_pids)
                out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}s", "-s", script,
                                      f"{base[node]}/v1/events"], capture_output=True, text=True).stdout
                n1, s1 = cpu_ticks(node_pids), cpu_ticks(nats_pids)
                for p in perfs:
                    p.wait()
                requests = int(next(l for l in out.splitlines() if "requests in" in l).split()[0])
                bad = next((int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l), 0)
                row = (requests / DURATION, (n1 - n0) / HZ * 1e6 / requests,
                       (s1 - s0) / HZ * 1e6 / requests, bad)
                results[way].append(row)
                print(f"run {run + 1}, {way}: {row[0]:.0f} requests/s, nodes {row[1]:.0f} µs, "
                      f"NATS {row[2]:.0f} µs per request, non-2xx {bad}", flush=True)
        req = urllib.request.Request(base[0] + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            metrics = r.read().decode()
        counted = [l for l in metrics.splitlines() if l.startswith("wasmhook_forwarded_requests_total")]
        print("node 0: " + "; ".join(counted))
        print(f"\n3 nodes, 3 nats-servers (R3), {PARTITIONS} partitions, no quota; wrk -t2 "
              f"-c{CONNECTIONS} -d{DURATION}s of ~1 KB events (no subscription); "
              f"{os.cpu_count()} cores; medians of {RUNS} [runs]")
        print("| way | requests/s | nodes' CPU per request | NATS CPU per request | non-2xx |")
        print("|---|---|---|---|---|")

        def cell(values, fmt):
            return f"{fmt(statistics.median(values))} [{', '.join(fmt(v) for v in values)}]"

        for way, rows in results.items():
            print(f"| {way} | {cell([r[0] for r in rows], lambda v: f'{v:,.0f}')} "
                  f"| {cell([r[1] for r in rows], lambda v: f'{v:,.0f} µs')} "
                  f"| {cell([r[2] for r in rows], lambda v: f'{v:,.0f} µs')} "
                  f"| {sum(r[3] for r in rows)} |")
    finally:
        procs.stop_all()
        if os.environ.get("KEEP"):
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
