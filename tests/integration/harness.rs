//! The moving parts of the delivery and API tests: a real HTTP receiver on
//! loopback that records what it gets and answers as told, the real
//! `wasmhook serve` binary on a free port with a temp data dir, and an
//! in-process engine with a manual clock for schedules of minutes and hours.
//!
//! The delivery, window, isolation and API tests run on both backends from
//! one body ([`both_backends!`]): `name::sled` on the embedded store,
//! `name::nats` in cluster mode on a NATS JetStream server of the test's
//! own. The multi-node and NATS-fault tests are in `cluster.rs`.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub use crate::support::PATIENCE;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            body: String::new(),
            headers: vec![],
            delay: Duration::ZERO,
        }
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Answer>,
    default: Option<Answer>,
    received: Vec<Received>,
}

/// A loopback HTTP receiver: answers from a script, then with a default.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    /// Starts a receiver that answers `default` once `script` is used up.
    pub async fn start(script: Vec<Answer>, default: Answer) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.into(),
            default: Some(default),
            received: vec![],
        }));
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = handler_state.clone();
            async move {
                let answer = {
                    let mut s = state.lock().unwrap();
                    s.received.push(Received { headers, body });
                    s.script
                        .pop_front()
                        .unwrap_or_else(|| s.default.clone().unwrap())
                };
                tokio::time::sleep(answer.delay).await;
                let mut response: Response = (
                    StatusCode::from_u16(answer.status).unwrap(),
                    answer.body.clone(),
                )
                    .into_response();
                for (k, v) in &answer.headers {
                    response.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    /// Always answers 200 `{"status":"success"}`.
    pub async fn ok() -> Self {
        Self::start(vec![], Answer::status(200).body(r#"{"status":"success"}"#)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Requests by delivery id (the `webhook-id` header), each with how
    /// many times it arrived.
    pub fn by_delivery_id(&self) -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        for r in self.received() {
            *ids.entry(r.header("webhook-id")).or_default() += 1;
        }
        ids
    }

    /// Waits until `n` distinct delivery ids arrived (or panics after
    /// `timeout`). Delivery is at least once: an attempt whose record was
    /// lost with its store is sent again under the same id, so counting
    /// requests could return before the last id arrives.
    pub async fn wait_for_ids(&self, n: usize, timeout: Duration) -> HashMap<String, usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ids = self.by_delivery_id();
            if ids.len() >= n {
                return ids;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "expected {n} delivery ids, got {} within {timeout:?}",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` requests arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "expected {n} requests, got {} within {timeout:?}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A port nothing listens on.
pub fn dead_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/hook")
}

pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789abcdef";

/// The secrets key of the test servers (cluster nodes need one set, the
/// same on every node; a test may pass another, or "" for a generated one).
pub const SECRETS_KEY: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";

fn patient_call_ms() -> String {
    crate::support::PATIENT_CALL_MS.to_string()
}

/// Which store a test body runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sled,
    /// A replica set (`cluster.mode = "replicas"`).
    Nats,
    /// A partitioned cluster (`cluster.mode = "partitioned"`) of one node.
    Partitioned,
}

/// What a test's servers and engines run on. For NATS: one `nats-server`
/// of the test's own (JetStream on, temp store dir), which outlives the
/// wasmhook processes a test restarts, as a real deployment's would.
pub struct Backing {
    pub backend: Backend,
    nats: Option<wasmhook::cluster::testing::NatsCluster>,
}

/// Lease time of test nodes: a node restarted under a new id takes the
/// partitions over within it (the shortest the config accepts).
const TEST_LEASE_SECS: u64 = 3;
const TEST_PARTITIONS: u32 = 8;

/// NATS servers behind each `name::nats` test: 1, or
/// `WASMHOOK_TEST_NATS_SERVERS` (3 runs the suites on a replicated cluster,
/// R3; about 8 times slower on 2 cores, so not the default). The multi-node
/// and fault tests in `cluster.rs` always use 3.
fn nats_servers() -> usize {
    std::env::var("WASMHOOK_TEST_NATS_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

impl Backing {
    /// `None` when the test is skipped (nats-server missing outside CI).
    pub async fn new(backend: Backend) -> Option<Self> {
        let nats = match backend {
            Backend::Sled => None,
            Backend::Nats | Backend::Partitioned => {
                Some(wasmhook::cluster::testing::NatsCluster::start(nats_servers()).await?)
            }
        };
        Some(Backing { backend, nats })
    }

    pub fn is_nats(&self) -> bool {
        matches!(self.backend, Backend::Nats | Backend::Partitioned)
    }

    fn mode(&self) -> &'static str {
        match self.backend {
            Backend::Partitioned => "partitioned",
            Backend::Sled | Backend::Nats => "replicas",
        }
    }

    /// The real binary on `data`, on this backend.
    pub async fn start(&self, data: &Path) -> Server {
        self.start_with(data, &[], &[]).await
    }

    pub async fn start_with(&self, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        match &self.nats {
            None => Server::start_with(data, args, env),
            Some(nats) => {
                let urls = nats.urls_arg();
                let lease = TEST_LEASE_SECS.to_string();
                let partitions = TEST_PARTITIONS.to_string();
                let mut all_args = vec!["--nats", &urls];
                all_args.extend_from_slice(args);
                let mut all_env = vec![
                    ("WASMHOOK_CLUSTER_LEASE_SECS", lease.as_str()),
                    ("WASMHOOK_CLUSTER_PARTITIONS", partitions.as_str()),
                    ("WASMHOOK_CLUSTER_MODE", self.mode()),
                ];
                all_env.extend_from_slice(env);
                let server = Server::start_with(data, &all_args, &all_env);
                server.wait_until_leased().await;
                server
            }
        }
    }

    /// The in-process engine on this backend (private destinations allowed).
    pub async fn engine(&self) -> Engine {
        Engine::on(self, true).await
    }

    /// The in-process engine with the SSRF guard on.
    pub async fn guarded_engine(&self) -> Engine {
        Engine::on(self, false).await
    }
}

/// Declares a test whose body runs on both backends, as `name::sled`,
/// `name::nats` (a replica set) and `name::partitioned` (a partitioned
/// cluster of one node); the body gets `backing: &Backing`. Attributes
/// (the `#[tokio::test]` flavor) apply to each.
macro_rules! both_backends {
    ($(#[$attr:meta])* async fn $name:ident($backing:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($backing: &crate::harness::Backing) $body

            $(#[$attr])*
            async fn sled() {
                let backing = crate::harness::Backing::new(crate::harness::Backend::Sled).await;
                body(&backing.expect("sled needs nothing installed")).await
            }

            $(#[$attr])*
            async fn nats() {
                if let Some(backing) = crate::harness::Backing::new(crate::harness::Backend::Nats).await {
                    body(&backing).await
                }
            }

            $(#[$attr])*
            async fn partitioned() {
                if let Some(backing) =
                    crate::harness::Backing::new(crate::harness::Backend::Partitioned).await
                {
                    body(&backing).await
                }
            }
        }
    };
}
pub(crate) use both_backends;

/// The real `wasmhook serve` on a free port.
pub struct Server {
    child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts the binary on `data` (reused across restarts).
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[], &[])
    }

    pub fn start_with(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--allow-private-destinations"];
        all.extend_from_slice(args);
        Self::start_guarded(data, &all, env)
    }

    /// [`Server::start_with`] with the SSRF guard on (private destinations
    /// refused unless `env` allows some).
    pub fn start_guarded(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(crate::support::binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(data)
            .args(args)
            .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY)
            .env("RUST_LOG", "warn")
            // Patient plugin time limits (a test's own `env` may set others).
            .env("WASMHOOK_PLUGINS_HANDLE_TIMEOUT_MS", patient_call_ms())
            .env("WASMHOOK_PLUGINS_FLUSH_TIMEOUT_MS", patient_call_ms())
            .env(
                "WASMHOOK_PLUGINS_SHARED_CACHE_DIR",
                crate::support::shared_compiled_plugins(),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wasmhook");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("wasmhook listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            base,
            // No connection reuse: after an answer sent before the body was
            // read (413, 401), the server closes the connection, and a
            // pooled client could write the next request into it.
            http: {
                wasmhook::deliver::install_tls_provider();
                reqwest::Client::builder()
            }
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        }
    }

    /// Cluster mode: waits until this (only) node leases every partition,
    /// so that what a test sends is scheduled at once.
    async fn wait_until_leased(&self) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (_, health) = self.call("GET", "/healthz", "", None).await;
            let leased = health["cluster"]["partitions_leased"].as_u64();
            if leased == Some(u64::from(TEST_PARTITIONS)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node leased {leased:?} of {TEST_PARTITIONS} partitions: {health}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        sigterm(self.child.id());
        self.child.wait().unwrap()
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_call(method, path, token, body).await.unwrap()
    }

    /// [`Server::call`], with a connection fault as an error (a node that
    /// may be gone).
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// What a chat platform does: POST `body` with `headers` to a source's
    /// path (`/in/{id}`), no API key. Returns the status and the body.
    pub async fn inbound(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a tenant; returns (id, api key).
    pub async fn tenant(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/tenants",
                ADMIN_TOKEN,
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().into(),
            body["api_key"].as_str().unwrap().into(),
        )
    }

    /// Uploads a plugin (`query`: `name=…`, optionally `&version=…`) and
    /// returns its record; the upload must be accepted.
    pub async fn upload_plugin(&self, key: &str, query: &str, wasm: Vec<u8>) -> Value {
        let path = format!("/v1/plugins?{query}");
        let (status, plugin) = self.raw("POST", &path, key, "application/wasm", wasm).await;
        assert_eq!(status, 201, "{query}: {plugin}");
        plugin
    }

    /// Creates a subscription; returns its JSON (with `secret`).
    pub async fn subscribe(&self, key: &str, body: Value) -> Value {
        let (status, sub) = self
            .call("POST", "/v1/subscriptions", key, Some(body))
            .await;
        assert_eq!(status, 201, "{sub}");
        sub
    }

    /// Waits until a delivery of `key`'s tenant reaches a final status and
    /// returns it. A receiver seeing a request comes before the attempt's
    /// record, so a test that acts on the record (a manual retry, its
    /// attempts) waits here first.
    pub async fn settled(&self, key: &str, id: &str) -> Value {
        self.delivery_when(key, id, |d| d["status"] != "pending")
            .await
    }

    /// Waits until a delivery of `key`'s tenant is as `ready` says (e.g.
    /// its first attempt recorded, though it stays pending for a retry)
    /// and returns it.
    pub async fn delivery_when(
        &self,
        key: &str,
        id: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (_, d) = self
                .call("GET", &format!("/v1/deliveries/{id}"), key, None)
                .await;
            if ready(&d) {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "delivery {id} not ready after {PATIENCE:?}: {d}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(pid: u32) {
    // No libc dependency for one signal: use the `kill` command.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// The engine in-process, on a real store in a temp dir, with a manual
/// clock: the API through `Router::oneshot`, attempts through
/// `Worker::run_due`, time through `clock.advance`.
pub struct Engine {
    pub app: wasmhook::app::App,
    pub clock: Arc<wasmhook::clock::ManualClock>,
    pub worker: wasmhook::deliver::worker::Worker,
    router: axum::Router,
    /// Cluster mode: the task renewing this engine's leases.
    lease_keeper: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(keeper) = &self.lease_keeper {
            keeper.abort();
        }
    }
}

impl Engine {
    /// On `backing`. In cluster mode the engine is a node that has leased
    /// every partition before this returns.
    pub async fn on(backing: &Backing, allow_private: bool) -> Self {
        use wasmhook::config::{ClusterConfig, Config, Overrides};
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::load_with_env(
            &Overrides {
                data_dir: Some(dir.path().to_path_buf()),
                allow_private_destinations: allow_private,
                ..Overrides::default()
            },
            |_| None,
        )
        .unwrap();
        config.limits.max_concurrent_calls = 8;
        config.limits.handle_timeout_ms = crate::support::PATIENT_CALL_MS;
        config.limits.flush_timeout_ms = crate::support::PATIENT_CALL_MS;
        let clock = wasmhook::clock::ManualClock::new("2026-11-21T10:00:00Z".parse().unwrap());
        let (app, lease_keeper) = match &backing.nats {
            None => {
                let store = wasmhook::store::Store::open(dir.path()).unwrap();
                let app = wasmhook::server::build_app(&config, store, clock.clone()).unwrap();
                (app, None)
            }
            Some(nats) => {
                let partitioned = backing.backend == Backend::Partitioned;
                let cluster = ClusterConfig {
                    urls: nats.urls(),
                    replicas: None,
                    leases: wasmhook::cluster::leases::LeaseSettings {
                        partitions: TEST_PARTITIONS,
                        lease: Duration::from_secs(TEST_LEASE_SECS),
                        by_tenant: partitioned,
                    },
                    partitioned,
                    read_lease: partitioned.then(|| Duration::from_secs(6)),
                    snapshot_every: None,
                    node_id: "engine".into(),
                    advertise: wasmhook::config::Advertise::Nowhere,
                    auth: Default::default(),
                };
                config.cluster = Some(cluster.clone());
                let (store, mut leases) = wasmhook::server::join_cluster(&config, &cluster)
                    .await
                    .unwrap();
                let app = wasmhook::server::build_app_with(
                    &config,
                    store,
                    clock.clone(),
                    Some(leases.ownership()),
                )
                .unwrap();
                let changes = Arc::new(wasmhook::server::LeaseChanges {
                    queue: app.queue.clone(),
                    forwarding: Default::default(),
                    keep_released: Duration::from_secs(2 * TEST_LEASE_SECS),
                });
                // The only node leases every partition; a round may miss
                // some (a JetStream request timing out on a loaded machine),
                // so rounds go on until it has them all.
                let deadline = std::time::Instant::now() + PATIENCE;
                loop {
                    let round = leases.round(changes.as_ref()).await;
                    if round.is_ok() && leases.ownership().count() == TEST_PARTITIONS as usize {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the only node never leased every partition: {round:?}, {} held",
                        leases.ownership().count()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                (
                    app,
                    Some(tokio::spawn(leases.run(changes, std::future::pending()))),
                )
            }
        };
        let router = wasmhook::api::router(wasmhook::api::ApiState::new(wasmhook::api::ApiParts {
            app: app.clone(),
            feeds: wasmhook::server::build_feeds(&config),
            polls: Default::default(),
            admin_token_hash: Arc::new(wasmhook::store::token_hash(ADMIN_TOKEN)),
            max_event_bytes: config.max_event_bytes,
            max_plugin_bytes: config.max_plugin_bytes,
            public_url: None,
            rate_limiter: None,
            source_rate_limiter: None,
            telemetry: wasmhook::telemetry::Telemetry::install(),
            backup_dir: config.data_dir.clone(),
            schemas: Default::default(),
        }));
        Engine {
            worker: wasmhook::deliver::worker::Worker::new(app.deliver.clone()),
            app,
            clock,
            router,
            lease_keeper,
            _dir: dir,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A new tenant's API key.
    pub async fn tenant(&self) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/tenants",
                ADMIN_TOKEN,
                Some(json!({"name": "t"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["api_key"].as_str().unwrap().to_string()
    }

    pub async fn subscribe(&self, key: &str, body: Value) -> Value {
        let (status, sub) = self
            .call("POST", "/v1/subscriptions", key, Some(body))
            .await;
        assert_eq!(status, 201, "{sub}");
        sub
    }

    /// Sends an event; returns the ids of its deliveries.
    pub async fn send(&self, key: &str, event: Value) -> Vec<String> {
        let (status, body) = self.call("POST", "/v1/events", key, Some(event)).await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().unwrap();
        let (_, event) = self
            .call("GET", &format!("/v1/events/{id}"), key, None)
            .await;
        event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    }

    pub async fn delivery(&self, key: &str, id: &str) -> Value {
        let (status, d) = self
            .call("GET", &format!("/v1/deliveries/{id}"), key, None)
            .await;
        assert_eq!(status, 200, "{d}");
        d
    }

    pub async fn subscription(&self, key: &str, id: &str) -> Value {
        self.call("GET", &format!("/v1/subscriptions/{id}"), key, None)
            .await
            .1
    }

    /// Seconds from the manual clock's now to a timestamp in a delivery.
    pub fn secs_until(&self, at: &Value) -> f64 {
        let at: jiff::Timestamp = at.as_str().unwrap().parse().unwrap();
        use wasmhook::clock::Clock;
        at.duration_since(self.clock.now()).as_secs_f64()
    }
}

/// A `message.created` event with the fields of docs/events.md.
pub fn message_event(id: &str) -> Value {
    json!({
        "id": id,
        "type": "message.created",
        "data": {
            "conversation_id": 31302,
            "conversation_created_at": "2026-11-21T09:00:00Z",
            "chatbot_id": "bot-1",
            "chatbot_name": "Bot",
            "uri": "example.com",
            "author": "visitor",
            "content": "hello",
            "created_at": "2026-11-21T09:00:01Z"
        }
    })
}

/// The `code` of an API error body (panics on any other body).
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// The `message` of an API error body.
pub fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap()
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Standard Webhooks verification as the spec describes it, written here
/// from scratch: key = base64 after `whsec_`, content = "id.ts.body".
pub fn verify_standard(secret: &str, r: &Received) -> usize {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let content = format!(
        "{}.{}.{}",
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        String::from_utf8_lossy(&r.body)
    );
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, content.as_bytes()))
    );
    r.header("webhook-signature")
        .split(' ')
        .filter(|s| *s == expected)
        .count()
}

/// `wasmhook listen --json` against `base` with `key` and `args`: the
/// child, and its output lines as JSON.
pub fn listen_cli(
    base: &str,
    key: &str,
    args: &[&str],
) -> (Child, std::sync::mpsc::Receiver<Value>) {
    use std::io::BufRead;
    let mut child = Command::new(crate::support::binary())
        .arg("listen")
        .args(args)
        .arg("--json")
        .env("WASMHOOK_URL", base)
        .env("WASMHOOK_KEY", key)
        .env("WASMHOOK_CLI_CONFIG", "/nonexistent/wasmhook-cli.toml")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(serde_json::from_str(&line).expect("JSON lines"));
        }
    });
    (child, lines)
}

/// The next line of a [`listen_cli`] (a minute at most).
pub fn next_line(lines: &std::sync::mpsc::Receiver<Value>) -> Value {
    lines
        .recv_timeout(Duration::from_secs(60))
        .expect("a line from wasmhook listen")
}

/// A loopback port free right now (for a second listener or a driver).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An event's delivery ids, read through `node` (again while its
/// partition is moving: a 503).
pub async fn delivery_ids(node: &Server, key: &str, id: &str) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE * 2;
    let stored = loop {
        let (status, stored) = node
            .call("GET", &format!("/v1/events/{id}"), key, None)
            .await;
        if status == 200 {
            break stored;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "{status}: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stored["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{stored}"))
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// Sends `event` as a platform would: to a live node, again to another on
/// a connection fault or a 503 (a partition moving), until one answers
/// 202. Returns its delivery ids.
pub async fn send_until_accepted(nodes: &[&Server], key: &str, event: &Value) -> Vec<String> {
    let (node, _) = post_until_accepted(nodes, key, event, Duration::from_secs(90)).await;
    delivery_ids(node, key, event["id"].as_str().unwrap()).await
}

/// Posts `event` until a node accepts it (202), trying `nodes` in turn
/// and retrying a 503 or a cut connection (a partition moving, a node
/// restarting) for up to `within`, as a client would: the node that
/// accepted it and the 202's body. Any other answer fails the test.
pub async fn post_until_accepted<'a>(
    nodes: &[&'a Server],
    key: &str,
    event: &Value,
    within: Duration,
) -> (&'a Server, Value) {
    let deadline = Instant::now() + within;
    for attempt in 0.. {
        let node = nodes[attempt % nodes.len()];
        match node
            .try_call("POST", "/v1/events", key, Some(event.clone()))
            .await
        {
            Ok((202, body)) => return (node, body),
            Ok((503, _)) | Err(_) => {}
            Ok((status, body)) => panic!("{status}: {body}"),
        }
        assert!(Instant::now() < deadline, "{event} never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}
