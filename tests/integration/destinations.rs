//! Destinations beyond HTTP, through the real binary against real brokers
//! started here on loopback ports (Debian's `nats-server`, `redis-server`,
//! `rabbitmq-server`), each message read back by the broker's own Python
//! client (`tests/fixtures/bus_read.py`): published once per delivery id
//! across a stopped broker and a kill -9 of wasmhook (NATS, Redis; at least
//! once for AMQP), with the plugin's output and the signature headers, and
//! refused by the egress guard where an HTTP endpoint would be.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::support::{python_with, repo_root, tool_installed};

/// The brokers' Python clients.
fn reader() -> PathBuf {
    python_with("buses", &["nats-py==2.16.0", "pika==1.4.4", "redis==8.2.0"])
}

/// What `bus_read.py` reads from a broker now.
pub(crate) fn read(kind: &str, url: &str, name: &str) -> Vec<Value> {
    let out = Command::new(reader())
        .arg(repo_root().join("tests/fixtures/bus_read.py"))
        .args([kind, url, name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bus_read {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Waits until a TCP listener answers on `port`.
fn wait_listening(port: u16, what: &str, patience: Duration) {
    let deadline = Instant::now() + patience;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real `redis-server` on a loopback port, its data (append-only) in a
/// temp dir so that a restart keeps the streams.
pub(crate) struct Redis {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub(crate) fn start() -> Option<Self> {
        if !tool_installed("redis-server") {
            return None;
        }
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.run();
        Some(r)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            // Every write in the append-only file before its reply: with
            // the default (`everysec`), a slow fsync lets Redis answer an
            // XADD whose write it postponed, and `stop` (SIGKILL) then loses
            // an acknowledged message (a fresh-clone CI run at 298136b
            // missed one on a loaded machine).
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_listening(self.port, "redis-server", PATIENCE);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const RABBIT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A real RabbitMQ node on loopback ports (its own Erlang port mapper, its
/// own data dir), restartable with its durable queues.
struct Rabbit {
    child: Option<Child>,
    /// The node's own Erlang port mapper, in the foreground (one RabbitMQ
    /// would start detached outlives the test).
    epmd: Child,
    port: u16,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Rabbit {
    fn start() -> Option<Self> {
        if !Path::new(RABBIT).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "rabbitmq-server is not installed (.ci/run installs it)"
            );
            eprintln!("skipped: rabbitmq-server is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port();
        let epmd_port = free_port();
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(epmd_port, "epmd", PATIENCE);
        std::fs::write(dir.path().join("plugins"), "[].\n").unwrap();
        let env = [
            ("HOME", d.clone()),
            ("RABBITMQ_NODENAME", format!("wh{port}@localhost")),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{d}/log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/plugins")),
            ("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq")),
            ("RABBITMQ_PID_FILE", format!("{d}/pid")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut r = Rabbit {
            child: None,
            epmd,
            port,
            env,
            _dir: dir,
        };
        r.run();
        Some(r)
    }

    fn run(&mut self) {
        let child = Command::new(RABBIT)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_listening(self.port, "rabbitmq-server", Duration::from_secs(90));
    }

    /// Stops the node as an operator would (SIGTERM: it closes its
    /// connections and flushes its queues), then kills what is left of
    /// its process group.
    fn stop(&mut self) {
        self.signal("TERM", Duration::from_secs(30));
    }

    fn signal(&mut self, signal: &str, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let group = format!("-{}", c.id());
            let _ = Command::new("kill")
                .args(["-s", signal, "--", &group])
                .status();
            let deadline = Instant::now() + grace;
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &group])
                .status();
            let _ = c.wait();
            let deadline = Instant::now() + PATIENCE;
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "rabbitmq-server did not stop");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Declares a durable queue bound to the default exchange (its name).
    fn queue(&self, name: &str) {
        let script = format!(
            "import pika,sys\nc=pika.BlockingConnection(pika.URLParameters(sys.argv[1]))\nc.channel().queue_declare(queue={name:?}, durable=True)\nc.close()\n"
        );
        let out = Command::new(reader())
            .args(["-c", &script, &self.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.signal("KILL", Duration::ZERO);
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// Sends `n` message events with ids `{prefix}-{i}`; returns the delivery
/// ids of `sub`'s deliveries.
pub(crate) async fn send(server: &Server, key: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, body) = server
            .call(
                "POST",
                "/v1/events",
                key,
                Some(message_event(&format!("{prefix}-{i}"))),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.extend(deliveries_of(server, key, body["id"].as_str().unwrap()).await);
    }
    ids
}

/// The deliveries an accepted event made.
async fn deliveries_of(server: &Server, key: &str, event: &str) -> Vec<String> {
    let (status, body) = server
        .call("GET", &format!("/v1/events/{event}"), key, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// The subscription's deliveries by status, once every one of `ids` has
/// one of `statuses` (within the patience).
pub(crate) async fn wait_all(
    server: &Server,
    key: &str,
    sub: &str,
    ids: &[String],
    statuses: &[&str],
) -> HashMap<String, Value> {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let mut seen = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/deliveries?subscription_id={sub}&limit=500");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = server.call("GET", &path, key, None).await;
            assert_eq!(status, 200, "{page}");
            for d in page["items"].as_array().unwrap() {
                seen.insert(d["id"].as_str().unwrap().to_string(), d.clone());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let done = ids.iter().all(|id| {
            seen.get(id)
                .is_some_and(|d| statuses.contains(&d["status"].as_str().unwrap()))
        });
        if done {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not all {} deliveries reached {statuses:?}: {:?}",
            ids.len(),
            seen.values()
                .filter(|d| !statuses.contains(&d["status"].as_str().unwrap()))
                .take(3)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the delivery's first attempt, which must have failed with an
/// error starting with `prefix` (the broker is down).
async fn first_attempt_failed(server: &Server, key: &str, delivery: &str, prefix: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, d) = server
            .call("GET", &format!("/v1/deliveries/{delivery}"), key, None)
            .await;
        if let Some(first) = d["attempt_log"].get(0) {
            let error = first["error"].as_str().unwrap_or_default();
            assert!(error.starts_with(prefix), "{d}");
            return;
        }
        assert!(Instant::now() < deadline, "no failed attempt: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every delivery id published exactly once (`at_least_once`: at least
/// once), nothing else published.
pub(crate) fn once_each(messages: &[Value], ids: &[String], at_least_once: bool) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in messages {
        *count.entry(m["id"].as_str().unwrap()).or_default() += 1;
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for id in &wanted {
        let n = count.get(id).copied().unwrap_or(0);
        if at_least_once {
            assert!(n >= 1, "{id} was never published");
        } else {
            assert_eq!(n, 1, "{id} was published {n} times");
        }
    }
    let extra: Vec<_> = count.keys().filter(|id| !wanted.contains(*id)).collect();
    assert!(extra.is_empty(), "published but not delivered: {extra:?}");
}

/// A message's Standard Webhooks signature verifies with the secret.
fn signed(m: &Value, secret: &str) -> bool {
    let mut headers = axum::http::HeaderMap::new();
    for (k, v) in m["headers"].as_object().unwrap() {
        headers.insert(
            axum::http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            v.as_str().unwrap().parse().unwrap(),
        );
    }
    let r = Received {
        headers,
        body: m["body"].as_str().unwrap().as_bytes().to_vec().into(),
    };
    verify_standard(secret, &r) == 1
}

/// Retries soon and for about 75 s (a broker stopped for a few seconds;
/// RabbitMQ's restart took over 20 s on a loaded 2-core machine).
fn quick_retries() -> Value {
    json!({"schedule_secs": [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 8, 8, 8, 8, 8], "jitter": 0})
}

/// Sends `n` events in one batch, kills wasmhook as soon as some of their
/// deliveries went out (the rest mid-publish or waiting), and restarts it
/// on the same data: returns the restarted server and the deliveries.
async fn kill_mid_publish(
    server: Server,
    data: &Path,
    key: &str,
    sub: &str,
    n: usize,
) -> (Server, Vec<String>) {
    let events: Vec<Value> = (0..n)
        .map(|i| message_event(&format!("crash-{i}")))
        .collect();
    let (status, body) = server
        .call(
            "POST",
            "/v1/events/batch",
            key,
            Some(json!({ "events": events })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + PATIENCE;
    let went = loop {
        let (_, page) = server
            .call(
                "GET",
                &format!("/v1/deliveries?subscription_id={sub}&status=succeeded&limit=500"),
                key,
                None,
            )
            .await;
        let went = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["event_id"].as_str().unwrap().starts_with("crash-"))
            .count();
        if went >= 5 || Instant::now() > deadline {
            break went;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    server.kill9();
    assert!(went < n, "all {n} were delivered before the kill");
    let server = Server::start(data);
    let mut ids = Vec::new();
    for i in 0..n {
        ids.extend(deliveries_of(&server, key, &format!("crash-{i}")).await);
    }
    (server, ids)
}

#[tokio::test]
async fn a_nats_subject_is_a_destination_published_once_per_delivery_id() {
    let Some(nats) = wasmhook::cluster::testing::NatsCluster::start(1).await else {
        return;
    };
    // The receiver's stream, made by the receiver (not by wasmhook).
    let js = async_nats::jetstream::new(async_nats::connect(nats.url(0)).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CRM".into(),
        subjects: vec!["crm.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("bus").await;
    // A token in the URL is a secret: never shown, never on disk in clear.
    let token = "nats-token-9d8c7b6a5f4e3d2c1b0a";
    let url = nats.url(0).replace("nats://", &format!("nats://{token}@"));
    let sub = server
        .subscribe(
            &key,
            json!({
                "destination": {"type": "nats", "url": url, "subject": "crm.messages"},
                "event_types": ["message.*"],
                "retry": quick_retries(),
                "timeout_ms": 2000,
            }),
        )
        .await;
    let (id, secret) = (
        sub["id"].as_str().unwrap().to_string(),
        sub["secret"].as_str().unwrap().to_string(),
    );
    assert_eq!(sub["destination"]["type"], "nats");
    assert_eq!(sub["destination"]["subject"], "crm.messages");
    assert_eq!(sub["destination"]["password_set"], true);
    assert!(!sub.to_string().contains(token), "{sub}");

    let mut ids = send(&server, &key, "first", 5).await;
    wait_all(&server, &key, &id, &ids, &["succeeded"]).await;
    let messages = read("nats", &nats.url(0), "crm.messages");
    once_each(&messages, &ids, false);
    for m in &messages {
        assert!(signed(m, &secret), "{m}");
        assert_eq!(m["content_type"], "application/json");
        assert_eq!(m["event_type"], "message.created");
        let body: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["type"], "message.created");
    }
    // The delivery log records the stream's acknowledgement.
    let (_, d) = server
        .call("GET", &format!("/v1/deliveries/{}", ids[0]), &key, None)
        .await;
    let answer: Value =
        serde_json::from_str(d["attempt_log"][0]["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["stream"], "CRM", "{d}");

    // The server stops answering: attempts time out and are retried, then
    // go through once it is back.
    nats.freeze(0);
    let stalled = send(&server, &key, "stalled", 3).await;
    first_attempt_failed(&server, &key, &stalled[0], "nats: ").await;
    nats.thaw(0);
    wait_all(&server, &key, &id, &stalled, &["succeeded"]).await;
    ids.extend(stalled);

    // kill -9 mid-publish: after the restart, each delivery id is in the
    // stream exactly once (Nats-Msg-Id within the duplicate window).
    let (server, crashed) = kill_mid_publish(server, dir.path(), &key, &id, 300).await;
    wait_all(&server, &key, &id, &crashed, &["succeeded"]).await;
    ids.extend(crashed);
    once_each(&read("nats", &nats.url(0), "crm.messages"), &ids, false);

    // Nothing on disk holds the token in clear.
    drop(server);
    assert_no_file_contains(dir.path(), token);
}

/// No file under `dir` holds `secret`.
fn assert_no_file_contains(dir: &Path, secret: &str) {
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the secret in clear",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_redis_stream_is_a_destination_with_the_plugins_output_once_per_delivery_id() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("bus").await;
    // The lead transform: the stream gets the plugin's output, not the event.
    let sub = server
        .subscribe(
            &key,
            json!({
                "destination": {"type": "redis", "url": redis.url(), "stream": "crm:leads", "max_len": 100000},
                "event_types": ["lead.created"],
                "plugin": {"id": "builtin:helloclient-lead"},
                "retry": quick_retries(),
                "timeout_ms": 2000,
            }),
        )
        .await;
    let lead_sub = sub["id"].as_str().unwrap().to_string();
    let lead: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/lead.json")).unwrap(),
    )
    .unwrap();
    let (status, accepted) = server
        .call("POST", "/v1/events", &key, Some(lead.clone()))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let lead_ids = deliveries_of(&server, &key, accepted["id"].as_str().unwrap()).await;
    wait_all(&server, &key, &lead_sub, &lead_ids, &["succeeded"]).await;
    let leads = read("redis", &redis.url(), "crm:leads");
    once_each(&leads, &lead_ids, false);
    let out: Value = serde_json::from_str(leads[0]["body"].as_str().unwrap()).unwrap();
    assert_ne!(out, lead, "the plugin reshaped the event");
    assert!(signed(&leads[0], sub["secret"].as_str().unwrap()));

    // Messages to a second stream, through a stopped and restarted Redis.
    let sub = server
        .subscribe(
            &key,
            json!({
                "destination": {"type": "redis", "url": redis.url(), "stream": "chat"},
                "event_types": ["message.*"],
                "retry": quick_retries(),
                "timeout_ms": 2000,
            }),
        )
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let mut ids = send(&server, &key, "first", 5).await;
    wait_all(&server, &key, &id, &ids, &["succeeded"]).await;

    redis.stop();
    let stalled = send(&server, &key, "stalled", 3).await;
    first_attempt_failed(&server, &key, &stalled[0], "redis: ").await;
    redis.run();
    wait_all(&server, &key, &id, &stalled, &["succeeded"]).await;
    ids.extend(stalled);

    // A restart between two deliveries: the pooled connection is found
    // closed, and the publish goes at once on a new one (one attempt, no
    // failure recorded).
    redis.stop();
    redis.run();
    let quiet = send(&server, &key, "after-restart", 1).await;
    let seen = wait_all(&server, &key, &id, &quiet, &["succeeded"]).await;
    assert_eq!(seen[&quiet[0]]["attempts"], 1, "{}", seen[&quiet[0]]);
    ids.extend(quiet);

    // A manual retry of a delivered id is stored once.
    let (status, body) = server
        .call(
            "POST",
            &format!("/v1/deliveries/{}/retry", ids[0]),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_all(&server, &key, &id, &ids[..1], &["succeeded"]).await;
    let (_, d) = server
        .call("GET", &format!("/v1/deliveries/{}", ids[0]), &key, None)
        .await;
    let last = d["attempt_log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        serde_json::from_str::<Value>(last["response_body"].as_str().unwrap()).unwrap()["duplicate"],
        true,
        "{d}"
    );

    let (server, crashed) = kill_mid_publish(server, dir.path(), &key, &id, 300).await;
    wait_all(&server, &key, &id, &crashed, &["succeeded"]).await;
    ids.extend(crashed);
    once_each(&read("redis", &redis.url(), "chat"), &ids, false);

    // A replay routes the stored events again as new deliveries: new
    // entries, each once.
    let (status, replayed) = server
        .call(
            "POST",
            &format!("/v1/subscriptions/{id}/replay"),
            &key,
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        replayed["deliveries"].as_u64(),
        Some(ids.len() as u64),
        "{replayed}"
    );
    let deadline = Instant::now() + PATIENCE;
    let all = loop {
        let all = read("redis", &redis.url(), "chat");
        if all.len() >= ids.len() * 2 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let distinct: HashSet<&str> = all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        all.len(),
        ids.len() * 2,
        "the replay's deliveries, once each"
    );
    assert_eq!(distinct.len(), all.len(), "under new delivery ids");

    // One pooled connection to the broker carried all of it (the reader
    // is the other client).
    let (_, metrics) = server.call("GET", "/metrics", ADMIN_TOKEN, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    // Attempts are counted by destination type (the series exist at 0
    // from the start: the count is what shows).
    let succeeded = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "wasmhook_delivery_attempts_total{outcome=\"succeeded\",destination=\"redis\"} ",
            )
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no redis attempts series:\n{metrics}"));
    assert!(succeeded >= 1.0, "{succeeded}");
    let clients = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "client", "list"])
        .output()
        .unwrap();
    let clients = String::from_utf8_lossy(&clients.stdout);
    assert_eq!(
        clients.lines().count(),
        2,
        "wasmhook's one pooled connection and redis-cli:\n{clients}"
    );
}

#[tokio::test]
async fn an_amqp_queue_is_a_destination_at_least_once_with_confirms() {
    let Some(mut rabbit) = Rabbit::start() else {
        return;
    };
    rabbit.queue("crm");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("bus").await;
    let sub = server
        .subscribe(
            &key,
            json!({
                "destination": {"type": "amqp", "url": rabbit.url(), "exchange": "", "routing_key": "crm"},
                "event_types": ["message.*"],
                "retry": quick_retries(),
                "timeout_ms": 3000,
            }),
        )
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    assert_eq!(
        sub["destination"]["url"],
        format!("amqp://guest@127.0.0.1:{}/%2f", rabbit.port)
    );
    assert_eq!(sub["destination"]["password_set"], true);
    // Three that must fail, each at once (no retries), naming why:
    // - a routing key no queue is bound to: the broker returns the message
    //   (mandatory), and the attempt fails instead of vanishing;
    // - [::1], where nothing listens (the node is on 127.0.0.1): the checked
    //   address itself is what is connected to, not "localhost";
    // - an exchange that does not exist: the broker closes that channel
    //   (404), the others' connection stays.
    let mut failing = Vec::new();
    for (destination, says) in [
        (
            json!({"type": "amqp", "url": rabbit.url(), "routing_key": "nobody"}),
            "unroutable",
        ),
        (
            json!({"type": "amqp", "url": format!("amqp://guest:guest@[::1]:{}/%2f", rabbit.port), "routing_key": "crm"}),
            "connect",
        ),
        (
            json!({"type": "amqp", "url": rabbit.url(), "exchange": "no-such-exchange", "routing_key": "crm"}),
            "no-such-exchange",
        ),
    ] {
        let sub = server
            .subscribe(
                &key,
                json!({
                    "destination": destination,
                    "event_types": ["message.*"],
                    "retry": {"schedule_secs": [], "jitter": 0},
                }),
            )
            .await;
        failing.push((sub["id"].as_str().unwrap().to_string(), says));
    }

    let mut ids = Vec::new();
    let mut theirs: HashMap<String, Vec<String>> = HashMap::new();
    for d in send(&server, &key, "first", 5).await {
        let (_, detail) = server
            .call("GET", &format!("/v1/deliveries/{d}"), &key, None)
            .await;
        match detail["subscription_id"].as_str().unwrap() {
            s if s == id => ids.push(d),
            s => theirs.entry(s.to_string()).or_default().push(d),
        }
    }
    for (sub, says) in &failing {
        let mine = &theirs[sub];
        let failed = wait_all(&server, &key, sub, mine, &["failed"]).await;
        let error = failed[&mine[0]]["last_error"].as_str().unwrap();
        assert!(error.contains(says), "{says}: {}", failed[&mine[0]]);
    }
    wait_all(&server, &key, &id, &ids, &["succeeded"]).await;
    for (gone, _) in &failing {
        server
            .call("DELETE", &format!("/v1/subscriptions/{gone}"), &key, None)
            .await;
    }

    // Stopped and restarted: the durable queue keeps what was confirmed,
    // and what was sent meanwhile goes out once the broker is back.
    rabbit.stop();
    let stalled = send(&server, &key, "stalled", 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbit.run();
    wait_all(&server, &key, &id, &stalled, &["succeeded"]).await;
    ids.extend(stalled);

    let (server, crashed) = kill_mid_publish(server, dir.path(), &key, &id, 300).await;
    wait_all(&server, &key, &id, &crashed, &["succeeded"]).await;
    ids.extend(crashed);
    let messages = read("amqp", &rabbit.url(), "crm");
    // At least once: a publish confirmed just before the kill is sent
    // again after it, under the same message_id.
    once_each(&messages, &ids, true);
    let m = &messages[0];
    assert_eq!(m["persistent"], true);
    assert_eq!(m["content_type"], "application/json");
    assert_eq!(m["event_type"], "message.created");
    assert!(signed(m, sub["secret"].as_str().unwrap()), "{m}");
}

#[tokio::test]
async fn broker_destinations_pass_the_egress_guard_and_refuse_hostile_input() {
    let dir = tempfile::tempdir().unwrap();
    // The guard on: loopback brokers are private addresses.
    let server = Server::start_guarded(dir.path(), &[], &[]);
    let (_, key) = server.tenant("guarded").await;
    let (_, other) = server.tenant("other").await;
    let mut subs = Vec::new();
    for destination in [
        json!({"type": "nats", "url": "nats://127.0.0.1:4222", "subject": "a.b"}),
        json!({"type": "amqp", "url": "amqp://u:p@10.0.0.1", "routing_key": "q"}),
        json!({"type": "redis", "url": "redis://[::1]:6379", "stream": "s"}),
        json!({"type": "redis", "url": "redis://localhost", "stream": "s"}),
    ] {
        let sub = server
            .subscribe(
                &key,
                json!({"destination": destination, "event_types": ["*"]}),
            )
            .await;
        subs.push(sub["id"].as_str().unwrap().to_string());
    }
    let ids = send(&server, &key, "guarded", 1).await;
    assert_eq!(ids.len(), 4);
    // Each delivery by its subscription (the event lists them in its
    // routing's order, not in the order the subscriptions were made).
    let mut of_sub: HashMap<String, String> = HashMap::new();
    for d in &ids {
        let (_, detail) = server
            .call("GET", &format!("/v1/deliveries/{d}"), &key, None)
            .await;
        of_sub.insert(
            detail["subscription_id"].as_str().unwrap().into(),
            d.clone(),
        );
    }
    for sub in &subs {
        let d = &of_sub[sub];
        let seen = wait_all(&server, &key, sub, std::slice::from_ref(d), &["failed"]).await;
        let error = seen[d]["last_error"].as_str().unwrap();
        assert!(error.contains("refused by the SSRF guard"), "{error}");
    }

    // Another tenant sees none of it.
    for sub in &subs {
        for (method, body) in [
            ("GET", None),
            (
                "PATCH",
                Some(json!({"destination": {"type": "redis", "url": "redis://x", "stream": "y"}})),
            ),
            ("DELETE", None),
        ] {
            let (status, _) = server
                .call(method, &format!("/v1/subscriptions/{sub}"), &other, body)
                .await;
            assert_eq!(status, 404, "{method} {sub}");
        }
    }

    // Hostile or malformed destinations: a precise 400.
    for (body, says) in [
        (
            json!({"destination": {"type": "nats", "url": "nats://x", "subject": "$JS.API.STREAM.DELETE.CRM"}, "event_types": ["*"]}),
            "reserved",
        ),
        (
            json!({"destination": {"type": "nats", "url": "nats://x", "subject": "a.>"}, "event_types": ["*"]}),
            "wildcards",
        ),
        (
            json!({"destination": {"type": "redis", "url": "redis://x\u{0}y", "stream": "s"}, "event_types": ["*"]}),
            "destination.url",
        ),
        (
            json!({"destination": {"type": "amqp", "url": "http://x", "routing_key": "q"}, "event_types": ["*"]}),
            "amqp://",
        ),
        (
            json!({"destination": {"type": "sqs", "url": "x"}, "event_types": ["*"]}),
            "unknown variant",
        ),
        (
            json!({"destination": {"type": "nats", "url": "nats://0.0.0.0:4222", "subject": "a"}, "event_types": ["*"]}),
            "unspecified",
        ),
        (
            json!({"destination": {"type": "amqp", "url": "amqp://rabbit.example", "routing_key": "q"}, "event_types": ["*"]}),
            "user:password",
        ),
        (
            json!({"url": "https://x.example", "destination": {"type": "redis", "url": "redis://x", "stream": "s"}, "event_types": ["*"]}),
            "not both",
        ),
        (
            json!({"destination": {"type": "redis", "url": "redis://x", "stream": "s"}, "expect_body": {"ok": true}, "event_types": ["*"]}),
            "expect_body",
        ),
        (
            json!({"destination": {"type": "redis", "url": "redis://x", "stream": "s", "max_len": 99999999999u64}, "event_types": ["*"]}),
            "max_len",
        ),
    ] {
        let (status, answer) = server
            .call("POST", "/v1/subscriptions", &key, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }

    // Back to HTTP: the broker's settings go.
    let (status, sub) = server
        .call(
            "PATCH",
            &format!("/v1/subscriptions/{}", subs[0]),
            &key,
            Some(json!({"destination": {"type": "http", "url": "https://hooks.example/x"}})),
        )
        .await;
    assert_eq!(status, 200, "{sub}");
    assert_eq!(
        sub["destination"],
        json!({"type": "http", "url": "https://hooks.example/x"})
    );
    assert_eq!(sub["url"], "https://hooks.example/x");
}
