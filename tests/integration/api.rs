//! The admin API through real HTTP against the real binary: a new tenant's
//! whole story, every bad input, isolation between tenants, restarts, the
//! OpenAPI document.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::support::{fixture, repo_root};

fn lead() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("examples/lead.json")).unwrap())
        .unwrap()
}

fn bundled(name: &str) -> Vec<u8> {
    wasmhook::runtime::bundled::find(name)
        .unwrap()
        .wasm
        .to_vec()
}

both_backends! {
    #[tokio::test]
    async fn a_new_tenants_whole_story(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("Acme Dental").await;

        // Upload its own plugin (the lead transform, as its own component).
        let plugin = server
            .upload_plugin(
                &key,
                "name=crm-lead&version=1.2.0",
                bundled("helloclient-lead"),
            )
            .await;
        let plugin_id = plugin["id"].as_str().unwrap();
        assert!(plugin_id.starts_with("plg_"));
        assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
        let (_, list) = server.call("GET", "/v1/plugins", &key, None).await;
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&plugin_id) && ids.contains(&"builtin:helloclient-chatlog"),
            "{ids:?}"
        );

        // Dry run: the action and timing, nothing delivered.
        let (status, dry) = server
            .call(
                "POST",
                &format!("/v1/plugins/{plugin_id}/dry-run"),
                &key,
                Some(json!({"event": lead()})),
            )
            .await;
        assert_eq!(status, 200, "{dry}");
        assert_eq!(dry["action"]["action"], "deliver");
        assert!(dry["elapsed_us"].as_u64().unwrap() > 0);

        // Subscribe a receiver with it, Hello Client style.
        let rx = Receiver::ok().await;
        let sub = server
            .subscribe(
                &key,
                json!({"url": rx.url(), "event_types": ["lead.created", "appointment.created"],
                       "plugin": {"id": plugin_id}, "signature": {"scheme": "timestamped-hex"},
                       "retry": {"preset": "helloclient"}, "expect_body": {"status": "success"},
                       "description": "CRM"}),
            )
            .await;
        assert!(sub["secret"].as_str().unwrap().starts_with("whsec_"));
        let sub_id = sub["id"].as_str().unwrap();

        // Send the event: 202 once durable; the same id again is not routed twice.
        let (status, accepted) = server.call("POST", "/v1/events", &key, Some(lead())).await;
        assert_eq!((status, accepted["duplicate"].clone()), (202, json!(false)));
        let (status, again) = server.call("POST", "/v1/events", &key, Some(lead())).await;
        assert_eq!(
            (status, again["id"].clone(), again["duplicate"].clone()),
            (202, json!("evt_lead_31305"), json!(true))
        );

        let got = rx.wait_for(1, PATIENCE).await;
        assert_eq!(got[0].json()["SessionID"], 31305);
        assert!(got[0].header("x-webhook-signature").starts_with("t="));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rx.received().len(), 1, "the duplicate was not routed");

        // The delivery log, once the attempt's result is recorded (it is
        // recorded after the receiver answered).
        let deadline = std::time::Instant::now() + PATIENCE;
        let page = loop {
            let (_, page) = server
                .call(
                    "GET",
                    &format!("/v1/deliveries?subscription_id={sub_id}&status=succeeded"),
                    &key,
                    None,
                )
                .await;
            if !page["items"][0].is_null() {
                break page;
            }
            assert!(std::time::Instant::now() < deadline, "never succeeded: {page}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let item = &page["items"][0];
        assert_eq!(item["event_id"], "evt_lead_31305");
        assert_eq!(item["attempts"], 1);
        assert_eq!(item["last_http_status"], 200);
        let id = item["id"].as_str().unwrap();
        let (_, detail) = server
            .call("GET", &format!("/v1/deliveries/{id}"), &key, None)
            .await;
        assert_eq!(
            detail["request"]["body"].as_str().unwrap().as_bytes(),
            &got[0].body[..]
        );
        assert_eq!(detail["attempt_log"][0]["status"], 200);
        assert_eq!(
            detail["attempt_log"][0]["response_body"],
            r#"{"status":"success"}"#
        );
        let (_, event) = server
            .call("GET", "/v1/events/evt_lead_31305", &key, None)
            .await;
        assert_eq!(event["deliveries"][0], id);
        assert_eq!(event["data"]["first_name"], "David");

        // Manual retry sends it again with the same id.
        let (status, _) = server
            .call("POST", &format!("/v1/deliveries/{id}/retry"), &key, None)
            .await;
        assert_eq!(status, 202);
        let got = rx.wait_for(2, PATIENCE).await;
        assert_eq!(got[0].body, got[1].body);

        // The plugin is in use: deleting it is a 409 naming the subscription.
        let (status, body) = server
            .call("DELETE", &format!("/v1/plugins/{plugin_id}"), &key, None)
            .await;
        assert_eq!(status, 409);
        assert!(error_message(&body).contains(sub_id));

        // Test event through plugin and signer: the lead plugin skips webhook.test.
        let (status, test) = server
            .call(
                "POST",
                &format!("/v1/subscriptions/{sub_id}/test"),
                &key,
                None,
            )
            .await;
        assert_eq!(status, 200, "{test}");
        assert_eq!(test["deliveries"][0]["status"], "filtered");

        // Replay since the start: the stored lead goes through the plugin again.
        let (status, replay) = server
            .call(
                "POST",
                &format!("/v1/subscriptions/{sub_id}/replay"),
                &key,
                Some(json!({"since": "2020-01-01T00:00:00Z"})),
            )
            .await;
        assert_eq!(status, 200, "{replay}");
        assert_eq!(replay["events"], 1);
        rx.wait_for(3, PATIENCE).await;
    }
}

