//! What operators and owners see, through the real binary: Prometheus
//! metrics (on the main address to the operator, and on a separate address
//! without auth), the operational webhook told when a subscription is
//! disabled or enabled, and the per-subscription delivery index.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// The value of one series in a Prometheus text exposition (`name{labels}`
/// exactly as rendered, labels in the order given).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

async fn get_text(url: &str, token: Option<&str>) -> (u16, String) {
    let client = crate::support::http_client();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_what_happened_and_are_served_to_the_operator_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(dir.path(), &[], &[("WASMHOOK_METRICS_LISTEN", &listen)]);
    let (_, key) = server.tenant("metrics").await;
    let rx = Receiver::ok().await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    for _ in 0..2 {
        let (status, accepted) = server
            .call("POST", "/v1/events", &key, Some(message_event("m-1")))
            .await;
        assert_eq!(status, 202, "{accepted}");
    }
    rx.wait_for(1, PATIENCE).await;
    let (_, event) = server.call("GET", "/v1/events/m-1", &key, None).await;
    server
        .settled(&key, event["deliveries"][0].as_str().unwrap())
        .await;

    let url = format!("{}/metrics", server.base);
    assert_eq!(get_text(&url, None).await.0, 401);
    assert_eq!(get_text(&url, Some(&key)).await.0, 401, "a tenant key");
    let (status, text) = get_text(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    for family in [
        "wasmhook_events_accepted_total",
        "wasmhook_events_duplicate_total",
        "wasmhook_deliveries_created_total",
        "wasmhook_delivery_attempts_total",
        "wasmhook_delivery_attempt_duration_seconds",
        "wasmhook_delivery_latency_seconds",
        "wasmhook_queue_depth",
        "wasmhook_http_requests_total",
        "wasmhook_http_request_duration_seconds",
        "wasmhook_plugin_calls_total",
        "wasmhook_subscriptions_disabled_total",
        "wasmhook_subscriptions_enabled_total",
        "wasmhook_window_flushes_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing in:\n{text}"
        );
    }
    assert_eq!(sample(&text, "wasmhook_events_accepted_total"), Some(1.0));
    assert_eq!(sample(&text, "wasmhook_events_duplicate_total"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "wasmhook_deliveries_created_total{status=\"pending\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "wasmhook_delivery_attempts_total{outcome=\"succeeded\",destination=\"http\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "wasmhook_delivery_latency_seconds_count"),
        Some(1.0)
    );
    // Routes by template: no ids in labels.
    assert_eq!(
        sample(
            &text,
            "wasmhook_http_requests_total{route=\"/v1/events\",status=\"202\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/deliveries/{id}\""));
    assert!(!text.contains("dlv_"), "an id leaked into a label");
    // Series nothing has touched yet read 0, not "no data".
    assert_eq!(
        sample(
            &text,
            "wasmhook_subscriptions_disabled_total{reason=\"gone\"}"
        ),
        Some(0.0)
    );

    // The separate address: no auth, /metrics only.
    let (status, open) = get_text(&format!("http://{listen}/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(open.contains("wasmhook_events_accepted_total 1"));
    assert_eq!(
        get_text(&format!("http://{listen}/v1/tenants"), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn the_ops_endpoint_is_told_when_a_subscription_is_disabled_and_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (tenant_id, key) = server.tenant("ops").await;
    let ops_rx = Receiver::ok().await;

    // No endpoint yet.
    let (status, _) = server.call("GET", "/v1/ops-endpoint", &key, None).await;
    assert_eq!(status, 404);
    let (status, body) = server
        .call(
            "PUT",
            "/v1/ops-endpoint",
            &key,
            Some(json!({"url": "not a url"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "invalid_ops_endpoint");
    let (status, body) = server
        .call(
            "PUT",
            "/v1/ops-endpoint",
            &key,
            Some(json!({"url": ops_rx.url(), "color": "red"})),
        )
        .await;
    assert_eq!(status, 400, "unknown field: {body}");
    let (status, ops) = server
        .call(
            "PUT",
            "/v1/ops-endpoint",
            &key,
            Some(json!({"url": ops_rx.url()})),
        )
        .await;
    assert_eq!(status, 200, "{ops}");
    let secret = ops["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let (_, shown) = server.call("GET", "/v1/ops-endpoint", &key, None).await;
    assert!(shown.get("secret").is_none(), "read without the secret");
    let (_, revealed) = server
        .call("GET", "/v1/ops-endpoint/secret", &key, None)
        .await;
    assert_eq!(revealed["secret"], secret.as_str());

    // 410 Gone: disabled at once, the ops endpoint hears of it, signed.
    let gone = Receiver::start(vec![], Answer::status(410)).await;
    let sub = server
        .subscribe(
            &key,
            json!({"url": gone.url(), "event_types": ["message.*"], "description": "<script>crm</script>"}),
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap();
    server
        .call("POST", "/v1/events", &key, Some(message_event("g-1")))
        .await;
    let told = ops_rx.wait_for(1, PATIENCE).await;
    let n = &told[0];
    assert_eq!(verify_standard(&secret, n), 1, "signed with the ops secret");
    let body = n.json();
    assert_eq!(body["type"], "subscription.disabled");
    assert_eq!(body["data"]["subscription_id"], sub_id);
    assert_eq!(body["data"]["reason"], "gone");
    assert_eq!(body["data"]["description"], "<script>crm</script>");
    assert!(
        body["data"]["last_error"].as_str().unwrap().contains("410"),
        "{body}"
    );
    let (_, s) = server
        .call("GET", &format!("/v1/subscriptions/{sub_id}"), &key, None)
        .await;
    assert_eq!(s["enabled"], false);

    // Enabled again through the API: told too; enabling twice tells once.
    for _ in 0..2 {
        let (status, _) = server
            .call(
                "POST",
                &format!("/v1/subscriptions/{sub_id}/enable"),
                &key,
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    let told = ops_rx.wait_for(2, PATIENCE).await;
    assert_eq!(told[1].json()["type"], "subscription.enabled");

    // Too many failures in a row: disabled with reason `failures`.
    let failing = Receiver::start(vec![], Answer::status(500)).await;
    let sub2 = server
        .subscribe(
            &key,
            json!({"url": failing.url(), "event_types": ["lead.*"],
                   "retry": {"schedule_secs": [], "disable_after_failures": 1}}),
        )
        .await;
    server
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(json!({"type": "lead.created", "source": "t", "data": {}})),
        )
        .await;
    let told = ops_rx.wait_for(3, PATIENCE).await;
    let body = told[2].json();
    assert_eq!(body["type"], "subscription.disabled");
    assert_eq!(body["data"]["subscription_id"], sub2["id"]);
    assert_eq!(body["data"]["reason"], "failures");

    // Disabled through the API: reason `operator`; disabling twice tells once.
    for _ in 0..2 {
        server
            .call(
                "POST",
                &format!("/v1/subscriptions/{sub_id}/disable"),
                &key,
                None,
            )
            .await;
    }
    let told = ops_rx.wait_for(4, PATIENCE).await;
    assert_eq!(told[3].json()["data"]["reason"], "operator");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ops_rx.received().len(), 4, "one notification per change");

    // The notifications are in the tenant's delivery log, under the ops id.
    let ops_id = format!("ops_{tenant_id}");
    let (_, page) = server
        .call(
            "GET",
            &format!("/v1/deliveries?subscription_id={ops_id}"),
            &key,
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 4, "{page}");

    // Another tenant neither sees nor changes it.
    let (_, other) = server.tenant("other").await;
    assert_eq!(
        server.call("GET", "/v1/ops-endpoint", &other, None).await.0,
        404
    );
    let (_, page) = server
        .call(
            "GET",
            &format!("/v1/deliveries?subscription_id={ops_id}"),
            &other,
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    assert_eq!(
        server
            .call("DELETE", "/v1/ops-endpoint", &key, None)
            .await
            .0,
        204
    );
    assert_eq!(
        server.call("GET", "/v1/ops-endpoint", &key, None).await.0,
        404
    );
}

#[tokio::test]
async fn deliveries_filter_by_subscription_and_event_type_within_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("index").await;
    let rx = Receiver::ok().await;
    let a = server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["message.*"]}))
        .await;
    let b = server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    for i in 0..3 {
        server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(message_event(&format!("i-{i}"))),
            )
            .await;
    }
    server
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(json!({"type": "lead.created", "source": "t", "data": {}})),
        )
        .await;
    let list = |q: String| {
        let server = &server;
        let key = key.clone();
        async move {
            let (status, page) = server
                .call("GET", &format!("/v1/deliveries?{q}"), &key, None)
                .await;
            assert_eq!(status, 200, "{page}");
            page
        }
    };
    let page = list(format!("subscription_id={}", a["id"].as_str().unwrap())).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let page = list(format!("subscription_id={}", b["id"].as_str().unwrap())).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 4);
    // Newest first, paged by cursor within the subscription.
    let first = list(format!(
        "subscription_id={}&limit=2",
        b["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(first["items"][0]["event_type"], "lead.created");
    let rest = list(format!(
        "subscription_id={}&limit=2&cursor={}",
        b["id"].as_str().unwrap(),
        first["next_cursor"].as_str().unwrap()
    ))
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert!(rest["next_cursor"].is_null());
    let page = list("event_type=lead.created".into()).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    // The whole tenant: both subscriptions merged, newest first, paged.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list(format!("limit=3{cursor}")).await;
        for d in page["items"].as_array().unwrap() {
            ids.push(d["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    // A deleted subscription's history stays in the tenant's log.
    let (status, _) = server
        .call(
            "DELETE",
            &format!("/v1/subscriptions/{}", a["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let page = list("limit=50".into()).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 7);

    let (_, other) = server.tenant("other").await;
    let (_, page) = server
        .call(
            "GET",
            &format!(
                "/v1/deliveries?subscription_id={}",
                a["id"].as_str().unwrap()
            ),
            &other,
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
}

#[tokio::test]
async fn a_filter_that_matches_little_pages_through_a_long_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("long").await;
    let rx = Receiver::ok().await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    server
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(json!({"type": "lead.created", "source": "t", "data": {}})),
        )
        .await;
    for batch in 0..3 {
        let events: Vec<Value> = (0..700)
            .map(|i| message_event(&format!("long-{batch}-{i}")))
            .collect();
        let (status, body) = server
            .call(
                "POST",
                "/v1/events/batch",
                &key,
                Some(json!({ "events": events })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // 2,101 deliveries; the one lead is the oldest. A page reads at most
    // 2,000: the first answers nothing yet but says where to go on.
    let (_, first) = server
        .call("GET", "/v1/deliveries?event_type=lead.created", &key, None)
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 0, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a cursor to go on");
    let (_, second) = server
        .call(
            "GET",
            &format!("/v1/deliveries?event_type=lead.created&cursor={cursor}"),
            &key,
            None,
        )
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["items"][0]["event_type"], "lead.created");
    assert!(second["next_cursor"].is_null());
}

/// OpenTelemetry traces, received by a real OTLP/HTTP endpoint (the
/// official `opentelemetry-proto` package decoding the protobuf): one
/// event from a platform that sent a `traceparent`, routed to two
/// subscriptions (one through a plugin), one of them answering 500 once;
/// the server restarted between the failed attempt and its retry. One
/// trace: the request under the platform's span, the event under the
/// request, a transform per subscription under the event, the commit
/// under the request, and every attempt — the retry from the restarted
/// process too — under the event. A subscription with `trace_context`
/// sends its attempt's `traceparent`. No payload in any span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_events_trace_from_its_request_to_every_attempt_across_a_restart() {
    let python = crate::support::python_with("otlp", &["opentelemetry-proto==1.39.1"]);
    let dir = tempfile::tempdir().unwrap();
    let spans_file = dir.path().join("spans.jsonl");
    let mut receiver = std::process::Command::new(python)
        .arg(crate::support::repo_root().join("tests/fixtures/otlp_receiver.py"))
        .arg(&spans_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let port = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(receiver.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().to_string()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [("WASMHOOK_TELEMETRY_OTLP_ENDPOINT", endpoint.as_str())];
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &[], &env);
    let (_, key) = server.tenant("traced").await;
    let crm = Receiver::ok().await;
    let flaky = Receiver::start(vec![Answer::status(500)], Answer::status(200)).await;
    let lead_sub = server
        .subscribe(
            &key,
            json!({"url": crm.url(), "event_types": ["lead.created"],
                   "plugin": {"id": "builtin:helloclient-lead"}, "trace_context": true}),
        )
        .await;
    assert_eq!(lead_sub["trace_context"], true);
    let plain_sub = server
        .subscribe(
            &key,
            json!({"url": flaky.url(), "event_types": ["lead.*"],
                   "retry": {"schedule_secs": [2], "jitter": 0.0}}),
        )
        .await;
    let platform_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let platform_span = "00f067aa0ba902b7";
    let lead = std::fs::read(crate::support::repo_root().join("examples/lead.json")).unwrap();
    let response = crate::support::http_client()
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{platform_trace}-{platform_span}-01"),
        )
        .body(lead)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // The failed attempt, then a restart before its retry.
    flaky.wait_for(1, PATIENCE).await;
    crm.wait_for(1, PATIENCE).await;
    let (_, event) = server
        .call("GET", "/v1/events/evt_lead_31305", &key, None)
        .await;
    let flaky_delivery = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .find(|d| flaky.received()[0].header("webhook-id") == *d)
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, d) = server
            .call(
                "GET",
                &format!("/v1/deliveries/{flaky_delivery}"),
                &key,
                None,
            )
            .await;
        if d["attempts"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.stop().success());
    let server = Server::start_with(&data, &[], &env);
    flaky.wait_for(2, PATIENCE).await;
    assert_eq!(
        server.settled(&key, &flaky_delivery).await["status"],
        "succeeded"
    );
    // Stopping flushes what is buffered.
    assert!(server.stop().success());

    let spans: Vec<Value> = std::fs::read_to_string(&spans_file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let _ = receiver.kill();
    let _ = receiver.wait();
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains("test@qq.com"), "a payload in a span: {text}");
    for s in &spans {
        assert_eq!(s["service"], "wasmhook");
    }
    // The event's trace (the other requests, creating the tenant and the
    // subscriptions, have traces of their own).
    let spans: Vec<Value> = spans
        .into_iter()
        .filter(|s| s["trace_id"] == platform_trace)
        .collect();
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let one = |name: &str| -> &Value {
        let found = named(name);
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        found[0]
    };
    let request = one("POST /v1/events");
    assert_eq!(request["parent_span_id"], platform_span);
    assert_eq!(request["attributes"]["http.response.status_code"], 202);
    let event_span = one("event");
    assert_eq!(event_span["parent_span_id"], request["span_id"]);
    assert_eq!(event_span["attributes"]["event.id"], "evt_lead_31305");
    let commit = one("commit");
    assert_eq!(commit["parent_span_id"], request["span_id"]);
    let transforms = named("transform");
    assert_eq!(transforms.len(), 2, "{spans:#?}");
    for t in &transforms {
        assert_eq!(t["parent_span_id"], event_span["span_id"]);
        assert_eq!(t["attributes"]["outcome"], "deliver");
    }
    let mut plugins: Vec<&str> = transforms
        .iter()
        .map(|t| t["attributes"]["plugin"].as_str().unwrap())
        .collect();
    plugins.sort();
    assert_eq!(plugins, ["builtin:helloclient-lead", "none"]);
    let attempts = named("attempt");
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    for a in &attempts {
        assert_eq!(a["parent_span_id"], event_span["span_id"], "{a}");
    }
    let of = |sub: &Value| -> Vec<&Value> {
        let mut found: Vec<&Value> = attempts
            .iter()
            .copied()
            .filter(|a| a["attributes"]["subscription.id"] == sub["id"])
            .collect();
        found.sort_by_key(|a| a["attributes"]["attempt"].as_i64());
        found
    };
    let flaky_attempts = of(&plain_sub);
    assert_eq!(flaky_attempts.len(), 2);
    assert_eq!(
        flaky_attempts[0]["attributes"]["http.response.status_code"],
        500
    );
    assert_eq!(flaky_attempts[0]["attributes"]["outcome"], "retry");
    assert_eq!(flaky_attempts[0]["status"], 2, "an error status");
    assert_eq!(flaky_attempts[1]["attributes"]["retry"], 1);
    assert_eq!(
        flaky_attempts[1]["attributes"]["http.response.status_code"],
        200
    );
    assert_eq!(flaky_attempts[1]["attributes"]["outcome"], "succeeded");
    let crm_attempt = of(&lead_sub)[0];
    assert_eq!(
        crm.received()[0].header("traceparent"),
        format!(
            "00-{platform_trace}-{}-01",
            crm_attempt["span_id"].as_str().unwrap()
        )
    );
    assert_eq!(flaky.received()[0].header("traceparent"), "");
}
