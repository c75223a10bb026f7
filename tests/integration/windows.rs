//! Daily windows: Hello Client's chat-log collection from `message.created`
//! events, end to end — in-process with a manual clock for the schedule, and
//! through the real binary with kill -9 between holding and flushing and in
//! the middle of a flush.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::*;

/// A `message.created` of chatbot `bot` in conversation `conv`.
fn msg(
    id: &str,
    bot: &str,
    conv: u64,
    conv_created: &str,
    author: &str,
    content: &str,
    at: &str,
) -> Value {
    json!({
        "id": id,
        "type": "message.created",
        "occurred_at": at,
        "data": {
            "conversation_id": conv,
            "conversation_created_at": conv_created,
            "chatbot_id": bot,
            "chatbot_name": format!("{bot} name"),
            "uri": "www.helloclient.com",
            "author": author,
            "content": content,
            "created_at": at
        }
    })
}

/// Two chatbots, three conversations, visitor / ai / agent / trigger authors,
/// across 2026-11-18 and 2026-11-19, sent out of order.
fn two_days() -> Vec<Value> {
    vec![
        msg(
            "m5",
            "bot-a",
            102,
            "2026-11-19T08:00:00Z",
            "visitor",
            "day two, hello",
            "2026-11-19T08:00:05Z",
        ),
        msg(
            "m2",
            "bot-a",
            101,
            "2026-11-18T10:00:00Z",
            "visitor",
            "make an appointment",
            "2026-11-18T10:00:10Z",
        ),
        msg(
            "m4",
            "bot-b",
            201,
            "2026-11-18T09:00:00Z",
            "trigger",
            "Welcome to B",
            "2026-11-18T09:00:00.5Z",
        ),
        msg(
            "m1",
            "bot-a",
            101,
            "2026-11-18T10:00:00Z",
            "ai",
            "Hi What can I help you with?",
            "2026-11-18T10:00:01Z",
        ),
        msg(
            "m6",
            "bot-a",
            102,
            "2026-11-19T08:00:00Z",
            "agent",
            "day two, agent here",
            "2026-11-19T08:01:00Z",
        ),
        msg(
            "m3",
            "bot-a",
            101,
            "2026-11-18T10:00:00Z",
            "agent",
            "Please select the date and time...",
            "2026-11-18T10:00:20Z",
        ),
    ]
}

fn day_one() -> Value {
    json!({"Collection": [
        {"SerialNumber": "bot-a", "Name": "bot-a name", "StartTime": "2026-11-18T00:00:00Z", "EndTime": "2026-11-19T00:00:00Z",
         "Conversations": [{"SessionID": 101, "CreateTime": "2026-11-18T10:00:00Z", "URI": "www.helloclient.com", "Messages": [
            {"Type": "AI", "Content": "Hi What can I help you with?"},
            {"Type": "User", "Content": "make an appointment"},
            {"Type": "AI", "Content": "Please select the date and time..."}]}]},
        {"SerialNumber": "bot-b", "Name": "bot-b name", "StartTime": "2026-11-18T00:00:00Z", "EndTime": "2026-11-19T00:00:00Z",
         "Conversations": [{"SessionID": 201, "CreateTime": "2026-11-18T09:00:00Z", "URI": "www.helloclient.com", "Messages": [
            {"Type": "AI", "Content": "Welcome to B"}]}]}
    ]})
}

fn day_two() -> Value {
    json!({"Collection": [
        {"SerialNumber": "bot-a", "Name": "bot-a name", "StartTime": "2026-11-19T00:00:00Z", "EndTime": "2026-11-20T00:00:00Z",
         "Conversations": [{"SessionID": 102, "CreateTime": "2026-11-19T08:00:00Z", "URI": "www.helloclient.com", "Messages": [
            {"Type": "User", "Content": "day two, hello"},
            {"Type": "AI", "Content": "day two, agent here"}]}]}
    ]})
}

