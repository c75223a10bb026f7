//! Sources against the real binary: each seed platform's sample payload
//! goes in through its source (`POST /in/{id}`), signed here by an
//! independent HMAC, and out through a subscription to a real receiver.
//! Then every way a platform request can be wrong: bad signature, stale
//! timestamp, replayed delivery id, malformed JSON, oversized body, unknown
//! event type, and another tenant reaching for the source.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::*;
use crate::support::repo_root;

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/seeds").join(name)).unwrap()
}

fn hex_hmac(secret: &str, parts: &[&[u8]]) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), &parts.concat()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn source(server: &Server, key: &str, body: Value) -> Value {
    let (status, source) = server.call("POST", "/v1/sources", key, Some(body)).await;
    assert_eq!(status, 201, "{source}");
    source
}

/// A tenant with a receiver subscribed to every event (no plugin: the
/// Standard Webhooks form, so the canonical event is visible as sent).
async fn tenant_with_receiver(server: &Server, name: &str) -> (String, Receiver) {
    let (_, key) = server.tenant(name).await;
    let rx = Receiver::ok().await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    (key, rx)
}

#[tokio::test]
async fn every_seed_platform_comes_in_through_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (key, rx) = tenant_with_receiver(&server, "platforms").await;
    let mut expected = 0;

    // OneHash: no signature in its docs, so the URL is the credential.
    let s = source(
        &server,
        &key,
        json!({"kind": "onehash", "verify": {"scheme": "none"}}),
    )
    .await;
    assert_eq!(s["verify"]["scheme"], "none");
    let url = s["url"].as_str().unwrap();
    assert!(
        url.starts_with("/in/src_") && url.len() == "/in/src_".len() + 32,
        "{url}"
    );
    let (status, reply) = server
        .inbound(url, &[], &seed("onehash-message_created.json"))
        .await;
    assert_eq!((status, &reply), (200, &json!({"accepted": 1})));
    expected += 1;

    // Hello Client: t=…,v1=… over "t.body"; a day's collection is one
    // event per message, answered {"status":"success"}.
    let secret = "hc-signing-key-from-the-dashboard";
    let s = source(
        &server,
        &key,
        json!({"kind": "helloclient", "secret": secret}),
    )
    .await;
    let url = s["url"].as_str().unwrap().to_string();
    for (file, n) in [
        ("helloclient-collection.json", 3),
        ("helloclient-lead.json", 1),
    ] {
        let body = seed(file);
        let t = unix_now().to_string();
        let sig = format!(
            "t={t},v1={}",
            hex_hmac(secret, &[t.as_bytes(), b".", &body])
        );
        let (status, reply) = server
            .inbound(&url, &[("X-Webhook-Signature", sig)], &body)
            .await;
        assert_eq!(
            (status, &reply),
            (200, &json!({"status": "success"})),
            "{file}"
        );
        expected += n;
    }

    // onWebChat: hex HMAC of the exact body; the delivery id is the event id.
    let s = source(
        &server,
        &key,
        json!({"kind": "onwebchat", "secret": "owc_secret"}),
    )
    .await;
    let body = seed("onwebchat-chat_closed.json");
    let headers = [
        ("X-OWC-Signature", hex_hmac("owc_secret", &[&body])),
        ("X-OWC-Event", "chat.closed".to_string()),
        ("X-OWC-Delivery", "owc_dlv_1".to_string()),
    ];
    let (status, _) = server
        .inbound(s["url"].as_str().unwrap(), &headers, &body)
        .await;
    assert_eq!(status, 200);
    expected += 1;

    // Convosphere: the URL; its verification ping routes nothing.
    let s = source(
        &server,
        &key,
        json!({"kind": "convosphere", "verify": {"scheme": "none"}}),
    )
    .await;
    let url = s["url"].as_str().unwrap().to_string();
    let (status, reply) = server
        .inbound(&url, &[], br#"{"event":"webhook.test"}"#)
        .await;
    assert_eq!((status, &reply), (200, &json!({"accepted": 0})));
    let (status, _) = server
        .inbound(&url, &[], &seed("convosphere-message_completed.json"))
        .await;
    assert_eq!(status, 200);
    expected += 1;

    // oHallo: hex HMAC in X-OHallo-Signature; its idempotency key is the id.
    let s = source(
        &server,
        &key,
        json!({"kind": "ohallo", "secret": "oh_secret"}),
    )
    .await;
    let body = seed("ohallo-channel_message_received.json");
    let (status, _) = server
        .inbound(
            s["url"].as_str().unwrap(),
            &[("X-OHallo-Signature", hex_hmac("oh_secret", &[&body]))],
            &body,
        )
        .await;
    assert_eq!(status, 200);
    expected += 1;

    // Standard Webhooks: what one wasmhook sends another.
    let s = source(&server, &key, json!({"kind": "standard-webhooks"})).await;
    let secret = s["secret"].as_str().unwrap();
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let body = br#"{"id":"evt_upstream_1","type":"chat.rated","timestamp":"2026-11-21T10:00:00Z","data":{"conversation_id":"c1","rating":5}}"#;
    let ts = unix_now().to_string();
    let content = [b"msg_up_1.".as_slice(), ts.as_bytes(), b".", body].concat();
    let sig = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key_bytes, &content))
    );
    let headers = [
        ("webhook-id", "msg_up_1".to_string()),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
    ];
    let (status, _) = server
        .inbound(s["url"].as_str().unwrap(), &headers, body)
        .await;
    assert_eq!(status, 200);
    expected += 1;

    let got = rx.wait_for(expected, PATIENCE).await;
    assert_eq!(got.len(), expected);
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    let find = |id: &str| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("no event {id} in {events:#?}"))
            .clone()
    };

    let onehash = find("onehash:1:message:1");
    assert_eq!(onehash["type"], "message.created");
    assert_eq!(onehash["timestamp"], "2020-03-03T13:05:57Z");
    let d = &onehash["data"];
    assert_eq!(d["author"], "visitor");
    assert_eq!(d["conversation_id"], "1");
    assert_eq!(d["content"], "Hi");
    assert_eq!(d["sender"]["email"], "agent@example.com");
    assert_eq!(d["contact"]["name"], "contact-name");
    assert_eq!(d["account"]["name"], "OneChat");
    assert_eq!(
        d["raw"]["conversation"]["additional_attributes"]["browser"]["browser_name"],
        "Chrome"
    );

    let serial = "59001dd73709417321c58b11693183a2";
    let m = find(&format!(
        "helloclient:{serial}:31302:2023-11-21T00:00:00Z:1"
    ));
    assert_eq!(m["type"], "message.created");
    assert_eq!(m["data"]["author"], "visitor");
    assert_eq!(m["data"]["content"], "make an appointment");
    assert_eq!(m["data"]["conversation_id"], 31302);
    assert_eq!(m["data"]["chatbot_id"], serial);
    let lead = events.iter().find(|e| e["type"] == "lead.created").unwrap();
    assert_eq!(lead["data"]["first_name"], "David");
    assert_eq!(lead["data"]["session_id"], 31305);

    let closed = find("owc_dlv_1");
    assert_eq!(closed["type"], "conversation.closed");
    assert_eq!(closed["data"]["conversation_id"], "c_812");
    assert_eq!(closed["data"]["transcript"][1]["author"], "ai");

    let convo = find("cv_evt_5501");
    assert_eq!(convo["type"], "message.created");
    assert_eq!(convo["data"]["author"], "ai");

    let oh = find("oh_idem_9f2c");
    assert_eq!(oh["type"], "message.created");
    assert_eq!(oh["data"]["content"], "Is the shop open today?");

    let upstream = find("evt_upstream_1");
    assert_eq!(upstream["type"], "chat.rated");
    assert_eq!(
        upstream["data"],
        json!({"conversation_id": "c1", "rating": 5})
    );

    // The stored event says where it came from.
    let (status, stored) = server.call("GET", "/v1/events/owc_dlv_1", &key, None).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["source"], "onwebchat");
}

