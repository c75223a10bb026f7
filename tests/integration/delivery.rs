//! The delivery engine against real receivers on loopback, on a real store,
//! with a manual clock: each receiver behaviour ends in the state the retry
//! policy says, with every attempt recorded.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

fn assert_between(secs: f64, low: f64, high: f64) {
    assert!(secs >= low && secs <= high, "{secs} not in [{low}, {high}]");
}

both_backends! {
    #[tokio::test]
    async fn a_receiver_that_fails_then_succeeds_gets_the_same_bytes_and_id(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(vec![Answer::status(500).body("boom")], Answer::status(200)).await;
        e.subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["message.*"], "retry": {"preset": "onwebchat"}}),
        )
        .await;
        let ids = e.send(&key, message_event("m1")).await;
        assert_eq!(ids.len(), 1);

        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "pending");
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["last_http_status"], 500);
        assert_eq!(d["attempt_log"][0]["response_body"], "boom");
        assert_eq!(d["attempt_log"][0]["error"], "HTTP 500");
        // onwebchat: the first retry after 1 minute, ±20 %.
        assert_between(e.secs_until(&d["next_attempt_at"]), 48.0, 72.0);

        // Not yet due: nothing happens.
        e.clock.advance(Duration::from_secs(30));
        assert_eq!(e.worker.run_due().await, 0);
        e.clock.advance(Duration::from_secs(43));
        assert_eq!(e.worker.run_due().await, 1);
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "succeeded");
        assert_eq!(d["attempts"], 2);
        assert!(d["attempt_log"][1]["duration_ms"].is_u64());

        let got = rx.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, got[1].body, "every retry sends the same bytes");
        // Stored without it (it is the event's), shown whole.
        assert_eq!(d["request"]["body"].as_str().unwrap().as_bytes(), &got[0].body[..]);
        assert_eq!(d["request"]["body_from_event"], true);
        assert_eq!(got[0].header("webhook-id"), ids[0]);
        assert_eq!(got[1].header("webhook-id"), ids[0]);
        assert_ne!(
            got[0].header("webhook-timestamp"),
            got[1].header("webhook-timestamp")
        );
        // No plugin: the Standard Webhooks payload form plus the event id.
        let body = got[0].json();
        assert_eq!(body["type"], "message.created");
        assert_eq!(body["id"], "m1");
        assert_eq!(body["data"]["content"], "hello");
        assert!(body["timestamp"].is_string());
    }
}

both_backends! {
    #[tokio::test]
    async fn a_receiver_that_times_out_is_retried_with_a_timeout_error(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(
            vec![Answer::status(200).delay(Duration::from_secs(3))],
            Answer::status(200),
        )
        .await;
        e.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"], "timeout_ms": 200, "retry": {"preset": "convosphere"}}))
            .await;
        let ids = e.send(&key, message_event("t1")).await;
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "pending");
        let error = d["last_error"].as_str().unwrap();
        assert!(error.starts_with("timeout"), "{error}");
        assert!(d["attempt_log"][0]["status"].is_null());
        assert_between(e.secs_until(&d["next_attempt_at"]), 48.0, 72.0);
    }
}

both_backends! {
    #[tokio::test]
    async fn gone_disables_the_subscription_at_once(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(vec![], Answer::status(410)).await;
        let sub = e
            .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        let ids = e.send(&key, message_event("g1")).await;
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "failed");
        assert!(d["last_error"].as_str().unwrap().contains("410 Gone"));
        let s = e.subscription(&key, sub["id"].as_str().unwrap()).await;
        assert_eq!(s["enabled"], false);
        assert_eq!(s["disabled_reason"], "the endpoint answered 410 Gone");
        // A disabled subscription gets no new deliveries.
        assert!(e.send(&key, message_event("g2")).await.is_empty());
    }
}

both_backends! {
    #[tokio::test]
    async fn retry_after_on_429_is_honoured(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(
            vec![Answer::status(429).header("retry-after", "7")],
            Answer::status(200),
        )
        .await;
        e.subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["*"], "retry": {"preset": "onwebchat"}}),
        )
        .await;
        let ids = e.send(&key, message_event("r1")).await;
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["last_http_status"], 429);
        // Exactly the asked 7 s (no jitter on Retry-After), not the 1-minute schedule.
        assert_between(e.secs_until(&d["next_attempt_at"]), 6.9, 7.1);
        e.clock.advance(Duration::from_secs(8));
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &ids[0]).await["status"], "succeeded");
    }
}