fn chatlog_subscription(url: &str) -> Value {
    json!({
        "url": url,
        "event_types": ["message.created"],
        "plugin": {"id": "builtin:helloclient-chatlog"},
        "signature": {"scheme": "timestamped-hex"},
        "retry": {"preset": "helloclient"},
        "expect_body": {"status": "success"},
        "window": {"every": "1d", "at": "02:00", "timezone": "UTC"}
    })
}

fn verify_timestamped_hex(secret: &str, r: &Received) {
    let header = r.header("x-webhook-signature");
    let (t, v1) = header
        .strip_prefix("t=")
        .unwrap()
        .split_once(",v1=")
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
}

both_backends! {
    #[tokio::test]
    async fn a_day_of_messages_becomes_one_signed_collection_per_window(backing) {
        use wasmhook::clock::Clock;
        let e = backing.engine().await;
        e.clock.set("2026-11-19T12:00:00Z".parse().unwrap());
        let key = e.tenant().await;
        let rx = Receiver::ok().await;
        let sub = e.subscribe(&key, chatlog_subscription(&rx.url())).await;
        let sub_id = sub["id"].as_str().unwrap();
        let secret = sub["secret"].as_str().unwrap();
        for event in two_days() {
            let ids = e.send(&key, event).await;
            assert_eq!(e.delivery(&key, &ids[0]).await["status"], "held");
        }
        let (_, view) = e
            .call(
                "GET",
                &format!("/v1/subscriptions/{sub_id}/window"),
                &key,
                None,
            )
            .await;
        assert_eq!(view["windows"][0]["items"], 4);
        assert_eq!(
            view["windows"][0]["groups"],
            json!({"bot-a": 3, "bot-b": 1})
        );
        assert_eq!(view["windows"][0]["close_at"], "2026-11-19T02:00:00Z");
        assert_eq!(view["windows"][1]["groups"], json!({"bot-a": 2}));

        // Day one closed at 02:00 today: the scheduler flushes it; day two not yet.
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 1);
        e.worker.run_due().await;
        let got = rx.wait_for(1, PATIENCE).await;
        assert_eq!(got[0].json(), day_one());
        verify_timestamped_hex(secret, &got[0]);

        // Nothing is due until tomorrow 02:00.
        e.clock.set("2026-11-20T01:59:00Z".parse().unwrap());
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 0);
        e.clock.set("2026-11-20T02:00:00Z".parse().unwrap());
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 1);
        e.worker.run_due().await;
        let got = rx.wait_for(2, PATIENCE).await;
        assert_eq!(got[1].json(), day_two());
        verify_timestamped_hex(secret, &got[1]);

        // Both deliveries succeeded against expect_body.
        let (_, page) = e
            .call(
                "GET",
                &format!("/v1/deliveries?subscription_id={sub_id}&status=succeeded"),
                &key,
                None,
            )
            .await;
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert_eq!(page["items"][0]["event_type"], "window.closed");

        // An empty window sends nothing.
        e.clock.set("2026-11-22T02:00:00Z".parse().unwrap());
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 0);

        // A late message for day one: held in day one again and sent at the next
        // tick as a late delivery for that day, alone.
        e.send(
            &key,
            msg(
                "late",
                "bot-b",
                201,
                "2026-11-18T09:00:00Z",
                "visitor",
                "sorry, late",
                "2026-11-18T23:59:00Z",
            ),
        )
        .await;
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 1);
        e.worker.run_due().await;
        let got = rx.wait_for(3, PATIENCE).await;
        let late = got[2].json();
        assert_eq!(late["Collection"][0]["StartTime"], "2026-11-18T00:00:00Z");
        assert_eq!(
            late["Collection"][0]["Conversations"][0]["Messages"],
            json!([{"Type": "User", "Content": "sorry, late"}])
        );
        assert_eq!(e.clock.now().to_string(), "2026-11-22T02:00:00Z");
    }
}

