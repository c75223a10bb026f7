//! Isolation under a hanging tenant, through the real `wasmhook serve`
//! (release build) on a temp data dir with loopback receivers. Results and
//! the machine: BENCHMARKS.md.
//!
//! `cargo bench -p wasmhook --bench isolation`
//!
//! 1. **Head of line**: tenant A's endpoint hangs (answers after 10 min,
//!    past every timeout) with 10,000 deliveries queued for it; tenant B
//!    then sends events to a healthy endpoint, 8 at a time. Reported: B's
//!    latency from sending an event to its arrival, p50 / p99 / max.
//! 2. **100 tenants**: 100 tenants with one subscription each post events
//!    (one client per tenant); delivered events/s of tenants 1–99, in a run
//!    where tenant 100's endpoint is healthy and in one where it hangs.
//!
//! `ISO_EVENTS` (per tenant in 2, default 100), `ISO_BACKLOG` (default
//! 10,000) and `ISO_B_EVENTS` (default 400) override the sizes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{TOKEN, env};

/// The server and a client for it.
struct Server {
    /// Kept for its drop: the process lives as long as this.
    _process: common::Server,
    base: String,
    http: reqwest::Client,
}

impl Server {
    fn start() -> Self {
        let inner = common::Server::start();
        Server {
            base: inner.base.clone(),
            _process: inner,
            http: common::http_client(),
        }
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    async fn tenant(&self, name: &str) -> String {
        let t = self.post("/v1/tenants", TOKEN, json!({"name": name})).await;
        t["api_key"].as_str().unwrap().to_string()
    }
}

/// Arrival times by event id; `/hang/…` never answers in time.
#[derive(Clone, Default)]
struct Receiver {
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let rx = Receiver::default();
        let arrivals = rx.arrivals.clone();
        let app = axum::Router::new()
            .route(
                "/hang",
                axum::routing::post(|| async {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    ""
                }),
            )
            .fallback(move |body: axum::body::Bytes| {
                let arrivals = arrivals.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Some(id) = v["id"].as_str() {
                        arrivals
                            .lock()
                            .unwrap()
                            .insert(id.to_string(), Instant::now());
                    }
                    ""
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, format!("http://{addr}"))
    }

    fn count_with(&self, prefix: &str) -> usize {
        self.arrivals
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }

    fn at(&self, id: &str) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(id).copied()
    }
}

fn event(id: &str) -> Value {
    json!({"id": id, "type": "message.created", "data": {"content": "hello", "conversation_id": 42}})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn head_of_line(backlog: usize, b_events: usize) {
    let server = Server::start();
    let (rx, rx_base) = Receiver::start().await;
    let a = server.tenant("a").await;
    let b = server.tenant("b").await;
    server
        .post(
            "/v1/subscriptions",
            &a,
            json!({"url": format!("{rx_base}/hang"), "event_types": ["*"], "timeout_ms": 120000}),
        )
        .await;
    server
        .post(
            "/v1/subscriptions",
            &b,
            json!({"url": format!("{rx_base}/ok"), "event_types": ["*"]}),
        )
        .await;
    let mut sent = 0;
    while sent < backlog {
        let n = (backlog - sent).min(1000);
        let events: Vec<Value> = (sent..sent + n).map(|i| event(&format!("a-{i}"))).collect();
        server
            .post("/v1/events/batch", &a, json!({ "events": events }))
            .await;
        sent += n;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Due work blocked only by caps: what the server burns meanwhile.
    let pid = server._process.child.id();
    let (cpu0, t0) = (common::cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "head of line: server CPU while A's backlog is blocked by its caps: {:.1} %",
        (common::cpu_secs(pid) - cpu0) * 100.0 / t0.elapsed().as_secs_f64()
    );

    let sent_at = Arc::new(Mutex::new(HashMap::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    let server = Arc::new(server);
    for _ in 0..8 {
        let (server, b, sent_at, next) = (server.clone(), b.clone(), sent_at.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= b_events {
                    return;
                }
                let id = format!("b-{i}");
                sent_at.lock().unwrap().insert(id.clone(), Instant::now());
                server.post("/v1/events", &b, event(&id)).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while rx.count_with("b-") < b_events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent_at = sent_at.lock().unwrap();
    let mut latencies: Vec<f64> = (0..b_events)
        .map(|i| {
            let id = format!("b-{i}");
            match rx.at(&id) {
                Some(at) => at.duration_since(sent_at[&id]).as_secs_f64() * 1000.0,
                None => f64::INFINITY,
            }
        })
        .collect();
    latencies.sort_by(|x, y| x.partial_cmp(y).unwrap());
    println!(
        "head of line: A hangs with {backlog} queued; B {b_events} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, delivered {}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
        rx.count_with("b-"),
    );
}

/// Delivered events/s of tenants 1–99 while tenant 100 is healthy or hangs.
async fn hundred_tenants(per_tenant: usize, last_hangs: bool) -> f64 {
    let server = Arc::new(Server::start());
    let (rx, rx_base) = Receiver::start().await;
    let mut keys = Vec::new();
    for t in 0..100 {
        let key = server.tenant(&format!("t{t}")).await;
        let url = if t == 99 && last_hangs {
            format!("{rx_base}/hang")
        } else {
            format!("{rx_base}/ok")
        };
        server
            .post(
                "/v1/subscriptions",
                &key,
                json!({"url": url, "event_types": ["*"], "timeout_ms": 120000}),
            )
            .await;
        keys.push(key);
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    for (t, key) in keys.into_iter().enumerate() {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..per_tenant {
                server
                    .post("/v1/events", &key, event(&format!("t{t:02}-{i}")))
                    .await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let others = 99 * per_tenant;
    let deadline = Instant::now() + Duration::from_secs(300);
    let count = || {
        (0..99)
            .map(|t| rx.count_with(&format!("t{t:02}-")))
            .sum::<usize>()
    };
    while count() < others && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = count() as f64 / secs;
    println!(
        "100 tenants, tenant 100 {}: tenants 1-99 delivered {} events in {secs:.2} s = {rate:.0}/s",
        if last_hangs { "hangs" } else { "healthy" },
        count()
    );
    rate
}

#[tokio::main]
async fn main() {
    let only = std::env::var("ISO_ONLY").unwrap_or_default();
    if only.is_empty() || only == "hol" {
        head_of_line(env("ISO_BACKLOG", 10_000), env("ISO_B_EVENTS", 400)).await;
    }
    if only.is_empty() || only == "hundred" {
        let per_tenant = env("ISO_EVENTS", 100);
        let healthy = hundred_tenants(per_tenant, false).await;
        let hanging = hundred_tenants(per_tenant, true).await;
        println!(
            "ratio (hanging / healthy) for tenants 1-99: {:.2}",
            hanging / healthy
        );
    }
}
