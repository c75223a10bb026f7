"""Cluster mode at the scale issue 8 names: 1,000 tenants with 10,000
subscriptions on three wasmhook nodes and a 3-server NATS cluster (R3), all
on this machine. Run by bench/cluster-scale.sh (which builds the release
binary); only the standard library, nats-server and nginx.

Per run, on fresh servers:
  setup     1,000 tenants and 10 subscriptions each, through the API, spread
            over the nodes (16 requests in flight)
  idle      RSS of the NATS servers and of the nodes, and their CPU over
            three consecutive 10 s windows: the quietest (idle) and the
            busiest (a snapshot every SNAPSHOT_SECS falls in one; the
            default in production is an hour), and the log stream's size
  load      one event per tenant (1,000 events, 10,000 deliveries), spread
            over the nodes: accepted/s, time until nginx has every delivery
            id, CPU per delivery (every process)
  kill -9   one node killed; 1,000 more events through the other two: time
            until every delivery id arrived (the dead node's partitions wait
            for its leases to expire: lease_secs)
  restart   the killed node started again on its data directory: time until
            it answers /healthz, and until it holds leases again
  snapshot  size of the view snapshot the leading node stores (partitioned:
            every partition's snapshot)
  kill NATS one of the three NATS servers killed (-9); one more event per
            tenant through the three nodes: time until every one is
            accepted and until every delivery id arrived (KILL_NATS=0
            skips it); the delivery ids counted at the end cover it

MODE=partitioned PARTITIONS=n runs a partitioned cluster (issue 25). NODE_LOG sets
the nodes' RUST_LOG; KEEP=1 keeps the run's directory (logs) after a success.

Prints each run and the medians as a Markdown table.

  python3 bench/cluster_scale.py BIN [RUNS]
"""

import concurrent.futures as cf
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request

from benchlib import HZ, TOKEN, Processes, call, cpu_ticks, free_port, start_nats_cluster, start_nginx, \
    wait_until

TENANTS = int(os.environ.get("TENANTS", 1000))
SUBS = int(os.environ.get("SUBS_PER_TENANT", 10))
LEASE = int(os.environ.get("LEASE_SECS", 20))
# KILL_NATS=0 leaves out the last phase (a NATS server killed under load).
KILL_NATS = os.environ.get("KILL_NATS", "1") != "0"
# Compaction every SNAPSHOT s, so that a run sees a snapshot's size.
SNAPSHOT = int(os.environ.get("SNAPSHOT_SECS", 30))
# "replicas" (every node applies every write) or "partitioned" (issue 25:
# each tenant's data only on the node leasing its partition).
MODE = os.environ.get("MODE", "replicas")
PARTITIONS = int(os.environ.get("PARTITIONS", 64))


def rss_mb(pids):
    t = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    t += int(line.split()[1])
    return t / 1024