both_backends! {
    #[tokio::test]
    async fn the_wrong_body_for_expect_body_follows_hello_clients_schedule_then_fails(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(vec![], Answer::status(200).body(r#"{"status":"ok"}"#)).await;
        e.subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["*"], "retry": {"preset": "helloclient", "jitter": 0},
                   "expect_body": {"status": "success"}}),
        )
        .await;
        let ids = e.send(&key, message_event("b1")).await;
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "pending");
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .contains("response body mismatch")
        );
        assert_between(e.secs_until(&d["next_attempt_at"]), 59.9, 60.1);
        e.clock.advance(Duration::from_secs(60));
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_between(e.secs_until(&d["next_attempt_at"]), 179.9, 180.1);
        e.clock.advance(Duration::from_secs(180));
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "failed");
        assert_eq!(d["attempts"], 3);
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .contains("gave up after 3 attempts")
        );
        assert_eq!(rx.received().len(), 3);
    }
}

both_backends! {
    #[tokio::test]
    async fn a_dead_port_is_a_connect_error_and_exhausted_deliveries_disable(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let sub = e
            .subscribe(
                &key,
                json!({"url": dead_port_url(), "event_types": ["*"],
                       "retry": {"schedule_secs": [], "disable_after_failures": 2}}),
            )
            .await;
        let sub_id = sub["id"].as_str().unwrap();
        let first = e.send(&key, message_event("d1")).await;
        e.worker.run_due().await;
        let d = e.delivery(&key, &first[0]).await;
        assert_eq!(d["status"], "failed");
        let error = d["last_error"].as_str().unwrap();
        assert!(error.starts_with("connect"), "{error}");
        assert_eq!(
            e.subscription(&key, sub_id).await["consecutive_failures"],
            1
        );
        assert_eq!(e.subscription(&key, sub_id).await["enabled"], true);

        e.send(&key, message_event("d2")).await;
        e.worker.run_due().await;
        let s = e.subscription(&key, sub_id).await;
        assert_eq!(s["enabled"], false);
        assert_eq!(
            s["disabled_reason"],
            "2 deliveries in a row failed (limit 2)"
        );
    }
}

both_backends! {
    #[tokio::test]
    async fn convosphere_stops_on_a_4xx_but_retries_429(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(
            vec![Answer::status(429), Answer::status(400)],
            Answer::status(200),
        )
        .await;
        e.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"], "retry": {"preset": "convosphere", "jitter": 0}}))
            .await;
        let ids = e.send(&key, message_event("c1")).await;
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "pending");
        assert_between(e.secs_until(&d["next_attempt_at"]), 59.9, 60.1);
        e.clock.advance(Duration::from_secs(60));
        e.worker.run_due().await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "failed");
        assert!(d["last_error"].as_str().unwrap().contains("does not retry"));
    }
}

both_backends! {
    #[tokio::test]
    async fn the_ssrf_guard_refuses_private_destinations_unless_allowed(backing) {
        let e = backing.guarded_engine().await;
        let key = e.tenant().await;
        let rx = Receiver::ok().await;
        e.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        e.subscribe(
            &key,
            json!({"url": format!("http://localhost:{}/x", rx.addr.port()), "event_types": ["*"]}),
        )
        .await;
        let ids = e.send(&key, message_event("s1")).await;
        e.worker.run_due().await;
        for id in &ids {
            let d = e.delivery(&key, id).await;
            assert_eq!(d["status"], "failed", "{d}");
            let error = d["last_error"].as_str().unwrap();
            assert!(
                error.contains("loopback address; refused by the SSRF guard"),
                "{error}"
            );
        }
        assert!(rx.received().is_empty());
    }
}

both_backends! {
    #[tokio::test]
    async fn plugin_skip_and_plugin_failure_are_recorded_not_dropped(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::ok().await;
        // helloclient-lead skips messages; event-filter with an impossible condition skips too.
        e.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"], "plugin": {"id": "builtin:helloclient-lead"}}))
            .await;
        let ids = e.send(&key, message_event("p1")).await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "filtered");
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .contains("leads and appointments only")
        );

        // A lead without a session id: the plugin's own error, recorded.
        let ids = e
            .send(
                &key,
                json!({"type": "lead.created", "data": {"chatbot_id": "x"}}),
            )
            .await;
        let d = e.delivery(&key, &ids[0]).await;
        assert_eq!(d["status"], "failed");
        assert!(
            d["last_error"].as_str().unwrap().contains("session_id"),
            "{d}"
        );
        e.worker.run_due().await;
        assert!(rx.received().is_empty());
    }
}

