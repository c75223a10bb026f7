//! Hostile tenants and hostile networks, through the real binary: no route
//! reaches another tenant's things, a `nats` source reaches only the
//! brokers the operator allows (never the cluster's own NATS, never an
//! internal subject), connections cannot be held open or piled up, and
//! what is on disk is the owner's only.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// A tenant's state as its own routes show it.
async fn snapshot(server: &Server, key: &str, source_id: &str) -> Value {
    let mut state = serde_json::Map::new();
    for path in [
        "/v1/subscriptions".to_string(),
        "/v1/sources".to_string(),
        "/v1/plugins".to_string(),
        "/v1/keys".to_string(),
        "/v1/deliveries".to_string(),
        "/v1/events/victim-1".to_string(),
        "/v1/apps".to_string(),
        "/v1/event-types?include_archived=true".to_string(),
        "/v1/apps/victim-app/portal-links".to_string(),
        "/api/v1/app/victim-app/msg".to_string(),
        format!("/v1/sources/{source_id}/dead-letters"),
    ] {
        let (status, body) = server.call("GET", &path, key, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        state.insert(path, body);
    }
    Value::Object(state)
}

/// Every mutating route, called by tenant B with tenant A's ids (taken
/// from the OpenAPI document, so a new route is covered without a change
/// here): B is told 404 (or 400/422 for a body it must fix first), and
/// A's state is the same before and after.
#[tokio::test]
async fn no_route_changes_another_tenants_things() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, a) = server.tenant("victim").await;
    let (_, b) = server.tenant("attacker").await;

    // A's things: a subscription with a delivered event, a source with a
    // dead letter, a plugin, a second key.
    let rx = Receiver::ok().await;
    let sub = server
        .subscribe(&a, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let (status, _) = server
        .call(
            "POST",
            "/v1/events",
            &a,
            Some(json!({"id": "victim-1", "type": "message.created", "data": {}})),
        )
        .await;
    assert_eq!(status, 202);
    rx.wait_for(1, PATIENCE).await;
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &a,
            Some(json!({"kind": "onehash", "verify": {"scheme": "none"}})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let source_id = source["id"].as_str().unwrap().to_string();
    let (status, _) = server
        .inbound(
            source["url"].as_str().unwrap(),
            &[],
            b"{\"not\": \"a platform event\"}",
        )
        .await;
    assert_eq!(status, 422);
    let plugin = server
        .upload_plugin(&a, "name=victim", crate::support::fixture("hostile"))
        .await;
    let (status, key) = server.call("POST", "/v1/keys", &a, Some(json!({}))).await;
    assert_eq!(status, 201, "{key}");
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            &a,
            Some(json!({"name": "A's customer", "uid": "victim-app"})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_string();
    let (status, t) = server
        .call(
            "POST",
            "/v1/event-types",
            &a,
            Some(json!({"name": "message.created", "description": "A's type"})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let (status, link) = server
        .call(
            "POST",
            "/v1/apps/victim-app/portal-links",
            &a,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let app_endpoint = server
        .subscribe(
            &a,
            json!({"url": rx.url(), "event_types": ["message.created"], "app": "victim-app"}),
        )
        .await;

    // Wait until A's delivery is settled, so its state stands still.
    let deadline = Instant::now() + PATIENCE;
    let delivery_id = loop {
        let (_, page) = server.call("GET", "/v1/deliveries", &a, None).await;
        if page["items"][0]["status"] == "succeeded" {
            break page["items"][0]["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, letters) = server
        .call(
            "GET",
            &format!("/v1/sources/{source_id}/dead-letters"),
            &a,
            None,
        )
        .await;
    let letter_id = letters["items"][0]["id"].as_str().unwrap().to_string();
    let id_of = |path: &str| -> String {
        if path.starts_with("/v1/subscriptions/") {
            sub["id"].as_str().unwrap().to_string()
        } else if path.starts_with("/v1/sources/") {
            source_id.clone()
        } else if path.starts_with("/v1/plugins/") {
            plugin["id"].as_str().unwrap().to_string()
        } else if path.starts_with("/v1/keys/") {
            key["id"].as_str().unwrap().to_string()
        } else if path.starts_with("/v1/deliveries/") {
            delivery_id.clone()
        } else if path.starts_with("/v1/apps/") {
            link["id"].as_str().unwrap().to_string()
        } else {
            panic!("no id of A's for {path}: add one to this test")
        }
    };

    let before = snapshot(&server, &a, &source_id).await;
    let (_, openapi) = server.call("GET", "/openapi.json", "", None).await;
    let mut tried = 0;
    for (path, item) in openapi["paths"].as_object().unwrap() {
        // Only routes that name a thing; the operator's and the platforms'
        // routes take no tenant key.
        if !path.contains('{') || path.starts_with("/v1/tenants") || path.starts_with("/in/") {
            continue;
        }
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let mut concrete = path
                .replace("{letter}", &letter_id)
                .replace("{app}", &app_id)
                .replace("{name}", "message.created")
                // The Svix-compatible API's names.
                .replace("{app_id}", &app_id)
                .replace("{endpoint_id}", app_endpoint["id"].as_str().unwrap())
                .replace("{msg_id}", "victim-1")
                .replace("{event_type_name}", "message.created");
            if concrete.contains("{id}") {
                concrete = concrete.replace("{id}", &id_of(path));
            }
            assert!(
                !concrete.contains('{'),
                "no id of A's for {path}: add one to this test"
            );
            let (status, body) = server
                .call(&method.to_uppercase(), &concrete, &b, Some(json!({})))
                .await;
            // 422: the Svix-compatible API's answer to a body to fix.
            assert!(
                status == 404 || status == 400 || status == 422,
                "{method} {path} as another tenant: {status} {body}"
            );
            tried += 1;
        }
    }
    assert!(tried >= 14, "only {tried} routes tried");
    assert_eq!(
        snapshot(&server, &a, &source_id).await,
        before,
        "the victim's state changed"
    );
}

#[tokio::test]
async fn deleting_a_tenant_removes_its_sources_and_their_urls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (id, key) = server.tenant("leaving").await;
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onehash", "verify": {"scheme": "none"}})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let url = source["url"].as_str().unwrap().to_string();
    let (status, _) = server.inbound(&url, &[], b"{\"junk\": 1}").await;
    assert_eq!(status, 422, "kept as a dead letter");

    let (status, _) = server
        .call("DELETE", &format!("/v1/tenants/{id}"), ADMIN_TOKEN, None)
        .await;
    assert_eq!(status, 204);
    let seed = std::fs::read(
        crate::support::repo_root().join("tests/fixtures/seeds/onehash-message_created.json"),
    )
    .unwrap();
    for body in [seed.as_slice(), b"{\"junk\": 1}"] {
        let (status, answer) = server.inbound(&url, &[], body).await;
        assert_eq!(status, 404, "a deleted tenant's source: {answer}");
    }
    let (status, _) = server.call("GET", "/v1/sources", &key, None).await;
    assert_eq!(status, 401, "its keys are gone too");
}

/// Hostile header names for a subscription's signature.
#[tokio::test]
async fn signature_header_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("t").await;
    let rx = Receiver::ok().await;
    for signature in [
        json!({"scheme": "timestamped-hex", "header": "Host"}),
        json!({"scheme": "timestamped-hex", "header": "transfer-encoding"}),
        json!({"scheme": "timestamped-hex", "header": "Content-Length"}),
        json!({"scheme": "timestamped-hex", "header": "X-Sig\r\nX-Evil: 1"}),
        json!({"scheme": "timestamped-hex", "header": ""}),
        json!({"scheme": "body-hex", "header": "X-Sig", "event_header": "Connection"}),
        json!({"scheme": "body-hex", "header": "X-Sig", "event_header": "x-sig"}),
    ] {
        let (status, body) = server
            .call(
                "POST",
                "/v1/subscriptions",
                &key,
                Some(json!({"url": rx.url(), "event_types": ["*"], "signature": signature})),
            )
            .await;
        assert_eq!(status, 400, "{signature}: {body}");
        assert!(error_message(&body).contains("signature."), "{body}");
    }
    // A fine name still works.
    server
        .subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["*"],
                   "signature": {"scheme": "timestamped-hex", "header": "X-Acme-Signature"}}),
        )
        .await;
}

/// A body over a route's limit names the real limit.
#[tokio::test]
async fn an_oversized_body_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("t").await;
    let big = format!("{{\"url\": \"{}\"}}", "x".repeat(3 << 20));
    let (status, body) = server
        .raw(
            "POST",
            "/v1/subscriptions",
            &key,
            "application/json",
            big.into_bytes(),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        error_message(&body).contains("2097152-byte limit"),
        "{body}"
    );
}

/// Reads until the server closes the connection (or `PATIENCE` passes);
/// returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn silent_slow_and_piled_up_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &[
            ("WASMHOOK_SERVER_HEADER_READ_TIMEOUT_SECS", "2"),
            ("WASMHOOK_SERVER_BODY_READ_TIMEOUT_SECS", "2"),
        ],
    );
    let (_, key) = server.tenant("t").await;
    let addr = server.base.trim_start_matches("http://").to_string();

    // A connection that never speaks, and one that stops mid-head.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut silent).await;
    read_to_close(&mut partial).await;

    // A body sent a byte at a time: 408 once the body's time is up.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        loop {
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(PATIENCE, trickle).await;
    let answer = read_to_close(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // An idle keep-alive connection is closed after its response.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_connection_flood_is_shed_and_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &[
            ("WASMHOOK_SERVER_MAX_CONNECTIONS", "8"),
            // The flood's connections in the slots stay for the whole test.
            ("WASMHOOK_SERVER_HEADER_READ_TIMEOUT_SECS", "600"),
        ],
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Over the cap and the spare connections: closed at once, nothing read.
    let mut closed = 0;
    let deadline = Instant::now() + PATIENCE;
    while closed == 0 && Instant::now() < deadline {
        for c in flood.iter_mut() {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(10), c.read(&mut byte)).await
            {
                closed += 1;
            }
        }
    }
    // Health answers while every slot is held.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut probe = TcpStream::connect(&addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut probe).await;
        if answer.starts_with("HTTP/1.1 200") {
            assert!(answer.contains("\"status\""), "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never answered: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Other routes over the cap: 503, try again.
    let mut probe = TcpStream::connect(&addr).await.unwrap();
    probe
        .write_all(b"GET /v1/subscriptions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut probe).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    assert!(closed > 0, "nothing over the cap was closed");
    drop(flood);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_its_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let (_, key) = server.tenant("t").await;
    let rx = Receiver::ok().await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    // What the store wrote since the start is behind the directory's mode.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert!(server.stop().success());
    // At the next start, everything in it is the owner's only.
    let _server = Server::start(&data);
    let mut stack = vec![data.clone()];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        let m = mode(&p);
        if p.is_dir() {
            assert_eq!(m, 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
            files += 1;
        }
    }
    assert!(files > 1);
}

/// Without an allow-list no broker is reachable; with one, what a tenant
/// is told does not say whether something listens at the address; and no
/// subject of wasmhook or of the server is a source.
#[tokio::test]
async fn a_nats_source_reaches_only_allowed_brokers_and_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("t").await;
    let nats_source = |url: String, subject: &str| json!({"kind": "nats", "nats": {"url": url, "subject": subject, "format": "ohallo"}});
    let (status, body) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(nats_source("nats://127.0.0.1:4222".into(), "x.y")),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).contains("nats sources are off"),
        "{body}"
    );
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &[("WASMHOOK_SOURCES_NATS_ALLOW", "127.0.0.0/8")],
    );
    let (_, key) = server.tenant("t").await;
    // A closed port and a port that listens but is not NATS: one answer.
    let closed = dead_port_url()
        .replace("http://", "nats://")
        .replace("/hook", "");
    let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = format!("nats://{}", listening.local_addr().unwrap());
    let mut answers = Vec::new();
    for url in [closed.clone(), open.clone()] {
        let (status, body) = server
            .call(
                "POST",
                "/v1/sources",
                &key,
                Some(nats_source(url.clone(), "x.y")),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let port = url.rsplit(':').next().unwrap().to_string();
        answers.push(error_message(&body).replace(&port, "PORT"));
    }
    assert_eq!(answers[0], answers[1], "the answer tells the port's state");
    assert!(answers[0].contains("cannot connect"), "{answers:?}");
    assert!(
        !answers[0].to_lowercase().contains("refused"),
        "{answers:?}"
    );
    drop(listening);

    for subject in [
        ">",
        "*.log",
        "wasmhook.log",
        "wasmhook.>",
        "$JS.API.>",
        "_INBOX.x",
        "*.*",
        "a.>.b",
        "a b",
    ] {
        let (status, body) = server
            .call(
                "POST",
                "/v1/sources",
                &key,
                Some(nats_source(closed.clone(), subject)),
            )
            .await;
        assert_eq!(status, 400, "{subject}: {body}");
        assert!(
            error_message(&body).contains("nats.subject"),
            "{subject}: {body}"
        );
    }
    let (_, listed) = server.call("GET", "/v1/sources", &key, None).await;
    assert_eq!(listed, json!([]), "nothing was created");
}

