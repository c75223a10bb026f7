//! The Svix-compatible API (`/api/v1/`) through the real binary: driven
//! by the official `svix` Python client from PyPI (its own verifier checks
//! every delivery), scoped to its tenant, and answering hostile input in
//! Svix's error shapes.

use serde_json::json;

use crate::harness::*;

/// The `svix` client's version the tests pin (PyPI).
const SVIX_CLIENT: &str = "svix==2.9.1";

/// Everything an application using Svix's SDK calls, by that SDK:
/// applications (get-or-create), event types, endpoints with channels and
/// metadata, messages (payload as sent, `eventId` idempotent), attempts by
/// message and by endpoint, resend, secret rotation, examples, recovery of
/// a delivery that failed for good, deletes. `tests/fixtures/svix_client.py`
/// says each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_svix_client_drives_the_compatible_api() {
    let python = crate::support::python_with("svix", &[SVIX_CLIENT]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("svix-user").await;
    let script = crate::support::repo_root().join("tests/fixtures/svix_client.py");
    let (base, token) = (server.base.clone(), key.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .env("SVIX_SERVER_URL", base)
            .env("SVIX_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the svix client's run failed:\n{stdout}\n{stderr}"
    );
}

both_backends! {
/// Another tenant's applications, endpoints and messages are 404 on every
/// Svix route; a portal link's token is refused; bad input is a 422 (or
/// 413) in Svix's shapes, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_svix_api_is_scoped_to_its_tenant_and_refuses_bad_input(backing) {
    let dir = tempfile::tempdir().unwrap();
    let server = backing.start(dir.path()).await;
    let receiver = Receiver::ok().await;
    let (_, key) = server.tenant("svix-user").await;
    let (_, other) = server.tenant("other").await;
    let (status, app) = server
        .call("POST", "/api/v1/app", &key, Some(json!({"name": "Clinic", "uid": "clinic"})))
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_string();
    assert_eq!(app["metadata"], json!({}));
    let (status, ep) = server
        .call("POST", &format!("/api/v1/app/{app_id}/endpoint"), &key, Some(json!({"url": receiver.url(), "uid": "crm"})))
        .await;
    assert_eq!(status, 201, "{ep}");
    let ep_id = ep["id"].as_str().unwrap().to_string();
    // The payload is delivered byte for byte as sent (spacing, key order).
    let payload = r#"{"z" : [ 1 ],  "n": 1.50, "s": "\u00e9"}"#;
    let (status, msg) = server
        .raw("POST", &format!("/api/v1/app/{app_id}/msg"), &key, "application/json",
            format!(r#"{{"eventType": "invoice.paid", "payload": {payload}, "eventId": "inv-1"}}"#).into_bytes())
        .await;
    assert_eq!(status, 202, "{msg}");
    assert_eq!(msg["eventId"], "inv-1");
    receiver.wait_for(1, std::time::Duration::from_secs(30)).await;
    let received = &receiver.received()[0];
    assert_eq!(received.body.as_ref(), payload.as_bytes(), "the payload alone, as sent");
    assert!(!received.header("svix-signature").is_empty(), "Svix's headers");

    // A Svix client's retry (the same idempotency key, `svix-retry-count`)
    // of a message answers the message it made; routed once.
    let http = crate::support::http_client();
    let send = |key_header: &'static str, retry: bool, body: serde_json::Value| {
        let mut req = http
            .post(format!("{}/api/v1/app/{app_id}/msg", server.base))
            .bearer_auth(&key)
            .header("idempotency-key", key_header)
            .json(&body);
        if retry {
            req = req.header("svix-retry-count", "1");
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let body = json!({"eventType": "invoice.paid", "payload": {"n": 2}});
    let (status, first) = send("auto_1", false, body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = send("auto_1", true, body.clone()).await;
    assert_eq!((status, &again["id"]), (202, &first["id"]), "{again}");
    let (status, second) = send("auto_2", false, body.clone()).await;
    assert_eq!(status, 202);
    assert_ne!(second["id"], first["id"], "another request is another message");
    let with_id = json!({"eventType": "invoice.paid", "payload": {"n": 3}, "eventId": "inv-3"});
    let (status, _) = send("auto_3", false, with_id.clone()).await;
    assert_eq!(status, 202);
    let (status, again) = send("auto_3", true, with_id.clone()).await;
    assert_eq!(status, 202, "a retry of the request that sent inv-3: {again}");
    let (status, _) = send("auto_4", false, with_id.clone()).await;
    assert_eq!(status, 409, "inv-3 sent again by another request");
    receiver.wait_for(4, std::time::Duration::from_secs(30)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 4, "each message routed once");

    // Another tenant: 404 everywhere, in Svix's shape.
    for (method, path, body) in [
        ("GET", format!("/api/v1/app/{app_id}"), None),
        ("GET", "/api/v1/app/clinic".to_string(), None),
        ("PATCH", format!("/api/v1/app/{app_id}"), Some(json!({"name": "mine"}))),
        ("DELETE", format!("/api/v1/app/{app_id}"), None),
        ("GET", format!("/api/v1/app/{app_id}/endpoint"), None),
        ("POST", format!("/api/v1/app/{app_id}/endpoint"), Some(json!({"url": receiver.url()}))),
        ("GET", format!("/api/v1/app/{app_id}/endpoint/{ep_id}"), None),
        ("PUT", format!("/api/v1/app/{app_id}/endpoint/{ep_id}"), Some(json!({"url": receiver.url()}))),
        ("PATCH", format!("/api/v1/app/{app_id}/endpoint/{ep_id}"), Some(json!({"url": receiver.url()}))),
        ("DELETE", format!("/api/v1/app/{app_id}/endpoint/{ep_id}"), None),
        ("GET", format!("/api/v1/app/{app_id}/endpoint/{ep_id}/secret"), None),
        ("POST", format!("/api/v1/app/{app_id}/endpoint/{ep_id}/secret/rotate"), Some(json!({}))),
        ("POST", format!("/api/v1/app/{app_id}/endpoint/{ep_id}/recover"), Some(json!({"since": "2026-01-01T00:00:00Z"}))),
        ("POST", format!("/api/v1/app/{app_id}/endpoint/{ep_id}/send-example"), Some(json!({"eventType": "svix.ping"}))),
        ("POST", format!("/api/v1/app/{app_id}/msg"), Some(json!({"eventType": "a.b", "payload": {}}))),
        ("GET", format!("/api/v1/app/{app_id}/msg"), None),
        ("GET", format!("/api/v1/app/{app_id}/msg/inv-1"), None),
        ("GET", format!("/api/v1/app/{app_id}/attempt/msg/inv-1"), None),
        ("GET", format!("/api/v1/app/{app_id}/attempt/endpoint/{ep_id}"), None),
        ("POST", format!("/api/v1/app/{app_id}/msg/inv-1/endpoint/{ep_id}/resend"), None),
    ] {
        let (status, answer) = server.call(method, &path, &other, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert_eq!(answer["code"], "not_found", "{answer}");
        assert!(answer["detail"].is_string(), "{answer}");
    }
    let (_, list) = server.call("GET", "/api/v1/app", &other, None).await;
    assert_eq!(list, json!({"data": [], "iterator": null, "prevIterator": null, "done": true}));
    // A PUT of another tenant's id creates nothing for it (an id is no uid).
    let (status, answer) = server
        .call("PUT", &format!("/api/v1/app/{app_id}"), &other, Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, 422, "{answer}");
    let (_, mine) = server.call("GET", &format!("/api/v1/app/{app_id}"), &key, None).await;
    assert_eq!(mine["name"], "Clinic");

    // Credentials.
    let (status, answer) = server.call("GET", "/api/v1/app", "whk_not-a-key", None).await;
    assert_eq!(status, 401);
    assert_eq!(answer["code"], "authentication_failed", "{answer}");
    let (_, link) = server
        .call("POST", "/v1/apps/clinic/portal-links", &key, Some(json!({})))
        .await;
    let (status, answer) = server.call("GET", "/api/v1/app", link["token"].as_str().unwrap(), None).await;
    assert_eq!(status, 403, "{answer}");

    // Bad input: 422 with Svix's detail list; nothing stored.
    let msg_path = format!("/api/v1/app/{app_id}/msg");
    for (path, body) in [
        (msg_path.as_str(), json!({"eventType": "invoice.paid", "payload": [1, 2]})),
        (msg_path.as_str(), json!({"eventType": "invoice.paid", "payload": "text"})),
        (msg_path.as_str(), json!({"eventType": "Bad Type", "payload": {}})),
        (msg_path.as_str(), json!({"eventType": "invoice.paid", "payload": {}, "eventId": "msg_taken"})),
        (msg_path.as_str(), json!({"eventType": "invoice.paid", "payload": {}, "channels": ["no spaces"]})),
        (msg_path.as_str(), json!({"eventType": "invoice.paid", "payload": {},
            "transformationsParams": {"rawPayload": "<xml/>"}})),
        (msg_path.as_str(), json!({"eventType": "invoice.paid", "payload": {}, "deliverAt": "2030-01-01T00:00:00Z"})),
        (msg_path.as_str(), json!({"payload": {}})),
        ("/api/v1/app", json!({"name": "\u{202e}evil"})),
        ("/api/v1/app", json!({"name": "x", "uid": "app_123"})),
        ("/api/v1/app", json!({"name": "x", "metadata": {"n": 1}})),
        ("/api/v1/app", json!({"name": "x", "throttleRate": 5})),
        ("/api/v1/event-type", json!({"name": "x", "description": "one segment"})),
        ("/api/v1/event-type", json!({"name": "a.b", "description": "", "schemas": {"1": {"type": 5}}})),
    ] {
        let (status, answer) = server.call("POST", path, &key, Some(body.clone())).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
        assert!(answer["detail"][0]["msg"].is_string(), "{answer}");
    }
    let (status, answer) = server
        .raw("POST", &msg_path, &key, "application/json", b"{\"eventType\": \"a.b\", \"payload\": {".to_vec())
        .await;
    assert_eq!(status, 422, "{answer}");
    let big = "x".repeat(300 * 1024);
    let (status, answer) = server
        .call("POST", &msg_path, &key, Some(json!({"eventType": "a.b", "payload": {"big": big}})))
        .await;
    assert_eq!(status, 413, "{answer}");
    for query in ["limit=0", "limit=251", "order=sideways"] {
        let (status, answer) = server.call("GET", &format!("/api/v1/app?{query}"), &key, None).await;
        assert_eq!(status, 422, "{query}: {answer}");
    }
    let (_, list) = server.call("GET", &msg_path, &key, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 4, "nothing more stored: {list}");
    let (status, answer) = server.call("GET", "/api/v1/app/nope", &key, None).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));
    // A Svix call not offered: a 404 in Svix's shape.
    let (status, answer) = server.call("GET", "/api/v1/background-task", &key, None).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")), "{answer}");

    // Paging: iterator and done.
    for n in 0..3 {
        let (status, _) = server
            .call("POST", "/api/v1/app", &key, Some(json!({"name": format!("app {n}")})))
            .await;
        assert_eq!(status, 201);
    }
    let (_, first) = server.call("GET", "/api/v1/app?limit=3", &key, None).await;
    assert_eq!(first["done"], false, "{first}");
    let (_, rest) = server
        .call("GET", &format!("/api/v1/app?limit=3&iterator={}", first["iterator"].as_str().unwrap()), &key, None)
        .await;
    assert_eq!(rest["done"], true, "{rest}");
    assert_eq!(rest["data"].as_array().unwrap().len(), 1, "{rest}");
}
}

/// The OpenAPI document lists the Svix-compatible routes.
#[tokio::test]
async fn the_openapi_document_has_the_svix_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, doc) = server.call("GET", "/openapi.json", "", None).await;
    assert_eq!(status, 200);
    for path in [
        "/api/v1/app",
        "/api/v1/app/{app_id}",
        "/api/v1/app/{app_id}/endpoint",
        "/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret/rotate",
        "/api/v1/app/{app_id}/endpoint/{endpoint_id}/recover",
        "/api/v1/app/{app_id}/msg",
        "/api/v1/app/{app_id}/attempt/msg/{msg_id}",
        "/api/v1/app/{app_id}/attempt/endpoint/{endpoint_id}",
        "/api/v1/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend",
        "/api/v1/event-type",
        "/v1/apps/{app}/portal-links",
        "/v1/portal",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} is not in the document"
        );
    }
}