both_backends! {
    #[tokio::test]
    async fn the_test_endpoint_answers_with_the_attempt(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("t").await;
        let rx = Receiver::start(vec![], Answer::status(201).body("created")).await;
        let sub = server
            .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        let (status, test) = server
            .call(
                "POST",
                &format!("/v1/subscriptions/{}/test", sub["id"].as_str().unwrap()),
                &key,
                None,
            )
            .await;
        assert_eq!(status, 200);
        let d = &test["deliveries"][0];
        assert_eq!(d["status"], "succeeded", "{d}");
        assert_eq!(d["attempts"][0]["status"], 201);
        assert_eq!(d["attempts"][0]["response_body"], "created");
        assert_eq!(rx.received()[0].json()["type"], "webhook.test");
    }
}

both_backends! {
    #[tokio::test]
    async fn bad_input_is_answered_precisely(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start_with(
            dir.path(),
            &[],
            &[("WASMHOOK_SERVER_MAX_PLUGIN_BYTES", "300000")],
        ).await;
        let (_, key) = server.tenant("t").await;

        // Events.
        let (s, b) = server
            .raw(
                "POST",
                "/v1/events",
                &key,
                "application/json",
                b"{\"type\": ".to_vec(),
            )
            .await;
        assert_eq!((s, error_code(&b)), (400, "malformed_json"));
        let (s, b) = server
            .call("POST", "/v1/events", &key, Some(json!({"data": {}})))
            .await;
        assert_eq!((s, error_code(&b)), (400, "invalid_event"));
        assert!(error_message(&b).contains("missing field `type`"), "{b}");
        let (s, b) = server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(json!({"type": "LeadCreated", "data": {}})),
            )
            .await;
        assert_eq!(s, 400);
        assert!(error_message(&b).contains("dotted lowercase"), "{b}");
        let (s, b) = server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(json!({"type": "a.b", "data": {}, "colour": 1})),
            )
            .await;
        assert_eq!(s, 400);
        assert!(error_message(&b).contains("unknown field `colour`"), "{b}");
        let (s, b) = server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(json!({"type": "a.b", "data": [1]})),
            )
            .await;
        assert_eq!(s, 400);
        assert!(
            error_message(&b).contains("`data` must be a JSON object"),
            "{b}"
        );
        let big = json!({"type": "a.b", "data": {"x": "y".repeat(300 * 1024)}});
        let (s, b) = server.call("POST", "/v1/events", &key, Some(big)).await;
        assert_eq!((s, error_code(&b)), (413, "payload_too_large"));
        assert!(error_message(&b).contains("262144"), "{b}");
        let batch = json!({"events": [{"type": "a.b", "data": {}}, {"type": "bad", "data": {}}]});
        let (s, b) = server
            .call("POST", "/v1/events/batch", &key, Some(batch))
            .await;
        assert_eq!(s, 400);
        assert!(error_message(&b).starts_with("events[1]: "), "{b}");
        let (s, b) = server
            .call(
                "POST",
                "/v1/events/batch",
                &key,
                Some(json!({"events": []})),
            )
            .await;
        assert_eq!((s, error_code(&b)), (400, "invalid_batch"));

        // Subscriptions.
        let ok = |extra: Value| {
            let mut s = json!({"url": "http://127.0.0.1:9/x", "event_types": ["*"]});
            for (k, v) in extra.as_object().unwrap() {
                s[k] = v.clone();
            }
            s
        };
        for (body, needle) in [
            (ok(json!({"colour": "blue"})), "unknown field `colour`"),
            (
                ok(json!({"url": "ftp://example.com"})),
                "is not an http(s) URL",
            ),
            (ok(json!({"url": "not a url"})), "is not an http(s) URL"),
            (ok(json!({"event_types": []})), "at least one pattern"),
            (ok(json!({"event_types": ["Message.*"]})), "\"Message.*\""),
            (
                ok(json!({"plugin": {"id": "builtin:nope"}})),
                "unknown plugin \"builtin:nope\"",
            ),
            (
                ok(json!({"plugin": {"id": "plg_nope"}})),
                "unknown plugin \"plg_nope\"",
            ),
            (
                ok(json!({"plugin": {"id": "builtin:event-filter", "config": {"all": []}}})),
                "config.all: the list is empty",
            ),
            (
                ok(json!({"plugin": {"id": "builtin:helloclient-lead", "config": {"x": 1}}})),
                "unknown field `x`",
            ),
            (
                ok(json!({"retry": {"preset": "fast"}})),
                "retry.preset \"fast\" is unknown",
            ),
            (ok(json!({"retry": {"jitter": 2}})), "retry.jitter"),
            (
                ok(json!({"signature": {"scheme": "md5"}})),
                "unknown variant `md5`",
            ),
            (ok(json!({"timeout_ms": 0})), "timeout_ms"),
            (ok(json!({"secret": "short"})), "secret"),
            (json!({"event_types": ["*"]}), "url (or destination) is required"),
        ] {
            let (s, b) = server
                .call("POST", "/v1/subscriptions", &key, Some(body.clone()))
                .await;
            assert_eq!(s, 400, "{body} -> {b}");
            assert!(error_message(&b).contains(needle), "{body} -> {b}");
        }

        // Plugins: bad wasm, a core module, the wrong world, too large, bad name.
        for (bytes, needle) in [
            (b"not wasm at all".to_vec(), "not a WebAssembly component"),
            (b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
            (
                fixture("wrong-world"),
                "does not implement the wasmhook:plugin/transform world",
            ),
            (Vec::new(), "the body is empty"),
        ] {
            let (s, b) = server
                .raw(
                    "POST",
                    "/v1/plugins?name=x",
                    &key,
                    "application/wasm",
                    bytes,
                )
                .await;
            assert_eq!((s, error_code(&b)), (400, "invalid_plugin"), "{b}");
            assert!(error_message(&b).contains(needle), "{b}");
        }
        let (s, b) = server
            .raw(
                "POST",
                "/v1/plugins?name=x",
                &key,
                "application/wasm",
                bundled("helloclient-chatlog"),
            )
            .await;
        assert_eq!((s, error_code(&b)), (413, "payload_too_large"), "{b}");
        let (s, b) = server
            .raw(
                "POST",
                "/v1/plugins?name=Bad%20Name",
                &key,
                "application/wasm",
                fixture("raw-wit"),
            )
            .await;
        assert_eq!((s, error_code(&b)), (400, "invalid_name"), "{b}");

        // Deliveries query.
        let (s, b) = server
            .call("GET", "/v1/deliveries?status=lost", &key, None)
            .await;
        assert_eq!((s, error_code(&b)), (400, "invalid_query"));

        // Credentials.
        let (s, b) = server
            .call("GET", "/v1/subscriptions", "whk_wrong", None)
            .await;
        assert_eq!((s, error_code(&b)), (401, "unauthorized"));
        let (s, _) = server.call("GET", "/v1/tenants", &key, None).await;
        assert_eq!(s, 401, "a tenant key is not the operator token");
        let (s, _) = server
            .call(
                "POST",
                "/v1/events",
                ADMIN_TOKEN,
                Some(json!({"type": "a.b", "data": {}})),
            )
            .await;
        assert_eq!(s, 401, "the operator token is not a tenant key");
        let (s, b) = server.call("GET", "/v1/nothing-here", &key, None).await;
        assert_eq!((s, error_code(&b)), (404, "not_found"));
    }
}