both_backends! {
    #[tokio::test]
    async fn flush_now_limits_and_oversized_flushes(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::ok().await;
        let mut body = chatlog_subscription(&rx.url());
        body["window"]["max_items"] = json!(5);
        let sub = e.subscribe(&key, body).await;
        let sub_id = sub["id"].as_str().unwrap();
        let big = "x".repeat(250 * 1024);
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(
                e.send(
                    &key,
                    msg(
                        &format!("b{i}"),
                        "bot",
                        1,
                        "2026-11-21T09:00:00Z",
                        "visitor",
                        &big,
                        "2026-11-21T09:00:01Z",
                    ),
                )
                .await,
            );
        }
        // The sixth is over the item limit: a clear error, recorded.
        let d = e.delivery(&key, &ids[5][0]).await;
        assert_eq!(d["status"], "failed");
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .contains("held-item limit reached: 5 items"),
            "{d}"
        );

        // Five 250 KB messages make a collection over the 1 MiB output limit:
        // the flush is split into parts that fit, all committed together, so
        // the full window is sent (each message once) and emptied.
        let (s, flushed) = e
            .call(
                "POST",
                &format!("/v1/subscriptions/{sub_id}/flush"),
                &key,
                None,
            )
            .await;
        assert_eq!(s, 200, "{flushed}");
        assert!(flushed["windows"][0]["error"].is_null(), "{flushed}");
        assert_eq!(flushed["windows"][0]["items"], 5);
        let parts = flushed["windows"][0]["deliveries"]
            .as_array()
            .unwrap()
            .len();
        assert!(parts >= 2, "split into {parts} part(s)");
        let (_, view) = e
            .call(
                "GET",
                &format!("/v1/subscriptions/{sub_id}/window"),
                &key,
                None,
            )
            .await;
        assert_eq!(view["windows"].as_array().unwrap().len(), 0, "{view}");
        e.worker.run_due().await;
        rx.wait_for(parts, PATIENCE).await;
        let mut total = 0;
        for r in rx.received() {
            assert!(r.body.len() <= 1 << 20, "each part fits the output limit");
            for bot in r.json()["Collection"].as_array().unwrap() {
                for conv in bot["Conversations"].as_array().unwrap() {
                    total += conv["Messages"].as_array().unwrap().len();
                }
            }
        }
        assert_eq!(total, 5, "every held message in exactly one part");

        // A window that fits flushes through the same endpoint.
        let rx2 = Receiver::ok().await;
        let sub2 = e.subscribe(&key, chatlog_subscription(&rx2.url())).await;
        e.send(
            &key,
            msg(
                "s1",
                "bot",
                1,
                "2026-11-21T09:00:00Z",
                "visitor",
                "small",
                "2026-11-21T09:00:01Z",
            ),
        )
        .await;
        let (s, flushed) = e
            .call(
                "POST",
                &format!("/v1/subscriptions/{}/flush", sub2["id"].as_str().unwrap()),
                &key,
                None,
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(flushed["windows"][0]["items"], 1);
        assert_eq!(
            flushed["windows"][0]["deliveries"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        e.worker.run_due().await;
        assert_eq!(
            rx2.wait_for(1, PATIENCE).await[0].json()["Collection"][0]["Conversations"]
                [0]["Messages"][0]["Content"],
            "small"
        );

        // A subscription without a window cannot be flushed; a bad window spec is a 400.
        let plain = e
            .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        let (s, _) = e
            .call(
                "POST",
                &format!("/v1/subscriptions/{}/flush", plain["id"].as_str().unwrap()),
                &key,
                None,
            )
            .await;
        assert_eq!(s, 400);
        let mut bad = chatlog_subscription(&rx.url());
        bad["window"]["every"] = json!("7m");
        let (s, b) = e.call("POST", "/v1/subscriptions", &key, Some(bad)).await;
        assert_eq!(s, 400);
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("window.every")
        );
    }
}