class Run(Processes):
    def __init__(self, binary, work):
        super().__init__(work)
        self.binary = binary

    # --- the parts -------------------------------------------------------

    def start_nats(self):
        self.nats, self.nats_urls, self.monitor = start_nats_cluster(self.spawn, self.work,
                                                                     "scale")

    def start_nginx(self):
        self.nginx_port, self.access_log = start_nginx(self.spawn, self.work)

    def delivered_ids(self):
        try:
            with open(self.access_log) as f:
                return set(line.strip() for line in f if line.strip())
        except FileNotFoundError:
            return set()

    def start_node(self, i):
        port = self.node_ports[i]
        env = dict(os.environ, WASMHOOK_ADMIN_TOKEN=TOKEN, RUST_LOG=os.environ.get("NODE_LOG", "warn"),
                   WASMHOOK_SERVER_SECRETS_KEY="be" * 32,
                   WASMHOOK_CLUSTER_NODE_ID=f"node{i}",
                   WASMHOOK_CLUSTER_LEASE_SECS=str(LEASE),
                   WASMHOOK_CLUSTER_SNAPSHOT_SECS=str(SNAPSHOT),
                   WASMHOOK_CLUSTER_MODE=MODE,
                   WASMHOOK_CLUSTER_PARTITIONS=str(PARTITIONS),
                   WASMHOOK_LIMITS_PENDING_DELIVERIES_PER_TENANT="1000000000")
        p = self.spawn([self.binary, "serve", "--listen", f"127.0.0.1:{port}",
                        "--data", os.path.join(self.work, f"node-{i}"),
                        "--allow-private-destinations", "--nats", self.nats_urls],
                       env=env, log=f"node-{i}.log")
        self.nodes[i] = p
        return p

    def base(self, i):
        return f"http://127.0.0.1:{self.node_ports[i]}"

    def leased(self, i):
        status, h = call(self.base(i), "GET", "/healthz", timeout=5)
        return (h.get("cluster") or {}).get("partitions_leased", 0) if status == 200 else 0

    def data_held(self, i):
        """Partitioned: the partitions whose data node i holds (prepared,
        not only leased); replicas: every node holds all."""
        status, h = call(self.base(i), "GET", "/healthz", timeout=5)
        if status != 200:
            return 0
        cluster = h.get("cluster") or {}
        if cluster.get("mode") == "partitioned":
            return len(cluster.get("data_partitions") or [])
        return cluster.get("partitions_leased", 0)

    def streams_bytes(self, prefix):
        """Bytes in every stream whose name starts with `prefix`."""
        with urllib.request.urlopen(self.monitor + "/jsz?streams=true", timeout=5) as r:
            jsz = json.load(r)
        return sum(s["state"]["bytes"] for account in jsz.get("account_details", [])
                   for s in account.get("stream_detail", []) if s["name"].startswith(prefix))

    def stream(self, name="WASMHOOK_LOG"):
        with urllib.request.urlopen(self.monitor + "/jsz?streams=true", timeout=5) as r:
            jsz = json.load(r)
        for account in jsz.get("account_details", []):
            for s in account.get("stream_detail", []):
                if s["name"] == name:
                    return s["state"]["bytes"], s["state"]["messages"]
        return 0, 0

    # --- the run -----------------------------------------------------------

    def run(self):
        r = {}
        self.start_nats()
        self.start_nginx()
        self.node_ports = [free_port() for _ in range(3)]
        self.nodes = [None] * 3
        for i in range(3):
            self.start_node(i)
        for i in range(3):
            wait_until(lambda i=i: call(self.base(i), "GET", "/healthz", timeout=2)[0] == 200,
                       60, f"node {i}")
        wait_until(lambda: sum(self.data_held(i) for i in range(3)) == PARTITIONS, 120, "leases")
        pool = cf.ThreadPoolExecutor(16)

        # setup
        t0 = time.monotonic()

        def tenant(n):
            status, body = call(self.base(n % 3), "POST", "/v1/tenants", body={"name": f"t{n}"})
            assert status == 201, body
            return body["api_key"]

        keys = list(pool.map(tenant, range(TENANTS)))

        def subscribe(job):
            n, s = job
            sent = time.strftime("%H:%M:%S")
            try:
                status, body = call(self.base((n + s) % 3), "POST", "/v1/subscriptions", token=keys[n],
                                    body={"url": f"http://127.0.0.1:{self.nginx_port}/hook/{n}/{s}",
                                          "event_types": ["*"]})
            except TimeoutError:
                # Which request hung, to find it in the nodes' logs (they
                # log a request answered after 5 s when it is answered).
                time.sleep(40)
                raise SystemExit(f"POST /v1/subscriptions for t{n} to node {(n + s) % 3}, sent at "
                                 f"{sent} UTC: no answer within 30 s")
            assert status == 201, body

        list(pool.map(subscribe, [(n, s) for n in range(TENANTS) for s in range(SUBS)]))
        r["setup_s"] = time.monotonic() - t0

        # idle
        nats_pids = [p.pid for p in self.nats]
        node_pids = [p.pid for p in self.nodes]
        time.sleep(3)
        windows = []
        for _ in range(3):
            n0, w0 = cpu_ticks(nats_pids), cpu_ticks(node_pids)
            time.sleep(10)
            windows.append(((cpu_ticks(nats_pids) - n0) / HZ / 10 * 100,
                            (cpu_ticks(node_pids) - w0) / HZ / 10 * 100))
        # The quietest window is the idle cost; the busiest holds the
        # periodic snapshot (every SNAPSHOT s here).
        quiet = min(windows, key=sum)
        busy = max(windows, key=sum)
        r["nats_idle_cpu_pct"], r["nodes_idle_cpu_pct"] = quiet
        r["nats_busiest_10s_cpu_pct"], r["nodes_busiest_10s_cpu_pct"] = busy
        r["nats_rss_mb"] = rss_mb(nats_pids)
        r["nodes_rss_mb"] = rss_mb(node_pids)
        r["log_mb"], r["log_messages"] = (lambda b, m: (b / 2**20, m))(*self.stream())
        r["partition_logs_mb"] = self.streams_bytes("WASMHOOK_P") / 2**20

        # load: one event per tenant
        def send(job, nodes):
            n, prefix = job
            event = {"id": f"{prefix}-{n}", "type": "message.created",
                     "data": {"conversation_id": f"c{n}", "content": "hello"}}
            for attempt in range(200):
                node = nodes[(n + attempt) % len(nodes)]
                try:
                    status, _ = call(self.base(node), "POST", "/v1/events", token=keys[n],
                                     body=event, timeout=10)
                    if status == 202:
                        return
                except OSError:
                    pass
                time.sleep(0.2)
            raise SystemExit(f"event {prefix}-{n} never accepted")

        all_pids = nats_pids + node_pids
        before = len(self.delivered_ids())
        c0, t0 = cpu_ticks(all_pids), time.monotonic()
        list(pool.map(lambda n: send((n, "a"), [0, 1, 2]), range(TENANTS)))
        r["load_accept_per_s"] = TENANTS / (time.monotonic() - t0)
        want = before + TENANTS * SUBS
        wait_until(lambda: len(self.delivered_ids()) >= want, 300, "deliveries")
        secs = time.monotonic() - t0
        r["load_deliveries_per_s"] = TENANTS * SUBS / secs
        r["load_cpu_us_per_delivery"] = (cpu_ticks(all_pids) - c0) / HZ * 1e6 / (TENANTS * SUBS)

        # kill -9 of node 2, load through the others
        self.nodes[2].send_signal(signal.SIGKILL)
        self.nodes[2].wait()
        t0 = time.monotonic()
        list(pool.map(lambda n: send((n, "b"), [0, 1]), range(TENANTS)))
        want += TENANTS * SUBS
        wait_until(lambda: len(self.delivered_ids()) >= want, 300, "deliveries after the kill")
        r["after_kill_all_delivered_s"] = time.monotonic() - t0
        with open(self.access_log) as f:
            lines = sum(1 for line in f if line.strip())
        r["distinct_delivery_ids"] = len(self.delivered_ids())
        r["sent_again_same_id"] = lines - r["distinct_delivery_ids"]

        # restart of node 2
        t0 = time.monotonic()
        self.start_node(2)
        wait_until(lambda: call(self.base(2), "GET", "/healthz", timeout=2)[0] == 200, 120,
                   "restart")
        r["restart_serving_s"] = time.monotonic() - t0
        wait_until(lambda: self.leased(2) > 0, 120, "leases after the restart")
        r["restart_leasing_s"] = time.monotonic() - t0
        wait_until(lambda: self.data_held(2) > 0, 180, "data after the restart")
        r["restart_holding_data_s"] = time.monotonic() - t0

        # the snapshot the leading node stored (every SNAPSHOT s)
        wait_until(lambda: self.stream("OBJ_wasmhook_snapshots")[0] > 0, SNAPSHOT * 3,
                   "a snapshot")
        r["snapshot_mb"] = self.stream("OBJ_wasmhook_snapshots")[0] / 2**20
        r["view_dir_mb"] = sum(
            os.path.getsize(os.path.join(dp, f))
            for dp, _, fs in os.walk(os.path.join(self.work, "node-0")) for f in fs
        ) / 2**20

        # kill -9 of NATS server 2 (of 3, R3), load through every node
        if KILL_NATS:
            self.nats[2].send_signal(signal.SIGKILL)
            self.nats[2].wait()
            t0 = time.monotonic()
            list(pool.map(lambda n: send((n, "c"), [0, 1, 2]), range(TENANTS)))
            r["after_nats_kill_accepted_s"] = time.monotonic() - t0
            want += TENANTS * SUBS
            wait_until(lambda: len(self.delivered_ids()) >= want, 600,
                       "deliveries after the NATS server kill")
            r["after_nats_kill_all_delivered_s"] = time.monotonic() - t0
            with open(self.access_log) as f:
                lines = sum(1 for line in f if line.strip())
            r["distinct_delivery_ids"] = len(self.delivered_ids())
            r["sent_again_same_id"] = lines - r["distinct_delivery_ids"]
        pool.shutdown()
        return r


def main():
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    results = []
    for i in range(runs):
        work = tempfile.mkdtemp(prefix="wasmhook-scale-")
        run = Run(binary, work)
        try:
            r = run.run()
        except BaseException:
            run.stop_all()
            print(f"run {i + 1} failed; its logs are in {work}", flush=True)
            raise
        run.stop_all()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", flush=True)
        print(f"run {i + 1}: {json.dumps({k: round(v, 1) for k, v in r.items()})}", flush=True)
        results.append(r)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print()
    print(f"{TENANTS} tenants x {SUBS} subscriptions, 3 nodes ({MODE}, {PARTITIONS} partitions), "
          f"3 nats-servers (R3), lease {LEASE} s; {os.cpu_count()} cores; medians of {runs}")
    print("| measure | median |")
    print("|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.1f} |")


if __name__ == "__main__":
    main()
