//! Portal links through the real binary: a link's token opens one
//! application's endpoints and their deliveries, and nothing else — not
//! another application's, not the tenant's routes, not another tenant's;
//! a read-only link changes nothing and shows no secret; an expired, a
//! revoked and a deleted application's link are refused.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

async fn created(server: &Server, key: &str, path: &str, body: Value) -> Value {
    let (status, answer) = server.call("POST", path, key, Some(body)).await;
    assert_eq!(status, 201, "{path}: {answer}");
    answer
}

/// The deliveries `token` lists, once `n` of them are there.
async fn deliveries(server: &Server, token: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, page) = server.call("GET", "/v1/deliveries", token, None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= n || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both_backends! {
/// A portal link scopes its customer to its application: endpoints,
/// deliveries, secrets, tests, retries and replays of that application
/// only; 403 on every tenant route, 404 on another application's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_link_opens_one_application_only(backing) {
    let dir = tempfile::tempdir().unwrap();
    let server = backing.start(dir.path()).await;
    let receiver = Receiver::ok().await;
    let (_, key) = server.tenant("saas").await;
    let (_, other) = server.tenant("other").await;
    let clinic = created(&server, &key, "/v1/apps", json!({"name": "Clinic", "uid": "clinic"})).await;
    let clinic_id = clinic["id"].as_str().unwrap().to_string();
    created(&server, &key, "/v1/apps", json!({"name": "Dentist", "uid": "dentist"})).await;
    let mine = server
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "app": "clinic",
            "plugin": {"id": "builtin:event-filter", "config": {"pointer": "/type", "prefix": "message."}}}))
        .await;
    let theirs = server
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "app": "dentist"}))
        .await;
    let wide = server
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    let mine_id = mine["id"].as_str().unwrap();

    // Links: hostile input first.
    for body in [
        json!({"expires_in": 0}),
        json!({"expires_in": 10_000_000_000u64}),
        json!({"expires_in": -5}),
        json!({"read_only": "yes"}),
        json!({"scope": "all"}),
    ] {
        let (status, answer) = server
            .call("POST", "/v1/apps/clinic/portal-links", &key, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, answer) = server
        .raw("POST", "/v1/apps/clinic/portal-links", &key, "application/json", b"{\"expires_in\": 6".to_vec())
        .await;
    assert_eq!(status, 400, "{answer}");
    let link = created(&server, &key, "/v1/apps/clinic/portal-links", json!({"expires_in": 3600})).await;
    let token = link["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("whp_"), "{link}");
    assert_eq!(
        link["url"].as_str().unwrap(),
        format!("{}/ui/#portal={token}", server.base),
        "the token is in the fragment, never sent to a server"
    );
    let viewer = created(&server, &key, "/v1/apps/clinic/portal-links", json!({"read_only": true})).await;
    let viewer_token = viewer["token"].as_str().unwrap().to_string();
    // Listed without tokens; another tenant sees no links and makes none.
    let (_, list) = server.call("GET", "/v1/apps/clinic/portal-links", &key, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    assert!(!list.to_string().contains("whp_"), "{list}");
    let (_, all) = server.call("GET", "/v1/portal-links", &key, None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
    let (_, none) = server.call("GET", "/v1/portal-links", &other, None).await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0, "{none}");
    for (method, path) in [
        ("GET", "/v1/apps/clinic/portal-links".to_string()),
        ("POST", "/v1/apps/clinic/portal-links".to_string()),
        ("DELETE", format!("/v1/apps/clinic/portal-links/{}", link["id"].as_str().unwrap())),
    ] {
        let (status, answer) = server.call(method, &path, &other, None).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }

    // What the link is.
    let (status, session) = server.call("GET", "/v1/portal", &token, None).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["app"]["id"], clinic_id.as_str());
    assert_eq!(session["app"]["name"], "Clinic");
    assert_eq!(session["read_only"], false);
    let (status, _) = server.call("GET", "/v1/portal", &key, None).await;
    assert_eq!(status, 404, "a tenant's key has no portal");

    // Its endpoints only, without the tenant's plugin settings.
    let (_, subs) = server.call("GET", "/v1/subscriptions", &token, None).await;
    let ids: Vec<&str> = subs.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![mine_id], "{subs}");
    assert_eq!(subs[0]["plugin"]["id"], "builtin:event-filter");
    assert_eq!(subs[0]["plugin"]["config"], json!({}), "{subs}");
    for id in [&theirs["id"], &wide["id"]] {
        let id = id.as_str().unwrap();
        for (method, path, body) in [
            ("GET", format!("/v1/subscriptions/{id}"), None),
            ("PATCH", format!("/v1/subscriptions/{id}"), Some(json!({"description": "mine now"}))),
            ("DELETE", format!("/v1/subscriptions/{id}"), None),
            ("POST", format!("/v1/subscriptions/{id}/disable"), None),
            ("GET", format!("/v1/subscriptions/{id}/secret"), None),
            ("POST", format!("/v1/subscriptions/{id}/rotate-secret"), None),
            ("POST", format!("/v1/subscriptions/{id}/test"), None),
            ("POST", format!("/v1/subscriptions/{id}/replay"), Some(json!({"since": "2026-01-01T00:00:00Z"}))),
            ("GET", format!("/v1/subscriptions/{id}/window"), None),
            ("GET", format!("/v1/deliveries?subscription_id={id}"), None),
        ] {
            let (status, answer) = server.call(method, &path, &token, body).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
        }
    }
    // Every tenant route: 403 with the portal's code.
    for (method, path, body) in [
        ("GET", "/v1/apps", None),
        ("GET", "/v1/apps/clinic", None),
        ("PATCH", "/v1/apps/clinic", Some(json!({"name": "x"}))),
        ("DELETE", "/v1/apps/clinic", None),
        ("POST", "/v1/apps/clinic/events", Some(message_event("p1"))),
        ("POST", "/v1/apps/clinic/portal-links", Some(json!({}))),
        ("GET", "/v1/apps/clinic/portal-links", None),
        ("GET", "/v1/portal-links", None),
        ("POST", "/v1/events", Some(message_event("p2"))),
        ("POST", "/v1/events/batch", Some(json!([message_event("p3")]))),
        ("GET", "/v1/events/p2", None),
        ("GET", "/v1/event-types", None),
        ("POST", "/v1/event-types", Some(json!({"name": "x.y"}))),
        ("GET", "/v1/plugins", None),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", None),
        ("GET", "/v1/sources", None),
        ("GET", "/v1/ops-endpoint", None),
        ("GET", &*format!("/v1/subscriptions/{mine_id}/listen"), None),
    ] {
        let (status, answer) = server.call(method, path, &token, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(error_code(&answer), "portal_scope", "{answer}");
    }
    // Operator routes are not the tenant's at all.
    let (status, _) = server.call("GET", "/v1/tenants", &token, None).await;
    assert_eq!(status, 401);

    // Endpoints it makes are its application's; the tenant's settings are
    // not its to set.
    for (field, value) in [
        ("plugin", json!({"id": "builtin:event-filter"})),
        ("app", json!("dentist")),
        ("destination", json!({"type": "listen"})),
        ("signature", json!({"scheme": "body-hex"})),
        ("retry", json!({"preset": "standard"})),
        ("window", json!({"every": "1d"})),
        ("ordering", json!({"key": "/id"})),
        ("timeout_ms", json!(1000)),
    ] {
        let mut body = json!({"url": receiver.url(), "event_types": ["*"]});
        body[field] = value;
        let (status, answer) = server.call("POST", "/v1/subscriptions", &token, Some(body)).await;
        assert_eq!(status, 403, "{field}: {answer}");
        assert_eq!(error_code(&answer), "portal_field");
        let (status, answer) = server
            .call("PATCH", &format!("/v1/subscriptions/{mine_id}"), &token, Some(json!({field: answer_field(field)})))
            .await;
        assert_eq!(status, 403, "PATCH {field}: {answer}");
    }
    // The endpoint runs the tenant's plugin: its address is the tenant's.
    let (status, answer) = server
        .call("PATCH", &format!("/v1/subscriptions/{mine_id}"), &token, Some(json!({"url": "https://elsewhere.example/h"})))
        .await;
    assert_eq!(status, 403, "{answer}");
    let own = created(&server, &token, "/v1/subscriptions",
        json!({"url": receiver.url(), "event_types": ["message.*"], "description": "from the portal",
            "rate_limit": {"per_second": 50}})).await;
    assert_eq!(own["app_id"], clinic_id.as_str(), "{own}");
    assert!(own["secret"].as_str().unwrap().starts_with("whsec_"));
    let own_id = own["id"].as_str().unwrap().to_string();
    let (status, changed) = server
        .call("PATCH", &format!("/v1/subscriptions/{own_id}"), &token, Some(json!({"description": "renamed"})))
        .await;
    assert_eq!(status, 200, "{changed}");
    let (status, _) = server.call("GET", &format!("/v1/subscriptions/{own_id}/secret"), &token, None).await;
    assert_eq!(status, 200);
    let (status, _) = server.call("POST", &format!("/v1/subscriptions/{own_id}/rotate-secret"), &token, None).await;
    assert_eq!(status, 200);

    // Events for every audience; the portal sees only its endpoints'
    // deliveries.
    for (path, id) in [
        ("/v1/apps/clinic/events", "to-clinic"),
        ("/v1/apps/dentist/events", "to-dentist"),
        ("/v1/events", "to-all"),
    ] {
        let (status, answer) = server.call("POST", path, &key, Some(message_event(id))).await;
        assert_eq!(status, 202, "{answer}");
    }
    receiver.wait_for(4, Duration::from_secs(30)).await;
    let seen = deliveries(&server, &token, 2).await;
    assert_eq!(seen.len(), 2, "mine and own got to-clinic: {seen:?}");
    assert!(seen.iter().all(|d| d["event_id"] == "to-clinic"), "{seen:?}");
    let (_, all) = server.call("GET", "/v1/deliveries", &key, None).await;
    let foreign: Vec<&Value> = all["items"].as_array().unwrap().iter()
        .filter(|d| d["event_id"] != "to-clinic").collect();
    assert_eq!(foreign.len(), 2, "{all}");
    for d in foreign {
        let id = d["id"].as_str().unwrap();
        for (method, path) in [
            ("GET", format!("/v1/deliveries/{id}")),
            ("POST", format!("/v1/deliveries/{id}/retry")),
            ("POST", format!("/v1/deliveries/{id}/dismiss")),
        ] {
            let (status, answer) = server.call(method, &path, &token, None).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
        }
    }
    let (status, answer) = server
        .call("GET", &format!("/v1/deliveries?subscription_id={own_id}"), &token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["items"].as_array().unwrap().len(), 1, "{answer}");
    let done = seen.iter().find(|d| d["status"] == "succeeded").expect("a finished one");
    let (status, answer) = server
        .call("POST", &format!("/v1/deliveries/{}/retry", done["id"].as_str().unwrap()), &token, None)
        .await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = server.call("POST", &format!("/v1/subscriptions/{own_id}/test"), &token, None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server
        .call("POST", &format!("/v1/subscriptions/{mine_id}/replay"), &token, Some(json!({"since": "2026-01-01T00:00:00Z"})))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events"], 1, "only its application's events replay: {answer}");

    // Read-only: everything readable, nothing changed, no secret.
    let (status, subs) = server.call("GET", "/v1/subscriptions", &viewer_token, None).await;
    assert_eq!(status, 200);
    assert_eq!(subs.as_array().unwrap().len(), 2, "{subs}");
    let (status, _) = server.call("GET", "/v1/deliveries", &viewer_token, None).await;
    assert_eq!(status, 200);
    let (_, session) = server.call("GET", "/v1/portal", &viewer_token, None).await;
    assert_eq!(session["read_only"], true);
    for (method, path, body) in [
        ("POST", "/v1/subscriptions".to_string(), Some(json!({"url": receiver.url(), "event_types": ["*"]}))),
        ("PATCH", format!("/v1/subscriptions/{own_id}"), Some(json!({"description": "x"}))),
        ("DELETE", format!("/v1/subscriptions/{own_id}"), None),
        ("POST", format!("/v1/subscriptions/{own_id}/disable"), None),
        ("GET", format!("/v1/subscriptions/{own_id}/secret"), None),
        ("POST", format!("/v1/subscriptions/{own_id}/rotate-secret"), None),
        ("POST", format!("/v1/subscriptions/{own_id}/test"), None),
        ("POST", format!("/v1/subscriptions/{own_id}/replay"), Some(json!({"since": "2026-01-01T00:00:00Z"}))),
        ("POST", format!("/v1/deliveries/{}/retry", done["id"].as_str().unwrap()), None),
    ] {
        let (status, answer) = server.call(method, &path, &viewer_token, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(error_code(&answer), "portal_read_only");
    }

    // Refused tokens: malformed, revoked, expired, of a deleted application.
    for bad in ["whp_", "whp_zz", "whp_00", &format!("{token}0")] {
        let (status, _) = server.call("GET", "/v1/subscriptions", bad, None).await;
        assert_eq!(status, 401, "{bad}");
    }
    let (status, _) = server
        .call("DELETE", &format!("/v1/apps/clinic/portal-links/{}", viewer["id"].as_str().unwrap()), &key, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.call("GET", "/v1/subscriptions", &viewer_token, None).await;
    assert_eq!(status, 401, "revoked");
    let (status, _) = server
        .call("DELETE", &format!("/v1/apps/clinic/portal-links/{}", viewer["id"].as_str().unwrap()), &key, None)
        .await;
    assert_eq!(status, 404, "revoked already");
    let brief = created(&server, &key, "/v1/apps/clinic/portal-links", json!({"expires_in": 1})).await;
    let (status, _) = server.call("GET", "/v1/portal", brief["token"].as_str().unwrap(), None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, _) = server.call("GET", "/v1/portal", brief["token"].as_str().unwrap(), None).await;
    assert_eq!(status, 401, "expired");
    let (_, list) = server.call("GET", "/v1/apps/clinic/portal-links", &key, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "the expired link is gone: {list}");
    let (status, _) = server.call("DELETE", "/v1/apps/clinic", &key, None).await;
    assert_eq!(status, 204);
    let (status, _) = server.call("GET", "/v1/subscriptions", &token, None).await;
    assert_eq!(status, 401, "its application was deleted");
}
}

/// A value of the right type for each field a portal may not set (for the
/// PATCH checks).
fn answer_field(field: &str) -> Value {
    match field {
        "plugin" => json!({"id": "builtin:event-filter"}),
        "app" => json!("dentist"),
        "destination" => json!({"type": "listen"}),
        "signature" => json!({"scheme": "body-hex"}),
        "retry" => json!({"preset": "standard"}),
        "window" => json!({"every": "1d"}),
        "ordering" => json!({"key": "/id"}),
        _ => json!(1000),
    }
}