/// Messages (by content) in every Collection the receiver got, each with
/// the number of collections (delivery ids) it was in. A collection sent
/// again under its id (at least once) counts once.
fn delivered_messages(rx: &Receiver) -> HashMap<String, usize> {
    let mut ids: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for (message, id) in messages_received(rx) {
        ids.entry(message).or_default().insert(id);
    }
    ids.into_iter().map(|(m, ids)| (m, ids.len())).collect()
}

/// Every message in every request the receiver got, with the request's
/// delivery id.
fn messages_received(rx: &Receiver) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for r in rx.received() {
        let id = r.header("webhook-id");
        for bot in r.json()["Collection"].as_array().unwrap() {
            for conv in bot["Conversations"].as_array().unwrap() {
                for m in conv["Messages"].as_array().unwrap() {
                    all.push((m["Content"].as_str().unwrap().to_string(), id.clone()));
                }
            }
        }
    }
    all
}

/// Future days, so the scheduler leaves the windows to the explicit flush.
fn future_messages(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let day = 10 + i % 2;
            msg(
                &format!("fm{i}"),
                if i % 3 == 0 { "bot-a" } else { "bot-b" },
                100 + (i % 4) as u64,
                &format!("2099-01-{day}T08:00:00Z"),
                if i % 2 == 0 { "visitor" } else { "ai" },
                &format!("message {i}"),
                &format!("2099-01-{day}T09:{:02}:00Z", i % 60),
            )
        })
        .collect()
}

async fn wait_for_messages(rx: &Receiver, n: usize) -> HashMap<String, usize> {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        let seen = delivered_messages(rx);
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delivered_messages(rx)
}

both_backends! {
    #[tokio::test]
    async fn kill_9_between_holding_and_flushing_loses_nothing(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("w").await;
        let rx = Receiver::ok().await;
        let sub = server
            .subscribe(&key, chatlog_subscription(&rx.url()))
            .await;
        for m in future_messages(20) {
            let (s, _) = server.call("POST", "/v1/events", &key, Some(m)).await;
            assert_eq!(s, 202);
        }
        server.kill9();
        let server = backing.start(dir.path()).await;
        let (s, flushed) = server
            .call(
                "POST",
                &format!("/v1/subscriptions/{}/flush", sub["id"].as_str().unwrap()),
                &key,
                None,
            )
            .await;
        assert_eq!(s, 200, "{flushed}");
        assert_eq!(flushed["windows"].as_array().unwrap().len(), 2);
        let seen = wait_for_messages(&rx, 20).await;
        assert_eq!(seen.len(), 20, "{seen:?}");
        assert!(
            seen.values().all(|n| *n == 1),
            "each message in exactly one collection: {seen:?}"
        );
        assert_eq!(rx.received().len(), 2, "one collection per window");
    }
}

both_backends! {
    #[tokio::test]
    async fn kill_9_during_a_flush_sends_each_day_once(backing) {
        for failpoint in ["flush-before-commit", "flush-after-commit"] {
            let dir = tempfile::tempdir().unwrap();
            let server = backing.start_with(dir.path(), &[], &[("WASMHOOK_FAILPOINT", failpoint)]).await;
            let (_, key) = server.tenant("w").await;
            let rx = Receiver::ok().await;
            let sub = server
                .subscribe(&key, chatlog_subscription(&rx.url()))
                .await;
            let flush = format!("/v1/subscriptions/{}/flush", sub["id"].as_str().unwrap());
            for m in future_messages(12) {
                server.call("POST", "/v1/events", &key, Some(m)).await;
            }
            // The flush aborts the process at the failpoint: no answer.
            let aborted = crate::support::http_client()
                .post(format!("{}{flush}", server.base))
                .bearer_auth(&key)
                .send()
                .await;
            assert!(aborted.is_err(), "{failpoint}: the server should have died");
            drop(server);

            let server = backing.start(dir.path()).await;
            // Whatever is still held is flushed now; what was committed is delivered.
            let (s, _) = server.call("POST", &flush, &key, None).await;
            assert_eq!(s, 200);
            let seen = wait_for_messages(&rx, 12).await;
            assert_eq!(seen.len(), 12, "{failpoint}: {seen:?}");
            assert!(seen.values().all(|n| *n == 1), "{failpoint}: in one collection each: {seen:?}");
            if !backing.is_nats() {
                // On sled nothing is sent before the flush's commit is on
                // disk, and the failpoint aborts right after it: each
                // collection arrives once. In cluster mode the committed
                // collections may be sent before the abort and again after
                // the restart, under the same ids (at least once).
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(messages_received(&rx).len(), 12, "{failpoint}: sent once");
            }
        }
    }
}