both_backends! {
    #[tokio::test]
    async fn a_plugin_runs_once_and_its_requests_are_what_is_retried(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(
            vec![Answer::status(503)],
            Answer::status(200).body(r#"{"status":"success"}"#),
        )
        .await;
        e.subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["lead.created"], "plugin": {"id": "builtin:helloclient-lead"},
                   "signature": {"scheme": "timestamped-hex"}, "expect_body": {"status": "success"},
                   "retry": {"preset": "helloclient"}}),
        )
        .await;
        let lead: Value = serde_json::from_str(
            &std::fs::read_to_string(crate::support::repo_root().join("examples/lead.json")).unwrap(),
        )
        .unwrap();
        let ids = e.send(&key, lead).await;
        let stored = e.delivery(&key, &ids[0]).await;
        let body = stored["request"]["body"].as_str().unwrap().to_string();
        assert!(
            body.starts_with(r#"{"SerialNumber":"59001dd73709417321c58b11693183a2","Type":"Lead""#)
        );
        e.worker.run_due().await;
        e.clock.advance(Duration::from_secs(75));
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &ids[0]).await["status"], "succeeded");
        for r in rx.received() {
            assert_eq!(r.body, body.as_bytes(), "the stored bytes, byte for byte");
        }
    }
}

both_backends! {
    #[tokio::test]
    async fn one_dead_endpoint_does_not_delay_another(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let slow = Receiver::start(
            vec![],
            Answer::status(200).delay(Duration::from_secs(600)),
        )
        .await;
        let fast = Receiver::ok().await;
        e.subscribe(
            &key,
            json!({"url": slow.url(), "event_types": ["*"], "max_in_flight": 1}),
        )
        .await;
        e.subscribe(&key, json!({"url": fast.url(), "event_types": ["*"]}))
            .await;
        for i in 0..5 {
            e.send(&key, message_event(&format!("f{i}"))).await;
        }
        let worker = wasmhook::deliver::worker::Worker::new(e.app.deliver.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        // All five reach the fast endpoint while the slow one, capped at one in
        // flight, is still on its first (it answers after 10 minutes; the
        // attempt times out first, at the default 15 s, and is retried later).
        fast.wait_for(5, PATIENCE).await;
        assert!(slow.received().len() <= 1);
        let _ = stop.send(());
        run.await.unwrap();
    }
}

both_backends! {
    #[tokio::test]
    async fn retention_prunes_old_events_and_finished_deliveries_only(backing) {
        use wasmhook::clock::Clock;
        let e = backing.engine().await;
        let key = e.tenant().await;
        let ok = Receiver::ok().await;
        let flaky = Receiver::start(vec![Answer::status(500)], Answer::status(200)).await;
        e.subscribe(&key, json!({"url": ok.url(), "event_types": ["message.*"]}))
            .await;
        e.subscribe(&key, json!({"url": flaky.url(), "event_types": ["message.*"], "retry": {"preset": "onwebchat"}}))
            .await;
        let ids = e.send(&key, message_event("old")).await;
        e.worker.run_due().await;
        let status = |d: Value| d["status"].as_str().unwrap().to_string();
        let mut statuses: Vec<String> = Vec::new();
        for id in &ids {
            statuses.push(status(e.delivery(&key, id).await));
        }
        statuses.sort();
        assert_eq!(statuses, ["pending", "succeeded"]);

        e.clock.advance(Duration::from_secs(31 * 24 * 3600));
        let cutoff = e.clock.now() - jiff::SignedDuration::from_secs(30 * 24 * 3600);
        // Prunes; checks what was removed and what the API still shows of
        // the event; returns the deliveries it still lists.
        let prune = async |removed: (usize, usize), event_status: u16| {
            assert_eq!(e.app.store.prune(cutoff).await.unwrap(), removed);
            let (s, _) = e.call("GET", "/v1/events/old", &key, None).await;
            assert_eq!(s, event_status);
            let (_, page) = e.call("GET", "/v1/deliveries", &key, None).await;
            page["items"].as_array().unwrap().clone()
        };
        // The finished delivery is gone. The event stays while its pending
        // delivery still sends the event's body.
        let listed = prune((0, 1), 200).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["status"], "pending");

        // Its retry sends the first attempt's bytes; then the event goes too.
        e.worker.run_due().await;
        let got = flaky.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, got[1].body);
        assert_eq!(got[1].json()["id"], "old");
        assert_eq!(prune((1, 1), 404).await.len(), 0);
    }
}