/// Cluster mode on a real 3-server NATS cluster: a tenant cannot make the
/// cluster's own NATS (its log, with every tenant's records) a source,
/// whatever name or subject it uses, even where the operator allows the
/// network it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_source_never_reads_the_clusters_own_nats() {
    let Some(cluster) = wasmhook::cluster::testing::NatsCluster::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--nats", &cluster.urls_arg()],
        &[
            ("WASMHOOK_CLUSTER_LEASE_SECS", "10"),
            ("WASMHOOK_CLUSTER_PARTITIONS", "8"),
            ("WASMHOOK_SOURCES_NATS_ALLOW", "127.0.0.0/8,localhost:4222"),
        ],
    );
    let (_, key) = server.tenant("t").await;
    for i in 0..3 {
        let url = cluster.url(i);
        let by_name = url.replace("127.0.0.1", "localhost");
        for (url, subject) in [
            (url.clone(), "wasmhook.log"),
            (url.clone(), "ohallo.>"),
            (by_name, "ohallo.>"),
        ] {
            let (status, body) = server
                .call(
                    "POST",
                    "/v1/sources",
                    &key,
                    Some(json!({"kind": "nats", "nats": {"url": url, "subject": subject, "format": "ohallo"}})),
                )
                .await;
            assert_eq!(status, 400, "{url} {subject}: {body}");
            let message = error_message(&body);
            assert!(
                message.contains("own NATS") || message.contains("nats.subject"),
                "{url} {subject}: {body}"
            );
        }
    }
    let (_, listed) = server.call("GET", "/v1/sources", &key, None).await;
    assert_eq!(listed, json!([]));
    let (_, letters_seen) = server.call("GET", "/v1/sources", &key, None).await;
    assert_eq!(letters_seen, json!([]));
}