both_backends! {
    /// An event's `data` is the sender's text: sent as it arrived (spacing,
    /// key order, number forms, escapes), the same bytes on a retry, and
    /// read back with its values; JSON a parse would refuse is refused.
    #[tokio::test]
    async fn data_is_sent_as_it_arrived(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("t").await;
        let rx = Receiver::ok().await;
        server
            .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        let data = r#"{ "z": 1,
  "a": [1.0e2, -0.0, 0.30000000000000004], "s": "\u00e9\ud83d\ude00 \"q\"" }"#;
        let one = format!(
            r#"{{"id":"e1","type":"message.created","occurred_at":"2026-11-21T10:00:00Z","data":{data}}}"#
        );
        let (s, b) = server
            .raw("POST", "/v1/events", &key, "application/json", one.into_bytes())
            .await;
        assert_eq!(s, 202, "{b}");
        let batch = format!(
            r#"{{"events":[{{"id":"e2","type":"message.created","occurred_at":"2026-11-21T10:00:00Z","data":{data}}}]}}"#
        );
        let (s, b) = server
            .raw("POST", "/v1/events/batch", &key, "application/json", batch.into_bytes())
            .await;
        assert_eq!(s, 202, "{b}");
        let got = rx.wait_for(2, PATIENCE).await;
        let mut bodies: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
            .collect();
        bodies.sort();
        for (body, id) in bodies.iter().zip(["e1", "e2"]) {
            assert_eq!(
                body,
                &format!(
                    r#"{{"id":"{id}","type":"message.created","timestamp":"2026-11-21T10:00:00Z","data":{data}}}"#
                )
            );
        }
        // Read back with its values; a retry sends the same bytes.
        let (_, event) = server.call("GET", "/v1/events/e1", &key, None).await;
        assert_eq!(event["data"]["s"], "é\u{1F600} \"q\"");
        assert_eq!(event["data"]["a"][0], 100.0);
        let delivery = event["deliveries"][0].as_str().unwrap();
        // The receiver saw it before the attempt was recorded; a retry
        // of a delivery still pending is refused (409), so wait.
        assert_eq!(server.settled(&key, delivery).await["status"], "succeeded");
        let (s, b) = server
            .call("POST", &format!("/v1/deliveries/{delivery}/retry"), &key, None)
            .await;
        assert_eq!(s, 202, "{b}");
        let got = rx.wait_for(3, PATIENCE).await;
        assert_eq!(String::from_utf8(got[2].body.to_vec()).unwrap(), bodies[0]);

        // What a parse refuses is refused, naming `data`, and nothing is stored.
        for bad in [r#"{"s":"\ud800"}"#, r#"{"n":1e400}"#] {
            let body = format!(r#"{{"id":"bad","type":"message.created","data":{bad}}}"#);
            let (s, b) = server
                .raw("POST", "/v1/events", &key, "application/json", body.clone().into_bytes())
                .await;
            assert_eq!((s, error_code(&b)), (400, "invalid_event"), "{bad}");
            assert!(error_message(&b).contains("`data`"), "{b}");
            let batch = format!(r#"{{"events":[{body}]}}"#);
            let (s, b) = server
                .raw("POST", "/v1/events/batch", &key, "application/json", batch.into_bytes())
                .await;
            assert_eq!((s, error_code(&b)), (400, "invalid_event"), "{bad}");
        }
        let (s, _) = server.call("GET", "/v1/events/bad", &key, None).await;
        assert_eq!(s, 404);
    }
}

both_backends! {
    #[tokio::test]
    async fn tenants_never_see_each_other(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, alice) = server.tenant("alice").await;
        let (_, bob) = server.tenant("bob").await;
        let rx = Receiver::ok().await;
        let sub = server
            .subscribe(&alice, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        let sub = sub["id"].as_str().unwrap();
        let (_, plugin) = server
            .raw(
                "POST",
                "/v1/plugins?name=p",
                &alice,
                "application/wasm",
                fixture("raw-wit"),
            )
            .await;
        let plugin = plugin["id"].as_str().unwrap();
        server
            .call("POST", "/v1/events", &alice, Some(message_event("alice-1")))
            .await;
        let got = rx.wait_for(1, PATIENCE).await;
        let delivery = got[0].header("webhook-id");

        // Bob cannot use Alice's plugin either.
        let (s, b) = server
            .call(
                "POST",
                "/v1/subscriptions",
                &bob,
                Some(json!({"url": rx.url(), "event_types": ["*"], "plugin": {"id": plugin}})),
            )
            .await;
        assert_eq!(s, 400, "{b}");

        let not_found = [
            ("GET", format!("/v1/subscriptions/{sub}"), None),
            (
                "PATCH",
                format!("/v1/subscriptions/{sub}"),
                Some(json!({"description": "x"})),
            ),
            ("POST", format!("/v1/subscriptions/{sub}/enable"), None),
            ("POST", format!("/v1/subscriptions/{sub}/disable"), None),
            ("GET", format!("/v1/subscriptions/{sub}/secret"), None),
            (
                "POST",
                format!("/v1/subscriptions/{sub}/rotate-secret"),
                None,
            ),
            ("POST", format!("/v1/subscriptions/{sub}/test"), None),
            (
                "POST",
                format!("/v1/subscriptions/{sub}/replay"),
                Some(json!({"since": "2020-01-01T00:00:00Z"})),
            ),
            ("POST", format!("/v1/subscriptions/{sub}/flush"), None),
            ("GET", format!("/v1/subscriptions/{sub}/window"), None),
            ("DELETE", format!("/v1/subscriptions/{sub}"), None),
            ("GET", format!("/v1/plugins/{plugin}"), None),
            (
                "POST",
                format!("/v1/plugins/{plugin}/dry-run"),
                Some(json!({"event": message_event("x")})),
            ),
            ("DELETE", format!("/v1/plugins/{plugin}"), None),
            ("GET", "/v1/events/alice-1".to_string(), None),
            ("GET", format!("/v1/deliveries/{delivery}"), None),
            ("POST", format!("/v1/deliveries/{delivery}/retry"), None),
        ];
        for (method, path, body) in not_found {
            let (s, b) = server.call(method, &path, &bob, body.clone()).await;
            assert_eq!(s, 404, "{method} {path} as bob: {b}");
            // Exactly as for something that does not exist.
            let missing = path
                .replace(sub, "sub_missing")
                .replace(plugin, "plg_missing")
                .replace("alice-1", "missing")
                .replace(&delivery, "dlv_missing");
            let (s2, b2) = server.call(method, &missing, &bob, body).await;
            assert_eq!(s2, 404, "{method} {missing}: {b2}");
            assert_eq!(error_code(&b), error_code(&b2));
        }
        let (_, list) = server.call("GET", "/v1/subscriptions", &bob, None).await;
        assert_eq!(list, json!([]));
        let (_, page) = server.call("GET", "/v1/deliveries", &bob, None).await;
        assert_eq!(page["items"], json!([]));
        let (_, plugins) = server.call("GET", "/v1/plugins", &bob, None).await;
        assert!(
            plugins
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["builtin"] == true)
        );
        // And Alice still sees hers.
        let (s, _) = server
            .call("GET", &format!("/v1/subscriptions/{sub}"), &alice, None)
            .await;
        assert_eq!(s, 200);
    }
}

