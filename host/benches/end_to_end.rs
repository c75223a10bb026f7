//! End-to-end throughput: the real `wasmhook serve` binary on a temp data
//! dir, one subscription, a loopback receiver; clients post events with
//! durable acks (202 once on disk) and the clock stops when the
//! receiver has every delivery. Results and the machine: BENCHMARKS.md.
//!
//! `cargo bench -p wasmhook --bench end_to_end`
//! (`E2E_EVENTS`, `E2E_CLIENTS`, `E2E_BATCH` override the defaults; `E2E_ONLY`
//! runs only the runs whose label contains it.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::env;

struct Run {
    label: String,
    events: usize,
    accepted_secs: f64,
    delivered_secs: f64,
}

#[tokio::main]
async fn main() {
    let events = env("E2E_EVENTS", 20_000);
    let clients = env("E2E_CLIENTS", 32);
    let mut runs = Vec::new();
    for (label, plugin, batch, extra_subs) in [
        ("single events, no plugin", None, 1, 0),
        (
            "single events, helloclient-lead plugin",
            Some("builtin:helloclient-lead"),
            1,
            0,
        ),
        ("batches of 100, no plugin", None, env("E2E_BATCH", 100), 0),
        (
            "single events, 1,000 subscriptions (one matching)",
            None,
            1,
            999,
        ),
    ] {
        if let Ok(only) = std::env::var("E2E_ONLY")
            && !label.contains(&only)
        {
            continue;
        }
        runs.push(run(label, events, clients, plugin, batch, extra_subs).await);
    }
    println!();
    println!("| run | events | accepted/s | delivered/s (end to end) |");
    println!("|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {} | {:.0} | {:.0} |",
            r.label,
            r.events,
            r.events as f64 / r.accepted_secs,
            r.events as f64 / r.delivered_secs
        );
    }
}

async fn run(
    label: &str,
    events: usize,
    clients: usize,
    plugin: Option<&str>,
    batch: usize,
    extra_subs: usize,
) -> Run {
    let server = common::Server::start();
    let token = common::TOKEN;
    let base = server.base.clone();

    // The receiver: counts deliveries.
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            r#"{"status":"success"}"#
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rx_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let http = common::http_client();
    let tenant: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(token)
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = tenant["api_key"].as_str().unwrap().to_string();
    let mut sub =
        json!({"url": format!("http://{rx_addr}/hook"), "event_types": ["*"], "max_in_flight": 64});
    if let Some(p) = plugin {
        sub["plugin"] = json!({"id": p});
    }
    let resp = http
        .post(format!("{base}/v1/subscriptions"))
        .bearer_auth(&key)
        .json(&sub)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // Subscriptions the events do not match: routing must not pay for them.
    for _ in 0..extra_subs {
        let resp = http
            .post(format!("{base}/v1/subscriptions"))
            .bearer_auth(&key)
            .json(
                &json!({"url": format!("http://{rx_addr}/other"), "event_types": ["other.event"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }

    let event = |i: usize| {
        json!({
            "id": format!("bench-{i}"),
            "type": "lead.created",
            "data": {
                "chatbot_id": "59001dd73709417321c58b11693183a2", "first_name": "David",
                "last_name": "Garcia", "email": "test@qq.com", "phone": "", "content": "test",
                "session_id": 31305, "uri": "www.helloclient.com",
                "created_at": "2023-11-23T18:36:21.512302Z"
            }
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, key, next) = (http.clone(), base.clone(), key.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= events {
                    return;
                }
                let last = (first + batch).min(events);
                let resp = if batch == 1 {
                    http.post(format!("{base}/v1/events"))
                        .bearer_auth(&key)
                        .json(&event(first))
                        .send()
                        .await
                } else {
                    let batch: Vec<Value> = (first..last).map(event).collect();
                    http.post(format!("{base}/v1/events/batch"))
                        .bearer_auth(&key)
                        .json(&json!({ "events": batch }))
                        .send()
                        .await
                };
                assert_eq!(resp.unwrap().status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    while received.load(Ordering::Relaxed) < events {
        if started.elapsed() > Duration::from_secs(600) {
            panic!(
                "only {} of {events} delivered",
                received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    let server_cpu_secs = common::cpu_secs(server.child.id());
    drop(server);
    eprintln!(
        "{label}: {events} events, accepted in {accepted_secs:.2} s, delivered in {delivered_secs:.2} s, server CPU {server_cpu_secs:.2} s ({:.0} µs/event)",
        server_cpu_secs * 1e6 / events as f64
    );
    Run {
        label: label.into(),
        events,
        accepted_secs,
        delivered_secs,
    }
}
