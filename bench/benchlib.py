"""What the Python bench harnesses share (bench/cluster_scale.py,
bench/scaleout.py): ports, API calls, waiting, CPU accounting, and the
NATS cluster and nginx receiver they start. Only the standard library."""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

# The operator token every harness starts its nodes with.
TOKEN = "bench-operator-token-0123456789abcdef"
HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(base, method, path, token=TOKEN, body=None, timeout=30):
    """One API request: (status, parsed JSON body or the error's text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_until(check, timeout, what):
    """Polls `check` every 0.1 s; exits the harness naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out: {what}")


def cpu_ticks(pids):
    """User + system clock ticks of `pids` (0 for one that is gone)."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return t


def start_nats_cluster(spawn, work, name):
    """Three JetStream nats-servers routed into one cluster, started with
    `spawn(args, log=...)`; returns (processes, client URLs, monitor URL)
    once JetStream answers."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    routes = ",".join(f"nats-route://127.0.0.1:{c}" for _, c, _ in ports)
    procs = []
    for i, (port, cport, mport) in enumerate(ports):
        procs.append(spawn(
            ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-m", str(mport),
             "-n", f"n{i}", "-js", "-sd", os.path.join(work, f"nats-{i}"),
             "--cluster_name", name, "--cluster", f"nats://127.0.0.1:{cport}",
             "--routes", routes],
            log=f"nats-{i}.log"))
    urls = ",".join(f"nats://127.0.0.1:{p}" for p, _, _ in ports)
    monitor = f"http://127.0.0.1:{ports[0][2]}"
    wait_until(lambda: urllib.request.urlopen(monitor + "/healthz?js-enabled-only=true",
                                              timeout=2).status == 200, 30, "NATS")
    time.sleep(2)
    return procs, urls, monitor


def start_nginx(spawn, work):
    """nginx answering 204 to everything, logging each request's
    Webhook-Id; returns (port, access log path)."""
    port = free_port()
    d = os.path.join(work, "nginx")
    os.makedirs(os.path.join(d, "logs"))
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  log_format ids '$http_webhook_id';
  access_log {d}/logs/access.log ids buffer=64k flush=100ms;
  server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}
}}
""")
    spawn(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")], log="nginx.log")
    time.sleep(0.5)
    return port, os.path.join(d, "logs", "access.log")


class Processes:
    """The processes a run started, each logging to a file of `work`;
    killed together at the end."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def spawn(self, args, env=None, log="x.log"):
        out = open(os.path.join(self.work, log), "w")
        p = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