/// Guessing keys or the operator token from one address is slowed to a
/// few guesses a second: 429 with Retry-After, while a valid key still
/// works.
#[tokio::test]
async fn failed_authentications_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("t").await;
    let guess = |i: usize| {
        let server = server.base.clone();
        async move {
            let resp = crate::support::http_client()
                .get(format!("{server}/v1/subscriptions"))
                .bearer_auth(format!("whk_guess_{i:032}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            if status == 429 {
                assert_eq!(error_code(&body), "too_many_failed_authentications");
            }
            status
        }
    };
    // A few guesses are told 401...
    for i in 0..5 {
        assert_eq!(guess(i).await, 401);
    }
    // ...many at once, 429: however slow the machine, only a few tokens
    // come back while they arrive.
    let at_once: Vec<_> = (5..65).map(|i| tokio::spawn(guess(i))).collect();
    let mut statuses = Vec::new();
    for s in at_once {
        statuses.push(s.await.unwrap());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429));
    let (status, _) = server.call("GET", "/v1/subscriptions", &key, None).await;
    assert_eq!(status, 200, "a valid key is never throttled");
    let (status, _) = server.call("GET", "/v1/tenants", ADMIN_TOKEN, None).await;
    assert_eq!(status, 200);
}

/// What anyone who knows a source's URL can do is bounded: a few hundred
/// requests a second (here 2), and a fixed budget of dead letters on disk
/// (here 64 KiB), the oldest dropped first.
#[tokio::test]
async fn a_source_url_takes_bounded_requests_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &[
            ("WASMHOOK_SOURCES_RATE_LIMIT", "2"),
            ("WASMHOOK_SOURCES_DEAD_LETTER_BYTES", "65536"),
        ],
    );
    let (_, key) = server.tenant("t").await;
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onehash", "verify": {"scheme": "none"}})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let (url, id) = (
        source["url"].as_str().unwrap().to_string(),
        source["id"].as_str().unwrap().to_string(),
    );
    // 20 KB of junk each, 30 at once: a burst of 4 gets in, the rest 429.
    let junk = format!("{{\"junk\": \"{}\"}}", "x".repeat(20_000));
    let sends: Vec<_> = (0..30)
        .map(|_| {
            let (base, url, junk) = (server.base.clone(), url.clone(), junk.clone());
            tokio::spawn(async move {
                let resp = crate::support::http_client()
                    .post(format!("{base}{url}"))
                    .header("content-type", "application/json")
                    .body(junk)
                    .send()
                    .await
                    .unwrap();
                (
                    resp.status().as_u16(),
                    resp.headers().get("retry-after").is_some(),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for s in sends {
        answers.push(s.await.unwrap());
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 422 || *s == 429),
        "{answers:?}"
    );
    assert!(answers.contains(&(429, true)), "{answers:?}");
    // Slowly, so each gets in: the budget holds three 20 KB letters.
    let mut kept = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (status, _) = server.inbound(&url, &[], junk.as_bytes()).await;
        if status == 422 {
            kept += 1;
        }
    }
    assert!(kept >= 4, "{kept}");
    let (_, letters) = server
        .call("GET", &format!("/v1/sources/{id}/dead-letters"), &key, None)
        .await;
    let n = letters["items"].as_array().unwrap().len();
    assert!((1..=3).contains(&n), "{n} letters kept: {letters}");
}

/// Every file of the data directory, as bytes.
pub(crate) fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            all.extend(std::fs::read(&p).unwrap_or_default());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Secrets are sealed on disk; after a rotation the previous key opens the
/// old records until the start seals them again with the new one; a key
/// that opens nothing stops the start with a message.
#[tokio::test]
async fn secrets_are_sealed_at_rest_and_the_key_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old_key = "0123456789abcdef".repeat(4);
    let new_key = "fedcba9876543210".repeat(4);
    let server = Server::start_with(&data, &[], &[("WASMHOOK_SERVER_SECRETS_KEY", &old_key)]);
    let (_, key) = server.tenant("t").await;
    let rx = Receiver::ok().await;
    let sub = server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onwebchat"})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let source_secret = source["secret"].as_str().unwrap().to_string();
    // A broker's password is a secret too.
    let broker_password = "bus-pw-7f6e5d4c3b2a19";
    let bus = server
        .subscribe(
            &key,
            json!({
                "destination": {"type": "redis", "url": format!("redis://:{broker_password}@redis.example"), "stream": "s"},
                "event_types": ["lead.*"],
            }),
        )
        .await;
    assert!(!bus.to_string().contains(broker_password), "{bus}");
    assert!(server.stop().success());
    let disk = all_bytes(&data);
    for s in [&secret, &source_secret, &broker_password.to_string()] {
        assert!(!contains(&disk, s), "a secret in plain text on disk");
        assert!(
            !contains(&disk, &s[s.len() - 16..]),
            "part of a secret on disk"
        );
    }

    // Rotation: the new key, with the old one as previous.
    let server = Server::start_with(
        &data,
        &[],
        &[
            ("WASMHOOK_SERVER_SECRETS_KEY", &new_key),
            ("WASMHOOK_SERVER_PREVIOUS_SECRETS_KEYS", &old_key),
        ],
    );
    let (status, _) = server
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(message_event("after-rotation")),
        )
        .await;
    assert_eq!(status, 202);
    let got = rx.wait_for(1, PATIENCE).await;
    assert_eq!(
        verify_standard(&secret, &got[0]),
        1,
        "signed with the same secret"
    );
    assert!(server.stop().success());

    // Sealed again with the new key at that start: the old key can go.
    let server = Server::start_with(&data, &[], &[("WASMHOOK_SERVER_SECRETS_KEY", &new_key)]);
    let sub_id = sub["id"].as_str().unwrap();
    let (status, shown) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{sub_id}/secret"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["secret"], secret.as_str());
    let (status, bus) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{}", bus["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{bus}");
    assert_eq!(bus["destination"]["password_set"], true, "{bus}");
    assert!(server.stop().success());

    // A key that opens nothing: the start refuses, naming the setting.
    let out = std::process::Command::new(crate::support::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WASMHOOK_SERVER_SECRETS_KEY", "ab".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.secrets_key"), "{stderr}");
    assert!(stderr.contains("previous_secrets_keys"), "{stderr}");
}