both_backends! {
    #[tokio::test]
    async fn a_restart_keeps_tenants_keys_plugins_and_subscriptions(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (tenant, key) = server.tenant("durable").await;
        let (s, extra) = server
            .call(
                "POST",
                &format!("/v1/tenants/{tenant}/keys"),
                ADMIN_TOKEN,
                None,
            )
            .await;
        assert_eq!(s, 201);
        let second_key = extra["api_key"].as_str().unwrap().to_string();
        let plugin = server
            .upload_plugin(&key, "name=raw", fixture("raw-wit"))
            .await;
        let plugin = plugin["id"].as_str().unwrap().to_string();
        let rx = Receiver::ok().await;
        let sub = server
            .subscribe(
                &key,
                json!({"url": rx.url(), "event_types": ["*"], "plugin": {"id": plugin}}),
            )
            .await;
        assert!(server.stop().success(), "clean shutdown on SIGTERM");

        let server = backing.start(dir.path()).await;
        let (_, tenants) = server.call("GET", "/v1/tenants", ADMIN_TOKEN, None).await;
        assert_eq!(tenants[0]["name"], "durable");
        for k in [&key, &second_key] {
            let (s, subs) = server.call("GET", "/v1/subscriptions", k, None).await;
            assert_eq!(s, 200);
            assert_eq!(subs[0]["id"], sub["id"]);
        }
        let (s, _) = server
            .call("GET", &format!("/v1/plugins/{plugin}"), &key, None)
            .await;
        assert_eq!(s, 200);
        // The uploaded plugin still runs after the restart (from the artifact cache).
        server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(message_event("after-restart")),
            )
            .await;
        let got = rx.wait_for(1, PATIENCE).await;
        assert!(got[0].json()["raw"].is_object());
        let cache = std::fs::read_dir(dir.path().join("plugin-cache"))
            .unwrap()
            .count();
        assert!(cache >= 1);

        // Deleting the tenant revokes its keys.
        let (s, _) = server
            .call(
                "DELETE",
                &format!("/v1/tenants/{tenant}"),
                ADMIN_TOKEN,
                None,
            )
            .await;
        assert_eq!(s, 204);
        let (s, _) = server.call("GET", "/v1/subscriptions", &key, None).await;
        assert_eq!(s, 401);
    }
}