both_backends! {
    #[tokio::test]
    async fn a_disabled_subscription_keeps_its_items_until_enabled(backing) {
        let e = backing.engine().await;
        e.clock.set("2026-11-19T12:00:00Z".parse().unwrap());
        let key = e.tenant().await;
        let rx = Receiver::ok().await;
        let sub = e.subscribe(&key, chatlog_subscription(&rx.url())).await;
        let id = sub["id"].as_str().unwrap();
        e.send(
            &key,
            msg(
                "d1",
                "bot",
                1,
                "2026-11-18T09:00:00Z",
                "visitor",
                "kept",
                "2026-11-18T09:00:01Z",
            ),
        )
        .await;
        let (s, _) = e
            .call(
                "POST",
                &format!("/v1/subscriptions/{id}/disable"),
                &key,
                None,
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 0);
        let (_, view) = e
            .call("GET", &format!("/v1/subscriptions/{id}/window"), &key, None)
            .await;
        assert_eq!(view["windows"][0]["items"], 1);
        e.call(
            "POST",
            &format!("/v1/subscriptions/{id}/enable"),
            &key,
            None,
        )
        .await;
        assert_eq!(wasmhook::window::flush_due(&e.app).await.unwrap(), 1);
        e.worker.run_due().await;
        assert_eq!(rx.wait_for(1, PATIENCE).await.len(), 1);
    }
}

both_backends! {
    /// The held-item tally unreadable (a storage fault) while an event's
    /// plugin holds items: 503, nothing stored; the same event sent again
    /// once the fault is gone is held once.
    #[tokio::test]
    async fn a_storage_fault_while_holding_is_a_503_and_stores_nothing(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing
            .start_with(dir.path(), &[], &[("WASMHOOK_FAILPOINT", "window-hold-store-fault")])
            .await;
        let (_, key) = server.tenant("w").await;
        let rx = Receiver::ok().await;
        let sub = server
            .subscribe(&key, chatlog_subscription(&rx.url()))
            .await;
        let sub_id = sub["id"].as_str().unwrap().to_string();
        let message = future_messages(1).remove(0);
        let event_id = message["id"].as_str().unwrap().to_string();
        let (status, body) = server
            .call("POST", "/v1/events", &key, Some(message.clone()))
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
        let (status, _) = server
            .call("GET", &format!("/v1/events/{event_id}"), &key, None)
            .await;
        assert_eq!(status, 404, "nothing of a refused event is stored");
        let (_, window) = server
            .call("GET", &format!("/v1/subscriptions/{sub_id}/window"), &key, None)
            .await;
        assert_eq!(window["windows"], json!([]), "nothing held: {window}");
        drop(server);

        let server = backing.start(dir.path()).await;
        for _ in 0..2 {
            let (status, body) = server
                .call("POST", "/v1/events", &key, Some(message.clone()))
                .await;
            assert_eq!(status, 202, "{body}");
        }
        let (_, window) = server
            .call("GET", &format!("/v1/subscriptions/{sub_id}/window"), &key, None)
            .await;
        let held: u64 = window["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["items"].as_u64().unwrap())
            .sum();
        assert_eq!(held, 1, "held once: {window}");
    }
}