/// Rotating the secrets key in cluster mode: each node started with the new
/// key (the old one as previous) seals again, through the log, what is not
/// sealed with it; after that every node starts without the old key and
/// signs with the same secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_key_rotates_in_cluster_mode() {
    let Some(cluster) = wasmhook::cluster::testing::NatsCluster::start(3).await else {
        return;
    };
    let old_key = "0123456789abcdef".repeat(4);
    let new_key = "fedcba9876543210".repeat(4);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let urls = cluster.urls_arg();
    let start = |i: usize, keys: &[(&str, &str)]| {
        let name = format!("r{i}");
        let mut env = vec![
            ("WASMHOOK_CLUSTER_PARTITIONS", "8"),
            ("WASMHOOK_CLUSTER_NODE_ID", name.as_str()),
        ];
        env.extend_from_slice(keys);
        Server::start_with(dirs[i].path(), &["--nats", &urls], &env)
    };
    let old = [("WASMHOOK_SERVER_SECRETS_KEY", old_key.as_str())];
    let (n0, n1) = (start(0, &old), start(1, &old));
    let (_, key) = n0.tenant("t").await;
    let rx = Receiver::ok().await;
    let sub = n0
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    let (status, source) = n1
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onwebchat"})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    assert!(n0.stop().success() && n1.stop().success());

    // The new key, with the old one as previous, on both nodes.
    let rotating = [
        ("WASMHOOK_SERVER_SECRETS_KEY", new_key.as_str()),
        ("WASMHOOK_SERVER_PREVIOUS_SECRETS_KEYS", old_key.as_str()),
    ];
    let (n0, n1) = (start(0, &rotating), start(1, &rotating));
    assert!(n0.stop().success() && n1.stop().success());

    // The old key gone: the nodes start, read every secret, and sign with
    // the one the subscription was given.
    let new = [("WASMHOOK_SERVER_SECRETS_KEY", new_key.as_str())];
    let (n0, n1) = (start(0, &new), start(1, &new));
    let (status, _) = n1
        .call("POST", "/v1/events", &key, Some(message_event("rotated")))
        .await;
    assert_eq!(status, 202);
    let got = rx.wait_for(1, PATIENCE).await;
    assert_eq!(
        verify_standard(&secret, &got[0]),
        1,
        "signed with the same secret"
    );
    let source_id = source["id"].as_str().unwrap();
    let (status, shown) = n0
        .call("GET", &format!("/v1/sources/{source_id}"), &key, None)
        .await;
    assert_eq!(status, 200, "{shown}");
    drop((n0, n1));
}

