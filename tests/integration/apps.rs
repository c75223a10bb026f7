//! Applications (a tenant's own customers) and the event-type catalog,
//! through the real binary: endpoints and events scoped to their
//! application, every route scoped to its tenant, hostile input refused.

use serde_json::{Value, json};

use crate::harness::*;

async fn created(server: &Server, key: &str, path: &str, body: Value) -> Value {
    let (status, answer) = server.call("POST", path, key, Some(body)).await;
    assert_eq!(status, 201, "{path}: {answer}");
    answer
}

both_backends! {
/// Events sent to an application reach only its endpoints; events sent to
/// no application only the tenant-wide ones. Another tenant's application
/// is a 404 on every route; deleting an application deletes its endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_scope_their_endpoints_and_events(backing) {
    let dir = tempfile::tempdir().unwrap();
    let server = backing.start(dir.path()).await;
    let (_, key) = server.tenant("saas").await;
    let (_, other) = server.tenant("other").await;
    let clinic = created(
        &server,
        &key,
        "/v1/apps",
        json!({"name": "Clinique Zoë 🦷", "uid": "clinic-42", "metadata": {"plan": "pro"}}),
    )
    .await;
    let clinic_id = clinic["id"].as_str().unwrap().to_string();
    assert!(clinic_id.starts_with("app_"));
    assert_eq!(clinic["metadata"]["plan"], "pro");
    let dentist = created(&server, &key, "/v1/apps", json!({"name": "Dentist"})).await;
    let dentist_id = dentist["id"].as_str().unwrap().to_string();
    // Hostile or wrong input.
    for (body, status) in [
        (json!({"name": "again", "uid": "clinic-42"}), 409),
        (json!({"name": "x", "uid": "app_01"}), 400),
        (json!({"name": "x", "uid": "has space"}), 400),
        (json!({"name": ""}), 400),
        (json!({"name": "bell\u{7}"}), 400),
        (json!({"name": "\u{202e}lanigiro"}), 400),
        (json!({"name": "x", "uid": ".."}), 400),
        (json!({"name": "x", "metadata": {"n": 1}}), 400),
        (json!({"name": "x", "owner": "me"}), 400),
    ] {
        let (got, answer) = server
            .call("POST", "/v1/apps", &key, Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    // By id or uid; another tenant sees nothing.
    let (status, by_uid) = server.call("GET", "/v1/apps/clinic-42", &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(by_uid["id"], clinic_id.as_str());
    for (method, path, body) in [
        ("GET", "/v1/apps/clinic-42", None),
        ("GET", &*format!("/v1/apps/{clinic_id}"), None),
        ("PATCH", "/v1/apps/clinic-42", Some(json!({"name": "mine"}))),
        ("DELETE", "/v1/apps/clinic-42", None),
        (
            "POST",
            "/v1/apps/clinic-42/events",
            Some(message_event("x")),
        ),
    ] {
        let (status, answer) = server.call(method, path, &other, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, list) = server.call("GET", "/v1/apps", &other, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let (status, answer) = server
        .call(
            "POST",
            "/v1/subscriptions",
            &other,
            Some(json!({"url": "https://example.com/h", "event_types": ["*"], "app": "clinic-42"})),
        )
        .await;
    assert_eq!(status, 404, "{answer}");

    // An endpoint per application, and a tenant-wide one.
    let (clinic_rx, dentist_rx, wide_rx) = (
        Receiver::ok().await,
        Receiver::ok().await,
        Receiver::ok().await,
    );
    let clinic_sub = server
        .subscribe(
            &key,
            json!({"url": clinic_rx.url(), "event_types": ["*"], "app": "clinic-42"}),
        )
        .await;
    assert_eq!(clinic_sub["app_id"], clinic_id.as_str());
    server
        .subscribe(
            &key,
            json!({"url": dentist_rx.url(), "event_types": ["*"], "app": dentist_id}),
        )
        .await;
    server
        .subscribe(&key, json!({"url": wide_rx.url(), "event_types": ["*"]}))
        .await;
    let (status, answer) = server
        .call(
            "PATCH",
            &format!("/v1/subscriptions/{}", clinic_sub["id"].as_str().unwrap()),
            &key,
            Some(json!({"app": dentist_id})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    let send = |path: &'static str, event: Value| {
        let server = &server;
        let key = key.clone();
        async move { server.call("POST", path, &key, Some(event)).await }
    };
    let (status, _) = send("/v1/apps/clinic-42/events", message_event("to-clinic")).await;
    assert_eq!(status, 202);
    let mut to_dentist = message_event("to-dentist");
    to_dentist["app"] = json!(dentist_id);
    let (status, _) = send("/v1/events", to_dentist).await;
    assert_eq!(status, 202);
    let (status, _) = send("/v1/events", message_event("to-everyone")).await;
    assert_eq!(status, 202);
    let mut nowhere = message_event("nowhere");
    nowhere["app"] = json!("no-such-app");
    let (status, _) = send("/v1/events", nowhere).await;
    assert_eq!(status, 404);
    let mut mismatch = message_event("mismatch");
    mismatch["app"] = json!(dentist_id);
    let (status, answer) = send("/v1/apps/clinic-42/events", mismatch).await;
    assert_eq!(status, 400, "{answer}");
    // The same id again to the same place: a duplicate; elsewhere: a 409.
    let (status, answer) = send("/v1/apps/clinic-42/events", message_event("to-clinic")).await;
    assert_eq!((status, answer["duplicate"].clone()), (202, json!(true)), "{answer}");
    let (status, answer) = send("/v1/events", message_event("to-clinic")).await;
    assert_eq!(status, 409, "{answer}");
    for (rx, id) in [
        (&clinic_rx, "to-clinic"),
        (&dentist_rx, "to-dentist"),
        (&wide_rx, "to-everyone"),
    ] {
        let got = rx.wait_for(1, PATIENCE).await;
        assert_eq!(got[0].json()["id"], id);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for rx in [&clinic_rx, &dentist_rx, &wide_rx] {
        assert_eq!(
            rx.received().len(),
            1,
            "each endpoint got its own event only"
        );
    }
    let (_, event) = server.call("GET", "/v1/events/to-clinic", &key, None).await;
    assert_eq!(event["app_id"], clinic_id.as_str());
    let (_, app) = server.call("GET", "/v1/apps/clinic-42", &key, None).await;
    assert_eq!(app["subscriptions"], 1);

    // Renamed, uid moved; then deleted with its endpoint, its uid free.
    let (status, app) = server
        .call(
            "PATCH",
            "/v1/apps/clinic-42",
            &key,
            Some(json!({"uid": "clinic-43"})),
        )
        .await;
    assert_eq!(status, 200, "{app}");
    let (status, _) = server.call("GET", "/v1/apps/clinic-42", &key, None).await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call("DELETE", "/v1/apps/clinic-43", &key, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{}", clinic_sub["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 404);
    created(
        &server,
        &key,
        "/v1/apps",
        json!({"name": "new", "uid": "clinic-43"}),
    )
    .await;
}
}

both_backends! {
/// The catalog: schemas checked at creation (a remote `$ref` is never
/// fetched), examples against their schema, a subscription's types against
/// the catalog, and an event's `data` against its type's schema when the
/// type says so — a 400 that names where it fails. Scoped to the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_type_catalog_checks_subscriptions_and_data(backing) {
    let dir = tempfile::tempdir().unwrap();
    let server = backing.start(dir.path()).await;
    let (_, key) = server.tenant("catalog").await;
    let (_, other) = server.tenant("other").await;
    let schema = json!({
        "type": "object",
        "required": ["conversation_id"],
        "properties": {"conversation_id": {"type": "integer"}}
    });
    let lurker = Receiver::ok().await;
    for (body, status) in [
        (json!({"name": "Message.Created"}), 400),
        (json!({"name": "message.created", "validate": true}), 400),
        (
            json!({"name": "message.created", "schema": {"type": 12}}),
            400,
        ),
        (
            json!({"name": "message.created", "schema": schema, "example": {"conversation_id": "x"}}),
            400,
        ),
        (
            json!({"name": "message.created", "schema": {"$ref": lurker.url()}}),
            400,
        ),
        (json!({"name": "message.created", "flavour": "x"}), 400),
    ] {
        let (got, answer) = server
            .call("POST", "/v1/event-types", &key, Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    assert!(lurker.received().is_empty(), "a schema's $ref was fetched");
    let t = created(
        &server,
        &key,
        "/v1/event-types",
        json!({"name": "message.created", "description": "A chat message",
               "schema": schema, "example": {"conversation_id": 7}, "validate": true}),
    )
    .await;
    assert_eq!(t["validate"], true);
    let (status, _) = server
        .call(
            "POST",
            "/v1/event-types",
            &key,
            Some(json!({"name": "message.created"})),
        )
        .await;
    assert_eq!(status, 409);
    created(
        &server,
        &key,
        "/v1/event-types",
        json!({"name": "lead.created"}),
    )
    .await;

    // Subscriptions name types of the catalog.
    let (status, answer) = server
        .call(
            "POST",
            "/v1/subscriptions",
            &key,
            Some(json!({"url": "https://example.com/h", "event_types": ["conversation.*"]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        error_message(&answer).contains("conversation.*"),
        "{answer}"
    );
    let rx = Receiver::ok().await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["message.*"]}))
        .await;

    // Data against the schema.
    let mut missing = message_event("m1");
    missing["data"] = json!({"content": "hi"});
    let (status, answer) = server.call("POST", "/v1/events", &key, Some(missing)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        error_message(&answer).contains("conversation_id"),
        "{answer}"
    );
    let mut wrong = message_event("m2");
    wrong["data"]["conversation_id"] = json!("31302");
    let (status, answer) = server
        .call(
            "POST",
            "/v1/events/batch",
            &key,
            Some(json!({"events": [message_event("ok-in-batch"), wrong]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let message = error_message(&answer);
    assert!(
        message.contains("events[1]") && message.contains("/conversation_id"),
        "{message}"
    );
    let (status, _) = server
        .call("POST", "/v1/events", &key, Some(message_event("m3")))
        .await;
    assert_eq!(status, 202);
    assert_eq!(rx.wait_for(1, PATIENCE).await[0].json()["id"], "m3");

    // Archived: listed only on request, offered to no new subscription.
    let (status, _) = server
        .call(
            "PATCH",
            "/v1/event-types/message.created",
            &key,
            Some(json!({"archived": true})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = server.call("GET", "/v1/event-types", &key, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = server
        .call("GET", "/v1/event-types?include_archived=true", &key, None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (status, _) = server
        .call(
            "POST",
            "/v1/subscriptions",
            &key,
            Some(json!({"url": "https://example.com/h", "event_types": ["message.created"]})),
        )
        .await;
    assert_eq!(status, 400);

    // Another tenant: none of it.
    for (method, path) in [
        ("GET", "/v1/event-types/message.created"),
        ("PATCH", "/v1/event-types/message.created"),
        ("DELETE", "/v1/event-types/message.created"),
    ] {
        let body = (method == "PATCH").then(|| json!({"archived": false}));
        let (status, _) = server.call(method, path, &other, body).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, _) = server
        .call(
            "POST",
            "/v1/events",
            &other,
            Some({
                let mut e = message_event("other-1");
                e["data"] = json!({});
                e
            }),
        )
        .await;
    assert_eq!(
        status, 202,
        "the other tenant's events are not checked against this catalog"
    );
    let (status, _) = server
        .call("DELETE", "/v1/event-types/message.created", &key, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call("GET", "/v1/event-types/message.created", &key, None)
        .await;
    assert_eq!(status, 404);
}
}
