//! Start-up with a big store, through the real `wasmhook serve` (release
//! build): two of issue 13's targets, measured. Results and the machine:
//! BENCHMARKS.md.
//!
//! `cargo bench -p wasmhook --bench restart`
//!
//! 1. **Many subscriptions**: `RESTART_TENANTS` tenants (default 1,000) with
//!    `RESTART_SUBS` subscriptions each (default 100), then a restart.
//!    Reported: time from spawn to serving, to the first routed event of one
//!    tenant, and RSS.
//! 2. **A deep backlog**: `RESTART_PENDING` deliveries (default 1,000,000:
//!    100,000 events in batches of 1,000 to 10 subscriptions) queued behind
//!    endpoints that hang, then a restart with the endpoints answering.
//!    Reported: time to serving, to the first delivery, RSS then and 5 s
//!    later, and how many were delivered in the first 5 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{TOKEN, env, post, rss_mib};

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        many_subscriptions().await;
        deep_backlog().await;
    });
}

/// A receiver that counts arrivals; while `hang` is set it never answers.
async fn receiver(hang: Arc<AtomicBool>, count: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || {
        let hang = hang.clone();
        let count = count.clone();
        async move {
            if hang.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            count.fetch_add(1, Ordering::Relaxed);
            ""
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn many_subscriptions() {
    let tenants = env("RESTART_TENANTS", 1000);
    let per = env("RESTART_SUBS", 100);
    let dir = tempfile::tempdir().unwrap();
    let limits = [("WASMHOOK_LIMITS_SUBSCRIPTIONS_PER_TENANT", "100000")];
    let server = common::Server::start_in(dir.path(), &limits);
    let http = common::http_client();
    let count = Arc::new(AtomicU64::new(0));
    let url = receiver(Arc::new(AtomicBool::new(false)), count.clone()).await;
    let started = Instant::now();
    let mut keys = Vec::new();
    for t in 0..tenants {
        let tenant = post(
            &http,
            &server.base,
            "/v1/tenants",
            TOKEN,
            json!({"name": format!("t{t}")}),
        )
        .await;
        let key = tenant["api_key"].as_str().unwrap().to_string();
        let mut creating = tokio::task::JoinSet::new();
        for s in 0..per {
            let (http, base, key) = (http.clone(), server.base.clone(), key.clone());
            // One subscription in each tenant matches message.created.
            let types = if s == 0 {
                "message.*".to_string()
            } else {
                format!("type{s}.*")
            };
            let body = json!({"url": url, "event_types": [types]});
            creating
                .spawn(async move { post(&http, &base, "/v1/subscriptions", &key, body).await });
            if creating.len() >= 32 {
                creating.join_next().await;
            }
        }
        while creating.join_next().await.is_some() {}
        keys.push(key);
    }
    eprintln!(
        "{} subscriptions created in {:.1} s",
        tenants * per,
        started.elapsed().as_secs_f64()
    );
    server.stop();

    let spawned = Instant::now();
    let server = common::Server::start_in(dir.path(), &limits);
    let serving = spawned.elapsed();
    let rss = rss_mib(server.child.id());
    let key = &keys[tenants / 2];
    post(
        &http,
        &server.base,
        "/v1/events",
        key,
        json!({"type": "message.created", "data": {"content": "hi"}}),
    )
    .await;
    let routed = spawned.elapsed();
    while count.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered = spawned.elapsed();
    println!(
        "| {} subscriptions ({tenants} tenants × {per}) | serving after {:.0} ms | first event routed (202) after {:.0} ms, delivered after {:.0} ms | RSS {rss:.0} MiB |",
        tenants * per,
        serving.as_secs_f64() * 1e3,
        routed.as_secs_f64() * 1e3,
        delivered.as_secs_f64() * 1e3
    );
}

async fn deep_backlog() {
    let pending = env("RESTART_PENDING", 1_000_000);
    let subs = 10;
    let dir = tempfile::tempdir().unwrap();
    let quota = (pending * 2).to_string();
    let limits = [(
        "WASMHOOK_LIMITS_PENDING_DELIVERIES_PER_TENANT",
        quota.as_str(),
    )];
    let server = common::Server::start_in(dir.path(), &limits);
    let http = common::http_client();
    let hang = Arc::new(AtomicBool::new(true));
    let count = Arc::new(AtomicU64::new(0));
    let url = receiver(hang.clone(), count.clone()).await;
    let tenant = post(
        &http,
        &server.base,
        "/v1/tenants",
        TOKEN,
        json!({"name": "deep"}),
    )
    .await;
    let key = tenant["api_key"].as_str().unwrap().to_string();
    for _ in 0..subs {
        post(
            &http,
            &server.base,
            "/v1/subscriptions",
            &key,
            json!({"url": url, "event_types": ["*"], "max_in_flight": 1, "timeout_ms": 120000}),
        )
        .await;
    }
    let started = Instant::now();
    let events = pending / subs;
    let mut sent = 0;
    while sent < events {
        let n = 1000.min(events - sent);
        let batch: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("e-{}", sent + i), "type": "message.created", "data": {"content": "hello", "conversation_id": 42}}))
            .collect();
        post(
            &http,
            &server.base,
            "/v1/events/batch",
            &key,
            json!({"events": batch}),
        )
        .await;
        sent += n;
    }
    let bytes = dir_bytes(dir.path());
    eprintln!(
        "{pending} deliveries queued in {:.1} s; data dir {:.0} MiB",
        started.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64
    );
    server.stop();

    hang.store(false, Ordering::Relaxed);
    let spawned = Instant::now();
    let server = common::Server::start_in(dir.path(), &limits);
    let serving = spawned.elapsed();
    let rss_start = rss_mib(server.child.id());
    while count.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = spawned.elapsed();
    let at_first = count.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let in_5s = count.load(Ordering::Relaxed) - at_first;
    let rss_later = rss_mib(server.child.id());
    println!(
        "| {pending} pending deliveries | serving after {:.0} ms | first delivery after {:.0} ms; {in_5s} delivered in the next 5 s | RSS {rss_start:.0} MiB at start, {rss_later:.0} MiB 5 s later |",
        serving.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
