//! The delivery log behind the dashboard's Recent Deliveries, through the
//! real `wasmhook serve` (release build). Results and the machine:
//! BENCHMARKS.md.
//!
//! `cargo bench -p wasmhook --bench delivery_log`
//!
//! One tenant: endpoint `busy` gets `LOG_DELIVERIES` (default 100,000)
//! delivered events, endpoint `quiet` one event in every 2,000, so its 50
//! deliveries are spread over the whole history. Then each request below is
//! timed `LOG_RUNS` times (default 20), reported as median and p90 ms:
//! 1. `busy`, first page (50);
//! 2. `quiet`, first page (all 50, across the whole history);
//! 3. `busy`, `status=failed` (matches nothing);
//! 4. the whole tenant, first page.
//!
//! `WASMHOOK_BIN` runs another build (the before/after of BENCHMARKS.md).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{TOKEN, env, post};

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn run() {
    let total = env("LOG_DELIVERIES", 100_000);
    let runs = env("LOG_RUNS", 20);
    let server = common::Server::start();
    let http = common::http_client();
    let base = server.base.clone();

    // A receiver that answers 200 at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rx = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "" });
        axum::serve(listener, app).await.unwrap()
    });

    let tenant = post(&http, &base, "/v1/tenants", TOKEN, json!({"name": "log"})).await;
    let key = tenant["api_key"].as_str().unwrap().to_string();
    let busy = post(
        &http,
        &base,
        "/v1/subscriptions",
        &key,
        json!({"url": format!("{rx}/busy"), "event_types": ["message.*"]}),
    )
    .await;
    let quiet = post(
        &http,
        &base,
        "/v1/subscriptions",
        &key,
        json!({"url": format!("{rx}/quiet"), "event_types": ["lead.*"]}),
    )
    .await;

    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = 999.min(total - sent); // and room for one lead
        let mut events: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("m-{}", sent + i), "type": "message.created",
                       "data": {"content": "hello", "conversation_id": 42}})
            })
            .collect();
        for i in (0..n).filter(|i| (sent + i) % 2000 == 0) {
            events
                .push(json!({"id": format!("l-{}", sent + i), "type": "lead.created", "data": {}}));
        }
        post(
            &http,
            &base,
            "/v1/events/batch",
            &key,
            json!({"events": events}),
        )
        .await;
        sent += n;
        // Keep the backlog under the tenant's quota.
        drain(&http, &base, 50_000).await;
    }
    drain(&http, &base, 0).await;
    eprintln!(
        "{total} deliveries stored and delivered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let busy_id = busy["id"].as_str().unwrap();
    let quiet_id = quiet["id"].as_str().unwrap();
    let cases = [
        (
            "busy endpoint, first page",
            format!("subscription_id={busy_id}&limit=50"),
        ),
        (
            "quiet endpoint, first page",
            format!("subscription_id={quiet_id}&limit=50"),
        ),
        (
            "busy endpoint, status=failed (none)",
            format!("subscription_id={busy_id}&status=failed&limit=50"),
        ),
        ("whole tenant, first page", "limit=50".to_string()),
    ];
    println!("| request | items | median ms | p90 ms |");
    println!("|---|---|---|---|");
    for (name, query) in cases {
        let mut times = Vec::new();
        let mut items = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let resp = http
                .get(format!("{base}/v1/deliveries?{query}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success());
            let page: Value = resp.json().await.unwrap();
            times.push(t.elapsed());
            items = page["items"].as_array().map_or(0, Vec::len);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {items} | {:.1} | {:.1} |",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10])
        );
    }
}

/// Waits until at most `left` deliveries are queued or in flight.
async fn drain(http: &reqwest::Client, base: &str, left: u64) {
    loop {
        let health: Value = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pending =
            health["outbox"].as_u64().unwrap_or(0) + health["in_flight"].as_u64().unwrap_or(0);
        if pending <= left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