#[tokio::test]
async fn a_bad_request_is_refused_or_kept_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (key, rx) = tenant_with_receiver(&server, "faults").await;
    let s = source(
        &server,
        &key,
        json!({"kind": "onwebchat", "secret": "owc_secret"}),
    )
    .await;
    let (id, url) = (s["id"].as_str().unwrap(), s["url"].as_str().unwrap());
    let signed = |body: &[u8], delivery: &str| {
        vec![
            ("X-OWC-Signature", hex_hmac("owc_secret", &[body])),
            ("X-OWC-Event", "message.created".to_string()),
            ("X-OWC-Delivery", delivery.to_string()),
        ]
    };
    let message = br#"{"data":{"chat_id":"c1","author":"visitor","content":"hi"}}"#;

    // A wrong, a missing and a malformed signature: 401, nothing stored.
    let mut forged = signed(message, "d_forged");
    forged[0].1 = hex_hmac("not-the-secret", &[message]);
    let (status, body) = server.inbound(url, &forged, message).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "bad_signature"),
        "{body}"
    );
    assert!(error_message(&body).contains("does not match"), "{body}");
    let (status, body) = server
        .inbound(url, &signed(message, "d_x")[1..], message)
        .await;
    assert_eq!(status, 401);
    assert!(error_message(&body).contains("x-owc-signature"), "{body}");
    let mut junk = signed(message, "d_junk");
    junk[0].1 = "not hex".into();
    let (status, _) = server.inbound(url, &junk, message).await;
    assert_eq!(status, 401);
    let (status, _) = server.call("GET", "/v1/events/d_forged", &key, None).await;
    assert_eq!(status, 404, "a forged request leaves nothing behind");

    // The platform retries a delivery: routed once.
    for _ in 0..2 {
        let (status, reply) = server.inbound(url, &signed(message, "d_1"), message).await;
        assert_eq!((status, &reply), (200, &json!({"accepted": 1})));
    }

    // An event name onWebChat may add later: kept under the kind.
    let typing = br#"{"data":{"chat_id":"c1"}}"#;
    let mut headers = signed(typing, "d_2");
    headers[1].1 = "visitor.typing".into();
    let (status, _) = server.inbound(url, &headers, typing).await;
    assert_eq!(status, 200);

    // Malformed JSON and a missing field: 422 naming it, kept as dead letters.
    let broken = br#"{"data": {"chat_id": "c1",}"#;
    let (status, body) = server.inbound(url, &signed(broken, "d_3"), broken).await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "unprocessable_payload"),
        "{body}"
    );
    assert!(error_message(&body).contains("not JSON"), "{body}");
    let no_author = br#"{"data":{"chat_id":"c1","content":"hi"}}"#;
    let (status, body) = server
        .inbound(url, &signed(no_author, "d_4"), no_author)
        .await;
    assert_eq!(status, 422);
    assert!(error_message(&body).contains("data.author"), "{body}");
    assert!(error_message(&body).contains("dead letter dlq_"), "{body}");

    // Odd unicode is just text.
    let odd = "{\"data\":{\"chat_id\":\"c\u{202e}1\",\"author\":\"agent\",\"content\":\"\u{1F600}\u{0301}\u{FEFF}\"}}";
    let (status, _) = server
        .inbound(url, &signed(odd.as_bytes(), "d_5"), odd.as_bytes())
        .await;
    assert_eq!(status, 200);

    // Oversized: 413 before anything is read into a record.
    let huge = vec![b' '; 262_144 * 64 + 1];
    let (status, body) = server.inbound(url, &signed(&huge, "d_6"), &huge).await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "payload_too_large"),
        "{body}"
    );

    let (status, letters) = server
        .call("GET", &format!("/v1/sources/{id}/dead-letters"), &key, None)
        .await;
    assert_eq!(status, 200);
    let items = letters["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{letters}");
    assert_eq!(items[0]["body"], String::from_utf8_lossy(broken).as_ref());
    assert!(items[1]["error"].as_str().unwrap().contains("data.author"));
    let (status, s) = server
        .call("GET", &format!("/v1/sources/{id}"), &key, None)
        .await;
    assert_eq!((status, &s["dead_letters"]), (200, &json!(2)));
    assert!(
        s.get("secret").is_none(),
        "the secret only on create, reveal, rotate"
    );

    let got = rx.wait_for(3, PATIENCE).await;
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.iter().filter(|i| *i == "d_1").count(), 1, "{ids:?}");
    let typing = got.iter().find(|r| r.json()["id"] == "d_2").unwrap().json();
    assert_eq!(typing["type"], "onwebchat.visitor.typing");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 3, "nothing else was routed");
}