/// Compiling an upload takes one of the tenant's plugin slots like a call:
/// a tenant whose share is busy is told 503 and may retry; another
/// tenant's upload is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_uploads_take_the_tenants_plugin_slots() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Server::start_with(
        dir.path(),
        &[],
        &[
            ("WASMHOOK_PLUGINS_MAX_CONCURRENT_CALLS", "2"),
            ("WASMHOOK_PLUGINS_TENANT_SHARE_PERCENT", "50"),
            ("WASMHOOK_PLUGINS_ADMISSION_WAIT_MS", "200"),
            ("WASMHOOK_PLUGINS_HANDLE_TIMEOUT_MS", "30000"),
        ],
    ));
    let (_, a) = server.tenant("a").await;
    let (_, b) = server.tenant("b").await;
    let hostile = server
        .upload_plugin(&a, "name=hostile", crate::support::fixture("hostile"))
        .await;
    // A's one slot: a dry-run that loops for 30 s.
    let looping = {
        let (server, a) = (server.clone(), a.clone());
        let path = format!("/v1/plugins/{}/dry-run", hostile["id"].as_str().unwrap());
        tokio::spawn(async move {
            server
                .call(
                    "POST",
                    &path,
                    &a,
                    Some(json!({"event": {"type": "a.b", "data": {}}, "config": {"mode": "loop"}})),
                )
                .await
        })
    };
    let deadline = Instant::now() + PATIENCE;
    for n in 0.. {
        let (status, body) = server
            .raw(
                "POST",
                &format!("/v1/plugins?name=second-{n}"),
                &a,
                "application/wasm",
                crate::support::fixture("raw-wit"),
            )
            .await;
        if status == 503 {
            assert_eq!(error_code(&body), "plugins_busy", "{body}");
            break;
        }
        // The loop may not hold the slot yet: the upload got in.
        assert_eq!(status, 201, "{body}");
        assert!(
            Instant::now() < deadline,
            "the upload never waited for a slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
        .upload_plugin(&b, "name=other", crate::support::fixture("raw-wit"))
        .await;
    looping.abort();
}

/// A test event is attempted within the tenant's in-flight cap, like any
/// attempt: with the cap held by a hanging delivery, a test is 429 (and
/// another tenant's is not held up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_events_count_against_the_tenants_in_flight_cap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &[("WASMHOOK_DELIVERY_MAX_IN_FLIGHT_PER_TENANT", "1")],
    );
    let (_, a) = server.tenant("a").await;
    let (_, b) = server.tenant("b").await;
    let hanging =
        Receiver::start(vec![], Answer::status(200).delay(Duration::from_secs(600))).await;
    let sub = server
        .subscribe(
            &a,
            json!({"url": hanging.url(), "event_types": ["*"], "timeout_ms": 120000}),
        )
        .await;
    let (status, _) = server
        .call(
            "POST",
            "/v1/events",
            &a,
            Some(message_event("holds-the-slot")),
        )
        .await;
    assert_eq!(status, 202);
    hanging.wait_for(1, PATIENCE).await;
    let path = format!("/v1/subscriptions/{}/test", sub["id"].as_str().unwrap());
    let (status, body) = server.call("POST", &path, &a, None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_code(&body), "tenant_busy");
    assert_eq!(hanging.received().len(), 1, "the test was not sent");
    // A verification on create likewise, before anything is stored.
    let (status, body) = server
        .call(
            "POST",
            "/v1/subscriptions",
            &a,
            Some(json!({"url": hanging.url(), "event_types": ["*"], "verify_on_create": true})),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let (_, listed) = server.call("GET", "/v1/subscriptions", &a, None).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "nothing created: {listed}"
    );

    let rx = Receiver::ok().await;
    let other = server
        .subscribe(&b, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let path = format!("/v1/subscriptions/{}/test", other["id"].as_str().unwrap());
    let (status, body) = server.call("POST", &path, &b, None).await;
    assert_eq!(status, 200, "{body}");
}

