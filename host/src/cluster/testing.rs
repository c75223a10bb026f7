//! A real NATS cluster for tests (this crate's and the integration
//! tests'): `nats-server` processes (Debian's package, JetStream on) routed
//! to each other on free loopback ports, with temporary store directories.
//! Outside CI a missing `nats-server` skips the test; under CI (`.ci/run`
//! installs it) it fails.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsCluster {
    servers: Vec<Server>,
    routes: String,
    dir: PathBuf,
}

struct Server {
    port: u16,
    cluster_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How long the first readiness probe waits for JetStream's answer; each
/// probe not answered in time doubles it, up to the client's usual 5 s (a
/// busy machine answers a replicated create slowly, never in 500 ms).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// The next probe's timeout after one that got no answer in time.
fn longer(js: &mut async_nats::jetstream::Context, timeout: &mut Duration) {
    *timeout = (*timeout * 2).min(PROBE_TIMEOUT_MAX);
    js.set_timeout(*timeout);
}

/// Whether `tool --version` runs. Outside CI a missing tool skips the test
/// that needs it (said on stderr); under CI it fails the test, since
/// `.ci/run` installs every tool the tests use.
pub fn tool_installed(tool: &str) -> bool {
    let installed = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (.ci/run installs it)"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    installed
}

impl NatsCluster {
    /// `n` servers in one cluster, JetStream ready (a meta leader elected).
    pub async fn start(n: usize) -> Option<Self> {
        if !tool_installed("nats-server") {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "wasmhook-nats-{}-{}",
            std::process::id(),
            ulid::Ulid::new()
        ));
        // A port picked free may be taken by another test's listener before
        // the server binds it (the server then exits at once): such a
        // start is tried again on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Each try in a directory of its own (a failed one is dropped whole).
            let tried = dir.join(format!("try{attempt}"));
            let servers: Vec<Server> = (0..n)
                .map(|i| Server {
                    port: free_port(),
                    cluster_port: free_port(),
                    dir: tried.join(format!("n{i}")),
                    child: None,
                })
                .collect();
            let routes = servers
                .iter()
                .map(|s| format!("nats-route://127.0.0.1:{}", s.cluster_port))
                .collect::<Vec<_>>()
                .join(",");
            let mut cluster = NatsCluster {
                servers,
                routes,
                dir: dir.clone(),
            };
            let started: Result<(), String> = (0..n).try_for_each(|i| cluster.try_spawn(i));
            match started {
                Ok(()) => {
                    cluster.wait_ready().await;
                    return Some(cluster);
                }
                Err(why) if attempt < 3 => {
                    eprintln!("nats test cluster: {why}; trying again on other ports");
                    drop(cluster);
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        if let Err(why) = self.try_spawn(i) {
            panic!("{why}");
        }
    }

    /// Starts server `i` and waits until it listens; an error when it
    /// exits first (its port was taken) or does not listen in time.
    fn try_spawn(&mut self, i: usize) -> Result<(), String> {
        let n = self.servers.len();
        let s = &mut self.servers[i];
        // Named after its client port too: the name in the port's INFO
        // shows that this server, and not another test's (whose route port
        // may be the same number), is the one listening there.
        let name = format!("n{i}-{}", s.port);
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &s.port.to_string()])
            .args(["-n", &name, "-sd"])
            .arg(&s.dir);
        if n > 1 {
            cmd.args(["--cluster_name", "wasmhook-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", s.cluster_port)])
                .args(["--routes", &self.routes]);
        }
        let child = s.child.insert(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("nats-server n{i}: {e}"))?,
        );
        // Generous: a test machine may be slow or held to part of a core.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !serves(s.port, &name) {
            if let Ok(Some(status)) = child.try_wait() {
                s.child = None;
                return Err(format!(
                    "nats-server n{i} exited at start ({status}); port {} or {} taken?",
                    s.port, s.cluster_port
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("nats-server n{i} did not start"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until JetStream answers through every running server.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            let client = async_nats::connect(format!("nats://127.0.0.1:{}", s.port))
                .await
                .unwrap();
            let mut js = async_nats::jetstream::new(client);
            // A lookup sent before a meta leader exists is never answered:
            // ask often rather than wait out the default 5 s per request.
            let mut timeout = PROBE_TIMEOUT;
            js.set_timeout(timeout);
            // Ready: a stream lookup is answered "not found" (before a meta
            // leader is elected it times out or answers "unavailable").
            loop {
                let e = js.get_stream("READY_PROBE").await.err().unwrap();
                if let async_nats::jetstream::context::GetStreamErrorKind::JetStream(e) = e.kind()
                    && e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "JetStream did not become ready: {e}"
                );
                longer(&mut js, &mut timeout);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // A meta leader can answer before it knows every server's
        // JetStream: a replicated stream then fails with "no suitable peers
        // for placement". Ready means one with a replica on each running
        // server can be made.
        let running = self.servers.iter().filter(|s| s.child.is_some());
        let Some(first) = running.clone().next() else {
            return;
        };
        let replicas = running.count();
        if replicas < 2 {
            return;
        }
        let client = async_nats::connect(format!("nats://127.0.0.1:{}", first.port))
            .await
            .unwrap();
        let mut js = async_nats::jetstream::new(client);
        let mut timeout = PROBE_TIMEOUT;
        js.set_timeout(timeout);
        loop {
            let made = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "READY_PROBE".into(),
                    subjects: vec!["ready-probe".into()],
                    num_replicas: replicas,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await;
            match made {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "JetStream could not place {replicas} replicas: {e}"
                    );
                    longer(&mut js, &mut timeout);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // The probe goes again; a short timeout can end the request before
        // the replicated delete does, so ask until it is gone.
        loop {
            match js.delete_stream("READY_PROBE").await {
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::jetstream::context::DeleteStreamErrorKind::JetStream(j)
                            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the readiness probe stream was not deleted: {e}"
                    );
                    longer(&mut js, &mut timeout);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Every server's client URL, comma-separated (`--nats`).
    pub fn urls_arg(&self) -> String {
        self.urls().join(",")
    }

    /// Starts server `i` again (after [`NatsCluster::kill`]) on its port
    /// and store directory; [`NatsCluster::ready`] waits for JetStream.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Waits until JetStream answers through every running server.
    pub async fn ready(&self) {
        self.wait_ready().await;
    }

    /// Freezes server `i` (SIGSTOP): it answers nothing but keeps its
    /// ports, so no other test's listener takes them meanwhile (a killed
    /// server's ports are free for anyone until it restarts).
    ///
    /// Returns once the kernel reports the process stopped: a `kill` that
    /// could not be spawned on a loaded machine, or a signal not yet taken,
    /// would otherwise leave a test talking to a server it thinks frozen.
    pub fn freeze(&self, i: usize) {
        let Some(c) = &self.servers[i].child else {
            return;
        };
        let stat = format!("/proc/{}/stat", c.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            self.signal(i, "-STOP");
            // The state is the field after the command's closing parenthesis.
            let stopped = std::fs::read_to_string(&stat).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            });
            if stopped {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "NATS server {i} did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(c) = &self.servers[i].child {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
    }

    /// kill -9 of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the NATS server named `name` answers clients on `port`: its
/// `INFO` line names it (a route port, or another server, does not).
fn serves(port: u16, name: &str) -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line).is_err() {
        return false;
    }
    line.starts_with("INFO ") && line.contains(&format!("\"server_name\":\"{name}\""))
}