#[tokio::test]
async fn hello_client_signatures_expire_and_rotated_secrets_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (key, _rx) = tenant_with_receiver(&server, "stale").await;
    let s = source(
        &server,
        &key,
        json!({"kind": "helloclient", "tolerance_secs": 60}),
    )
    .await;
    let (id, url) = (s["id"].as_str().unwrap(), s["url"].as_str().unwrap());
    let old = s["secret"].as_str().unwrap().to_string();
    let body = seed("helloclient-lead.json");
    let sign = |secret: &str, t: i64| {
        let t = t.to_string();
        vec![(
            "X-Webhook-Signature",
            format!(
                "t={t},v1={}",
                hex_hmac(secret, &[t.as_bytes(), b".", &body])
            ),
        )]
    };
    let (status, body_out) = server
        .inbound(url, &sign(&old, unix_now() - 120), &body)
        .await;
    assert_eq!(status, 401);
    assert!(error_message(&body_out).contains("tolerance"), "{body_out}");

    let (status, rotated) = server
        .call(
            "POST",
            &format!("/v1/sources/{id}/rotate-secret"),
            &key,
            Some(json!({"secret": "the-platforms-new-key"})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["secret"], "the-platforms-new-key");
    assert_eq!(rotated["previous"][0]["secret"], old.as_str());
    for secret in [old.as_str(), "the-platforms-new-key"] {
        let (status, _) = server.inbound(url, &sign(secret, unix_now()), &body).await;
        assert_eq!(status, 200, "{secret} verifies during the grace period");
    }
}