#[tokio::test]
async fn the_operator_token_is_generated_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crate::support::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env_remove("WASMHOOK_ADMIN_TOKEN")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("wasmhook listening on ")
        .unwrap()
        .to_string();
    let path = dir.path().join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let resp = crate::support::http_client()
        .get(format!("{base}/v1/tenants"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

both_backends! {
    #[tokio::test]
    async fn ingest_rate_limit_answers_429_with_retry_after(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start_with(
            dir.path(),
            &[],
            &[("WASMHOOK_SERVER_INGEST_RATE_LIMIT", "2")],
        ).await;
        let (_, key) = server.tenant("t").await;
        let send = |i: usize| {
            let (base, key) = (server.base.clone(), key.clone());
            async move {
                let resp = crate::support::http_client()
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&key)
                    .json(&json!({"id": format!("r{i}"), "type": "a.b", "data": {}}))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                if status == 429 {
                    assert_eq!(resp.headers()["retry-after"], "1");
                    let body: Value = resp.json().await.unwrap();
                    assert_eq!(error_code(&body), "rate_limited");
                }
                status
            }
        };
        // A burst of twice the rate gets in (one after another: tokens only
        // come back, however slowly they are sent)...
        let mut statuses = Vec::new();
        for i in 0..4 {
            statuses.push(send(i).await);
        }
        assert_eq!(statuses, [202, 202, 202, 202]);
        // ...then 20 at once: however slow the machine, only a few tokens
        // come back while they arrive, so some are refused.
        let at_once: Vec<_> = (4..24).map(|i| tokio::spawn(send(i))).collect();
        let mut statuses = Vec::new();
        for s in at_once {
            statuses.push(s.await.unwrap());
        }
        assert!(
            statuses.iter().all(|s| [202, 429].contains(s)),
            "{statuses:?}"
        );
        assert!(statuses.contains(&429), "{statuses:?}");
    }
}

both_backends! {
    #[tokio::test]
    async fn the_openapi_document_lists_every_route(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (s, doc) = server.call("GET", "/openapi.json", "", None).await;
        assert_eq!(s, 200);
        let paths = doc["paths"].as_object().unwrap();
        let expected = [
            ("post", "/v1/tenants"),
            ("get", "/v1/tenants"),
            ("delete", "/v1/tenants/{id}"),
            ("post", "/v1/tenants/{id}/keys"),
            ("post", "/v1/events"),
            ("post", "/v1/events/batch"),
            ("get", "/v1/events/{id}"),
            ("post", "/v1/plugins"),
            ("get", "/v1/plugins"),
            ("get", "/v1/plugins/{id}"),
            ("delete", "/v1/plugins/{id}"),
            ("post", "/v1/plugins/{id}/dry-run"),
            ("post", "/v1/subscriptions"),
            ("get", "/v1/subscriptions"),
            ("get", "/v1/subscriptions/{id}"),
            ("patch", "/v1/subscriptions/{id}"),
            ("delete", "/v1/subscriptions/{id}"),
            ("post", "/v1/subscriptions/{id}/enable"),
            ("post", "/v1/subscriptions/{id}/disable"),
            ("get", "/v1/subscriptions/{id}/listen"),
            ("post", "/v1/subscriptions/{id}/listen/answers"),
            ("get", "/v1/backup"),
            ("post", "/v1/apps"),
            ("get", "/v1/apps"),
            ("get", "/v1/apps/{app}"),
            ("patch", "/v1/apps/{app}"),
            ("delete", "/v1/apps/{app}"),
            ("post", "/v1/apps/{app}/events"),
            ("post", "/v1/event-types"),
            ("get", "/v1/event-types"),
            ("get", "/v1/event-types/{name}"),
            ("patch", "/v1/event-types/{name}"),
            ("delete", "/v1/event-types/{name}"),
            ("get", "/v1/subscriptions/{id}/secret"),
            ("post", "/v1/subscriptions/{id}/rotate-secret"),
            ("post", "/v1/subscriptions/{id}/test"),
            ("post", "/v1/subscriptions/{id}/replay"),
            ("post", "/v1/subscriptions/{id}/flush"),
            ("get", "/v1/subscriptions/{id}/window"),
            ("get", "/v1/deliveries"),
            ("get", "/v1/deliveries/{id}"),
            ("post", "/v1/deliveries/{id}/retry"),
            ("post", "/v1/deliveries/{id}/dismiss"),
            ("post", "/v1/keys"),
            ("get", "/v1/keys"),
            ("delete", "/v1/keys/{id}"),
            ("put", "/v1/ops-endpoint"),
            ("get", "/v1/ops-endpoint"),
            ("delete", "/v1/ops-endpoint"),
            ("get", "/v1/ops-endpoint/secret"),
            ("post", "/v1/sources"),
            ("get", "/v1/sources"),
            ("get", "/v1/sources/{id}"),
            ("patch", "/v1/sources/{id}"),
            ("delete", "/v1/sources/{id}"),
            ("get", "/v1/sources/{id}/secret"),
            ("post", "/v1/sources/{id}/rotate-secret"),
            ("get", "/v1/sources/{id}/dead-letters"),
            ("get", "/v1/sources/{id}/dead-letters/{letter}"),
            ("delete", "/v1/sources/{id}/dead-letters/{letter}"),
            ("post", "/v1/sources/{id}/dead-letters/{letter}/replay"),
            ("post", "/in/{id}"),
            ("post", "/v1/apps/{app}/portal-links"),
            ("get", "/v1/apps/{app}/portal-links"),
            ("delete", "/v1/apps/{app}/portal-links/{id}"),
            ("get", "/v1/portal"),
            ("get", "/v1/portal-links"),
            // The Svix-compatible API.
            ("post", "/api/v1/app"),
            ("get", "/api/v1/app"),
            ("get", "/api/v1/app/{app_id}"),
            ("put", "/api/v1/app/{app_id}"),
            ("patch", "/api/v1/app/{app_id}"),
            ("delete", "/api/v1/app/{app_id}"),
            ("post", "/api/v1/app/{app_id}/endpoint"),
            ("get", "/api/v1/app/{app_id}/endpoint"),
            ("get", "/api/v1/app/{app_id}/endpoint/{endpoint_id}"),
            ("put", "/api/v1/app/{app_id}/endpoint/{endpoint_id}"),
            ("patch", "/api/v1/app/{app_id}/endpoint/{endpoint_id}"),
            ("delete", "/api/v1/app/{app_id}/endpoint/{endpoint_id}"),
            ("get", "/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret"),
            ("post", "/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret/rotate"),
            ("post", "/api/v1/app/{app_id}/endpoint/{endpoint_id}/recover"),
            ("post", "/api/v1/app/{app_id}/endpoint/{endpoint_id}/send-example"),
            ("post", "/api/v1/app/{app_id}/msg"),
            ("get", "/api/v1/app/{app_id}/msg"),
            ("get", "/api/v1/app/{app_id}/msg/{msg_id}"),
            ("get", "/api/v1/app/{app_id}/attempt/msg/{msg_id}"),
            ("get", "/api/v1/app/{app_id}/attempt/endpoint/{endpoint_id}"),
            ("post", "/api/v1/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend"),
            ("post", "/api/v1/event-type"),
            ("get", "/api/v1/event-type"),
            ("get", "/api/v1/event-type/{event_type_name}"),
            ("delete", "/api/v1/event-type/{event_type_name}"),
            ("get", "/api/v1/health"),
        ];
        for (method, path) in expected {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            documented,
            expected.len(),
            "a route is documented that the test does not know"
        );
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        // Every documented route is really served: none answers 404 "no such route".
        for (method, path) in expected {
            let concrete = path.replace("{id}", "x").replace("{letter}", "y");
            let (s, b) = server
                .call(&method.to_uppercase(), &concrete, "nobody", None)
                .await;
            assert_ne!(
                b["error"]["message"], "no such route",
                "{method} {path} ({s})"
            );
        }
    }
}

both_backends! {
    /// After a restart a plugin is loaded on first use, once, however many
    /// requests want it at the same moment (a JavaScript or Python component
    /// takes seconds to compile when its cached artifact is gone).
    #[tokio::test]
    async fn a_burst_after_a_restart_loads_a_plugin_once(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("Acme Dental").await;
        let plugin = server
            .upload_plugin(&key, "name=crm-lead", bundled("helloclient-lead"))
            .await;
        let path = format!("/v1/plugins/{}/dry-run", plugin["id"].as_str().unwrap());
        assert_eq!(server.stop().code(), Some(0));

        let server = backing.start(dir.path()).await;
        let body = || Some(json!({"event": lead()}));
        let runs = tokio::join!(
            server.call("POST", &path, &key, body()),
            server.call("POST", &path, &key, body()),
            server.call("POST", &path, &key, body()),
            server.call("POST", &path, &key, body()),
            server.call("POST", &path, &key, body()),
            server.call("POST", &path, &key, body()),
        );
        for (status, dry) in [runs.0, runs.1, runs.2, runs.3, runs.4, runs.5] {
            assert_eq!(status, 200, "{dry}");
            assert_eq!(dry["action"]["action"], "deliver", "{dry}");
        }
        let (status, metrics) = server.call("GET", "/metrics", ADMIN_TOKEN, None).await;
        assert_eq!(status, 200);
        let loads = metrics
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("wasmhook_plugin_load_seconds_count "))
            .unwrap_or_else(|| panic!("no load count in {metrics}"));
        assert_eq!(loads.trim(), "1", "six dry runs, one load");
    }
}

/// A shared compiled-plugin directory that others can write would let them
/// run code in the server: it is refused at start, with the reason, and so
/// it is by the CLI.
#[test]
fn a_shared_plugin_cache_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(crate::support::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("WASMHOOK_ADMIN_TOKEN", crate::harness::ADMIN_TOKEN)
        .env("WASMHOOK_PLUGINS_SHARED_CACHE_DIR", &shared)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("writable by group or others") && stderr.contains("shared"),
        "{stderr}"
    );

    let out = std::process::Command::new(crate::support::binary())
        .args(["plugin", "check", "event-filter", "--shared-cache-dir"])
        .arg(&shared)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "nothing written to it"
    );
}