/// A child process killed when the test ends, passed or failed.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A NATS server that takes clients only over TLS with a certificate its CA
/// signed, and only the one nkey user: `(server, client URL, dir with the
/// files, CA file)`; `None` without nats-server (outside CI).
fn tls_nats_with_an_nkey_user() -> Option<(Killed, String, tempfile::TempDir, String)> {
    if !crate::support::tool_installed("nats-server") {
        return None;
    }
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, file: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            write(&format!("{file}.pem"), &cert.pem()),
            write(&format!("{file}-key.pem"), &key.serialize_pem()),
        )
    };
    let ca_file = write("ca.pem", &ca_pem);
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "server");
    leaf(vec!["node.wasmhook.test".into()], "client");
    let user = nkeys::KeyPair::new_user();
    write("node.nk", &user.seed().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write(
        "nats.conf",
        &format!(
            r#"listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{js}" }}
tls {{
  cert_file: "{server_cert}"
  key_file: "{server_key}"
  ca_file: "{ca_file}"
  verify: true
  timeout: 5
}}
authorization {{ users = [ {{ nkey: "{public}" }} ] }}
"#,
            js = dir.path().join("js").display(),
            public = user.public_key(),
        ),
    );
    let child = Killed(
        std::process::Command::new("nats-server")
            .args(["-c", &config])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((child, format!("nats://127.0.0.1:{port}"), dir, ca_file))
}

/// Cluster mode over TLS with a client certificate and an nkey: a node
/// given the CA, its certificate and its seed works; without the
/// certificate or without the seed it stops at start, saying why.
#[tokio::test]
async fn a_node_reaches_nats_over_tls_with_a_client_certificate_and_an_nkey() {
    let Some((_nats, url, files, ca)) = tls_nats_with_an_nkey_user() else {
        return;
    };
    let file = |name: &str| files.path().join(name).display().to_string();
    let (cert, key_file, seed) = (file("client.pem"), file("client-key.pem"), file("node.nk"));
    let full = [
        ("WASMHOOK_CLUSTER_TLS_CA_FILE", ca.as_str()),
        ("WASMHOOK_CLUSTER_TLS_CERT_FILE", cert.as_str()),
        ("WASMHOOK_CLUSTER_TLS_KEY_FILE", key_file.as_str()),
        ("WASMHOOK_CLUSTER_NKEY_SEED_FILE", seed.as_str()),
    ];
    // Each part missing in turn: the start fails and names the cause.
    for (left_out, expected) in [
        ("WASMHOOK_CLUSTER_NKEY_SEED_FILE", "authorization"),
        ("WASMHOOK_CLUSTER_TLS_CERT_FILE", "certificate"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut env: Vec<_> = full
            .iter()
            .filter(|(k, _)| *k != left_out)
            .copied()
            .collect();
        if left_out == "WASMHOOK_CLUSTER_TLS_CERT_FILE" {
            env.retain(|(k, _)| *k != "WASMHOOK_CLUSTER_TLS_KEY_FILE");
        }
        let out = std::process::Command::new(crate::support::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--nats", &url, "--data"])
            .arg(dir.path())
            .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY)
            .envs(env)
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{left_out} left out: {stderr}");
        assert!(
            stderr.to_lowercase().contains(expected),
            "{left_out} left out: {stderr}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_with(dir.path(), &["--nats", &url], &full);
    let (_, key) = node.tenant("t").await;
    let rx = Receiver::ok().await;
    node.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let (status, _) = node
        .call("POST", "/v1/events", &key, Some(message_event("over-tls")))
        .await;
    assert_eq!(status, 202);
    rx.wait_for(1, PATIENCE).await;
}

/// An operator token shorter than 32 characters stops the start, naming
/// the setting and what it needs.
#[test]
fn a_short_operator_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("WASMHOOK_ADMIN_TOKEN", "too-short-0123456789")
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.admin_token") && stderr.contains("at least 32"),
        "{stderr}"
    );
}