#[tokio::test]
async fn a_dead_letter_replays_once_the_adapter_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (key, rx) = tenant_with_receiver(&server, "adapters").await;
    // The tenant's own adapter: an uploaded component of the source world
    // (here the bundled one's bytes), first with the wrong mapping.
    let wasm = wasmhook::runtime::bundled::find("platform-sources")
        .unwrap()
        .wasm
        .to_vec();
    let plugin = server.upload_plugin(&key, "name=my-adapter", wasm).await;
    assert_eq!(plugin["world"], "source");
    let plugin_id = plugin["id"].as_str().unwrap();

    // A transform plugin is not an adapter, nor an adapter a transform.
    let (status, body) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "plugin", "verify": {"scheme": "none"}, "plugin": {"id": "builtin:helloclient-lead"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("transform world"), "{body}");
    let (status, body) = server
        .call(
            "POST",
            "/v1/subscriptions",
            &key,
            Some(json!({"url": rx.url(), "event_types": ["*"], "plugin": {"id": plugin_id}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("source adapter"), "{body}");
    // A config the adapter refuses is a 400 with its message.
    let (status, body) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(
                json!({"kind": "plugin", "verify": {"scheme": "none"}, "plugin": {"id": plugin_id, "config": {"kind": "kafka"}}}),
            ),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("unknown kind"), "{body}");

    let s = source(
        &server,
        &key,
        json!({"kind": "plugin", "verify": {"scheme": "none"}, "plugin": {"id": plugin_id, "config": {"kind": "helloclient"}}}),
    )
    .await;
    let (id, url) = (s["id"].as_str().unwrap(), s["url"].as_str().unwrap());
    let body = seed("ohallo-channel_message_received.json");
    let (status, out) = server.inbound(url, &[], &body).await;
    assert_eq!(status, 422, "{out}");
    assert!(
        error_message(&out).contains("neither `Collection`"),
        "{out}"
    );

    // Replaying without a fix fails again and keeps the letter.
    let (_, letters) = server
        .call("GET", &format!("/v1/sources/{id}/dead-letters"), &key, None)
        .await;
    let letter = letters["items"][0]["id"].as_str().unwrap().to_string();
    let replay = format!("/v1/sources/{id}/dead-letters/{letter}/replay");
    let (status, _) = server.call("POST", &replay, &key, None).await;
    assert_eq!(status, 422);
    let (_, l) = server
        .call(
            "GET",
            &format!("/v1/sources/{id}/dead-letters/{letter}"),
            &key,
            None,
        )
        .await;
    assert_eq!(l["attempts"], 2);

    // Deleting the adapter while a source uses it is refused.
    let (status, body) = server
        .call("DELETE", &format!("/v1/plugins/{plugin_id}"), &key, None)
        .await;
    assert_eq!(status, 409);
    assert!(error_message(&body).contains(id), "{body}");

    // Fix the mapping, replay: routed, and the letter is gone.
    let (status, body) = server
        .call(
            "PATCH",
            &format!("/v1/sources/{id}"),
            &key,
            Some(json!({"plugin": {"id": plugin_id, "config": {"kind": "ohallo"}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, result) = server.call("POST", &replay, &key, None).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["events"][0]["id"], "oh_idem_9f2c");
    let got = rx.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].json()["type"], "message.created");
    assert_eq!(
        got[0].json()["data"]["raw"]["event"],
        "channel.message_received"
    );
    let (status, _) = server
        .call(
            "GET",
            &format!("/v1/sources/{id}/dead-letters/{letter}"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sources_are_the_tenants_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, a) = server.tenant("a").await;
    let (_, b) = server.tenant("b").await;
    let s = source(
        &server,
        &a,
        json!({"kind": "convosphere", "verify": {"scheme": "none"}, "description": "bot"}),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/sources/{id}")),
        ("PATCH", format!("/v1/sources/{id}")),
        ("GET", format!("/v1/sources/{id}/secret")),
        ("POST", format!("/v1/sources/{id}/rotate-secret")),
        ("GET", format!("/v1/sources/{id}/dead-letters")),
        ("DELETE", format!("/v1/sources/{id}")),
    ] {
        let body = (method == "PATCH").then(|| json!({"description": "mine"}));
        let (status, _) = server.call(method, &path, &b, body).await;
        assert_eq!(status, 404, "{method} {path} by another tenant");
    }
    let (_, list) = server.call("GET", "/v1/sources", &b, None).await;
    assert_eq!(list, json!([]));
    let (_, list) = server.call("GET", "/v1/sources", &a, None).await;
    assert_eq!(list[0]["description"], "bot");

    // Bad input to the API itself.
    for (input, needle) in [
        (json!({"kind": "kafka"}), "unknown variant"),
        (json!({"kind": "onehash", "colour": 1}), "unknown field"),
        (
            json!({"kind": "onehash", "plugin": {"id": "builtin:platform-sources"}}),
            "for kind `plugin`",
        ),
        (json!({"kind": "plugin"}), "needs `plugin`"),
        // Nothing verified unless said so.
        (
            json!({"kind": "onehash"}),
            "\"verify\": {\"scheme\": \"none\"}",
        ),
        (json!({"kind": "convosphere"}), "anyone who learns its URL"),
        (
            json!({"kind": "standard-webhooks", "secret": "plain"}),
            "whsec_",
        ),
        (
            json!({"kind": "onwebchat", "tolerance_secs": 0}),
            "tolerance_secs",
        ),
    ] {
        let (status, body) = server
            .call("POST", "/v1/sources", &a, Some(input.clone()))
            .await;
        assert_eq!(status, 400, "{input}: {body}");
        assert!(error_message(&body).contains(needle), "{input}: {body}");
    }

    // Deleted: its URL is gone.
    let (status, _) = server
        .call("DELETE", &format!("/v1/sources/{id}"), &a, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .inbound(
            &format!("/in/{id}"),
            &[],
            br#"{"event":"conversation.started"}"#,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_formats_send_each_platforms_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("formats").await;

    // onWebChat: messages held per conversation, sent inside chat.closed,
    // signed in X-OWC-Signature with X-OWC-Event naming onWebChat's event.
    let owc = Receiver::ok().await;
    let sub = server
        .subscribe(
            &key,
            json!({"url": owc.url(), "event_types": ["message.created", "conversation.closed"],
                   "plugin": {"id": "builtin:onwebchat"}, "window": {"every": "1d"},
                   "retry": {"preset": "onwebchat"},
                   "signature": {"scheme": "body-hex"}, "secret": "owc-endpoint-signing-secret"}),
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap();
    // Now, not a fixed date: an event from a day already over lands in a
    // late window, which the scheduler flushes within a second.
    let now = jiff::Timestamp::now().to_string();
    let event = |id: &str, t: &str, data: Value| json!({"id": id, "type": t, "occurred_at": now, "data": data});
    let message = |id: &str, conv: &str, author: &str, content: &str| {
        event(
            id,
            "message.created",
            json!({"conversation_id": conv, "conversation_created_at": "2026-11-21T10:00:00Z",
            "chatbot_id": "b", "chatbot_name": "Bot", "uri": "u", "author": author, "content": content,
            "created_at": "2026-11-21T10:00:00Z"}),
        )
    };
    for e in [
        message("m1", "c1", "visitor", "Hello"),
        message("m2", "c2", "visitor", "Other chat"),
        message("m3", "c1", "ai", "Hi there"),
        event(
            "x1",
            "conversation.closed",
            json!({"conversation_id": "c1", "closed_by": "visitor"}),
        ),
    ] {
        let (status, body) = server.call("POST", "/v1/events", &key, Some(e)).await;
        assert_eq!(status, 202, "{body}");
    }
    let got = owc.wait_for(1, PATIENCE).await;
    let r = &got[0];
    assert_eq!(r.header("x-owc-event"), "chat.closed");
    assert_eq!(
        r.header("x-owc-signature"),
        hex_hmac("owc-endpoint-signing-secret", &[&r.body])
    );
    assert!(r.header("x-owc-delivery").starts_with("dlv_"));
    let body = r.json();
    assert_eq!(body["event"], "chat.closed");
    assert_eq!(body["data"]["chat_id"], "c1");
    let transcript: Vec<&str> = body["data"]["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["content"].as_str().unwrap())
        .collect();
    assert_eq!(transcript, ["Hello", "Hi there"]);
    // c1's items left the window with the transcript; c2's wait for it.
    let (_, window) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{sub_id}/window"),
            &key,
            None,
        )
        .await;
    assert_eq!(window["windows"].as_array().unwrap().len(), 1, "{window}");
    assert_eq!(window["windows"][0]["items"], 1, "{window}");

    // oHallo: the idempotency key is the delivery id, the one in the header.
    let oh = Receiver::ok().await;
    server
        .subscribe(
            &key,
            json!({"url": oh.url(), "event_types": ["kb_entry.proposed"], "plugin": {"id": "builtin:ohallo"},
                   "retry": {"preset": "ohallo"},
                   "signature": {"scheme": "body-hex", "header": "X-OHallo-Signature",
                                 "event_header": "X-OHallo-Event", "delivery_header": "X-OHallo-Delivery"},
                   "secret": "ohallo-signing-secret-1"}),
        )
        .await;
    let (status, _) = server
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(event(
                "k1",
                "kb_entry.proposed",
                json!({"entry_id": "kb_1"}),
            )),
        )
        .await;
    assert_eq!(status, 202);
    let r = &oh.wait_for(1, PATIENCE).await[0];
    let body = r.json();
    assert_eq!(body["event"], "kb_entry.proposed");
    assert_eq!(
        body["idempotency_key"],
        r.header("x-ohallo-delivery").as_str()
    );
    assert_eq!(r.header("x-ohallo-event"), "kb_entry.proposed");
    assert_eq!(
        r.header("x-ohallo-signature"),
        hex_hmac("ohallo-signing-secret-1", &[&r.body])
    );
    let (_, stored) = server.call("GET", "/v1/events/k1", &key, None).await;
    assert_eq!(stored["deliveries"][0], body["idempotency_key"], "{stored}");

    // Convosphere: a test event at creation, its result in the answer.
    let cv = Receiver::ok().await;
    let sub = server
        .subscribe(
            &key,
            json!({"url": cv.url(), "event_types": ["message.created"], "plugin": {"id": "builtin:convosphere"},
                   "retry": {"preset": "convosphere"}, "verify_on_create": true}),
        )
        .await;
    let verification = &sub["verification"]["deliveries"][0];
    assert_eq!(verification["status"], "succeeded", "{sub}");
    let r = &cv.wait_for(1, PATIENCE).await[0];
    assert_eq!(r.json()["event"], "webhook.test");
    let (status, body) = server
        .call(
            "PATCH",
            &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
            &key,
            Some(json!({"verify_on_create": true})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // OneHash in, OneHash out: the seed's body comes back as it was.
    let oh1 = Receiver::ok().await;
    server
        .subscribe(
            &key,
            json!({"url": oh1.url(), "event_types": ["message.created"], "plugin": {"id": "builtin:onehash-message"}}),
        )
        .await;
    let s = source(
        &server,
        &key,
        json!({"kind": "onehash", "verify": {"scheme": "none"}}),
    )
    .await;
    let seed_body = seed("onehash-message_created.json");
    let (status, _) = server
        .inbound(s["url"].as_str().unwrap(), &[], &seed_body)
        .await;
    assert_eq!(status, 200);
    let r = &oh1.wait_for(1, PATIENCE).await[0];
    // The platform's own bytes, as they came in (the JSON value, without
    // the whitespace around it).
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        String::from_utf8_lossy(&seed_body).trim()
    );
}

#[tokio::test]
async fn a_nats_subject_is_a_source() {
    // One real nats-server (JetStream on), the cluster tests' fixture.
    let Some(nats) = wasmhook::cluster::testing::NatsCluster::start(1).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The operator allows the loopback broker (nats sources are off by default).
    let server = Server::start_with(
        dir.path(),
        &[],
        &[("WASMHOOK_SOURCES_NATS_ALLOW", "127.0.0.0/8")],
    );
    let (key, rx) = tenant_with_receiver(&server, "broker").await;

    let (status, body) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "nats", "nats": {"url": "nats://127.0.0.1:1", "subject": "x.y", "format": "ohallo"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("cannot connect"), "{body}");

    // Credentials in the URL are a secret: masked in answers, sealed on
    // disk. (A broker without authorization ignores them.)
    let password = "feed-password-5f1e2d3c4b5a69788796";
    let url = nats
        .url(0)
        .replace("nats://", &format!("nats://feeder:{password}@"));
    let s = source(
        &server,
        &key,
        json!({"kind": "nats", "nats": {"url": url, "subject": "ohallo.events.>", "format": "ohallo"}}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    let shown = s["nats"]["url"].as_str().unwrap();
    assert!(
        !shown.contains(password) && shown.contains("feeder:****@"),
        "{s}"
    );
    let (status, _) = server.inbound(s["url"].as_str().unwrap(), &[], b"{}").await;
    assert_eq!(status, 404, "a NATS source takes no HTTP requests");

    // The feed creates the stream that captures the subject; publish once
    // it exists, with JetStream's acknowledgement.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url(0)).await.unwrap());
    let deadline = std::time::Instant::now() + PATIENCE;
    while js.stream_by_subject("ohallo.events.>").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no stream for the subject"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Retried until JetStream acknowledges (a stream just created may not
    // answer yet); the message id makes a retried publish store one copy.
    let publish = |subject: &'static str, body: Vec<u8>| {
        let js = js.clone();
        let msg_id = format!("{:x}", {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (subject, &body, std::time::Instant::now()).hash(&mut h);
            h.finish()
        });
        async move {
            for attempt in 0.. {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                let acked = match js
                    .publish_with_headers(subject, headers, body.clone().into())
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if acked {
                    return;
                }
                assert!(
                    attempt < PATIENCE.as_millis() / 100,
                    "JetStream never acknowledged the publish"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let seed_body = seed("ohallo-channel_message_received.json");
    publish("ohallo.events.whatsapp", seed_body.clone()).await;
    publish("ohallo.events.whatsapp", seed_body.clone()).await; // redelivered by the platform
    publish("ohallo.events.whatsapp", b"{not json".to_vec()).await;

    let got = rx.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].json()["id"], "oh_idem_9f2c");
    assert_eq!(got[0].json()["type"], "message.created");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, letters) = server
            .call("GET", &format!("/v1/sources/{id}/dead-letters"), &key, None)
            .await;
        if letters["items"].as_array().is_some_and(|l| l.len() == 1) {
            assert!(
                letters["items"][0]["error"]
                    .as_str()
                    .unwrap()
                    .contains("not JSON")
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{letters}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While wasmhook is down the broker keeps the messages; the durable
    // consumer resumes after a restart.
    assert!(server.stop().success());
    assert!(
        !crate::security::all_bytes(dir.path())
            .windows(password.len())
            .any(|w| w == password.as_bytes()),
        "the broker's password in plain text on disk"
    );
    let later = br#"{"event":"conversation.updated","idempotency_key":"oh_3","data":{"conversation_id":"c9","changes":{"status":"open"}}}"#;
    publish("ohallo.events.web", later.to_vec()).await;
    let server = Server::start_with(
        dir.path(),
        &[],
        &[("WASMHOOK_SOURCES_NATS_ALLOW", "127.0.0.0/8")],
    );
    let got = rx.wait_for(2, PATIENCE).await;
    assert_eq!(got[1].json()["id"], "oh_3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 2, "each message routed once");
    let (status, _) = server
        .call("DELETE", &format!("/v1/sources/{id}"), &key, None)
        .await;
    assert_eq!(status, 204);
}

/// Chatwoot ≥ 4.11.2 signs `"{timestamp}.{body}"` (hex HMAC-SHA256,
/// `sha256=`) and names each delivery. Through the binary: a real-shaped
/// `message_created`, signed as Chatwoot signs, comes in (the `chatwoot`
/// kind); Chatwoot's retry of the same delivery is not routed twice; a
/// forged, unsigned or altered request is refused with 401. Out again
/// through `onehash-message` with the `chatwoot` scheme, the receiver gets
/// the very bytes Chatwoot sent, signed as Chatwoot would sign them.
#[tokio::test]
async fn a_signed_chatwoot_webhook_comes_in_and_goes_out_as_chatwoot_sent_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("chatwoot").await;
    let secret = "cw2vXq8KfL3mN9pR4tY7zB1d"; // a 24-character webhook secret, as Chatwoot makes
    let s = source(
        &server,
        &key,
        json!({"kind": "chatwoot", "verify": {"scheme": "chatwoot"}, "secret": secret}),
    )
    .await;
    assert_eq!(s["kind"], "onehash", "chatwoot is the onehash kind: {s}");
    let url = s["url"].as_str().unwrap().to_string();
    let rx = Receiver::ok().await;
    let out_secret = "receiver-side-secret-1234";
    server
        .subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["message.created"],
                   "plugin": {"id": "builtin:onehash-message"},
                   "signature": {"scheme": "chatwoot"}, "secret": out_secret}),
        )
        .await;
    // Chatwoot posts compact JSON with `<`, `>` and `&` escaped as Rails
    // escapes them: bytes that a re-serialization would change.
    let mut message: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/fixtures/chatwoot/message_created_incoming.json"))
            .unwrap(),
    )
    .unwrap();
    message["content"] = json!("Coupon <SPRING25> & checkout fails");
    let body = serde_json::to_string(&message)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .into_bytes();
    let signed = |secret: &str, ts: i64, body: &[u8], delivery: &str| {
        let ts = ts.to_string();
        vec![
            (
                "X-Chatwoot-Signature",
                format!("sha256={}", hex_hmac(secret, &[ts.as_bytes(), b".", body])),
            ),
            ("X-Chatwoot-Timestamp", ts),
            ("X-Chatwoot-Delivery", delivery.to_string()),
        ]
    };
    let delivery = "5b0e1c2d-9f3a-4b6c-8d7e-0a1b2c3d4e5f";

    // Forged, unsigned, altered, stale: refused, nothing kept.
    let forged = signed("not-the-secret-at-all-xx", unix_now(), &body, delivery);
    let (status, answer) = server.inbound(&url, &forged, &body).await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = server.inbound(&url, &[], &body).await;
    assert_eq!(status, 401);
    let mut altered = body.clone();
    altered.extend_from_slice(b"\n");
    let (status, _) = server
        .inbound(&url, &signed(secret, unix_now(), &body, delivery), &altered)
        .await;
    assert_eq!(status, 401);
    let (status, answer) = server
        .inbound(
            &url,
            &signed(secret, unix_now() - 3600, &body, delivery),
            &body,
        )
        .await;
    assert_eq!(status, 401);
    assert!(error_message(&answer).contains("tolerance"), "{answer}");

    // Signed: accepted; Chatwoot's retry of the delivery (a new timestamp
    // and signature, the same delivery id) is the same event.
    for _ in 0..2 {
        let (status, answer) = server
            .inbound(&url, &signed(secret, unix_now(), &body, delivery), &body)
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let got = rx.wait_for(1, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1, "the retry is not routed again");
    let r = &got[0];
    let (sent, got) = (
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&r.body),
    );
    assert!(
        sent == got,
        "the bytes Chatwoot sent, unchanged:\n{sent}\n{got}"
    );
    assert!(got.contains("\\u003cSPRING25\\u003e \\u0026"));
    let ts = r.header("x-chatwoot-timestamp");
    assert_eq!(
        r.header("x-chatwoot-signature"),
        format!(
            "sha256={}",
            hex_hmac(out_secret, &[ts.as_bytes(), b".", &r.body])
        )
    );
    assert!(r.header("x-chatwoot-delivery").starts_with("dlv_"));

    // The event as the API keeps it: under Chatwoot's delivery id, with
    // the canonical fields read from Chatwoot's own shape.
    let (status, event) = server
        .call(
            "GET",
            &format!("/v1/events/chatwoot:{delivery}"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["type"], "message.created", "{event}");
    assert_eq!(event["data"]["conversation_id"], 17, "{event}");
    assert_eq!(event["data"]["author_name"], "Jane Doe", "{event}");
}
